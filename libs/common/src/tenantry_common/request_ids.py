"""Request ids: which client-sent ``X-Request-ID`` values the platform keeps, and new ones when it keeps none.

A request id ends up in log lines, the audit table and responses. A client's value is kept only when it is short
and made of characters that cannot break a log line, a header or a query (no space, no control character, no
quote, no ``%``); any other value is replaced by a fresh id rather than refused, so tracing never costs a request.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

REQUEST_ID_MAX_LENGTH: Final = 128
"""The longest client-sent request id that is kept."""

REQUEST_ID_PATTERN: Final = re.compile(rf"[A-Za-z0-9._:-]{{1,{REQUEST_ID_MAX_LENGTH}}}")
"""What a kept request id consists of (match it with ``fullmatch``)."""


def safe_request_id(value: str | bytes | None) -> str | None:
    """The client's request id when it is safe to store and log, else ``None``.

    Args:
        value: the ``X-Request-ID`` header as sent (``bytes`` as read off the wire, or ``str``), or ``None``.

    Returns:
        ``value`` as a string when it is 1 to 128 characters of ``A-Z a-z 0-9 . _ : -``; otherwise ``None``.
    """
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text if REQUEST_ID_PATTERN.fullmatch(text) else None


def new_request_id() -> str:
    """A fresh request id (32 hex digits), for a request that brought none or an unsafe one."""
    return uuid.uuid4().hex
