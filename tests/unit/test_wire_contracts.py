"""The wire contracts between the processes, each defined once in tenantry_common and used by both ends."""

from __future__ import annotations

import msgspec
import pytest

import tenantry_app
from tenant_service.internal import service as vending
from tenantry_common.internal_api import DatabaseCredentials, decode_database_credentials

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
