"""Usage history (contract §13): what a gateway sends the tenant-service when it flushes its request counters.

``POST /internal/v1/usage`` (service token with the ``usage:write`` scope) takes a :class:`UsageBatch` and answers
:class:`UsageAck`. A batch carries a random ``batch_id``; the tenant-service records the id in the same transaction
as the counts, so a batch sent again (its answer was lost, the service died after committing) is acknowledged and
counts nothing (``duplicate: true``). The gateway keeps a batch, unchanged and under the same id, until it is
acknowledged. docs/usage.md tells the whole story.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

#: The internal API's path for usage batches.
USAGE_PATH: Final = "/internal/v1/usage"
#: Most counts in one batch: 250 of them are about 25 KB of JSON, well below the tenant-service's body limit.
MAX_BATCH_COUNTS: Final = 250
#: Seconds in an hour bucket; ``hour`` is the Unix time of the bucket's start, a multiple of it.
HOUR_SECONDS: Final = 3600

_Count = Annotated[int, msgspec.Meta(ge=0, le=10**12)]


class UsageCount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One tenant's requests in one hour, as counted by one gateway worker since its last batch."""

    tenant_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    hour: Annotated[int, msgspec.Meta(ge=0, le=2**40, description="Unix time of the hour's start (UTC)")]
    requests: _Count
    """Requests the quota let through (served)."""
    rejected: _Count
    """Requests refused by the quota (429 ``rate_limited`` or ``quota_exceeded``)."""


class UsageBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A gateway worker's flush: counts under an id that makes retrying it harmless."""

    batch_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    counts: Annotated[list[UsageCount], msgspec.Meta(max_length=MAX_BATCH_COUNTS)]


class UsageAck(msgspec.Struct, frozen=True):
    """The tenant-service's answer: the batch is recorded (now, or already before when ``duplicate``)."""

    batch_id: str
    duplicate: bool


decode_usage_ack = msgspec.json.Decoder(UsageAck).decode
"""Parse the endpoint's JSON answer."""
