"""Which environment variables does the product's code read? Found statically, with ``ast``.

Used by the drift tests (docs, ``.env.example``, compose, chart values): each of them must know every variable
that :func:`env_vars_read_by_code` returns.

A read is a call of one of the ``tenantry_common.settings`` helpers (``env_str``, ``env_int``, ``env_float``,
``env_bool``, ``env_list``, ``env_opt``: the first argument; ``named_tokens``: the first two), or
``os.environ.get(...)``, ``os.getenv(...)``, ``os.environ[...]``, with a string literal or a module-level string
constant (``_ENV: Final = "NAME"``) as the name.

A renamed variable is read as ``env_int(env_name("NEW", deprecated="OLD"), ...)``: ``NEW`` counts as read, ``OLD``
is a deprecated alias (:func:`deprecated_env_vars`), still honoured by the code for one release but no longer set
by compose or the chart.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Trees holding the product's code. libs/devtools is left out on purpose: it is `make dev` and test tooling,
# never shipped in an image (the Dockerfile does not install it).
SOURCE_GLOBS: tuple[str, ...] = ("libs/*/src", "services/*/src")
DEV_ONLY_TREES: tuple[str, ...] = ("libs/devtools",)

# Variables read by shipped code that are not product configuration, each with the reason.
EXCLUDED: dict[str, str] = {
    "TENANTRY_FAILPOINTS": "test-only fault injection in tenant_service.failpoints; must never be set in production",
    "TENANTRY_RUN_DIR": "make dev / test tooling (libs/devtools): where .run/ state lives",
    "DEV_PG_PORT": "make dev only: port of its throw-away Postgres",
    "DEV_REDIS_PORT": "make dev only: port of its throw-away Redis",
    "TENANTRY_PG_BINDIR": "make dev / test tooling only: where the Postgres binaries are",
    "TENANTRY_PG_OS_USER": "make dev / test tooling only: the OS user that runs Postgres as root",
    "PATH": "the operating system's search path, handed on to pg_dump/pg_restore so that they find their own helpers",
    "GATEWAY_MODE": "make bench only: 'passthrough' turns authentication and quotas off; never in a deployment",
}

_SINGLE_NAME_HELPERS = frozenset({"env_str", "env_int", "env_float", "env_bool", "env_list", "env_opt"})
_TWO_NAME_HELPERS = frozenset({"named_tokens"})
_RENAMED_HELPER = "env_name"


def _module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "literal"`` and ``NAME: T = "literal"`` assignments."""
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            constants[node.target.id] = node.value.value
    return constants


def _callee_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _is_os_environ(node: ast.expr) -> bool:
    """``os.environ`` (or a bare ``environ`` imported from os)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == "environ"


def _is_getenv(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return (func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os") or (
            func.attr == "get" and _is_os_environ(func.value)
        )
    return isinstance(func, ast.Name) and func.id == "getenv"


def _renamed(node: ast.AST) -> tuple[ast.expr, ast.expr | None] | None:
    """``(new, old)`` of an ``env_name(new, deprecated=old)`` call, else ``None``."""
    if not (isinstance(node, ast.Call) and _callee_name(node.func) == _RENAMED_HELPER and node.args):
        return None
    old = next((k.value for k in node.keywords if k.arg == "deprecated"), node.args[1] if len(node.args) > 1 else None)
    return node.args[0], old


def _scan(source: str) -> tuple[set[str], dict[str, set[str]]]:
    """The names one module reads, and its deprecated aliases (old name → the new names replacing it)."""
    tree = ast.parse(source)
    constants = _module_constants(tree)

    def literal(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        if (renamed := _renamed(node)) is not None:
            return literal(renamed[0])
        return None

    aliases: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        renamed = _renamed(node)
        if renamed is not None and renamed[1] is not None:
            new, old = literal(renamed[0]), literal(renamed[1])
            if new and old:
                aliases.setdefault(old, set()).add(new)

    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[ast.expr] = []
        if isinstance(node, ast.Call):
            callee = _callee_name(node.func)
            if callee in _SINGLE_NAME_HELPERS:
                names = node.args[:1]
            elif callee in _TWO_NAME_HELPERS:
                names = node.args[:2]
            elif _is_getenv(node.func):
                names = node.args[:1]
        elif isinstance(node, ast.Subscript) and _is_os_environ(node.value):
            names = [node.slice]
        for arg in names:
            name = literal(arg)
            if name:
                found.add(name)
    # The helpers' own definitions read os.environ.get(name) with a parameter: not a literal, so not counted.
    return found, aliases


def env_vars_in_source(source: str) -> set[str]:
    """Every environment variable name one module reads (see the module docstring for what counts)."""
    return _scan(source)[0]


def deprecated_aliases_in_source(source: str) -> dict[str, set[str]]:
    """The deprecated names one module still honours: old name → the names that replace it."""
    return _scan(source)[1]


def source_files() -> list[Path]:
    """The product's Python files (dev-only trees left out)."""
    dev_only = [ROOT / tree for tree in DEV_ONLY_TREES]
    files: list[Path] = []
    for pattern in SOURCE_GLOBS:
        for tree in sorted(ROOT.glob(pattern)):
            if any(tree.is_relative_to(d) for d in dev_only):
                continue
            files.extend(sorted(tree.rglob("*.py")))
    return files


def env_vars_read_by_code(*, include_excluded: bool = False) -> dict[str, set[str]]:
    """Environment variable → the files (relative to the repo root) that read it.

    Variables in :data:`EXCLUDED` are left out unless ``include_excluded``.
    """
    result: dict[str, set[str]] = {}
    for path in source_files():
        for name in env_vars_in_source(path.read_text(encoding="utf-8")):
            if name in EXCLUDED and not include_excluded:
                continue
            result.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return result


def deprecated_env_vars() -> dict[str, set[str]]:
    """Deprecated variable → the variables that replace it, over the product's code."""
    result: dict[str, set[str]] = {}
    for path in source_files():
        for old, new in deprecated_aliases_in_source(path.read_text(encoding="utf-8")).items():
            result.setdefault(old, set()).update(new)
    return result
