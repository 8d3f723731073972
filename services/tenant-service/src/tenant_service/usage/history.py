"""Usage history of one tenant: hourly or daily buckets, zero-filled, from the registry (contract §13).

:func:`usage_history` is the service-layer call (the admin API's ``GET /admin/tenants/{ref}/usage`` and the
console's charts use it); :func:`history_window` turns the API's ``from``, ``to`` and ``granularity`` into a checked
window. Every bucket of the window is returned, those without traffic with zeros, oldest first: a chart needs no
gap handling. A bucket is named by its start (UTC); the window holds the buckets whose start lies in
[``from`` rounded down to its bucket, ``to``].
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from sqlalchemy import select

from tenant_service.context import AppContext
from tenant_service.db.models import UsageDaily, UsageHourly
from tenant_service.usage.schemas import HistoryWindow, UsageBucket
from tenantry_common.problems import FieldError, InvalidInputError
from tenantry_common.timeutil import utcnow

#: Buckets of the default window: the last 24 hours, or the last 30 days (the current bucket included).
DEFAULT_BUCKETS: Final[dict[str, int]] = {"hour": 24, "day": 30}
#: Most buckets one answer holds: 31 days of hours, or 800 days.
MAX_BUCKETS: Final[dict[str, int]] = {"hour": 31 * 24, "day": 800}
_STEP: Final[dict[str, timedelta]] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


def _floor(moment: datetime, granularity: str) -> datetime:
    moment = moment.astimezone(UTC)
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return datetime.combine(moment.date(), time(), UTC)


def _invalid(field: str, message: str, code: str = "invalid_usage_window") -> InvalidInputError:
    return InvalidInputError("invalid usage window", code=code, errors=[FieldError(field=field, message=message)])


def _parse(field: str, raw: str | None) -> datetime | None:
    if raw is None or raw == "":
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise _invalid(field, "an ISO 8601 date or date-time, e.g. 2026-12-01T00:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def history_window(
    granularity: str | None, start: str | None, end: str | None, *, now: datetime | None = None
) -> HistoryWindow:
    """The window an API call asks for; the defaults are the last 24 hours (hours) or the last 30 days (days).

    Raises:
        InvalidInputError: 422 ``invalid_usage_window`` for a granularity other than ``hour``/``day``, a time that is
            not ISO 8601, ``from`` after ``to``, or more than :data:`MAX_BUCKETS` buckets.
    """
    chosen = granularity or "hour"
    if chosen not in ("hour", "day"):
        raise _invalid("granularity", "hour or day")
    try:
        last = _floor(_parse("to", end) or (now or utcnow()), chosen)
        parsed_start = _parse("from", start)
        first = _floor(parsed_start, chosen) if parsed_start else last - _STEP[chosen] * (DEFAULT_BUCKETS[chosen] - 1)
    except OverflowError:
        raise _invalid("from", "a date between the years 1 and 9999") from None
    if first > last:
        raise _invalid("from", "must not be after 'to'")
    if (last - first) // _STEP[chosen] + 1 > MAX_BUCKETS[chosen]:
        raise _invalid("from", f"at most {MAX_BUCKETS[chosen]} buckets of a {chosen} in one answer")
    return HistoryWindow(granularity="hour" if chosen == "hour" else "day", start=first, end=last)


async def usage_history(ctx: AppContext, tenant_id: uuid.UUID | str, window: HistoryWindow) -> list[UsageBucket]:
    """Every bucket of the window, oldest first, zeros where nothing was counted."""
    tid = uuid.UUID(str(tenant_id))
    step = _STEP[window.granularity]
    starts = (window.start + step * index for index in range((window.end - window.start) // step + 1))
    buckets = {moment: UsageBucket(start=moment, requests=0, rejected=0) for moment in starts}
    async with ctx.sessions() as session:
        if window.granularity == "hour":
            rows = await session.execute(
                select(UsageHourly.hour, UsageHourly.requests, UsageHourly.rejected).where(
                    UsageHourly.tenant_id == tid, UsageHourly.hour >= window.start, UsageHourly.hour <= window.end
                )
            )
            for hour, requests, rejected in rows.all():
                bucket = buckets.get(hour.astimezone(UTC))
                if bucket is not None:
                    bucket.requests, bucket.rejected = requests, rejected
        else:
            first_day: date = window.start.date()
            last_day: date = window.end.date()
            day_rows = await session.execute(
                select(UsageDaily.day, UsageDaily.requests, UsageDaily.rejected, UsageDaily.database_bytes).where(
                    UsageDaily.tenant_id == tid, UsageDaily.day >= first_day, UsageDaily.day <= last_day
                )
            )
            for day, requests, rejected, size in day_rows.all():
                bucket = buckets.get(datetime.combine(day, time(), UTC))
                if bucket is not None:
                    bucket.requests, bucket.rejected, bucket.database_bytes = requests, rejected, size
    return list(buckets.values())
