"""The tenant-service's internal API for tenant apps: the shapes both sides of the wire use.

``GET /internal/v1/tenants/{id}/database`` (service token with the ``credentials:vend`` scope) answers
:class:`DatabaseCredentials`. The gateways' directory feed has its own module, :mod:`tenantry_common.directory`.
"""

from __future__ import annotations

import msgspec


class DatabaseCredentials(msgspec.Struct, frozen=True):
    """What a tenant app needs to connect to one tenant's database, as that tenant's own role."""

    host: str
    port: int
    database: str
    user: str
    password: str

    def __repr__(self) -> str:
        # A repr ends up in tracebacks and log lines; the password never does.
        return (
            f"DatabaseCredentials(host={self.host!r}, port={self.port!r}, database={self.database!r}, "
            f"user={self.user!r}, password='[redacted]')"
        )


decode_database_credentials = msgspec.json.Decoder(DatabaseCredentials).decode
"""Parse the endpoint's JSON answer.

Raises:
    msgspec.DecodeError: not JSON, or not the shape above (``msgspec.ValidationError``).
"""
