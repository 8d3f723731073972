"""What every black-box test checks the same way: problem documents, unique slugs, key-shaped strings."""

from __future__ import annotations

import re
import secrets
from typing import Any

from tenantry_common.problems import PROBLEM_MEDIA_TYPE

#: A full tenant API key.
API_KEY = re.compile(r"^tk_[0-9A-Za-z]{38}$")
#: Anything that looks like more of an API key than its 11-character display prefix. A key starts a token: ``tk_``
#: inside a longer run of URL-safe base64 (a sealed secret, a random id) is chance, not a key — 1 in ~680,000
#: positions of such text matches, and a registry dump holds hundreds of thousands of them.
KEYLIKE = re.compile(r"(?<![0-9A-Za-z_-])tk_[0-9A-Za-z]{30,}")


def unique_slug(prefix: str, stem: str) -> str:
    """A slug unique across the session (the installation is shared)."""
    return f"{prefix}-{stem}-{secrets.token_hex(3)}"


def uniq(stem: str) -> str:
    """A tenant slug (or plan name) unique across the session, ``t-<stem>-<hex>``."""
    return unique_slug("t", stem)


def _received(response: Any) -> tuple[int, str, str]:
    """Status, content type and body text of an httpx response or a ``support.hardening.RawResponse``."""
    if hasattr(response, "status_code"):
        return response.status_code, response.headers.get("content-type", ""), response.text
    return response.status, response.header("content-type") or "", response.body.decode("utf-8", "replace")


def assert_problem(response: Any, status: int, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    """The response (httpx's, or one read off a socket) is an RFC 9457 problem with the given status (and code, and
    an error naming ``field``)."""
    status_code, content_type, text = _received(response)
    assert status_code == status, (status_code, text)
    assert content_type.startswith(PROBLEM_MEDIA_TYPE), content_type
    body: dict[str, Any] = response.json()
    for key in ("type", "title", "status", "detail", "code"):
        assert key in body, f"{key} missing from {body}"
    assert body["status"] == status
    assert isinstance(body["code"], str)
    assert body["code"]
    if code is not None:
        assert body["code"] == code, body
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    assert "Traceback" not in text
    return body


async def create_tenant(api: Any, slug: str, **extra: Any) -> dict[str, Any]:
    """``POST /admin/tenants`` (named after its slug) through an admin client; asserts the 201."""
    response = await api.post("/admin/tenants", json={"slug": slug, "name": slug.title(), **extra})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
