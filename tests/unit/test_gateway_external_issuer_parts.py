"""The gateway's pieces for tenants' external issuers that need no process: the directory's issuer index, the
JWKS parser and the fetch-time address check."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from gateway.directory import Directory
from gateway.jwks import JwksCache, JwksUnavailableError, _check_host, _parse
from tenantry_common.directory import DirectoryIssuer, DirectoryPage, DirectoryTenant


def _tenant(tenant_id: str, revision: int, *pairs: tuple[str, str]) -> DirectoryTenant:
    return DirectoryTenant(
        id=tenant_id,
        slug=f"slug-{tenant_id}",
        status="active",
        plan="free",
        limits={},
        upstream_url=None,
        domains=[],
        keys=[],
        revision=revision,
        jwt_issuers=[
            DirectoryIssuer(
                id=f"{tenant_id}-{n}", issuer=iss, audience=aud, jwks_url="https://idp/j", algorithms=["RS256"]
            )
            for n, (iss, aud) in enumerate(pairs)
        ],
    )


def test_issuer_index_follows_applies_removals_and_full_syncs() -> None:
    directory = Directory()
    directory.apply(_tenant("a", 1, ("https://idp/", "a-api"), ("https://idp/", "a-admin")))
    directory.apply(_tenant("b", 1, ("https://idp/", "b-api")))
    assert {aud: e.tenant_id for aud, e in directory.issuers["https://idp/"].items()} == {
        "a-api": "a",
        "a-admin": "a",
        "b-api": "b",
    }
    # A drops one pair; B takes it over in the same sync, applied first: A's removal must not undo B's entry.
    directory.apply(_tenant("b", 2, ("https://idp/", "b-api"), ("https://idp/", "a-admin")))
    directory.apply(_tenant("a", 2, ("https://idp/", "a-api")))
    assert directory.issuers["https://idp/"]["a-admin"].tenant_id == "b"
    directory.remove("b")
    assert set(directory.issuers["https://idp/"]) == {"a-api"}
    directory.remove("a")
    assert directory.issuers == {}
    directory.apply_page(DirectoryPage(revision=9, tenants=[_tenant("c", 9, ("x", "y"))], removed=[], full=True))
    assert list(directory.issuers) == ["x"]


def test_pages_without_issuers_decode_with_none() -> None:
    legacy = (
        b'{"id":"a","slug":"a","status":"active","plan":"free","limits":{},"upstream_url":null,'
        b'"domains":[],"keys":[],"revision":1}'
    )
    assert msgspec.json.decode(legacy, type=DirectoryTenant).jwt_issuers == []


def test_jwks_parser_keeps_public_signing_keys_only() -> None:
    body = b"""{"keys": [
        {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"},
        {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "p", "n": "AQAB", "e": "AQAB", "d": "AQAB"},
        {"kty": "RSA", "kid": "e", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "r", "crv": "P-256", "x": "AA", "y": "AA"},
        "not a key"
    ]}"""
    assert set(_parse(body)) == {"r"}
    assert _parse(body)["r"]["kty"] == "RSA"  # the first of a duplicated kid wins
    two_unnamed = b'{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}, {"kty": "RSA", "n": "AQAC", "e": "AQAB"}]}'
    assert _parse(two_unnamed) == {}
    for broken in (b"<html>", b"[]", b'{"keys": {}}', b"{}"):
        with pytest.raises(JwksUnavailableError):
            _parse(broken)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/jwks",
        "http://100.100.100.200/jwks",
        "http://0.0.0.0/jwks",
        "http://[::ffff:169.254.169.254]/jwks",
    ],
)
def test_fetches_never_reach_metadata_or_link_local_addresses(url: str) -> None:
    with pytest.raises(JwksUnavailableError):
        asyncio.run(_check_host(url))


def test_a_refused_host_is_not_fetched_and_the_refetch_is_rate_limited() -> None:
    async def scenario() -> tuple[object, object, int]:
        cache = JwksCache(timeout=1, min_refetch=60, max_age=600)
        try:
            first = await cache.key("http://169.254.169.254/jwks", "k", "RS256")
            second = await cache.key("http://169.254.169.254/jwks", "k", "RS256")
            return first, second, cache.fetches
        finally:
            await cache.close()

    first, second, fetches = asyncio.run(scenario())
    assert first is None
    assert second is None
    assert fetches == 1
