"""Reading configuration from the environment, the same way in every service.

A ``.env`` file may provide defaults for local work, but it never overrides a variable that is really set.

A renamed variable is read with :func:`env_name`, which falls back to its old name for one release; the
deprecations it meets are logged by :func:`log_deprecated_settings` once logging is set up (``configure_logging``
calls it), since settings are read before the log format is known.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def load_dotenv(path: Path | str = ".env") -> None:
    """Load ``KEY=value`` lines from ``path`` into the environment without overriding real variables."""
    file = Path(path)
    if not file.is_file():
        return
    for raw in file.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip().strip('"').strip("'")
        os.environ.setdefault(key, value)


@dataclass(frozen=True, slots=True)
class DeprecatedSetting:
    """A variable set under its old name."""

    old: str
    """The deprecated name."""
    new: str
    """The name that replaces it."""
    ignored: bool
    """The new name is set too, so the old one is not read."""

    def detail(self) -> str:
        """What the operator should do, in one sentence."""
        if self.ignored:
            return f"{self.old} is ignored because {self.new} is set; remove {self.old}"
        return f"{self.old} is deprecated and will not be read in the next release; rename it to {self.new}"


#: Deprecated names met by :func:`env_name` and not logged yet, in the order they were read.
_deprecated_in_use: dict[tuple[str, str], DeprecatedSetting] = {}


def env_name(name: str, *, deprecated: str) -> str:
    """The variable to read for a setting renamed from ``deprecated`` to ``name``: pass it to ``env_int`` & co.

    ``name`` when it is set (it wins when both are) or when neither is; else ``deprecated``, still honoured for
    one release. A set ``deprecated`` variable is noted for :func:`log_deprecated_settings`. Empty counts as unset,
    as everywhere in this module.
    """
    new_set, old_set = bool(os.environ.get(name)), bool(os.environ.get(deprecated))
    if old_set:
        _deprecated_in_use[deprecated, name] = DeprecatedSetting(old=deprecated, new=name, ignored=new_set)
    return deprecated if old_set and not new_set else name


def deprecated_settings_in_use() -> tuple[DeprecatedSetting, ...]:
    """The deprecated names read (or ignored) since the last :func:`log_deprecated_settings`."""
    return tuple(_deprecated_in_use.values())


def log_deprecated_settings() -> None:
    """Log a ``setting_deprecated`` warning for each deprecated name met so far, once, then forget them."""
    log = structlog.get_logger("tenantry.settings")
    for setting in deprecated_settings_in_use():
        log.warning(
            "setting_deprecated", variable=setting.old, replacement=setting.new, ignored=setting.ignored,
            detail=setting.detail(),
        )  # fmt: skip
    _deprecated_in_use.clear()


def env_str(name: str, default: str | None = None, *, required: bool = False) -> str:
    """A string variable; ``required`` raises :class:`ConfigError` when unset or empty."""
    value = os.environ.get(name)
    if value is None or value == "":
        if required or default is None:
            raise ConfigError(f"environment variable {name} is required")
        return default
    return value


def env_opt(name: str) -> str | None:
    """A string variable, or ``None`` when unset or empty."""
    value = os.environ.get(name)
    return value if value else None


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer variable within optional bounds."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        if minimum is None:
            raise ConfigError(f"{name} must be at most {maximum}, got {value}")
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    """A non-negative float variable (a timeout, an interval), at most ``maximum`` when given."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    """A boolean variable: 1/true/yes/on or 0/false/no/off."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be a boolean, got {raw!r}")


def env_list(name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A comma-separated list variable, blanks dropped."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def named_tokens(list_var: str, single_var: str, single_name: str) -> dict[str, str]:
    """Bearer tokens by name, from ``LIST_VAR="name:token,..."`` and/or a single ``SINGLE_VAR=token``.

    Raises:
        ConfigError: an entry has no name or no token.
    """
    tokens: dict[str, str] = {}
    for entry in env_list(list_var):
        name, sep, token = entry.partition(":")
        if not sep or not name or not token:
            raise ConfigError(f"{list_var} entries must look like name:token")
        tokens[name] = token
    single = env_opt(single_var)
    if single:
        tokens.setdefault(single_name, single)
    return tokens
