"""Opaque keyset cursors for the admin API's lists: the (created_at, id) of the last item of a page."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import msgspec

from tenantry_common.problems import FieldError, InvalidInputError


def encode_cursor(created_at: datetime, item_id: uuid.UUID) -> str:
    """An opaque keyset cursor."""
    return base64.urlsafe_b64encode(msgspec.json.encode([created_at.isoformat(), str(item_id)])).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Inverse of :func:`encode_cursor`.

    Raises:
        InvalidInputError: the cursor was not made by this API.
    """
    try:
        created, tid = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()))
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:  # encode_cursor always writes an offset
            raise ValueError("naive timestamp")
        return when.astimezone(UTC), uuid.UUID(tid)
    except (ValueError, TypeError, OverflowError, binascii.Error, msgspec.DecodeError):
        raise InvalidInputError(
            "invalid cursor", errors=[FieldError(field="cursor", message="not a cursor from this API")]
        ) from None


class _Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


Row = TypeVar("Row", bound=_Keyed)


def split_page(rows: Sequence[Row], limit: int) -> tuple[Sequence[Row], str | None]:
    """A page out of ``limit + 1`` fetched rows, and the cursor after it (None when nothing follows)."""
    page = rows[:limit]
    return page, encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit and page else None
