"""Console sessions: a random 256-bit id in the cookie, only its SHA-256 in the registry, with idle and absolute
expiry and a per-session CSRF secret. The admin token itself is never stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, or_, select, update

from tenant_service.config import ConsoleSettings
from tenant_service.context import AppContext
from tenant_service.db.models import AuditEntry, ConsoleSession
from tenantry_common.timeutil import utcnow

COOKIE = "tenantry_console"
#: Failed sign-ins one client address may make within ``FAILURE_WINDOW_SECONDS`` before it is refused (429).
MAX_FAILURES = 10
FAILURE_WINDOW_SECONDS = 900
#: How often a session's ``last_seen_at`` is written at most (an idle expiry this coarse is fine).
_TOUCH_EVERY = timedelta(seconds=15)


def id_hash(session_id: str) -> bytes:
    """What the registry keeps of a session id."""
    return hashlib.sha256(session_id.encode()).digest()


def token_mac(secret: bytes, token: str) -> bytes:
    """What a session keeps of the admin token that opened it: enough to notice the token is gone, not to use it."""
    return hmac.new(secret, b"tenantry-console-token\x00" + token.encode(), hashlib.sha256).digest()


def csrf_token(secret: bytes) -> str:
    """The CSRF token of a session's forms (derived from its secret; the secret itself never leaves the server)."""
    return hmac.new(secret, b"tenantry-console-csrf", hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, presented: str | None) -> bool:
    """Whether ``presented`` is the session's CSRF token (compared in constant time)."""
    return hmac.compare_digest(csrf_token(secret).encode(), (presented or "").encode())


@dataclass(frozen=True)
class SignedIn:
    """A live session, as the pages see it."""

    actor: str
    csrf: str


async def create_session(ctx: AppContext, token_name: str, token: str) -> str:
    """A new session opened with the admin token ``token_name``; returns the id for the cookie (the registry keeps
    only its hash)."""
    session_id = secrets.token_urlsafe(32)  # 256 bits
    secret = secrets.token_bytes(32)
    row = ConsoleSession(
        id_hash=id_hash(session_id),
        actor=f"admin:{token_name}",
        csrf_secret=secret,
        token_mac=token_mac(secret, token),
    )
    async with ctx.sessions() as session, session.begin():
        session.add(row)
    return session_id


def _token_still_configured(ctx: AppContext, row: ConsoleSession) -> bool:
    name = row.actor.removeprefix("admin:")
    token = ctx.settings.security.admin_tokens.get(name)
    return token is not None and hmac.compare_digest(token_mac(row.csrf_secret, token), bytes(row.token_mac))


async def load_session(ctx: AppContext, session_id: str | None, settings: ConsoleSettings) -> SignedIn | None:
    """The live session of a cookie, touched; None (and the row deleted) when it is unknown, expired, or its admin
    token is no longer configured (removed or changed)."""
    if not session_id or len(session_id) > 128:
        return None
    key = id_hash(session_id)
    now = utcnow()
    async with ctx.sessions() as session, session.begin():
        row = (await session.execute(select(ConsoleSession).where(ConsoleSession.id_hash == key))).scalar_one_or_none()
        if row is None:
            return None
        idle = now - row.last_seen_at > timedelta(seconds=settings.session_idle_seconds)
        too_old = now - row.created_at > timedelta(seconds=settings.session_max_seconds)
        if idle or too_old or not _token_still_configured(ctx, row):
            await session.execute(delete(ConsoleSession).where(ConsoleSession.id_hash == key))
            return None
        if now - row.last_seen_at > _TOUCH_EVERY:
            await session.execute(update(ConsoleSession).where(ConsoleSession.id_hash == key).values(last_seen_at=now))
        return SignedIn(actor=row.actor, csrf=csrf_token(row.csrf_secret))


async def end_session(ctx: AppContext, session_id: str) -> None:
    """Sign out: the session's row is deleted."""
    async with ctx.sessions() as session, session.begin():
        await session.execute(delete(ConsoleSession).where(ConsoleSession.id_hash == id_hash(session_id)))


async def sweep_sessions(ctx: AppContext, settings: ConsoleSettings) -> int:
    """Delete expired sessions; the number deleted."""
    now = utcnow()
    async with ctx.sessions() as session, session.begin():
        result = await session.execute(
            delete(ConsoleSession).where(
                or_(
                    ConsoleSession.last_seen_at < now - timedelta(seconds=settings.session_idle_seconds),
                    ConsoleSession.created_at < now - timedelta(seconds=settings.session_max_seconds),
                )
            )
        )
    return int(getattr(result, "rowcount", 0) or 0)


async def recent_failures(ctx: AppContext, address: str) -> int:
    """Failed sign-ins from ``address`` within ``FAILURE_WINDOW_SECONDS`` since its last successful one, from the
    audit log (every replica's, kept across restarts; ``ix_audit_console_sign_in``)."""
    last_success = (
        select(func.coalesce(func.max(AuditEntry.id), 0))
        .where(AuditEntry.action == "console.sign_in", AuditEntry.target == address)
        .scalar_subquery()
    )
    query = select(func.count()).where(
        AuditEntry.action == "console.sign_in_failed",
        AuditEntry.target == address,
        AuditEntry.id > last_success,
        AuditEntry.at > utcnow() - timedelta(seconds=FAILURE_WINDOW_SECONDS),
    )
    async with ctx.sessions() as session:
        return int((await session.execute(query)).scalar_one())


class SignInThrottle:
    """Failed sign-ins per client address in a sliding window, in this process: past ``MAX_FAILURES``, refused. It
    stops a burst of concurrent guesses that the audit log's count (:func:`recent_failures`, which covers every
    replica) would only see once they are recorded."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        window = self._failures.setdefault(address, deque())
        horizon = time.monotonic() - FAILURE_WINDOW_SECONDS
        while window and window[0] < horizon:
            window.popleft()
        return window

    def blocked(self, address: str) -> bool:
        """Whether this address has used up its failures."""
        return len(self._recent(address)) >= MAX_FAILURES

    def succeeded(self, address: str) -> None:
        """A successful sign-in: the count starts again (as the audit log's does)."""
        self._failures.pop(address, None)

    def failed(self, address: str) -> None:
        """Count a failure."""
        if len(self._failures) > 10_000:  # bound the memory an address sweep could take
            self._failures.clear()
        self._recent(address).append(time.monotonic())
