"""The gateway's usage counter (gateway/usage.py): per tenant and hour, served and rejected, bounded; and the
``USAGE_FLUSH_SECONDS`` bounds. The flushes themselves run against a real tenant-service in
tests/integration/test_gateway_usage_flush.py and end to end in tests/e2e/test_usage_history.py."""

from __future__ import annotations

import pytest

from gateway.config import GatewaySettings
from gateway.usage import DROPPED, UsageCounter
from tenantry_common.settings import ConfigError
from tenantry_common.usage_api import UsageCount

HOUR = 3600
T0 = 1_764_000_000 // HOUR * HOUR


def test_counts_are_kept_per_tenant_and_hour() -> None:
    counter = UsageCounter()
    for _ in range(3):
        counter.served("a", T0 + 5)
    counter.rejected("a", T0 + 10)
    counter.served("b", T0 + HOUR - 1)
    counter.served("a", T0 + HOUR)  # the next hour
    counter.rejected("a", T0 + 20)  # a late request of the hour before still lands in it
    assert counter.buckets == 3
    taken = sorted(counter.take(), key=lambda c: (c.tenant_id, c.hour))
    assert taken == [
        UsageCount(tenant_id="a", hour=T0, requests=3, rejected=2),
        UsageCount(tenant_id="a", hour=T0 + HOUR, requests=1, rejected=0),
        UsageCount(tenant_id="b", hour=T0, requests=1, rejected=0),
    ]
    assert counter.take() == []
    assert counter.buckets == 0
    counter.served("a", T0 + 30)
    assert counter.take() == [UsageCount(tenant_id="a", hour=T0, requests=1, rejected=0)]


def test_a_full_counter_drops_new_buckets_and_counts_the_drop() -> None:
    counter = UsageCounter(max_buckets=2)
    counter.served("a", T0)
    counter.served("b", T0)
    before = DROPPED._value.get()
    counter.served("c", T0)
    counter.rejected("c", T0 + HOUR)
    counter.served("a", T0 + 1)  # an existing bucket still counts
    assert DROPPED._value.get() == before + 2
    assert {(c.tenant_id, c.requests) for c in counter.take()} == {("a", 2), ("b", 1)}


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> GatewaySettings:
    required = {"SERVICE_TOKEN": "svc", "REDIS_URL": "redis://127.0.0.1:1/0", "API_KEY_HASH_SECRET": "s",
                "JWT_SIGNING_KEYS": "k1:x"}  # fmt: skip
    monkeypatch.delenv("USAGE_FLUSH_SECONDS", raising=False)
    for name, value in {**required, **env}.items():
        monkeypatch.setenv(name, value)
    return GatewaySettings.from_env()


def test_the_flush_interval_is_30_seconds_and_at_most_60(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(monkeypatch).usage_flush_seconds == 30.0
    assert _settings(monkeypatch, USAGE_FLUSH_SECONDS="60").usage_flush_seconds == 60.0
    for bad in ("61", "0", "soon"):
        with pytest.raises(ConfigError, match="USAGE_FLUSH_SECONDS"):
            _settings(monkeypatch, USAGE_FLUSH_SECONDS=bad)
