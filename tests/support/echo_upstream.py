"""A real upstream for gateway tests, run as its own process: ``python echo_upstream.py PORT``.

``/slow?seconds=N`` answers after N seconds; ``/stream?chunks=N`` streams N chunks; ``/status/CODE`` answers
with that status; ``/reset`` drops the connection; anything else echoes the request as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import parse_qs

import uvicorn

COUNTS: dict[str, int] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    COUNTS[path] = COUNTS.get(path, 0) + 1
    if path == "/slow":
        await asyncio.sleep(float(query.get("seconds", ["5"])[0]))
    if path == "/reset":
        raise RuntimeError("reset requested")
    if path.startswith("/status/"):
        await send({"type": "http.response.start", "status": int(path.rsplit("/", 1)[1]), "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(int(query.get("chunks", ["5"])[0])):
            await send({"type": "http.response.body", "body": f"chunk{i}\n".encode(), "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    payload = {
        "method": scope["method"],
        "path": path,
        "raw_path": scope.get("raw_path", b"").decode("latin-1"),
        "query": scope["query_string"].decode(),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body": body.decode("latin-1"),
        "count": COUNTS[path],
    }
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"connection", b"keep-alive"),
                (b"x-upstream", b"echo"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop", http="httptools")
