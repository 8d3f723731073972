"""Several PostgreSQL servers (contract §11): EXTRA_DATABASE_SERVERS, server passwords kept apart from their URL,
and the names of a move's replication objects and stand-ins."""

from __future__ import annotations

import re
import uuid

import pytest

from tenant_service.config import ServerSettings, _extra_servers
from tenant_service.provisioning.names import tenant_object_name
from tenant_service.servers.moves import REPLICATION_PREFIX, replication_name, stand_in_name, walsender_name
from tenant_service.servers.pool import split_password, with_password
from tenantry_common.settings import ConfigError


def test_extra_servers_are_name_url_pairs_separated_by_semicolons() -> None:
    spec = "eu=postgresql://admin:p%3Bw@eu-db:5432/postgres; us=postgres://u@us-db/postgres ;"
    assert _extra_servers(spec) == (
        ("eu", "postgresql://admin:p%3Bw@eu-db:5432/postgres"),
        ("us", "postgres://u@us-db/postgres"),
    )
    assert _extra_servers(None) == ()
    assert ServerSettings().default_capacity == 2000


@pytest.mark.parametrize(
    "spec",
    [
        "default=postgresql://h/postgres",  # the name of TENANT_DATABASE_URL's server
        "EU=postgresql://h/postgres",
        "eu",
        "eu=mysql://h/db",
        "eu=postgresql://a/postgres;eu=postgresql://b/postgres",
    ],
)
def test_bad_extra_servers_stop_the_service(spec: str) -> None:
    with pytest.raises(ConfigError):
        _extra_servers(spec)


@pytest.mark.parametrize(
    ("url", "bare", "password"),
    [
        ("postgresql://admin:s3cr%40t@db:5432/postgres", "postgresql://admin@db:5432/postgres", "s3cr@t"),
        ("postgresql://admin@db/postgres?sslmode=require", "postgresql://admin@db/postgres?sslmode=require", None),
        ("postgresql+asyncpg://a:b@[::1]:5433/postgres", "postgresql://a@[::1]:5433/postgres", "b"),
    ],
)
def test_the_password_is_kept_apart_from_the_url_and_put_back(url: str, bare: str, password: str | None) -> None:
    assert split_password(url) == (bare, password)
    again = with_password(bare, password)
    assert split_password(again) == (bare, password)


def test_move_objects_are_named_after_the_operation_and_never_like_a_tenants() -> None:
    op = uuid.UUID("0123456789abcdef0123456789abcdef")
    assert replication_name(op) == f"{REPLICATION_PREFIX}{op.hex}"
    assert len(replication_name(op)) <= 63
    stand_in, walsender = stand_in_name("tenant_", op), walsender_name("tenant_", op)
    assert len(walsender) <= 63
    assert walsender == stand_in + "_r"
    # A tenant's role is prefix + slug + "_" + 12 hex digits; a stand-in's suffix has no "_" in its 32 hex digits.
    tenant = tenant_object_name("tenant_", "mv-0123456789abcdef01", op)
    assert not re.fullmatch(r"tenant_mv_[0-9a-f]{32}(_r)?", tenant)
