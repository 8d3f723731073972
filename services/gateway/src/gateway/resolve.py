"""Step 1 — resolve: which tenant do the request's location sources name?

Sources: the Host (a subdomain of BASE_DOMAIN or a registered custom domain), the ``/t/{slug}/`` path prefix and
the ``X-Tenant-ID`` header. All that are present must name the same tenant. ``X-Forwarded-Host`` replaces the
Host only when the peer is a trusted proxy. A credential's tenant is checked against the result by the
authentication step; whether a tenant is served at all (its status) is :func:`served`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from gateway.config import Network
from gateway.directory import Directory, TenantEntry
from gateway.errors import GatewayError, bad_request
from gateway.exchange import Exchange
from gateway.http import HOST, TENANT_ID, X_HOST
from tenantry_common.lifecycle import TenantStatus, refusal
from tenantry_common.slugs import RESERVED_SLUGS, is_valid_slug

_HOSTNAME: Final = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
#: The one status that is served (a plain str: compared on every request).
_SERVED: Final = TenantStatus.ACTIVE.value
#: Bounds of the per-process caches of host names and peers seen.
_MAX_CACHED: Final = 10_000
#: X-Forwarded-For hops looked at (from the right), and the longest client address passed on.
_MAX_FORWARDED_HOPS: Final = 16
_MAX_ADDRESS: Final = 64


@dataclass(frozen=True, slots=True)
class Location:
    """What the location sources say: a known tenant, an unknown name, or nothing."""

    tenant: TenantEntry | None
    named: str | None
    upstream_path: bytes


def normalize_host(raw: str) -> str:
    """Lowercase, without port and trailing dot; ``""`` for an IP literal.

    Raises:
        GatewayError: a malformed host (400 ``invalid_host``).
    """
    host = raw.strip().lower()
    if not host:
        return ""
    if not host.isascii() or "@" in host or len(host) > 260:
        raise bad_request("invalid_host", "The Host header is not a valid host name.")
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise bad_request("invalid_host", "The Host header is not a valid host name.")
        return ""
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        raise bad_request("invalid_host", "The Host header has an invalid port.")
    name = name.removesuffix(".")
    if len(name) > 253 or not name or not _HOSTNAME.fullmatch(name) or ".." in name:
        raise bad_request("invalid_host", "The Host header is not a valid host name.")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    return ""


def served(tenant: TenantEntry | None) -> TenantEntry:
    """The tenant, when it exists and its status lets it be served.

    Raises:
        GatewayError: 404 ``tenant_not_found`` (unknown or deleted), else the status's refusal from
            tenantry_common.lifecycle: 403 ``tenant_suspended``, 503 ``tenant_unavailable`` with ``Retry-After``.
    """
    if tenant is None:
        raise GatewayError("No such tenant.", code="tenant_not_found", status=404)
    if tenant.status != _SERVED and (refused := refusal(tenant.status)) is not None:
        headers = {"retry-after": str(refused.retry_after)} if refused.retry_after else {}
        raise GatewayError(refused.detail, code=refused.code, status=refused.status, headers=headers)
    return tenant


def named_tenant(location: Location) -> TenantEntry:
    """Pass-through mode: the tenant the request names, with no credential asked (it must name one).

    Raises:
        GatewayError: 404 when it names none; :func:`served`'s refusals.
    """
    if location.named is None:
        raise GatewayError("The request names no tenant.", code="tenant_not_found", status=404)
    return served(location.tenant)


class Resolver:
    """Resolves location sources against the directory."""

    def __init__(self, directory: Directory, base_domain: str, trusted_proxies: tuple[Network, ...] = ()) -> None:
        """``trusted_proxies``: the peers whose ``X-Forwarded-*`` are believed (TRUSTED_PROXIES)."""
        self._directory = directory
        self._base = base_domain
        self._suffix = "." + base_domain
        self._trusted = trusted_proxies
        self._trusted_cache: dict[str, bool] = {}
        self._hosts: dict[bytes, str] = {}

    def _is_trusted(self, peer: str) -> bool:
        if not self._trusted:
            return False
        known = self._trusted_cache.get(peer)
        if known is None:
            try:
                address = ipaddress.ip_address(peer)
                known = any(address in network for network in self._trusted)
            except ValueError:
                known = False
            if len(self._trusted_cache) < _MAX_CACHED:
                self._trusted_cache[peer] = known
        return known

    def client_address(self, exchange: Exchange) -> str:
        """The client's address, for the brute-force counters of logins and sign-ups: the peer, or, when the peer is
        a trusted proxy, the nearest address in ``X-Forwarded-For`` that is not one (what the trusted proxies saw;
        entries further left are the client's own say). At most 64 characters.
        """
        address = exchange.conn.peer
        x_for = exchange.request.x_for
        if x_for and self._is_trusted(address):
            for entry in reversed(x_for.decode("latin-1").split(",")[-_MAX_FORWARDED_HOPS:]):
                hop = entry.strip()
                if not hop:
                    continue
                address = hop
                if not self._is_trusted(hop):
                    break
        return address[:_MAX_ADDRESS]

    def _host_name(self, raw: bytes) -> str:
        """The normalised host name (cached; an invalid host raises every time)."""
        name = self._hosts.get(raw)
        if name is None:
            name = normalize_host(raw.decode("latin-1"))
            if len(self._hosts) >= _MAX_CACHED:
                self._hosts.clear()
            self._hosts[raw] = name
        return name

    def locate(self, exchange: Exchange) -> Location:
        """Resolve a request, and note on the exchange what forwarding needs of this step: whether the peer is a
        trusted proxy, the Host in force (``X-Forwarded-Host`` from a trusted proxy) and the upstream path.

        Raises:
            GatewayError: as :meth:`resolve`.
        """
        request = exchange.request
        tracked = request.tracked
        trusted = exchange.trusted = self._is_trusted(exchange.conn.peer)
        x_host = tracked[X_HOST]
        host = x_host if trusted and x_host else tracked[HOST]
        tenant_ref = tracked[TENANT_ID]
        location = self.resolve(
            self._host_name(host) if host else "",
            request.path,
            request.raw_path,
            tenant_ref.decode("latin-1") if tenant_ref is not None else None,
        )
        exchange.host = host or b""
        exchange.upstream_path = location.upstream_path
        return location

    def _from_host(self, host: str) -> tuple[TenantEntry | None, str | None]:
        if not host or host == self._base:
            return None, None
        entry = self._directory.by_domain.get(host)
        if entry is not None:
            return entry, entry.id
        if host.endswith(self._suffix):
            label = host[: -len(self._suffix)]
            if "." in label or label in RESERVED_SLUGS:
                return None, None
            entry = self._directory.by_slug.get(label)
            return entry, (entry.id if entry else "slug:" + label)
        return None, None

    def resolve(self, host: str, path: str, raw_path: bytes, header_ref: str | None) -> Location:
        """Combine every location source.

        Raises:
            GatewayError: 400 ``tenant_conflict`` when sources disagree; 400 ``invalid_host`` for a bad host.
        """
        named: list[tuple[TenantEntry | None, str]] = []
        entry, ident = self._from_host(host)
        if ident is not None:
            named.append((entry, ident))
        upstream_path = raw_path
        if path.startswith("/t/") or path == "/t":
            parts = raw_path.split(b"/", 3)
            raw_slug = parts[2] if len(parts) > 2 else b""
            slug = unquote(raw_slug.decode("latin-1"))
            upstream_path = b"/" + parts[3] if len(parts) > 3 else b"/"
            if is_valid_slug(slug):
                entry = self._directory.by_slug.get(slug)
                named.append((entry, entry.id if entry else "slug:" + slug))
            else:
                named.append((None, "invalid:" + slug))
        if header_ref is not None:
            ref = header_ref.strip()
            entry = self._directory.find(ref)
            named.append((entry, entry.id if entry else "ref:" + ref.lower()))
        if not named:
            return Location(tenant=None, named=None, upstream_path=upstream_path)
        identities = {ident for _, ident in named}
        if len(identities) > 1:
            raise bad_request("tenant_conflict", "The request's host, path and X-Tenant-ID name different tenants.")
        tenant, ident = named[0]
        return Location(tenant=tenant, named=ident, upstream_path=upstream_path)
