"""RFC 9457 problem details: the one error shape of every Tenantry HTTP response.

Domain code raises :class:`ProblemError` (or a subclass); each app turns it into ``application/problem+json``
with a stable machine-readable ``code``. This module is framework-free so the gateway's own HTTP server can
render the same bodies as the Litestar services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final

import msgspec

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
_TYPE_BASE: Final = "urn:tenantry:problem:"


class FieldError(msgspec.Struct, frozen=True):
    """One offending field of a rejected request."""

    field: str
    message: str


class ProblemError(Exception):
    """An error that reaches the client as problem details.

    Subclasses fix ``status`` and a default ``code``; instances may override ``code`` and add a ``detail``.
    """

    status: int = 500
    code: str = "internal_error"
    title: str | None = None

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or code or self.code)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.detail = detail
        self.errors = tuple(errors)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The problem document as a dict."""
        return problem_document(
            self.status,
            self.code,
            detail=self.detail,
            title=self.title,
            errors=self.errors,
            instance=instance,
            extra=self.extra,
        )


class BadRequestError(ProblemError):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class UnauthorizedError(ProblemError):
    """No valid credential."""

    status = 401
    code = "unauthorized"


class ForbiddenError(ProblemError):
    """A valid credential that may not do this."""

    status = 403
    code = "forbidden"


class NotFoundError(ProblemError):
    """The named resource does not exist."""

    status = 404
    code = "not_found"


class ConflictError(ProblemError):
    """The request conflicts with the current state."""

    status = 409
    code = "conflict"


class PayloadTooLargeError(ProblemError):
    """The request body is larger than allowed."""

    status = 413
    code = "payload_too_large"


class InvalidInputError(ProblemError):
    """The request is well-formed but its content is invalid; ``errors`` names the fields."""

    status = 422
    code = "validation_error"


class UnavailableError(ProblemError):
    """A dependency needed to answer is unavailable right now."""

    status = 503
    code = "service_unavailable"


def problem_document(
    status: int,
    code: str,
    *,
    detail: str | None = None,
    title: str | None = None,
    errors: Sequence[FieldError] = (),
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a problem-details document."""
    try:
        default_title = HTTPStatus(status).phrase
    except ValueError:
        default_title = "Error"
    doc: dict[str, Any] = {
        "type": _TYPE_BASE + code,
        "title": title or default_title,
        "status": status,
        "detail": detail or title or default_title,
        "code": code,
    }
    if instance:
        doc["instance"] = instance
    if errors:
        doc["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    if extra:
        for key, value in extra.items():
            doc.setdefault(key, value)
    return doc


def problem_bytes(status: int, code: str, **kwargs: Any) -> bytes:
    """A problem document already encoded as JSON."""
    return msgspec.json.encode(problem_document(status, code, **kwargs))
