"""Step 1 — resolve: which tenant do the request's location sources name?

Sources: the Host (a subdomain of BASE_DOMAIN or a registered custom domain), the ``/t/{slug}/`` path prefix and
the ``X-Tenant-ID`` header. All that are present must name the same tenant. A credential's tenant is checked
against the result by the authentication step.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from gateway.directory import Directory, TenantEntry
from gateway.errors import bad_request
from tenantry_common.slugs import RESERVED_SLUGS, is_valid_slug

_HOSTNAME: Final = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


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


class Resolver:
    """Resolves location sources against the directory."""

    def __init__(self, directory: Directory, base_domain: str) -> None:
        self._directory = directory
        self._base = base_domain
        self._suffix = "." + base_domain

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
