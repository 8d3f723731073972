"""What the OpenAPI document says beyond the success bodies: the credentials and the error responses.

Every error is an RFC 9457 problem document (``application/problem+json``) with a ``code``; each handler lists the
statuses it can answer with :func:`problems`, so clients (and schemathesis) can rely on the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, Operation, RequestBody, SecurityRequirement, SecurityScheme

from tenantry_common.problems import PROBLEM_MEDIA_TYPE, FieldError


class Problem(msgspec.Struct):
    """An RFC 9457 problem document: the body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[FieldError] | None = None


_DESCRIPTIONS: Final[Mapping[int, str]] = {
    400: "The request is malformed (for example, the body is not JSON)",
    401: "No valid bearer token for this API",
    403: "The credential may not do this (to this tenant, or without the scope the endpoint needs)",
    404: "No such resource",
    409: "The request conflicts with the current state",
    413: "The request body is larger than TENANT_SERVICE_MAX_REQUEST_BODY_BYTES",
    415: "The request body is not JSON",
    422: "The request did not pass validation; `errors` names the fields",
    429: "Too many attempts (failed sign-ins, sign-ups); `Retry-After` says when to try again",
    500: "A stored secret cannot be read",
    503: "A dependency (the registry database, the tenant database cluster) is unavailable; retry",
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """The documented error responses of a handler: ``statuses``, and 400 (any request can be malformed).

    The 400 also replaces the response Litestar documents for its own validation errors, which the service never
    sends in that shape.
    """
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_MEDIA_TYPE,
            description=_DESCRIPTIONS[status],
            generate_examples=False,
        )
        for status in sorted({400, *statuses})
    }


@dataclass
class OptionalBodyOperation(Operation):
    """An operation whose JSON body may be left out (Litestar documents every body as required)."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


#: Security requirement of the admin API (``/admin``).
ADMIN_SECURITY: Final[list[SecurityRequirement]] = [{"adminToken": []}]


def service_security(scope: str) -> list[SecurityRequirement]:
    """Security requirement of an internal-API (``/internal``) endpoint: a service token holding ``scope``."""
    return [{"serviceToken": [scope]}]


#: The OpenAPI components naming both bearer schemes.
COMPONENTS: Final = Components(
    security_schemes={
        "adminToken": SecurityScheme(
            type="http", scheme="bearer", description="An admin token (ADMIN_TOKEN or one of ADMIN_TOKENS)"
        ),
        "serviceToken": SecurityScheme(
            type="http",
            scheme="bearer",
            description="A service token (SERVICE_TOKEN, GATEWAY_SERVICE_TOKEN or one of SERVICE_TOKENS) holding "
            "the endpoint's scope (SERVICE_TOKEN_SCOPES); without it, 403 insufficient_scope",
        ),
    }
)
