"""Validation of tenant inputs that msgspec's types cannot express: domains and upstream URLs."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from typing import Any, Final
from urllib.parse import urlsplit

from tenantry_common.addresses import forbidden_upstream_ip
from tenantry_common.problems import FieldError, InvalidInputError, ProblemError

_LABEL: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_BLOCKED_HOSTS: Final = frozenset(
    {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}
)
#: A last label that is a number (decimal, octal or 0x-hex): resolvers read such a host as an IPv4 address.
_NUMERIC_LABEL: Final = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class UpstreamNotAllowedError(ProblemError):
    """An ``upstream_url`` outside ``UPSTREAM_ALLOWLIST``."""

    status = 422
    code = "upstream_not_allowed"


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
    if labels[-1].isdigit():
        raise InvalidInputError(
            "invalid domain", errors=[FieldError(field=field, message="must be a hostname, not an address")]
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


def check_upstream_url(url: str, allowlist: tuple[str, ...]) -> str:
    """Accept an upstream URL only when its host is inside the allow-list; return it normalised.

    Link-local (cloud metadata), multicast and unspecified addresses and known metadata hosts are refused even if
    allow-listed; so is a host that resolvers read as an IPv4 address but that is not a canonical dotted quad
    (``2852039166``, ``0xa9fea9fe``, ``169.254.43518``, ``0``), which no allow-list entry could judge. One
    trailing dot is ignored: ``metadata.google.internal.`` is the same host.

    Raises:
        InvalidInputError: the URL is malformed.
        UpstreamNotAllowedError: the host is not allowed.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().removesuffix(".")
        _ = parts.port
        valid = parts.scheme in ("http", "https") and bool(host) and not (parts.username or parts.password)
    except ValueError:
        valid, host = False, ""
    if not valid:
        raise InvalidInputError(
            "invalid upstream_url",
            errors=[FieldError(field="upstream_url", message="must be an http(s) URL with a host and no userinfo")],
        )
    refusal = UpstreamNotAllowedError(f"upstream host {host!r} is not in UPSTREAM_ALLOWLIST")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
        if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
            raise InvalidInputError(
                "invalid upstream_url",
                errors=[FieldError(field="upstream_url", message="an IPv4 host must be a dotted quad")],
            ) from None
    if (ip is not None and forbidden_upstream_ip(ip)) or host in _BLOCKED_HOSTS:
        raise refusal
    for entry in allowlist:
        if "/" in entry:
            if ip is not None and ip in ipaddress.ip_network(entry, strict=False):
                return url
        elif fnmatch.fnmatchcase(host, entry.lower()):
            return url
    raise refusal
