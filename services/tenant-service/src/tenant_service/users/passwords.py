"""Password rules and hashing: argon2id (``argon2-cffi``), computed off the event loop, bounded in concurrency.

A password has at least 10 characters (at most 256), and is not one of the shipped common passwords, nor one
padded with digits and symbols, nor the account's email (contract §12: 422 ``weak_password``). Unknown accounts
are checked against a dummy hash made with the same parameters, so a sign-in takes the same time whether the
email exists or not.
"""

from __future__ import annotations

import asyncio
import re
from functools import cache
from importlib import resources
from typing import Final

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tenant_service.config import UserSettings
from tenantry_common.problems import FieldError, InvalidInputError

MIN_LENGTH: Final = 10
MAX_LENGTH: Final = 256
_PADDING: Final = re.compile(r"[\d\W_]+$")
_LEADING: Final = re.compile(r"^[\d\W_]+")


class WeakPasswordError(InvalidInputError):
    """Too short, too long, too common, or the account's email."""

    code = "weak_password"


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list, lower-cased."""
    text = resources.files("tenant_service.users").joinpath("common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def password_problem(password: str, email: str | None = None) -> str | None:
    """Why ``password`` is refused, or None."""
    if len(password) < MIN_LENGTH:
        return f"must have at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"must have at most {MAX_LENGTH} characters"
    if "\x00" in password:
        return "must not contain NUL"
    lowered = password.lower()
    common = common_passwords()
    base = _LEADING.sub("", _PADDING.sub("", lowered))
    if lowered in common or base in common or len(set(lowered)) <= 2:
        return "is too common"
    if email and (lowered == email.lower() or ((local := email.lower().partition("@")[0]) and base == local)):
        return "must not be the email"
    return None


def check_password(password: str, *, email: str | None = None, field: str = "password") -> None:
    """Refuse a weak password.

    Raises:
        WeakPasswordError: 422 ``weak_password`` naming ``field``.
    """
    if (problem := password_problem(password, email)) is not None:
        raise WeakPasswordError(f"the password {problem}", errors=[FieldError(field=field, message=problem)])


class PasswordHasher:
    """argon2id with the configured cost; hashing and verifying run in threads, ``hash_concurrency`` at once."""

    def __init__(self, settings: UserSettings) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=settings.hash_time_cost,
            memory_cost=settings.hash_memory_kib,
            parallelism=settings.hash_parallelism,
            type=argon2.Type.ID,
        )
        self._slots = asyncio.Semaphore(settings.hash_concurrency)
        self._dummy: str | None = None

    @property
    def parameters(self) -> str:
        """The parameters, as docs and benchmarks state them."""
        h = self._hasher
        return f"argon2id t={h.time_cost} m={h.memory_cost} KiB p={h.parallelism}"

    async def hash(self, password: str) -> str:
        """A new argon2id hash of ``password``."""
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await self.hash("tenantry dummy password, never anyone's")
        return self._dummy

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; with no stored hash, the same work against a dummy (False)."""
        target = stored if stored is not None else await self._dummy_hash()
        async with self._slots:
            try:
                ok: bool = await asyncio.to_thread(self._hasher.verify, target, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                ok = False
        return ok and stored is not None

    def needs_rehash(self, stored: str) -> bool:
        """The stored hash was made with other parameters (it is replaced at the next successful sign-in)."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True
