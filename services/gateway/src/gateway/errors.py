"""The gateway's problem responses: raised anywhere in the pipeline, rendered once by the app."""

from __future__ import annotations

from tenantry_common.problems import ProblemError


class GatewayError(ProblemError):
    """A pipeline step refusing the request."""


def bad_request(code: str, detail: str) -> GatewayError:
    """400 with a specific code."""
    return GatewayError(detail, code=code, status=400)


UNAUTHORIZED_DETAIL = "A valid API key or access token for this tenant is required."


def unauthorized() -> GatewayError:
    """401, identical for every credential defect, so the answer says nothing about which."""
    return GatewayError(
        UNAUTHORIZED_DETAIL,
        code="unauthorized",
        status=401,
        headers={"www-authenticate": 'Bearer realm="tenantry"'},
    )
