"""The cutover hold: how the tenant-service and the gateways agree that a tenant's traffic has stopped.

While a tenant's database is switched (a restore, a move), the tenant-service sets a hold on the tenant: a new
random hold id in the registry, shown in the directory feed (``DirectoryTenant.hold``) and announced with a change
event. Every gateway worker then holds the tenant's new requests, waits for the ones in flight to finish, and
acknowledges: ``HSET tenantry:hold:<hold id> <instance> 1``. The tenant-service switches once every *live* worker
has acknowledged. A worker is live while it heartbeats: it adds itself every :data:`HEARTBEAT_SECONDS` to the
sorted set ``tenantry:gateways:<installation id>`` scored with the Redis server's clock (so no two hosts' clocks
are compared), and counts as gone :data:`LIVE_SECONDS` after its last heartbeat. The set is per installation (the
registry's id, which the directory feed carries) because installations may share one Redis.

Both sides keep the same rules from here; each reads ``CUTOVER_HOLD_SECONDS`` in its own settings.
"""

from __future__ import annotations

from typing import Final

from tenantry_common.settings import ConfigError

#: ``CUTOVER_HOLD_SECONDS`` when unset: the longest a gateway holds a request (and the tenant-service waits).
DEFAULT_HOLD_SECONDS: Final = 5.0
#: The bounds of ``CUTOVER_HOLD_SECONDS``: a hold is a pause of seconds, shorter than an acknowledgement lives.
MIN_HOLD_SECONDS: Final = 0.1
MAX_HOLD_SECONDS: Final = 60.0
#: How often a gateway worker heartbeats.
HEARTBEAT_SECONDS: Final = 1.0
#: A worker whose last heartbeat is older than this is not waited for (three missed heartbeats).
LIVE_SECONDS: Final = 3.0
#: Heartbeats older than this are pruned from the set (and the set itself expires when nobody heartbeats).
HEARTBEAT_KEEP_SECONDS: Final = 60
#: Lifetime of a hold's acknowledgements: longer than any hold.
ACK_TTL_SECONDS: Final = int(2 * MAX_HOLD_SECONDS)

HEARTBEAT_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
"""A worker's heartbeat, stamped with the Redis server's clock. KEYS: the gateways set. ARGV: the worker's instance
id, :data:`HEARTBEAT_KEEP_SECONDS`. One key, so it runs on Redis Cluster too."""


def checked_hold_seconds(value: float) -> float:
    """``CUTOVER_HOLD_SECONDS`` as read by a service, within its bounds.

    Raises:
        ConfigError: above :data:`MAX_HOLD_SECONDS` (the lower bound is the reader's ``minimum``).
    """
    if value > MAX_HOLD_SECONDS:
        raise ConfigError(f"CUTOVER_HOLD_SECONDS must be at most {MAX_HOLD_SECONDS:g}, got {value:g}")
    return value
