"""structlog setup shared by the services: JSON in production, readable in a terminal, never a secret.

Request-scoped values (``request_id``, ``tenant_id``) are bound with :func:`structlog.contextvars.bind_contextvars`
and merged into every line. A redaction processor masks any field whose name says it is secret and any value
that looks like an API key, a bearer token or a URL with a password, wherever it appears.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

import structlog

from tenantry_common.settings import log_deprecated_settings

REDACTED: Final = "[redacted]"
_SECRET_NAMES: Final = re.compile(
    r"(pass(word|wd)?|secret|token|authorization|api[_-]?key|cookie|credential|private|encryption[_-]?key|dsn)",
    re.IGNORECASE,
)
_SECRET_VALUES: Final = (
    (re.compile(r"tk_[0-9A-Za-z]{6,}"), "tk_" + REDACTED),
    (re.compile(r"(?i)(bearer\s+)[\w\-.~+/=]+"), r"\1" + REDACTED),
    (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*"), REDACTED),
    (re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@"), r"\1" + REDACTED + "@"),
    (re.compile(r"(?i)(password\s*=\s*)('[^']*'|\S+)"), r"\1" + REDACTED),
    (re.compile(r"SCRAM-SHA-256\$[^\s']+"), REDACTED),
)


def redact_value(value: str) -> str:
    """Mask anything in ``value`` that looks like a secret."""
    for pattern, replacement in _SECRET_VALUES:
        value = pattern.sub(replacement, value)
    return value


def _redact(obj: Any, depth: int = 0) -> Any:
    if depth > 6:
        return obj
    if isinstance(obj, str):
        return redact_value(obj)
    if isinstance(obj, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_NAMES.search(k) else _redact(v, depth + 1))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [_redact(v, depth + 1) for v in obj]
    return obj


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets by field name and by value shape."""
    for key in list(event_dict):
        value = event_dict[key]
        if key not in ("event", "level", "timestamp", "logger") and _SECRET_NAMES.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(value)
    return event_dict


def configure_logging(service: str, *, fmt: str = "auto", level: str = "INFO") -> None:
    """Configure structlog and the standard library logging for one service.

    Args:
        service: the service name, added to every line.
        fmt: ``json``, ``console`` or ``auto`` (console when stderr is a terminal, else JSON).
        level: the minimum level name.

    Then logs the deprecated settings the process has read (see :func:`tenantry_common.settings.env_name`).
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)

    def add_service(_l: Any, _m: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_service,
    ]
    # Tracebacks are rendered to text before redaction in both formats: a pretty console traceback (with
    # locals) would otherwise print the secrets the redaction just masked.
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.StackInfoRenderer(),
                structlog.processors.format_exc_info,
                redact_processor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Settings are read before logging can be configured (they say how): what they found deprecated is said now.
    log_deprecated_settings()
