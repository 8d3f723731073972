"""Dependencies injected into HTTP handlers."""

from __future__ import annotations

from litestar.di import NamedDependency

from tenant_service.context import AppContext

#: The application context, provided as ``ctx``.
Ctx = NamedDependency[AppContext]
