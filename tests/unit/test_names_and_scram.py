"""Names of Postgres objects (quoting, tenant names, markers) and SCRAM-SHA-256 verifiers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from typing import Any

import pytest

from tenant_service.provisioning.names import (
    object_marker,
    parse_marker,
    quote_ident,
    quote_literal,
    template_owner_role,
    tenant_object_name,
)
from tenant_service.provisioning.scram import scram_sha256_verifier

# --- quote_ident ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ['a"b', "A", "Tenant", "x;drop", "x; DROP DATABASE postgres", "", "a" * 64, "1abc", "a b", "a-b", "é", "a\x00b",
     "a.b", "a'b", "a\nb", "a\\b"],
)  # fmt: skip
def test_quote_ident_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(ValueError, match="unsafe identifier"):
        quote_ident(name)


@pytest.mark.parametrize("name", ["a", "_x", "tenant_acme_0123456789ab", "a" * 63, "t1_2_3"])
def test_quote_ident_quotes_safe_names(name: str) -> None:
    assert quote_ident(name) == f'"{name}"'


def test_quote_literal_doubles_quotes() -> None:
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("''") == "''''''"


# --- tenant names -----------------------------------------------------------------------------------


def test_tenant_object_name_is_prefix_slug_and_id() -> None:
    tid = uuid.UUID("0123456789abcdef0123456789abcdef")
    assert tenant_object_name("tenant_", "acme-corp", tid) == "tenant_acme_corp_0123456789ab"


def test_tenant_object_name_differs_per_tenant_id() -> None:
    a = tenant_object_name("tenant_", "acme", uuid.uuid4())
    b = tenant_object_name("tenant_", "acme", uuid.uuid4())
    assert a != b
    assert a.startswith("tenant_acme_")
    quote_ident(a)


def test_tenant_object_name_of_the_longest_slug_is_a_valid_identifier() -> None:
    name = tenant_object_name("t0123abcd_", "a" + "-b" * 15 + "c", uuid.uuid4())
    assert len(name) <= 63
    quote_ident(name)


def test_tenant_object_name_refuses_what_postgres_would_truncate() -> None:
    with pytest.raises(ValueError, match="unsafe identifier"):
        tenant_object_name("p" * 30, "a" * 32, uuid.uuid4())


def test_template_owner_role() -> None:
    assert template_owner_role("tenantry_template") == "tenantry_template_owner"
    with pytest.raises(ValueError, match="unsafe identifier"):
        template_owner_role('x"; drop role postgres; --')


# --- markers ----------------------------------------------------------------------------------------


def test_marker_round_trip() -> None:
    installation, tenant = uuid.uuid4(), uuid.uuid4()
    marker = object_marker(installation, tenant)
    assert marker == f"tenantry:{installation}:tenant:{tenant}"
    assert parse_marker(marker, installation) == tenant


def test_marker_of_another_installation_is_not_ours() -> None:
    mine, theirs, tenant = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert parse_marker(object_marker(theirs, tenant), mine) is None


@pytest.mark.parametrize(
    "comment",
    [None, "", "some operator's note", "tenantry:", "tenantry:{inst}:tenant:", "tenantry:{inst}:tenant:not-a-uuid",
     "tenantry:{inst}:template", "xtenantry:{inst}:tenant:{tid}", " tenantry:{inst}:tenant:{tid}"],
)  # fmt: skip
def test_parse_marker_ignores_foreign_comments(comment: str | None) -> None:
    installation = uuid.uuid4()
    text = comment.format(inst=installation, tid=uuid.uuid4()) if comment is not None else None
    assert parse_marker(text, installation) is None


# --- SCRAM ------------------------------------------------------------------------------------------

_VERIFIER = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


def _parts(verifier: str) -> tuple[int, bytes, bytes, bytes]:
    match = _VERIFIER.fullmatch(verifier)
    assert match, verifier
    iterations, salt, stored, server = match.groups()
    return int(iterations), base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server)


def test_scram_verifier_format() -> None:
    iterations, salt, stored, server = _parts(scram_sha256_verifier("pencil"))
    assert iterations == 4096
    assert len(salt) == 16
    assert len(stored) == len(server) == 32


def test_scram_verifier_salts_every_call() -> None:
    a, b = scram_sha256_verifier("pencil"), scram_sha256_verifier("pencil")
    assert a != b
    assert "pencil" not in a


def test_scram_verifier_is_deterministic_for_a_salt() -> None:
    salt = b"0123456789abcdef"
    assert scram_sha256_verifier("pw", salt=salt) == scram_sha256_verifier("pw", salt=salt)
    assert scram_sha256_verifier("pw", salt=salt) != scram_sha256_verifier("pw2", salt=salt)


def test_scram_verifier_authenticates_the_rfc7677_exchange() -> None:
    """The verifier checks the client proof and produces the server signature of RFC 7677's example."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    _, _, stored_key, server_key = _parts(scram_sha256_verifier("pencil", salt=salt, iterations=4096))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    ).encode()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    client_key = bytes(p ^ s for p, s in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    assert base64.b64encode(server_signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_verifier_rejects_a_wrong_password_in_the_exchange() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    _, _, stored_key, _ = _parts(scram_sha256_verifier("pen", salt=salt))
    auth_message = b"n=user,r=x,r=xy,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=xy"
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    client_key = bytes(p ^ s for p, s in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() != stored_key


# --- the name prefix setting ------------------------------------------------------------------------


def _settings_with_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> Any:
    from tenant_service.config import Settings
    from tenant_service.secretbox import generate_key

    for key, value in {
        "DATABASE_URL": "postgresql://u@127.0.0.1:5432/registry",
        "ADMIN_TOKEN": "a" * 32,
        "ENCRYPTION_KEYS": f"k1:{generate_key()}",
        "API_KEY_HASH_SECRET": "s" * 32,
        "TENANT_DB_PREFIX": prefix,
    }.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


@pytest.mark.parametrize("prefix", ["tenant_", "t", "t0123abcd_", "a" * 18])
def test_prefix_setting_accepts_names_that_fit(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    settings = _settings_with_prefix(monkeypatch, prefix)
    assert settings.database.tenant_db_prefix == prefix
    # The longest slug still makes a valid, untruncated name.
    quote_ident(tenant_object_name(prefix, "a" * 32, uuid.uuid4()))


@pytest.mark.parametrize("prefix", ["a" * 19, "Tenant_", "1tenant_", "_tenant", "tenant-", "tenanté_", 'x"_'])
def test_prefix_setting_refuses_names_that_cannot_work(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    from tenantry_common.settings import ConfigError

    with pytest.raises(ConfigError, match="TENANT_DB_PREFIX"):
        _settings_with_prefix(monkeypatch, prefix)
