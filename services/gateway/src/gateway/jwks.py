"""Signing keys of tenants' own identity providers, fetched from their JWKS URLs and cached.

Only URLs from the directory are ever fetched (an admin configured them; a token cannot name one). A key set is
fetched on first use and again after ``max_age``; a token whose ``kid`` the cached set lacks triggers at most one
refetch per URL per ``min_refetch`` seconds (an IdP that rotated its keys is picked up, a client spraying random
``kid``s cannot make the gateway hammer the IdP), and concurrent requests wait for the same fetch. A failed
refetch keeps the keys already known, and a set past ``max_age`` is refreshed in the background while its keys
stay in use. Fetches have a timeout, a size cap on the bytes received (``Accept-Encoding: identity``; a
compressed answer is refused, never inflated), no redirects, no proxy from the environment, and refuse hosts that
resolve to link-local, multicast, unspecified or reserved addresses (cloud metadata), the same rule as for
upstreams. Whatever goes wrong while fetching or reading a set, the token in hand gets a 401, never a 500.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import jwt
import msgspec
import structlog
from prometheus_client import Counter

from tenantry_common.addresses import forbidden_upstream_ip

_log = structlog.get_logger("tenantry.gateway.jwks")
#: Fetches of tenants' JWKS documents by outcome (no per-tenant or per-URL label: cardinality stays bounded).
JWKS_FETCHES: Final = Counter("tenantry_gateway_jwks_fetches_total", "JWKS fetches of external issuers", ["outcome"])
_MAX_KEYS: Final = 100
_MAX_URLS: Final = 10_000


class JwksUnavailableError(Exception):
    """The key set could not be fetched or read (the reason is for logs, never for the client)."""


@dataclass
class _KeySet:
    jwks: dict[str, dict[str, Any]] = field(default_factory=dict)  # kid ("" when absent) → JWK
    keys: dict[tuple[str, str], jwt.PyJWK] = field(default_factory=dict)  # (kid, alg) → prepared key
    fetched: float = 0.0  # monotonic time of the last successful fetch (0: never)
    attempted: float = float("-inf")  # monotonic time of the last attempt


class JwksCache:
    """Key sets by URL."""

    def __init__(self, *, timeout: float, min_refetch: float, max_age: float, max_bytes: int = 256 * 1024) -> None:
        self._timeout = timeout
        self._min_refetch = min_refetch
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._sets: dict[str, _KeySet] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        """Stop background refreshes and close the HTTP client."""
        for task in [*self._background, *self._inflight.values()]:
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def key(self, url: str, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        """The key ``kid`` of the set at ``url``, prepared for ``algorithm``; None when the set has no such key.

        A ``kid``-less token matches only a set with a single ``kid``-less key.
        """
        now = time.monotonic()
        keys = self._sets.get(url)
        wanted = kid or ""
        if keys is not None and wanted in keys.jwks:
            if now - keys.fetched >= self._max_age and now - keys.attempted >= self._min_refetch:
                self._refresh_soon(url)  # stale: refresh in the background, use the keys meanwhile
            return self._prepared(keys, wanted, algorithm)
        inflight = self._inflight.get(url)
        if inflight is not None:
            await self._wait(inflight, url)  # a fetch is under way (the first, or a rotation): its answer counts
        elif keys is None or now - keys.attempted >= self._min_refetch:
            await self._wait(self._refresh(url), url)
        keys = self._sets.get(url)
        return None if keys is None else self._prepared(keys, wanted, algorithm)

    @staticmethod
    async def _wait(fetch: Awaitable[None], url: str) -> None:
        try:
            await asyncio.shield(fetch)
        except asyncio.CancelledError:
            raise
        except JwksUnavailableError as exc:
            _log.warning("jwks_fetch_failed", url=url, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a fetch that fails in an unforeseen way is a 401, never a 500
            _log.warning("jwks_fetch_failed", url=url, error=type(exc).__name__)

    def _refresh_soon(self, url: str) -> None:
        if url in self._inflight:
            return
        task = asyncio.ensure_future(self._wait(self._refresh(url), url))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _refresh(self, url: str) -> asyncio.Future[None]:
        """The fetch of the set under way, started when there is none: one at a time per URL."""
        inflight = self._inflight.get(url)
        if inflight is None:
            inflight = self._inflight[url] = asyncio.ensure_future(self._fetch(url))
            inflight.add_done_callback(lambda _: self._inflight.pop(url, None))
        return inflight

    @staticmethod
    def _prepared(keys: _KeySet, kid: str, algorithm: str) -> jwt.PyJWK | None:
        prepared = keys.keys.get((kid, algorithm))
        if prepared is not None:
            return prepared
        jwk = keys.jwks.get(kid)
        if jwk is None:
            return None
        if jwk.get("alg") not in (None, algorithm):
            return None  # the key is bound to another algorithm than the token claims
        try:
            prepared = jwt.PyJWK(jwk, algorithm=algorithm)
        except Exception:  # noqa: BLE001 - an EC key for an RS256 token, or a JWK whose members are garbage
            return None
        keys.keys[(kid, algorithm)] = prepared
        return prepared

    async def _fetch(self, url: str) -> None:
        keys = self._sets.get(url)
        if keys is None:
            if len(self._sets) >= _MAX_URLS:
                self._sets.clear()
            keys = self._sets[url] = _KeySet()
        keys.attempted = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    await _check_host(url)
                    body = await self._get(url)
            except TimeoutError:
                raise JwksUnavailableError("timed out") from None
            except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
                raise JwksUnavailableError(type(exc).__name__) from None
            jwks = _parse(body)
        except BaseException:
            JWKS_FETCHES.labels("error").inc()
            raise
        JWKS_FETCHES.labels("ok").inc()
        keys.jwks, keys.keys, keys.fetched = jwks, {}, time.monotonic()

    async def _get(self, url: str) -> bytes:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout), follow_redirects=False, trust_env=False
            )
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        async with self._http.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                raise JwksUnavailableError(f"HTTP {response.status_code}")
            if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
                raise JwksUnavailableError("compressed key set refused")  # never inflate what a server sends
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self._max_bytes:
                    raise JwksUnavailableError("key set too large")
        return bytes(body)


async def _check_host(url: str) -> None:
    """Refuse a host that is, or resolves to, an address no platform request may reach."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443)
        except OSError as exc:
            raise JwksUnavailableError(f"cannot resolve the host: {exc.strerror or exc}") from None
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    if any(forbidden_upstream_ip(address) for address in addresses):
        raise JwksUnavailableError("the host resolves to a forbidden address")


def _parse(body: bytes) -> dict[str, dict[str, Any]]:
    """Signing JWKs by kid; public keys only."""
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise JwksUnavailableError("not JSON, or nested too deeply") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksUnavailableError("no keys array")
    jwks: dict[str, dict[str, Any]] = {}
    unnamed = 0
    for entry in entries[:_MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use") not in (None, "sig"):
            continue
        if entry.get("kty") not in ("RSA", "EC", "OKP") or "d" in entry:
            continue  # symmetric keys never; a private key is a misconfiguration not to be used
        kid = entry.get("kid", "")
        if isinstance(kid, str):
            unnamed += kid == ""
            jwks.setdefault(kid, entry)
    if unnamed > 1:
        del jwks[""]  # which of several kid-less keys a kid-less token means is anyone's guess: none
    return jwks
