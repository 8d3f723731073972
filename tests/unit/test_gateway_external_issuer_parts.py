"""The gateway's pieces for tenants' external issuers that need no process: the directory's issuer index, the
JWKS parser and the fetch-time address check."""

from __future__ import annotations

import asyncio
import gzip
import json

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from prometheus_client import REGISTRY

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


def _fetch_attempts() -> float:
    """Fetches counted by ``tenantry_gateway_jwks_fetches_total`` so far, whatever their outcome."""
    return sum(
        REGISTRY.get_sample_value("tenantry_gateway_jwks_fetches_total", {"outcome": outcome}) or 0.0
        for outcome in ("ok", "error")
    )


def test_a_refused_host_is_not_fetched_and_the_refetch_is_rate_limited() -> None:
    async def scenario() -> tuple[object, object, float]:
        cache = JwksCache(timeout=1, min_refetch=60, max_age=600)
        before = _fetch_attempts()
        try:
            first = await cache.key("http://169.254.169.254/jwks", "k", "RS256")
            second = await cache.key("http://169.254.169.254/jwks", "k", "RS256")
            return first, second, _fetch_attempts() - before
        finally:
            await cache.close()

    first, second, fetches = asyncio.run(scenario())
    assert first is None
    assert second is None
    assert fetches == 1


class _Idp:
    """A one-route HTTP server on loopback answering with scripted bytes, after an optional delay."""

    def __init__(self, body: bytes, *, headers: bytes = b"", delay: float = 0.0) -> None:
        self.body, self.headers, self.delay, self.requests = body, headers, delay, 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            self.requests += 1
            await asyncio.sleep(self.delay)
            head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n" % (len(self.body), self.headers)
            writer.write(head + self.body)
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(answer, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/jwks"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()


def _jwks(*kids: str) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": kid, "alg": "RS256"} for kid in kids]}).encode()


def test_a_compressed_key_set_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\x00" * (32 * 1024 * 1024))  # 32 MiB of zeros in ~32 KiB

    async def scenario() -> tuple[object, float]:
        cache = JwksCache(timeout=2, min_refetch=60, max_age=600)
        before = _fetch_attempts()
        async with _Idp(bomb, headers=b"content-encoding: gzip\r\n") as url:
            try:
                return await cache.key(url, "k1", "RS256"), _fetch_attempts() - before
            finally:
                await cache.close()

    key, fetches = asyncio.run(scenario())
    assert key is None
    assert fetches == 1


def test_a_deeply_nested_or_garbage_key_set_is_a_miss_not_an_error() -> None:
    async def scenario(body: bytes) -> object:
        cache = JwksCache(timeout=2, min_refetch=60, max_age=600)
        async with _Idp(body) as url:
            try:
                return await cache.key(url, "k1", "RS256")
            finally:
                await cache.close()

    deep = b'{"keys":' + b"[" * 5000 + b"]" * 5000 + b"}"
    garbage = b'{"keys": [{"kty": "RSA", "kid": "k1", "n": 7, "e": [], "alg": "RS256"}]}'
    for body in (deep, garbage, b"\xff\xfe", b'{"keys": null}'):
        assert asyncio.run(scenario(body)) is None


def test_requests_during_a_fetch_wait_for_it_and_a_stale_set_refreshes_in_the_background() -> None:
    async def scenario() -> None:
        cache = JwksCache(timeout=2, min_refetch=1, max_age=1)
        idp = _Idp(_jwks("k1"), delay=0.3)
        async with idp as url:
            try:
                # Five requests while the first fetch is under way: one fetch, every one gets the key.
                keys = await asyncio.gather(*(cache.key(url, "k1", "RS256") for _ in range(5)))
                assert all(key is not None for key in keys)
                assert idp.requests == 1
                # Past max_age and the refetch interval: the stale key answers at once, a refresh runs behind it.
                await asyncio.sleep(1.1)
                assert await cache.key(url, "k1", "RS256") is not None
                assert url in cache._inflight  # answered from the stale set while the refresh is still under way
                await asyncio.sleep(0.6)
                assert idp.requests == 2
            finally:
                await cache.close()

    asyncio.run(scenario())
