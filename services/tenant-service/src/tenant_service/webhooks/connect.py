"""The delivery client's connect-time address check: a webhook URL's host is resolved when connecting, and only an
address that may be an upstream (contract §5: never link-local, cloud metadata, multicast, unspecified or
reserved) is connected to.

The admin API checks the URL when the webhook is created; this catches what it cannot see: a host name whose DNS
answer (perhaps changed since, "DNS rebinding") points at a metadata address. aiohttp connects to the addresses the
resolver returns, so a second lookup cannot swap them.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from tenantry_common.addresses import forbidden_upstream_ip


class ForbiddenAddressError(OSError):
    """The host resolves only to addresses a webhook may never reach."""


def forbidden_address(address: str) -> bool:
    """Whether ``address`` (maybe with a ``%scope``) may never be connected to."""
    try:
        return forbidden_upstream_ip(ipaddress.ip_address(address.partition("%")[0]))
    except ValueError:
        return True


def check_literal(host: str) -> None:
    """Refuse an IP-address host that may never be reached (aiohttp does not ask the resolver about those).

    Raises:
        ForbiddenAddressError: it is such an address.
    """
    try:
        ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        return
    if forbidden_address(host.strip("[]")):
        raise ForbiddenAddressError(f"{host} is a forbidden address (link-local, metadata or reserved)")


class SafeResolver(AbstractResolver):
    """Resolve with ``base`` (the system's resolver unless given), then drop every forbidden address."""

    def __init__(self, base: AbstractResolver | None = None) -> None:
        self._base = base or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._base.resolve(host, port, family)
        allowed = [r for r in results if not forbidden_address(str(r["host"]))]
        if not allowed:
            raise ForbiddenAddressError(
                f"{host} resolves only to forbidden addresses (link-local, metadata or reserved)"
            )
        return allowed

    async def close(self) -> None:
        await self._base.close()


class StaticResolver(AbstractResolver):
    """Answers from a fixed host → addresses map (tests and benchmarks pin names with it, like ``/etc/hosts``)."""

    def __init__(self, hosts: dict[str, list[str]]) -> None:
        self._hosts = hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._hosts.get(host)
        if not addresses:
            raise OSError(f"cannot resolve {host}")
        out: list[ResolveResult] = []
        for address in addresses:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            out.append({"hostname": host, "host": address, "port": port, "family": fam, "proto": 0, "flags": 0})
        return out

    async def close(self) -> None:
        return None


def refused(exc: BaseException) -> ForbiddenAddressError | None:
    """The address refusal behind a client error, if that is what it is."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ForbiddenAddressError):
            return current
        current = getattr(current, "os_error", None) or current.__cause__ or current.__context__
    return None
