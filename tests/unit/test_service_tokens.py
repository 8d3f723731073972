"""SERVICE_TOKENS / SERVICE_TOKEN / GATEWAY_SERVICE_TOKEN and SERVICE_TOKEN_SCOPES: which token holds which scope."""

from __future__ import annotations

import pytest

from tenant_service.config import GATEWAY_SCOPES, ServiceToken, service_tokens_from_env
from tenant_service.internal.scopes import (
    CREDENTIALS_VEND,
    DIRECTORY_READ,
    SERVICE_SCOPES,
    USAGE_WRITE,
    USERS_AUTHENTICATE,
)
from tenantry_common.settings import ConfigError

VARIABLES = ("SERVICE_TOKENS", "SERVICE_TOKEN", "GATEWAY_SERVICE_TOKEN", "SERVICE_TOKEN_SCOPES")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_deployed_shape_gives_each_app_only_its_scope(env: pytest.MonkeyPatch) -> None:
    env.setenv("SERVICE_TOKEN", "notes-token-0123456789")
    env.setenv("GATEWAY_SERVICE_TOKEN", "gateway-token-0123456789")
    env.setenv("SERVICE_TOKEN_SCOPES", "app=credentials:vend")
    assert service_tokens_from_env()[0] == {
        "app": ServiceToken("notes-token-0123456789", frozenset({CREDENTIALS_VEND})),
        "gateway": ServiceToken(
            "gateway-token-0123456789", frozenset({DIRECTORY_READ, USERS_AUTHENTICATE, USAGE_WRITE})
        ),
    }


def test_scopes_join_with_plus_and_entries_with_commas(env: pytest.MonkeyPatch) -> None:
    env.setenv("SERVICE_TOKENS", "ops:ops-token,notes:notes-token,crawler:crawler-token")
    env.setenv(
        "SERVICE_TOKEN_SCOPES",
        " ops = directory:read + credentials:vend , notes=credentials:vend,crawler=directory:read",
    )
    tokens, unused = service_tokens_from_env()
    assert unused == ()
    assert {name: t.scopes for name, t in tokens.items()} == {
        "ops": frozenset({DIRECTORY_READ, CREDENTIALS_VEND}),
        "notes": frozenset({CREDENTIALS_VEND}),
        "crawler": frozenset({DIRECTORY_READ}),
    }
    assert not any(t.legacy for t in tokens.values())


def test_unscoped_tokens_are_legacy_and_hold_every_scope(env: pytest.MonkeyPatch) -> None:
    env.setenv("SERVICE_TOKENS", "old:old-token")
    env.setenv("SERVICE_TOKEN", "app-token")
    tokens, unused = service_tokens_from_env()
    assert unused == ()
    assert tokens == {
        "old": ServiceToken("old-token", SERVICE_SCOPES, legacy=True),
        "app": ServiceToken("app-token", SERVICE_SCOPES, legacy=True),
    }


def test_the_gateway_token_may_be_given_other_scopes(env: pytest.MonkeyPatch) -> None:
    env.setenv("GATEWAY_SERVICE_TOKEN", "gateway-token")
    env.setenv("SERVICE_TOKEN_SCOPES", "gateway=directory:read+credentials:vend")
    assert service_tokens_from_env()[0]["gateway"].scopes == {DIRECTORY_READ, CREDENTIALS_VEND}


def test_a_gateway_entry_equal_to_gateway_service_token_is_the_same_token(env: pytest.MonkeyPatch) -> None:
    env.setenv("SERVICE_TOKENS", "gateway:gateway-token")
    env.setenv("GATEWAY_SERVICE_TOKEN", "gateway-token")
    assert service_tokens_from_env()[0] == {"gateway": ServiceToken("gateway-token", GATEWAY_SCOPES)}


def test_no_service_token_at_all_is_allowed(env: pytest.MonkeyPatch) -> None:
    assert service_tokens_from_env()[0] == {}


def test_scopes_for_a_name_without_a_token_grant_nothing_and_are_reported(env: pytest.MonkeyPatch) -> None:
    env.setenv("GATEWAY_SERVICE_TOKEN", "gateway-token")
    env.setenv("SERVICE_TOKEN_SCOPES", "app=credentials:vend,gatewy=credentials:vend")
    tokens, unused = service_tokens_from_env()
    assert tokens == {"gateway": ServiceToken("gateway-token", GATEWAY_SCOPES)}
    assert unused == ("app", "gatewy")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"SERVICE_TOKEN": "t", "SERVICE_TOKEN_SCOPES": "app"}, "entries must look like name=scope+scope"),
        ({"SERVICE_TOKEN": "t", "SERVICE_TOKEN_SCOPES": "app="}, "entries must look like name=scope+scope"),
        ({"SERVICE_TOKEN": "t", "SERVICE_TOKEN_SCOPES": "=credentials:vend"}, "entries must look like"),
        ({"SERVICE_TOKEN": "t", "SERVICE_TOKEN_SCOPES": "app=credentials:vend+admin"}, "unknown scope 'admin'"),
        ({"SERVICE_TOKEN": "t", "SERVICE_TOKEN_SCOPES": "app=directory:write"}, "known scopes: credentials:vend"),
        (
            {"SERVICE_TOKEN": "t", "SERVICE_TOKEN_SCOPES": "app=credentials:vend,app=directory:read"},
            "names 'app' twice",
        ),
        ({"SERVICE_TOKEN": "same", "GATEWAY_SERVICE_TOKEN": "same"}, "'app' and 'gateway' are the same token"),
        ({"SERVICE_TOKENS": "a:same,b:same"}, "'a' and 'b' are the same token"),
        ({"SERVICE_TOKENS": "gateway:one", "GATEWAY_SERVICE_TOKEN": "two"}, "'gateway' entry that is not"),
        ({"SERVICE_TOKENS": "notoken"}, "SERVICE_TOKENS entries must look like name:token"),
    ],
)
def test_a_misconfiguration_stops_the_start_with_a_message(
    env: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        service_tokens_from_env()
