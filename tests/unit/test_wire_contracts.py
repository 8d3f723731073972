"""The wire contracts between the processes, and the merged limits they carry: each defined once, in tenantry_common,
and used by both ends."""

from __future__ import annotations

import msgspec
import pytest

import tenantry_app
from tenant_service.internal import service as vending
from tenant_service.provisioning.provisioner import DEFAULT_CONNECTION_LIMIT, connection_limit
from tenantry_common import redis_keys
from tenantry_common.events import EVENTS_CHANNEL, ChangeEvent, decode_event, encode_event
from tenantry_common.internal_api import DatabaseCredentials, decode_database_credentials
from tenantry_common.limits import merged_limits

# --------------------------------------------------------------------------- credential vending


def test_vending_and_the_app_library_share_one_credentials_shape() -> None:
    assert vending.DatabaseCredentials is DatabaseCredentials
    assert tenantry_app.DatabaseCredentials is DatabaseCredentials


def test_credentials_the_tenant_service_sends_are_what_the_app_reads() -> None:
    sent = DatabaseCredentials(host="db", port=5432, database="tenant_acme", user="tenant_acme", password="pw")
    wire = msgspec.json.encode(sent)
    assert msgspec.json.decode(wire) == {
        "host": "db", "port": 5432, "database": "tenant_acme", "user": "tenant_acme", "password": "pw"
    }  # fmt: skip
    assert decode_database_credentials(wire) == sent


@pytest.mark.parametrize(
    "body",
    [
        b'{"host": "db", "port": 5432, "database": "d", "user": "u"}',
        b'{"host": "db", "port": "5432", "database": "d", "user": "u", "password": "p"}',
        b"<html>proxy error</html>",
    ],
)
def test_an_answer_of_another_shape_is_refused(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_database_credentials(body)


def test_credentials_never_show_their_password_in_a_repr() -> None:
    creds = DatabaseCredentials(host="db", port=5432, database="d", user="u", password="Sup3r-Secret")
    assert "Sup3r-Secret" not in repr(creds)
    assert "host='db'" in repr(creds)


# --------------------------------------------------------------------------- change events


def test_events_go_out_on_the_platform_channel() -> None:
    assert EVENTS_CHANNEL == redis_keys.EVENTS_CHANNEL == "tenantry:events"


def test_the_event_payload_is_the_documented_json() -> None:
    tenant_id = "6f1c1a8e-2c4b-4c55-9c11-6b1a8d6c3e01"
    assert msgspec.json.decode(encode_event("tenant.changed", tenant_id=tenant_id)) == {
        "kind": "tenant.changed", "tenant_id": tenant_id, "plan": None
    }  # fmt: skip
    assert msgspec.json.decode(encode_event("plan.changed", plan="pro")) == {
        "kind": "plan.changed", "tenant_id": None, "plan": "pro"
    }  # fmt: skip


def test_a_purge_event_names_the_tenant_whose_engine_an_app_drops() -> None:
    tenant_id = "6f1c1a8e-2c4b-4c55-9c11-6b1a8d6c3e01"
    assert decode_event(encode_event("tenant.purged", tenant_id=tenant_id)).purged_tenant() == tenant_id
    assert decode_event(encode_event("tenant.changed", tenant_id=tenant_id)).purged_tenant() is None
    assert decode_event(encode_event("plan.changed", plan="pro")).purged_tenant() is None


def test_an_event_from_a_newer_tenant_service_still_decodes() -> None:
    # A rolling upgrade: a kind or a field this version does not know is ignored, not an error.
    event = decode_event(b'{"kind": "tenant.moved", "tenant_id": "t1", "server": "b", "plan": null}')
    assert event == ChangeEvent(kind="tenant.moved", tenant_id="t1")
    assert event.purged_tenant() is None


@pytest.mark.parametrize("payload", [b"", b"subscribe", b'{"tenant_id": "t1"}', b'{"kind": 3}'])
def test_something_that_is_not_an_event_is_refused(payload: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_event(payload)


# --------------------------------------------------------------------------- merged limits

FREE = {"requests_per_minute": 600, "requests_per_day": 50_000, "max_connections": 5}


def test_a_tenant_without_overrides_has_its_plans_limits() -> None:
    assert merged_limits(FREE, {}) == FREE


def test_a_tenants_override_wins_over_its_plan() -> None:
    assert merged_limits(FREE, {"requests_per_minute": 10}) == {**FREE, "requests_per_minute": 10}


def test_an_override_of_a_limit_the_plan_lacks_is_added() -> None:
    assert merged_limits({"requests_per_day": 100}, {"max_connections": 2}) == {
        "requests_per_day": 100,
        "max_connections": 2,
    }


def test_only_integers_are_limits() -> None:
    plan = {**FREE, "alert_thresholds": [0.8, 1.0], "placement_labels": {"zone": "a"}, "backup_interval_hours": 24}
    assert merged_limits(plan, {}) == {**FREE, "backup_interval_hours": 24}
    assert merged_limits({"requests_per_day": 100, "flag": True}, {"requests_per_minute": 1.5}) == {
        "requests_per_day": 100
    }


def test_an_override_that_is_not_an_integer_hides_the_plans_value() -> None:
    assert merged_limits(FREE, {"max_connections": "9"}) == {k: v for k, v in FREE.items() if k != "max_connections"}


def test_merging_changes_neither_input() -> None:
    plan, overrides = dict(FREE), {"max_connections": 1}
    merged_limits(plan, overrides)
    assert plan == FREE
    assert overrides == {"max_connections": 1}


def test_the_roles_connection_limit_is_the_merged_max_connections() -> None:
    assert connection_limit(FREE, {}) == 5
    assert connection_limit(FREE, {"max_connections": 3}) == 3
    assert connection_limit({}, {"max_connections": 3}) == 3
    assert connection_limit({"requests_per_day": 1}, {}) == DEFAULT_CONNECTION_LIMIT
    assert connection_limit(FREE, {"max_connections": "3"}) == DEFAULT_CONNECTION_LIMIT
