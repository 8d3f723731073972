"""Litestar integration of :mod:`tenantry_common.problems`: one handler map per app."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.types import ExceptionHandlersMap

from tenantry_common.problems import PROBLEM_MEDIA_TYPE, FieldError, ProblemError, problem_document

_log = structlog.get_logger("tenantry.errors")

_STATUS_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    431: "request_header_fields_too_large",
    503: "service_unavailable",
}
_MSGSPEC_PATH = re.compile(r"at `\$((?:\.[A-Za-z_][\w]*|\[\d+\])*)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


def problem_response(
    status: int, code: str, headers: Mapping[str, str] | None = None, **kwargs: Any
) -> Response[bytes]:
    """A Litestar response carrying a problem document."""
    body = msgspec.json.encode(problem_document(status, code, **kwargs))
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _field_errors(exc: ValidationException) -> list[FieldError]:
    """Turn Litestar/msgspec validation details into ``field``/``message`` pairs without echoing input."""
    errors: list[FieldError] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid value"))
        field = item.get("key")
        for pattern in (_UNKNOWN_FIELD, _MISSING_FIELD):
            match = pattern.search(message)
            if match:
                prefix = _MSGSPEC_PATH.search(message)
                path = prefix.group(1).lstrip(".") if prefix else ""
                if not path and item.get("source") == "body" and field not in (None, "data"):
                    path = str(field)  # Litestar cuts msgspec's "- at `$.x`"; its key names the nested object
                field = f"{path}.{match.group(1)}" if path else match.group(1)
        if not field:
            match = _MSGSPEC_PATH.search(message)
            field = match.group(1).lstrip(".") if match and match.group(1) else "body"
        errors.append(FieldError(field=str(field), message=message))
    if not errors:
        errors.append(FieldError(field="body", message=exc.detail or "invalid request body"))
    return errors


def _on_problem(request: Request[Any, Any, Any], exc: ProblemError) -> Response[bytes]:
    return problem_response(
        exc.status,
        exc.code,
        headers=exc.headers,
        detail=exc.detail,
        title=exc.title,
        errors=exc.errors,
        instance=request.url.path,
        extra=exc.extra,
    )


def _on_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    errors = _field_errors(exc)
    malformed = any("malformed" in e.message.lower() or "invalid json" in e.message.lower() for e in errors)
    if malformed:
        return problem_response(
            400, "malformed_body", detail="The request body is not valid JSON.", instance=request.url.path
        )
    return problem_response(
        422,
        "validation_error",
        detail="The request did not pass validation: " + "; ".join(f"{e.field}: {e.message}" for e in errors),
        errors=errors,
        instance=request.url.path,
    )


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    code = _STATUS_CODES.get(status, "error" if status < 500 else "internal_error")
    detail = exc.detail if status < 500 else None
    return problem_response(status, code, headers=exc.headers, detail=detail, instance=request.url.path)


def _on_too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[bytes]:
    """msgspec raises RecursionError (not a DecodeError) on JSON nested beyond its depth limit: a client error."""
    _log.warning("request_too_deep", path=request.url.path)
    return problem_response(
        400, "malformed_body", detail="The request body is nested too deeply.", instance=request.url.path
    )


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    _log.error("unhandled_error", path=request.url.path, error_type=type(exc).__name__, exc_info=exc)
    return problem_response(500, "internal_error", detail="An unexpected error occurred.", instance=request.url.path)


def problem_exception_handlers() -> ExceptionHandlersMap:
    """The exception handler map that makes every error of a Litestar app a problem document."""
    handlers: dict[type[Exception] | int, Callable[..., Response[Any]]] = {
        ProblemError: _on_problem,
        ValidationException: _on_validation,
        NotAuthorizedException: _on_http,
        PermissionDeniedException: _on_http,
        NotFoundException: _on_http,
        MethodNotAllowedException: _on_http,
        HTTPException: _on_http,
        RecursionError: _on_too_deep,
        Exception: _on_unexpected,
    }
    return handlers


__all__ = ["MediaType", "problem_exception_handlers", "problem_response"]
