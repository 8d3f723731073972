"""Renamed settings: REDIS_TIMEOUT and MAX_REQUEST_BODY_BYTES became one name per service.

The new names work; the old ones still do for one release, with a logged ``setting_deprecated`` warning; when
both are set the new name wins (and the warning says the old one is ignored).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from gateway.config import GatewaySettings
from tenant_service.config import Settings
from tenantry_common.logging import configure_logging
from tenantry_common.settings import (
    DeprecatedSetting,
    deprecated_settings_in_use,
    env_float,
    env_name,
    log_deprecated_settings,
)

RENAMED = (
    "REDIS_TIMEOUT",
    "MAX_REQUEST_BODY_BYTES",
    "TENANT_SERVICE_REDIS_TIMEOUT",
    "TENANT_SERVICE_MAX_REQUEST_BODY_BYTES",
    "GATEWAY_REDIS_TIMEOUT",
    "GATEWAY_MAX_REQUEST_BODY_BYTES",
)


def _forget_deprecations() -> None:
    with structlog.testing.capture_logs():
        log_deprecated_settings()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No renamed variable set, and no deprecation left over from another test (nor left for the next one)."""
    for name in (*RENAMED, "T_NEW", "T_OLD"):
        monkeypatch.delenv(name, raising=False)
    _forget_deprecations()
    yield monkeypatch
    _forget_deprecations()


def _deprecation_logs() -> list[dict[str, Any]]:
    with structlog.testing.capture_logs() as logs:
        log_deprecated_settings()
    return logs


def _tenant_service(env: pytest.MonkeyPatch, **values: str) -> Settings:
    required = {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db", "ADMIN_TOKEN": "admin-token-0123456789",
                "ENCRYPTION_KEYS": "k1:x", "API_KEY_HASH_SECRET": "s"}  # fmt: skip
    for name, value in {**required, **values}.items():
        env.setenv(name, value)
    return Settings.from_env()


def _gateway(env: pytest.MonkeyPatch, **values: str) -> GatewaySettings:
    required = {"GATEWAY_SERVICE_TOKEN": "svc", "REDIS_URL": "redis://127.0.0.1:1/0", "API_KEY_HASH_SECRET": "s",
                "JWT_SIGNING_KEYS": "k1:x"}  # fmt: skip
    for name, value in {**required, **values}.items():
        env.setenv(name, value)
    return GatewaySettings.from_env()


# --------------------------------------------------------------------------- the helper


def test_the_new_name_is_read_when_neither_is_set(env: pytest.MonkeyPatch) -> None:
    assert env_name("T_NEW", deprecated="T_OLD") == "T_NEW"
    assert deprecated_settings_in_use() == ()


def test_the_new_name_is_read_without_a_warning(env: pytest.MonkeyPatch) -> None:
    env.setenv("T_NEW", "2")
    assert env_float(env_name("T_NEW", deprecated="T_OLD"), 1.0) == 2.0
    assert _deprecation_logs() == []


def test_the_old_name_is_still_read_with_a_warning(env: pytest.MonkeyPatch) -> None:
    env.setenv("T_OLD", "3")
    assert env_float(env_name("T_NEW", deprecated="T_OLD"), 1.0) == 3.0
    assert deprecated_settings_in_use() == (DeprecatedSetting(old="T_OLD", new="T_NEW", ignored=False),)
    [warning] = _deprecation_logs()
    assert warning["event"] == "setting_deprecated"
    assert warning["log_level"] == "warning"
    assert (warning["variable"], warning["replacement"], warning["ignored"]) == ("T_OLD", "T_NEW", False)
    assert warning["detail"] == "T_OLD is deprecated and will not be read in the next release; rename it to T_NEW"


def test_the_new_name_wins_and_the_warning_says_the_old_one_is_ignored(env: pytest.MonkeyPatch) -> None:
    env.setenv("T_OLD", "3")
    env.setenv("T_NEW", "2")
    assert env_float(env_name("T_NEW", deprecated="T_OLD"), 1.0) == 2.0
    [warning] = _deprecation_logs()
    assert warning["ignored"] is True
    assert warning["detail"] == "T_OLD is ignored because T_NEW is set; remove T_OLD"


def test_an_empty_variable_counts_as_unset(env: pytest.MonkeyPatch) -> None:
    env.setenv("T_OLD", "")
    assert env_name("T_NEW", deprecated="T_OLD") == "T_NEW"
    env.setenv("T_OLD", "3")
    env.setenv("T_NEW", "")
    assert env_name("T_NEW", deprecated="T_OLD") == "T_OLD"


def test_each_deprecation_is_logged_once_however_often_settings_are_read(env: pytest.MonkeyPatch) -> None:
    env.setenv("T_OLD", "3")
    for _ in range(3):
        env_name("T_NEW", deprecated="T_OLD")
    assert len(_deprecation_logs()) == 1
    assert _deprecation_logs() == []


def test_an_invalid_value_is_reported_under_the_name_it_was_read_from(env: pytest.MonkeyPatch) -> None:
    env.setenv("T_OLD", "soon")
    with pytest.raises(ValueError, match="T_OLD must be a number"):
        env_float(env_name("T_NEW", deprecated="T_OLD"), 1.0)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_config = structlog.get_config()
    yield
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    structlog.configure(**saved_config)


def test_configured_logging_says_which_deprecated_names_were_read(
    env: pytest.MonkeyPatch, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Settings are read before logging is configured (they say how): the warning comes out in the service's format.
    env.setenv("REDIS_TIMEOUT", "0.7")
    settings = _gateway(env)
    configure_logging("gateway", fmt="json", level="INFO")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [(line["event"], line["level"], line["service"], line["variable"]) for line in lines] == [
        ("setting_deprecated", "warning", "gateway", "REDIS_TIMEOUT")
    ]
    assert lines[0]["replacement"] == "GATEWAY_REDIS_TIMEOUT"
    assert settings.redis_timeout == 0.7


# --------------------------------------------------------------------------- the tenant-service


def test_tenant_service_reads_its_own_names(env: pytest.MonkeyPatch) -> None:
    settings = _tenant_service(env, TENANT_SERVICE_REDIS_TIMEOUT="0.7", TENANT_SERVICE_MAX_REQUEST_BODY_BYTES="2048")
    assert (settings.redis_timeout, settings.http.max_body_bytes) == (0.7, 2048)
    assert _deprecation_logs() == []


def test_tenant_service_still_reads_the_old_names_with_a_warning(env: pytest.MonkeyPatch) -> None:
    settings = _tenant_service(env, REDIS_TIMEOUT="0.7", MAX_REQUEST_BODY_BYTES="2048")
    assert (settings.redis_timeout, settings.http.max_body_bytes) == (0.7, 2048)
    assert {(w["variable"], w["replacement"], w["ignored"]) for w in _deprecation_logs()} == {
        ("REDIS_TIMEOUT", "TENANT_SERVICE_REDIS_TIMEOUT", False),
        ("MAX_REQUEST_BODY_BYTES", "TENANT_SERVICE_MAX_REQUEST_BODY_BYTES", False),
    }


def test_tenant_service_new_names_win_over_the_old(env: pytest.MonkeyPatch) -> None:
    settings = _tenant_service(
        env, REDIS_TIMEOUT="9", MAX_REQUEST_BODY_BYTES="999999",
        TENANT_SERVICE_REDIS_TIMEOUT="0.7", TENANT_SERVICE_MAX_REQUEST_BODY_BYTES="2048",
    )  # fmt: skip
    assert (settings.redis_timeout, settings.http.max_body_bytes) == (0.7, 2048)
    assert {(w["variable"], w["ignored"]) for w in _deprecation_logs()} == {
        ("REDIS_TIMEOUT", True),
        ("MAX_REQUEST_BODY_BYTES", True),
    }


def test_tenant_service_defaults_are_unchanged(env: pytest.MonkeyPatch) -> None:
    settings = _tenant_service(env)
    assert (settings.redis_timeout, settings.http.max_body_bytes) == (0.5, 64 * 1024)


# --------------------------------------------------------------------------- the gateway


def test_gateway_reads_its_own_names(env: pytest.MonkeyPatch) -> None:
    settings = _gateway(env, GATEWAY_REDIS_TIMEOUT="2", GATEWAY_MAX_REQUEST_BODY_BYTES="1000")
    assert (settings.redis_timeout, settings.max_body_bytes) == (2.0, 1000)
    assert _deprecation_logs() == []


def test_gateway_still_reads_the_old_names_with_a_warning(env: pytest.MonkeyPatch) -> None:
    settings = _gateway(env, REDIS_TIMEOUT="2", MAX_REQUEST_BODY_BYTES="1000")
    assert (settings.redis_timeout, settings.max_body_bytes) == (2.0, 1000)
    assert {(w["variable"], w["replacement"], w["ignored"]) for w in _deprecation_logs()} == {
        ("REDIS_TIMEOUT", "GATEWAY_REDIS_TIMEOUT", False),
        ("MAX_REQUEST_BODY_BYTES", "GATEWAY_MAX_REQUEST_BODY_BYTES", False),
    }


def test_gateway_new_names_win_over_the_old(env: pytest.MonkeyPatch) -> None:
    settings = _gateway(
        env, REDIS_TIMEOUT="9", MAX_REQUEST_BODY_BYTES="999999",
        GATEWAY_REDIS_TIMEOUT="2", GATEWAY_MAX_REQUEST_BODY_BYTES="1000",
    )  # fmt: skip
    assert (settings.redis_timeout, settings.max_body_bytes) == (2.0, 1000)
    assert {(w["variable"], w["ignored"]) for w in _deprecation_logs()} == {
        ("REDIS_TIMEOUT", True),
        ("MAX_REQUEST_BODY_BYTES", True),
    }


def test_gateway_defaults_are_unchanged(env: pytest.MonkeyPatch) -> None:
    settings = _gateway(env)
    assert (settings.redis_timeout, settings.max_body_bytes) == (0.25, 10 * 1024 * 1024)


def test_one_environment_gives_each_service_its_own_values(env: pytest.MonkeyPatch) -> None:
    # What the renaming is for: `make dev` and a shared .env hand both services one environment.
    values = {"TENANT_SERVICE_REDIS_TIMEOUT": "0.7", "GATEWAY_REDIS_TIMEOUT": "2",
              "TENANT_SERVICE_MAX_REQUEST_BODY_BYTES": "2048", "GATEWAY_MAX_REQUEST_BODY_BYTES": "1000"}  # fmt: skip
    service, gateway = _tenant_service(env, **values), _gateway(env, **values)
    assert (service.redis_timeout, service.http.max_body_bytes) == (0.7, 2048)
    assert (gateway.redis_timeout, gateway.max_body_bytes) == (2.0, 1000)
