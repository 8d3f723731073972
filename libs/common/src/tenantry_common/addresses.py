"""Which network addresses may never be an upstream: one rule for the admin API and the gateway.

The tenant-service refuses such an ``upstream_url`` when it is set; the gateway checks again at connect time,
because a host name's DNS answer can change after the check.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud metadata endpoints outside the link-local ranges (Alibaba Cloud; AWS IMDS over IPv6).
METADATA_ADDRESSES: Final = frozenset({ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")})

#: A label that is a number: decimal, octal (leading 0) or hexadecimal (0x, digits optional).
_NUMERIC_LABEL: Final = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)


def reads_as_ipv4(host: str) -> bool:
    """Whether some resolver takes ``host`` for an IPv4 address: its last label (one trailing dot ignored) is a number.

    That is the WHATWG URL standard's "ends in a number" rule, and what ``inet_aton`` accepts: ``127.1``,
    ``0x7f.0x1``, ``0177.0.0.1``, ``2130706433`` and ``0x7f000001`` all mean 127.0.0.1. Such a host is an address,
    never a name, and anything but a canonical dotted quad is a spelling no allow-list entry can judge.
    """
    return bool(_NUMERIC_LABEL.fullmatch(host.removesuffix(".").rsplit(".", 1)[-1]))


def unmapped(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``), else ``ip``: judge that one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def forbidden_upstream_ip(ip: IPAddress) -> bool:
    """Link-local (cloud metadata), multicast, unspecified, reserved or a known metadata address.

    An IPv4-mapped IPv6 address is judged by its IPv4 address; loopback is allowed (local development).
    """
    ip = unmapped(ip)
    if ip in METADATA_ADDRESSES:
        return True
    return not ip.is_loopback and (ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved)
