"""tenantry_common: the facts both services share (slugs, API keys, Redis keys, problems, logging, settings)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import uuid
import zlib
from collections.abc import Iterator

import msgspec
import pytest
import structlog

from tenantry_common import apikeys, redis_keys
from tenantry_common.addresses import reads_as_ipv4
from tenantry_common.logging import REDACTED, configure_logging, redact_processor, redact_value
from tenantry_common.problems import (
    PROBLEM_MEDIA_TYPE,
    BadRequestError,
    ConflictError,
    FieldError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    ProblemError,
    UnauthorizedError,
    UnavailableError,
    problem_bytes,
    problem_document,
)
from tenantry_common.request_ids import new_request_id, safe_request_id
from tenantry_common.settings import (
    ConfigError,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_opt,
    env_str,
    load_dotenv,
    named_tokens,
)
from tenantry_common.slugs import RESERVED_SLUGS, is_valid_slug, slug_problem

# --------------------------------------------------------------------------- slugs


@pytest.mark.parametrize(
    "slug",
    ["acme", "abc", "a1b", "acme-corp", "a-b-c", "x" * 32, "tenant42", "a0-9z"],
)
def test_valid_slugs_are_accepted(slug: str) -> None:
    assert slug_problem(slug) is None
    assert is_valid_slug(slug)


@pytest.mark.parametrize(
    ("slug", "reason"),
    [
        ("", "characters long"),
        ("ab", "characters long"),
        ("x" * 33, "characters long"),
        ("Acme", "lowercase"),
        ("1acme", "lowercase"),
        ("-acme", "lowercase"),
        ("acme-", "lowercase"),
        ("ac_me", "lowercase"),
        ("ac.me", "lowercase"),
        ("ac me", "lowercase"),
        ("acmé", "lowercase"),
        ("ac--me", "'--'"),
    ],
)
def test_invalid_slugs_say_why(slug: str, reason: str) -> None:
    problem = slug_problem(slug)
    assert problem is not None
    assert reason in problem
    assert not is_valid_slug(slug)


@pytest.mark.parametrize(
    "slug", ["www", "api", "admin", "app", "gateway", "internal", "template", "postgres", "public", "root"]
)
def test_contract_reserved_slugs_are_refused(slug: str) -> None:
    assert slug in RESERVED_SLUGS
    assert slug_problem(slug) == "is reserved"


def test_every_reserved_slug_is_refused() -> None:
    for slug in RESERVED_SLUGS:
        assert not is_valid_slug(slug), slug


# --------------------------------------------------------------------------- API keys

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _reference_checksum(body: str) -> str:
    """An independent implementation of the documented checksum: CRC-32 of the body, 6 base62 digits."""
    number = zlib.crc32(body.encode("ascii"))
    digits = ""
    for _ in range(6):
        number, rem = divmod(number, 62)
        digits = _BASE62[rem] + digits
    return digits


def test_generated_key_has_the_documented_format() -> None:
    key = apikeys.generate_api_key()
    assert key.startswith("tk_")
    assert len(key) == apikeys.API_KEY_LENGTH == 3 + 32 + 6
    assert set(key[3:]) <= set(_BASE62)
    assert key[-6:] == _reference_checksum(key[3:-6])
    assert apikeys.is_well_formed(key)
    assert apikeys.looks_like_api_key(key)


def test_generated_keys_are_unique_and_random() -> None:
    keys = {apikeys.generate_api_key() for _ in range(2000)}
    assert len(keys) == 2000
    # Every base62 character turns up in the random part: nothing is biased out of the alphabet.
    assert set("".join(k[3:35] for k in keys)) == set(_BASE62)


def test_known_key_vector() -> None:
    body = "0123456789abcdefghijABCDEFGHIJxy"
    key = "tk_" + body + _reference_checksum(body)
    assert apikeys.is_well_formed(key)
    assert apikeys.display_prefix(key) == "tk_01234567"


def test_every_single_character_change_breaks_the_checksum() -> None:
    key = apikeys.generate_api_key()
    for position in range(3, len(key)):
        for replacement in ("0", "Z", "z"):
            if key[position] == replacement:
                continue
            typo = key[:position] + replacement + key[position + 1 :]
            assert not apikeys.is_well_formed(typo), (position, replacement)


def test_swapped_neighbours_break_the_checksum() -> None:
    key = apikeys.generate_api_key()
    for position in range(3, len(key) - 1):
        if key[position] != key[position + 1]:
            swapped = key[:position] + key[position + 1] + key[position] + key[position + 2 :]
            assert not apikeys.is_well_formed(swapped), position


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tk_",
        "tk_short",
        "sk_" + "a" * 38,
        "TK_" + "a" * 38,
        "tk_" + "a" * 37,
        "tk_" + "a" * 39,
        "tk_" + "a" * 31 + "-" + "a" * 6,
        "tk_" + "é" * 38,
        "tk_" + "a" * 32 + "\x00" * 6,
    ],
)
def test_malformed_keys_are_rejected_without_error(value: str) -> None:
    assert not apikeys.is_well_formed(value)


def test_looks_like_api_key_goes_by_prefix_only() -> None:
    assert apikeys.looks_like_api_key("tk_anything")
    assert not apikeys.looks_like_api_key("eyJhbGciOi.x.y")


def test_key_hash_is_hmac_sha256_keyed_by_the_server_secret() -> None:
    key = apikeys.generate_api_key()
    digest = apikeys.hash_api_key(key, b"server-secret")
    assert digest == hmac.new(b"server-secret", key.encode(), hashlib.sha256).digest()
    assert len(digest) == 32
    assert apikeys.hash_api_key(key, b"server-secret") == digest
    assert apikeys.hash_api_key(key, b"other-secret") != digest
    assert apikeys.hash_api_key(apikeys.generate_api_key(), b"server-secret") != digest
    assert key.encode() not in digest


def test_display_prefix_is_not_the_secret() -> None:
    key = apikeys.generate_api_key()
    prefix = apikeys.display_prefix(key)
    assert len(prefix) == apikeys.DISPLAY_PREFIX_LENGTH == 11
    assert key.startswith(prefix)


# --------------------------------------------------------------------------- Redis keys

_TENANT = uuid.UUID("0b5e3f0c-8a2d-4c1e-9f00-123456789abc")


def test_tenant_keys_share_one_cluster_hash_tag() -> None:
    assert redis_keys.tenant_prefix(_TENANT) == "t:{0b5e3f0c-8a2d-4c1e-9f00-123456789abc}:"
    assert redis_keys.tenant_key(_TENANT, "rl", "m", "5") == "t:{0b5e3f0c-8a2d-4c1e-9f00-123456789abc}:rl:m:5"
    # A string id, however written, names the same namespace.
    assert redis_keys.tenant_prefix(str(_TENANT).upper()) == redis_keys.tenant_prefix(_TENANT)
    assert redis_keys.tenant_prefix(_TENANT.hex) == redis_keys.tenant_prefix(_TENANT)


def test_counter_keys() -> None:
    prefix = redis_keys.tenant_prefix(_TENANT)
    assert redis_keys.minute_counter_key(_TENANT, 29_000_000) == prefix + "rl:m:29000000"
    assert redis_keys.day_counter_key(str(_TENANT), 20_000) == prefix + "rl:d:20000"
    assert redis_keys.minute_counter_key(_TENANT, 1) != redis_keys.day_counter_key(_TENANT, 1)


def test_counter_key_prefixes_build_the_same_keys_as_bytes() -> None:
    minute_prefix, day_prefix = redis_keys.counter_key_prefixes(str(_TENANT).upper())
    assert minute_prefix + b"%d" % 29_000_000 == redis_keys.minute_counter_key(_TENANT, 29_000_000).encode()
    assert day_prefix + b"%d" % 20_000 == redis_keys.day_counter_key(_TENANT, 20_000).encode()


def test_platform_keys_live_under_tenantry() -> None:
    assert redis_keys.platform_key("revision") == "tenantry:revision"
    assert redis_keys.platform_key("a", "b") == "tenantry:a:b"
    assert redis_keys.EVENTS_CHANNEL == "tenantry:events"
    assert not redis_keys.tenant_prefix(_TENANT).startswith(redis_keys.PLATFORM_PREFIX)


@pytest.mark.parametrize("part", ["", "{x", "x}", "{other-tenant}"])
def test_tenant_key_refuses_parts_that_escape_the_hash_tag(part: str) -> None:
    with pytest.raises(ValueError, match="invalid key part"):
        redis_keys.tenant_key(_TENANT, "rl", part)


def test_tenant_prefix_refuses_a_non_uuid() -> None:
    with pytest.raises(ValueError):
        redis_keys.tenant_prefix("acme}:x:{")


# --------------------------------------------------------------------------- problems


def test_minimal_problem_document() -> None:
    assert problem_document(404, "tenant_not_found") == {
        "type": "urn:tenantry:problem:tenant_not_found",
        "title": "Not Found",
        "status": 404,
        "detail": "Not Found",
        "code": "tenant_not_found",
    }


def test_full_problem_document() -> None:
    doc = problem_document(
        422,
        "validation_error",
        detail="slug is reserved",
        title="Invalid",
        errors=[FieldError(field="slug", message="is reserved")],
        instance="/admin/tenants",
        extra={"tenant_id": "abc", "status": 999, "code": "overridden?"},
    )
    assert doc == {
        "type": "urn:tenantry:problem:validation_error",
        "title": "Invalid",
        "status": 422,
        "detail": "slug is reserved",
        "code": "validation_error",
        "instance": "/admin/tenants",
        "errors": [{"field": "slug", "message": "is reserved"}],
        "tenant_id": "abc",
    }


def test_unknown_status_gets_a_generic_title() -> None:
    doc = problem_document(599, "weird")
    assert doc["title"] == "Error"
    assert doc["detail"] == "Error"


def test_problem_bytes_is_the_json_document() -> None:
    raw = problem_bytes(409, "tenant_exists", detail="taken")
    assert json.loads(raw) == problem_document(409, "tenant_exists", detail="taken")
    assert PROBLEM_MEDIA_TYPE == "application/problem+json"


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (ProblemError, 500, "internal_error"),
        (BadRequestError, 400, "bad_request"),
        (UnauthorizedError, 401, "unauthorized"),
        (ForbiddenError, 403, "forbidden"),
        (NotFoundError, 404, "not_found"),
        (ConflictError, 409, "conflict"),
        (PayloadTooLargeError, 413, "payload_too_large"),
        (InvalidInputError, 422, "validation_error"),
        (UnavailableError, 503, "service_unavailable"),
    ],
)
def test_problem_error_classes(cls: type[ProblemError], status: int, code: str) -> None:
    exc = cls("something happened")
    assert (exc.status, exc.code, exc.detail) == (status, code, "something happened")
    body = exc.body("/x")
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == "urn:tenantry:problem:" + code
    assert body["instance"] == "/x"


def test_problem_error_overrides_do_not_leak_into_the_class() -> None:
    exc = NotFoundError("no key", code="api_key_not_found", headers={"X": "1"}, extra={"id": "k"})
    assert exc.code == "api_key_not_found"
    assert NotFoundError.code == "not_found"
    assert exc.headers == {"X": "1"}
    body = exc.body()
    assert body["code"] == "api_key_not_found"
    assert body["id"] == "k"
    assert "instance" not in body
    assert str(exc) == "no key"
    assert str(ConflictError(code="tenant_exists")) == "tenant_exists"


def test_problem_error_with_field_errors() -> None:
    exc = InvalidInputError("bad", errors=[FieldError("plan", "unknown plan")])
    assert exc.body()["errors"] == [{"field": "plan", "message": "unknown plan"}]
    assert msgspec.json.decode(msgspec.json.encode(exc.errors[0])) == {"field": "plan", "message": "unknown plan"}


# --------------------------------------------------------------------------- logging redaction

_API_KEY = "tk_" + "A1b2C3d4" * 4 + "zzzzzz"
_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        (f"got key {_API_KEY} from client", _API_KEY[3:]),
        ("Authorization: Bearer adm-s3cr3t-t0ken.value", "adm-s3cr3t-t0ken.value"),
        ("authorization: bearer abc~def+ghi/jkl=", "abc~def+ghi/jkl="),
        (f"token {_JWT}", _JWT),
        ("connect postgresql://tenant_x:Sup3r-Secret@db:5432/tenant_x failed", "Sup3r-Secret"),
        ("redis://:redispw@cache:6379/0", "redispw"),
        ("postgresql+asyncpg://u:pw%40x@h/db", "pw%40x"),
        ("host=db password=hunter2 user=u", "hunter2"),
        ("host=db password = 'two words' user=u", "two words"),
        ("PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy'", "c2FsdA=="),
    ],
)
def test_secret_looking_values_are_masked(raw: str, secret: str) -> None:
    masked = redact_value(raw)
    assert secret not in masked
    assert REDACTED in masked


def test_harmless_values_are_untouched() -> None:
    for value in ("tenant acme created", "http://example.com/path", "postgresql://u@h/db", "task_1234567"):
        assert redact_value(value) == value


def test_redact_processor_masks_by_field_name_and_by_value_at_any_depth() -> None:
    event = {
        "event": f"using {_API_KEY}",
        "level": "info",
        "password": "pw",
        "db_password_enc": "v1.k1.xxx",
        "Authorization": "Bearer x",
        "admin_token": "adm",
        "api_key": "k",
        "apiKey": "k",
        "cookie": "c",
        "dsn": "postgresql://u@h/db",
        "encryption_keys": "k1:abc",
        "slug": "acme",
        "count": 3,
        "nested": {"secret": "s", "items": [{"token": "t"}, "Bearer deep", ("tuple", _API_KEY)]},
    }
    out = redact_processor(None, "info", dict(event))
    for field in ("password", "db_password_enc", "Authorization", "admin_token", "api_key", "apiKey", "cookie"):
        assert out[field] == REDACTED, field
    assert out["dsn"] == REDACTED
    assert out["encryption_keys"] == REDACTED
    assert out["slug"] == "acme"
    assert out["count"] == 3
    assert out["level"] == "info"
    assert out["event"] == "using tk_" + REDACTED
    assert out["nested"]["secret"] == REDACTED
    assert out["nested"]["items"][0] == {"token": REDACTED}
    assert out["nested"]["items"][1] == "Bearer " + REDACTED
    assert out["nested"]["items"][2] == ["tuple", "tk_" + REDACTED]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_config = structlog.get_config()
    yield
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    structlog.configure(**saved_config)


def _raise_with_secret() -> None:
    dsn = "postgresql://tenant_x:Sup3r-Secret@db:5432/tenant_x"
    raise ConnectionError(f"could not connect to {dsn}")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_configured_logging_never_writes_a_secret(
    fmt: str, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("unit", fmt=fmt, level="DEBUG")
    log = structlog.get_logger(f"tenantry.unit.{fmt}")
    log.info("key_used", key=_API_KEY, password="pw-plain", url="redis://:redispw@h:1/0")
    try:
        _raise_with_secret()
    except ConnectionError as exc:
        log.error("db_failed", exc_info=exc)
        logging.getLogger("stdlib.unit").exception("stdlib %s", "Bearer std-token-123")
    err = capsys.readouterr().err
    for secret in (_API_KEY[3:], "pw-plain", "redispw", "Sup3r-Secret", "std-token-123"):
        assert secret not in err, (secret, err)
    # The lines are still useful: event names, the exception type and the service are there.
    for expected in ("key_used", "db_failed", "ConnectionError", "unit"):
        assert expected in err
    if fmt == "json":
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        first = lines[0]
        assert first["event"] == "key_used"
        assert first["service"] == "unit"
        assert first["level"] == "info"
        assert first["password"] == REDACTED
        assert "timestamp" in first


def test_log_level_filters(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("unit", fmt="json", level="WARNING")
    log = structlog.get_logger("tenantry.unit.level")
    log.info("quiet_event")
    log.warning("loud_event")
    err = capsys.readouterr().err
    assert "quiet_event" not in err
    assert "loud_event" in err


# --------------------------------------------------------------------------- settings helpers


def test_env_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_STR", raising=False)
    assert env_str("T_STR", "dflt") == "dflt"
    with pytest.raises(ConfigError, match="T_STR"):
        env_str("T_STR")
    with pytest.raises(ConfigError, match="T_STR"):
        env_str("T_STR", "dflt", required=True)
    monkeypatch.setenv("T_STR", "")
    assert env_str("T_STR", "dflt") == "dflt"
    monkeypatch.setenv("T_STR", "value")
    assert env_str("T_STR", "dflt", required=True) == "value"


def test_env_opt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_OPT", raising=False)
    assert env_opt("T_OPT") is None
    monkeypatch.setenv("T_OPT", "")
    assert env_opt("T_OPT") is None
    monkeypatch.setenv("T_OPT", "x")
    assert env_opt("T_OPT") == "x"


def test_env_int(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_INT", raising=False)
    assert env_int("T_INT", 7) == 7
    monkeypatch.setenv("T_INT", "42")
    assert env_int("T_INT", 7, minimum=1, maximum=100) == 42
    monkeypatch.setenv("T_INT", "4x")
    with pytest.raises(ConfigError, match=r"T_INT must be an integer, got '4x'"):
        env_int("T_INT", 7)
    monkeypatch.setenv("T_INT", "0")
    with pytest.raises(ConfigError, match=r"T_INT must be between 1 and 10, got 0"):
        env_int("T_INT", 7, minimum=1, maximum=10)
    monkeypatch.setenv("T_INT", "-1")
    with pytest.raises(ConfigError, match="T_INT") as excinfo:
        env_int("T_INT", 7, minimum=0)
    assert "None" not in str(excinfo.value)
    assert "at least 0" in str(excinfo.value)
    monkeypatch.setenv("T_INT", "70000")
    with pytest.raises(ConfigError, match="T_INT") as excinfo:
        env_int("T_INT", 7, maximum=65535)
    assert "None" not in str(excinfo.value)
    assert "at most 65535" in str(excinfo.value)


def test_env_float(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_FLOAT", raising=False)
    assert env_float("T_FLOAT", 0.5) == 0.5
    monkeypatch.setenv("T_FLOAT", "2.5")
    assert env_float("T_FLOAT", 0.5) == 2.5
    monkeypatch.setenv("T_FLOAT", "soon")
    with pytest.raises(ConfigError, match="T_FLOAT must be a number"):
        env_float("T_FLOAT", 0.5)
    monkeypatch.setenv("T_FLOAT", "-1")
    with pytest.raises(ConfigError, match="T_FLOAT must be at least 0"):
        env_float("T_FLOAT", 0.5)
    monkeypatch.setenv("T_FLOAT", "0.001")
    with pytest.raises(ConfigError, match=r"at least 0\.01"):
        env_float("T_FLOAT", 0.5, minimum=0.01)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), (" yes ", True), ("on", True), ("0", False), ("false", False), ("No", False)],
)
def test_env_bool_values(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("T_BOOL", raw)
    assert env_bool("T_BOOL", not expected) is expected


def test_env_bool_default_and_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_BOOL", raising=False)
    assert env_bool("T_BOOL", True) is True
    monkeypatch.setenv("T_BOOL", "maybe")
    with pytest.raises(ConfigError, match="T_BOOL must be a boolean"):
        env_bool("T_BOOL", False)


def test_env_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_LIST", raising=False)
    assert env_list("T_LIST", ("d",)) == ("d",)
    monkeypatch.setenv("T_LIST", " a, b ,,c ,")
    assert env_list("T_LIST") == ("a", "b", "c")
    monkeypatch.setenv("T_LIST", "")
    assert env_list("T_LIST", ("d",)) == ()


def test_named_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKENS", "ops:tok-ops-123,ci:tok:with:colons")
    monkeypatch.setenv("T_TOKEN", "single-token")
    assert named_tokens("T_TOKENS", "T_TOKEN", "admin") == {
        "ops": "tok-ops-123",
        "ci": "tok:with:colons",
        "admin": "single-token",
    }
    # A list entry of the same name wins over the single variable.
    monkeypatch.setenv("T_TOKENS", "admin:from-list")
    assert named_tokens("T_TOKENS", "T_TOKEN", "admin") == {"admin": "from-list"}
    monkeypatch.delenv("T_TOKENS")
    monkeypatch.delenv("T_TOKEN")
    assert named_tokens("T_TOKENS", "T_TOKEN", "admin") == {}


@pytest.mark.parametrize("bad", ["notoken", ":tok", "name:"])
def test_named_tokens_refuses_incomplete_entries(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("T_TOKENS", bad)
    with pytest.raises(ConfigError, match="T_TOKENS entries must look like name:token"):
        named_tokens("T_TOKENS", "T_TOKEN", "admin")


def test_load_dotenv_never_overrides_real_variables(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# a comment\n"
        "\n"
        "T_DOT_A=from-file\n"
        "export T_DOT_B = spaced \n"
        'T_DOT_C="double quoted"\n'
        "T_DOT_D='single quoted'\n"
        "T_DOT_REAL=from-file\n"
        "T_DOT_URL=postgresql://u:p@h/db?sslmode=require\n"
        "not a variable line\n",
        encoding="utf-8",
    )
    for name in ("T_DOT_A", "T_DOT_B", "T_DOT_C", "T_DOT_D", "T_DOT_URL"):
        # Recorded by monkeypatch as "unset", so whatever load_dotenv sets is removed afterwards.
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    monkeypatch.setenv("T_DOT_REAL", "real")
    load_dotenv(env_file)
    assert os.environ["T_DOT_A"] == "from-file"
    assert os.environ["T_DOT_B"] == "spaced"
    assert os.environ["T_DOT_C"] == "double quoted"
    assert os.environ["T_DOT_D"] == "single quoted"
    assert os.environ["T_DOT_URL"] == "postgresql://u:p@h/db?sslmode=require"
    assert os.environ["T_DOT_REAL"] == "real"


def test_load_dotenv_without_a_file_is_a_no_op(tmp_path, monkeypatch) -> None:
    before = dict(os.environ)
    load_dotenv(tmp_path / "missing.env")
    assert dict(os.environ) == before


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    "value",
    ["a", "0123456789abcdef", "trace-1.2_3:4", "A" * 128, b"bytes-id", "550e8400-e29b-41d4-a716-446655440000"],
)
def test_safe_request_ids_are_kept(value: str | bytes) -> None:
    expected = value.decode() if isinstance(value, bytes) else value
    assert safe_request_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        b"",
        "A" * 129,
        "a b",
        "a\nb",
        "a\r\nX-Evil: 1",
        "a\x00",
        "a\x1b[2J",
        "a\x7f",
        "a\x85",
        "a\u2028b",
        "caf\u00e9",
        "\uff41",  # fullwidth "a": not ASCII
        b"caf\xe9",
        "a/b",
        "a%0a",
        "a;b",
        'a"b',
        "a'b",
        "a,b",
        "a=b",
        "a\\b",
        "trailing\n",
    ],
    ids=repr,
)
def test_unsafe_request_ids_are_not_kept(value: str | bytes | None) -> None:
    assert safe_request_id(value) is None


def test_new_request_ids_are_fresh_and_safe() -> None:
    made = {new_request_id() for _ in range(100)}
    assert len(made) == 100
    assert all(safe_request_id(made_id) == made_id for made_id in made)


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1", "0x7f.0x1", "0177.0.0.1", "2130706433", "0x7f000001", "0X7F.1", "example.017", "a.0x",
     "1.2.3.4.", "0"],
)  # fmt: skip
def test_hosts_some_resolver_reads_as_ipv4(host: str) -> None:
    assert reads_as_ipv4(host)


@pytest.mark.parametrize(
    "host", ["example.com", "localhost", "0x7f.example", "127.0.0.1.nip.io", "1e1", "0xg", "a1", "x.0x1g", "::1"]
)
def test_host_names_are_not_read_as_ipv4(host: str) -> None:
    assert not reads_as_ipv4(host)
