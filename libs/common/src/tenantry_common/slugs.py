"""Tenant slugs: the one definition of what a valid slug is."""

from __future__ import annotations

import re
from typing import Final

SLUG_MIN_LENGTH: Final = 3
SLUG_MAX_LENGTH: Final = 32
SLUG_PATTERN: Final = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")

#: Names a tenant can never take: they collide with platform hostnames, Postgres objects or our own paths.
RESERVED_SLUGS: Final = frozenset(
    {
        "admin", "api", "app", "apps", "assets", "auth", "billing", "cdn", "console", "dashboard", "default",
        "dev", "docs", "gateway", "help", "internal", "login", "logout", "mail", "metrics", "null", "oauth",
        "platform", "postgres", "public", "root", "signup", "smtp", "sso", "staging", "static", "status",
        "support", "system", "template", "template0", "template1", "tenant", "tenantry", "tenants", "test",
        "undefined", "www",
    }
)  # fmt: skip


def slug_problem(slug: str) -> str | None:
    """Say what is wrong with a slug.

    Args:
        slug: the candidate slug, as the client sent it.

    Returns:
        A human-readable reason, or ``None`` when the slug is valid.
    """
    if not SLUG_MIN_LENGTH <= len(slug) <= SLUG_MAX_LENGTH:
        return f"must be {SLUG_MIN_LENGTH} to {SLUG_MAX_LENGTH} characters long"
    if not SLUG_PATTERN.fullmatch(slug):
        return (
            "must start with a lowercase letter, end with a letter or digit, "
            "and contain only lowercase letters, digits and '-'"
        )
    if "--" in slug:
        return "must not contain '--'"
    if slug in RESERVED_SLUGS:
        return "is reserved"
    return None


def is_valid_slug(slug: str) -> bool:
    """Whether ``slug`` is a valid, non-reserved tenant slug."""
    return slug_problem(slug) is None
