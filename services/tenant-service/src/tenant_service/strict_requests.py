"""The admin and internal APIs take exactly what they document: JSON bodies typed strictly, known query parameters.

Litestar converts a handler's arguments leniently (a string ``"10"`` becomes the integer 10), which suits query
strings but not JSON bodies; it decodes any body as JSON whatever its ``Content-Type``; and it ignores query
parameters it does not know, so a typo (``?stauts=active``) silently changes nothing, and takes the last of a
repeated one (``?purge=false&purge=true`` purges), which a proxy in front may read differently.
:func:`strict_request` runs before every handler (after its guards) and refuses all of these, like unknown body
fields are refused.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
from litestar import Request
from litestar.enums import ParamType
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import DependencyKwarg, ParameterKwarg

from tenantry_common.problems import BadRequestError, FieldError, InvalidInputError, ProblemError

_JSON_MEDIA_TYPE: Final = re.compile(r"application/(?:[a-z0-9.+-]+\+)?json")
#: Handler arguments Litestar fills from the connection itself, never from the query string.
_RESERVED: Final = frozenset({"request", "socket", "scope", "state", "headers", "cookies", "query", "body", "data"})
_MALFORMED: Final = "The request body is not valid JSON."
#: One strict decoder per body type (there are a handful).
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


class UnsupportedMediaTypeError(ProblemError):
    """A request body that is not declared as JSON."""

    status = 415
    code = "unsupported_media_type"


def _decoder(annotation: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(annotation)
    if decoder is None:
        decoder = _decoders[annotation] = msgspec.json.Decoder(annotation, strict=True)
    return decoder


def _declared_query(handler: HTTPRouteHandler) -> dict[str, bool]:
    """The query parameters a handler declares, each with whether it may repeat (a list)."""
    dependencies = handler.resolve_dependencies()
    in_path = {m.group(1) for path in handler.paths for m in re.finditer(r"\{(\w+)", path)}
    declared: dict[str, bool] = {}
    for name, field in handler.parsed_fn_signature.parameters.items():
        definition = field.kwarg_definition
        if name in _RESERVED or name in dependencies or name in in_path or isinstance(definition, DependencyKwarg):
            continue
        if not isinstance(definition, ParameterKwarg):
            declared[name] = field.is_non_string_sequence
        elif definition.param_type is ParamType.QUERY:
            declared[definition.name or name] = field.is_non_string_sequence
    return declared


def _check_query(request: Request[Any, Any, Any]) -> None:
    declared = _declared_query(request.route_handler)
    errors = [
        FieldError(field=name[:100], message="unknown query parameter")
        for name in sorted(set(request.query_params) - set(declared))
    ]
    errors += [
        FieldError(field=name, message="given more than once")
        for name, repeats in declared.items()
        if not repeats and len(request.query_params.getall(name, [])) > 1
    ]
    if errors:
        raise InvalidInputError("unknown or repeated query parameter", errors=errors[:10])


async def _check_body(request: Request[Any, Any, Any]) -> None:
    field = request.route_handler.parsed_fn_signature.parameters.get("data")
    if field is None:
        return
    body = await request.body()
    if not body:
        return
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if not _JSON_MEDIA_TYPE.fullmatch(media_type):
        raise UnsupportedMediaTypeError("The request body must be JSON, sent with Content-Type: application/json.")
    try:
        _decoder(field.annotation).decode(body)
    except msgspec.ValidationError as exc:
        _check_syntax(body)  # typed decoding stops at the first wrong value, maybe before a syntax error
        raise ValidationException(str(exc), extra=[{"message": str(exc), "source": "body"}]) from None
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec reports invalid UTF-8 in a string this way
        raise BadRequestError(_MALFORMED, code="malformed_body") from None


def _check_syntax(body: bytes) -> None:
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise BadRequestError(_MALFORMED, code="malformed_body") from None


async def strict_request(request: Request[Any, Any, Any]) -> None:
    """Before a guarded handler: refuse unknown or repeated query parameters (422), a body that is not JSON (415),
    malformed JSON (400) and JSON values of the wrong type (422). Unguarded routes (health, metrics, the schema) and
    ``OPTIONS`` are left alone.

    Raises:
        InvalidInputError: a query parameter the handler does not declare, or a single-valued one given twice.
        UnsupportedMediaTypeError: a non-empty body whose ``Content-Type`` is not JSON.
        BadRequestError: the body is not JSON (or not UTF-8).
        ValidationException: the body does not match the handler's type without coercion.
    """
    if request.method == "OPTIONS" or not request.route_handler.resolve_guards():
        return
    _check_query(request)
    await _check_body(request)
