"""The webhooks section's receiver: ``python -m bench.webhook_receiver --port N`` (secret in ``WEBHOOK_SECRET``).

Answers every POST 204 at once, checks its Standard Webhooks signature, and counts; ``GET /stats`` gives the
deliveries, the distinct ``webhook-id`` values, bad signatures and the wall times (``time.time()``) of the first and
the last delivery; ``GET /healthz`` answers 200.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import time

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    key = base64.b64decode(os.environ["WEBHOOK_SECRET"].removeprefix("whsec_"))
    ids: set[str] = set()
    stats = {"deliveries": 0, "bad_signatures": 0, "first": 0.0, "last": 0.0}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        msg_id = request.headers.get("webhook-id", "")
        signed = f"{msg_id}.{request.headers.get('webhook-timestamp', '')}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, request.headers.get("webhook-signature", "")):
            stats["bad_signatures"] += 1
        stats["deliveries"] += 1
        stats["first"] = stats["first"] or now
        stats["last"] = now
        ids.add(msg_id)
        return web.Response(status=204)

    async def report(_request: web.Request) -> web.Response:
        return web.json_response({**stats, "unique": len(ids)})

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", report)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
