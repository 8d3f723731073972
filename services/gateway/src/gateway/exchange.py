"""One request on its way through the pipeline: the record each step fills in for the steps after it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from gateway.errors import GatewayError
from gateway.http import Header, HttpConnection, Request
from tenantry_common.problems import PROBLEM_MEDIA_TYPE, problem_bytes

if TYPE_CHECKING:
    from gateway.authenticate import Principal
    from gateway.directory import TenantEntry

_PROBLEM: Final = PROBLEM_MEDIA_TYPE.encode()


class Exchange:
    """A request, its connection and what the pipeline learnt of it so far (built per request: slots only)."""

    __slots__ = (
        "conn",
        "credential_header",
        "host",
        "principal",
        "quota_headers",
        "request",
        "request_id",
        "tenant",
        "trusted",
        "upstream_path",
    )

    def __init__(self, request: Request, conn: HttpConnection, request_id: bytes) -> None:
        self.request = request
        self.conn = conn
        #: The X-Request-ID of the response, the upstream request and the access log.
        self.request_id = request_id
        # resolve: whether the peer is a trusted proxy (its X-Forwarded-* are believed), the Host in force, and
        # the path the upstream receives.
        self.trusted = False
        self.host = b""
        self.upstream_path = request.raw_path
        # authenticate: who calls (None in pass-through mode), the header the credential came in (never
        # forwarded), and the tenant the request is served for.
        self.principal: Principal | None = None
        self.credential_header = b""
        self.tenant: TenantEntry | None = None
        # limit: the RateLimit-* headers of the response.
        self.quota_headers: tuple[Header, ...] = ()

    def refuse(self, problem: GatewayError, extra: Sequence[Header] = ()) -> None:
        """Answer with ``problem`` as problem+json (with the request id, the problem's headers, then ``extra``)."""
        body = problem_bytes(problem.status, problem.code, detail=problem.detail, errors=problem.errors)
        headers = [(k.encode(), v.encode()) for k, v in problem.headers.items()]
        self.conn.respond(
            self.request, problem.status, body, _PROBLEM, [(b"x-request-id", self.request_id), *headers, *extra]
        )
