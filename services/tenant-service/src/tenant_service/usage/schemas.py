"""Shapes of the usage history (contract §13)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

Granularity = Literal["hour", "day"]


class UsageBucket(msgspec.Struct, omit_defaults=True):
    """Requests in one hour or one day (UTC)."""

    start: datetime
    requests: int
    rejected: int
    database_bytes: int | None = None
    """The database's size when last sampled that day (days only; absent when it was not sampled)."""


class HistoryWindow(msgspec.Struct, frozen=True):
    """A checked window: the first and last bucket's start."""

    granularity: Granularity
    start: datetime
    end: datetime
