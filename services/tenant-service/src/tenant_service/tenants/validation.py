"""Validation of tenant inputs that msgspec's types cannot express: domains, upstream and JWKS URLs."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from tenantry_common.addresses import IPAddress, forbidden_upstream_ip, reads_as_ipv4, unmapped
from tenantry_common.problems import FieldError, InvalidInputError, ProblemError

_LABEL: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_BLOCKED_HOSTS: Final = frozenset(
    {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}
)
#: A label of a host name in a JWKS URL (underscores allowed: some internal service names have them).
_HOST_LABEL: Final = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
#: A percent-encoded C0 control character or DEL.
_ENCODED_CONTROL: Final = re.compile(r"%(?:[01][0-9a-f]|7f)", re.IGNORECASE)


class UpstreamNotAllowedError(ProblemError):
    """An ``upstream_url`` outside ``UPSTREAM_ALLOWLIST``."""

    status = 422
    code = "upstream_not_allowed"


class JwksUrlNotAllowedError(ProblemError):
    """A ``jwks_url`` whose host may never be fetched, or ``http://`` to a host outside ``UPSTREAM_ALLOWLIST``."""

    status = 422
    code = "jwks_url_not_allowed"


def normalize_domain(raw: str, base_domain: str, field: str = "domain") -> str:
    """Lowercase, strip one trailing dot, and check a custom domain.

    Raises:
        InvalidInputError: not a valid hostname, or under the platform's base domain.
    """
    domain = raw.strip().lower().removesuffix(".")
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidInputError(
            "invalid domain", errors=[FieldError(field=field, message="must be a valid DNS hostname")]
        )
    if reads_as_ipv4(domain):
        raise InvalidInputError(
            "invalid domain",
            errors=[FieldError(field=field, message="must be a hostname, not an IP address in any spelling")],
        )
    base = base_domain.lower().removesuffix(".")
    if domain == base or domain.endswith("." + base):
        raise InvalidInputError(
            "invalid domain",
            errors=[FieldError(field=field, message=f"must not be under the platform domain {base!r}")],
        )
    return domain


def check_json_text(value: Any, field: str) -> None:
    """Refuse NUL characters in any string or key of a JSON value: Postgres JSONB cannot store them.

    Raises:
        InvalidInputError: a string or key contains NUL.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and "\x00" in item:
            raise InvalidInputError(
                f"invalid {field}", errors=[FieldError(field=field, message="must not contain NUL characters")]
            )


@dataclass(frozen=True)
class _HttpUrl:
    """An http(s) URL that passed the rules every URL the platform will fetch or forward to shares."""

    scheme: str
    host: str
    """Lowercase, without brackets or one trailing dot."""
    ip: IPAddress | None
    """The address the host spells, or None for a DNS name."""


def _url_problem(field: str, message: str) -> InvalidInputError:
    return InvalidInputError(f"invalid {field}", errors=[FieldError(field=field, message=message)])


def _http_url(url: str, field: str, malformed: str) -> _HttpUrl:
    """Check what ``upstream_url`` and ``jwks_url`` share.

    Printable ASCII without spaces (raw control characters and spaces could split the gateway's request line or a
    header), no percent-encoded control character (``%00``-``%1F``, ``%7F``: an upstream decodes them), ``http`` or
    ``https`` with a host and no userinfo, a port of 1 to 65535 if any (port 0 would silently become the default),
    and a host that is a DNS name or an IP address, IPv4 only as a canonical dotted quad.

    Raises:
        InvalidInputError: naming ``field``; ``malformed`` is the message for a URL of the wrong shape.
    """
    if not (url.isascii() and url.isprintable()) or " " in url:
        raise _url_problem(field, "must be printable ASCII, without spaces or control characters")
    if _ENCODED_CONTROL.search(url):
        raise _url_problem(field, "must not contain percent-encoded control characters (%00-%1F, %7F)")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().removesuffix(".")
        port = parts.port
    except ValueError:
        raise _url_problem(field, malformed) from None
    if parts.scheme not in ("http", "https") or not host or "@" in parts.netloc:
        raise _url_problem(field, malformed)
    if port == 0:
        raise _url_problem(field, "the port must be between 1 and 65535")
    try:
        ip: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None:
        if reads_as_ipv4(host):
            raise _url_problem(field, "an IPv4 host must be a dotted quad")
        # Brackets hold an IP address, never a name ("[v1.x]" is IPvFuture).
        if "[" in parts.netloc or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
            raise _url_problem(field, "the host must be a DNS name or an IP address")
    return _HttpUrl(scheme=parts.scheme, host=host, ip=ip)


def _never_allowed(host: str, ip: IPAddress | None) -> bool:
    """Link-local (cloud metadata), multicast, unspecified or reserved addresses and known metadata host names."""
    return (ip is not None and forbidden_upstream_ip(ip)) or host in _BLOCKED_HOSTS


def _allowlisted(host: str, ip: IPAddress | None, allowlist: tuple[str, ...]) -> bool:
    """Whether a host matches an ``UPSTREAM_ALLOWLIST`` entry: a glob of host names, or a CIDR for addresses."""
    for entry in allowlist:
        if "/" in entry:
            if ip is not None and ip in ipaddress.ip_network(entry, strict=False):
                return True
        elif fnmatch.fnmatchcase(host, entry.lower()):
            return True
    return False


def check_upstream_url(url: str, allowlist: tuple[str, ...], *, field: str = "upstream_url") -> str:
    """Accept an upstream URL only when its host is inside the allow-list; return it unchanged.

    The URL follows the shared rules of :func:`_http_url` (printable ASCII, no space or control character, raw or
    percent-encoded, a port of 1 to 65535, a DNS name or an IP address as host). Link-local (cloud metadata),
    multicast and unspecified addresses and known metadata hosts are refused even if allow-listed; so is a host
    that resolvers read as an IPv4 address but that is not a canonical dotted quad (``2852039166``,
    ``0xa9fea9fe``, ``169.254.43518``, ``0``), which no allow-list entry could judge. One trailing dot is ignored:
    ``metadata.google.internal.`` is the same host. A webhook's ``url`` follows the same rules (``field`` names it in
    errors).

    Raises:
        InvalidInputError: the URL is malformed.
        UpstreamNotAllowedError: the host is not allowed.
    """
    parsed = _http_url(url, field, "must be an http(s) URL with a host and no userinfo")
    if _never_allowed(parsed.host, parsed.ip) or not _allowlisted(parsed.host, parsed.ip, allowlist):
        raise UpstreamNotAllowedError(
            f"host {parsed.host!r} is not in UPSTREAM_ALLOWLIST",
            errors=[FieldError(field=field, message="the host must be in UPSTREAM_ALLOWLIST")],
        )
    return url


def check_jwks_url(url: str, allowlist: tuple[str, ...]) -> str:
    """Accept the JWKS URL of a tenant's external JWT issuer, which gateways will fetch; return it unchanged.

    It must be an absolute ``https://`` URL with a host (a DNS name or an IP address), no userinfo and no fragment,
    in printable ASCII. A plain ``http://`` URL, or a private or loopback IP address, is accepted only for a host in
    ``UPSTREAM_ALLOWLIST`` (an identity provider on the platform's own network, or local development). Whatever the
    scheme, the hosts an upstream may never be (link-local and metadata addresses, metadata host names, IPv4 hosts
    that are not a dotted quad) are refused, as for ``upstream_url``.

    Raises:
        InvalidInputError: the URL is malformed.
        JwksUrlNotAllowedError: the host is never allowed, or ``http://`` or a private address outside the allow-list.
    """
    field = "jwks_url"
    malformed = "must be an absolute https:// URL with a host, no userinfo and no fragment"
    parsed = _http_url(url, field, malformed)
    if "#" in url:
        raise _url_problem(field, malformed)
    host, ip = parsed.host, parsed.ip
    if _never_allowed(host, ip):
        raise JwksUrlNotAllowedError(
            f"JWKS host {host!r} is not allowed",
            errors=[FieldError(field=field, message="a link-local, metadata or reserved host is never allowed")],
        )
    if parsed.scheme == "http" and not _allowlisted(host, ip, allowlist):
        raise JwksUrlNotAllowedError(
            f"JWKS host {host!r} is not in UPSTREAM_ALLOWLIST: use https://",
            errors=[FieldError(field=field, message="http:// is allowed only for hosts in UPSTREAM_ALLOWLIST")],
        )
    if ip is not None and not unmapped(ip).is_global and not _allowlisted(host, ip, allowlist):
        raise JwksUrlNotAllowedError(
            f"JWKS host {host!r} is a private address outside UPSTREAM_ALLOWLIST",
            errors=[FieldError(field=field, message="a private or loopback address must be in UPSTREAM_ALLOWLIST")],
        )
    return url
