"""Tenant users (contract §12): accounts and invitations, sign-in, sessions with rotating refresh tokens, sign-up.

Every lookup names the tenant first: an email is unique within one tenant only, and the same person may be a user
of several tenants with different passwords and roles. The gateway holds no hash and no refresh token; it asks
here (``/internal/v1/auth/*``) and signs the access token itself.

Sessions: a sign-in starts a session, a family of refresh tokens; each refresh spends its token and issues the
next one. Presenting a spent token is taken as theft (either the thief or the user holds a copy): the whole
family is revoked. A revoked session is in the directory feed for a day (``revoked_sessions``), so gateways also
refuse the access tokens issued in it. Logout, a password change (the other sessions), a changed role, a disabled
or deleted user revoke sessions too.

Secrets: invitation and refresh tokens are 256-bit random strings stored as SHA-256 digests; passwords as argon2id
hashes (:mod:`tenant_service.users.passwords`). None of them is logged, audited or listed.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.audit.service import record
from tenant_service.changes import Unit, unit_of_work
from tenant_service.context import AppContext
from tenant_service.cursors import decode_cursor, split_page
from tenant_service.db.models import RefreshToken, Tenant, TenantUser, UserInvitation, UserSession
from tenant_service.tenants.lookup import TenantNotFoundError, find_tenant, touch
from tenant_service.users.passwords import PasswordHasher, check_password
from tenant_service.users.schemas import InvitationView, UserCreate, UserCreated, UserPage, UserUpdate, UserView
from tenant_service.users.throttle import Throttle
from tenantry_common.lifecycle import CHANGEABLE, refusal
from tenantry_common.problems import (
    ConflictError,
    FieldError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    ProblemError,
    UnauthorizedError,
)
from tenantry_common.timeutil import utcnow
from tenantry_common.users_api import (
    AcceptInvitationRequest,
    LoginRequest,
    PasswordChangeRequest,
    RefreshRequest,
    SessionGrant,
    UserInfo,
)

_log = structlog.get_logger("tenantry.users")
REFRESH_PREFIX: Final = "rt_"
INVITATION_PREFIX: Final = "inv_"
#: How long a revoked session stays in the directory feed: the longest an access token lives
#: (ACCESS_TOKEN_TTL_SECONDS ≤ 86400) plus the gateways' leeway.
REVOKED_SESSION_HORIZON: Final = timedelta(days=1, minutes=10)


class UserNotFoundError(NotFoundError):
    """No such user in this tenant."""

    code = "user_not_found"


class UserExistsError(ConflictError):
    """The tenant already has a user with this email."""

    code = "user_exists"


def invalid_credentials() -> UnauthorizedError:
    """The one answer for an unknown email, a wrong password and a user without a password yet."""
    return UnauthorizedError("The email or password is not correct.", code="invalid_credentials")


def _invalid_refresh() -> UnauthorizedError:
    return UnauthorizedError("The refresh token is not valid.", code="invalid_refresh_token")


def _invalid_invitation() -> UnauthorizedError:
    return UnauthorizedError("The invitation is not valid (unknown, used or expired).", code="invalid_invitation")


def user_disabled() -> ForbiddenError:
    """A disabled user's correct password."""
    return ForbiddenError("The user is disabled.", code="user_disabled")


def tenant_mismatch() -> ForbiddenError:
    """A token of another tenant than the one the request names."""
    return ForbiddenError("The token belongs to another tenant.", code="tenant_mismatch")


def digest(token: str) -> bytes:
    """What is stored of a token."""
    return hashlib.sha256(token.encode()).digest()


def email_key(email: str) -> str:
    """What uniqueness and sign-in compare: the email, trimmed and lower-cased."""
    return email.strip().lower()


def user_status(user: TenantUser) -> str:
    """``disabled``, ``invited`` (no password yet) or ``active``."""
    if user.disabled:
        return "disabled"
    return "invited" if user.password_hash is None else "active"


def user_view(user: TenantUser) -> UserView:
    """The public view of a user."""
    return UserView(
        id=str(user.id),
        tenant_id=str(user.tenant_id),
        email=user.email,
        name=user.name,
        role=user.role,
        status=user_status(user),
        created_at=user.created_at,
        updated_at=user.updated_at,
        last_login_at=user.last_login_at,
    )


def user_info(user: TenantUser) -> UserInfo:
    """The user as ``/_gateway/me`` shows it."""
    return UserInfo(id=str(user.id), email=user.email, name=user.name, role=user.role, tenant_id=str(user.tenant_id))  # type: ignore[arg-type]


def _audited(user: TenantUser) -> dict[str, Any]:
    return {"email": user.email, "name": user.name, "role": user.role, "status": user_status(user)}


def _parse_id(raw: str, not_found: ProblemError) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found from None


def _refuse_unserved(tenant: Tenant) -> None:
    """The tenant's status refusal (403 suspended, 503 unavailable, 404 deleted), as gateways give it."""
    if (refused := refusal(tenant.status)) is not None:
        retry = {"Retry-After": str(refused.retry_after)} if refused.retry_after else None
        raise ProblemError(refused.detail, code=refused.code, status=refused.status, headers=retry)


async def tenant_by_id(session: AsyncSession, raw: str | None, *, lock: bool = False) -> Tenant:
    """A tenant named by the gateway (its id).

    Raises:
        TenantNotFoundError: not a UUID, or no such tenant.
    """
    tenant_id = _parse_id(raw or "", TenantNotFoundError("No such tenant."))
    return await find_tenant(session, str(tenant_id), lock=lock)


async def revoke_sessions(
    session: AsyncSession,
    *,
    user_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    reason: str,
    keep: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Revoke the user's open sessions (but ``keep``), or one session; the revoked ids. The caller bumps the
    tenant's revision so gateways learn them."""
    query = update(UserSession).where(UserSession.revoked_at.is_(None))
    if user_id is not None:
        query = query.where(UserSession.user_id == user_id)
    if session_id is not None:
        query = query.where(UserSession.id == session_id)
    if keep is not None:
        query = query.where(UserSession.id != keep)
    rows = await session.execute(
        query.values(revoked_at=utcnow(), revoked_reason=reason).returning(UserSession.id),
        execution_options={"synchronize_session": False},
    )
    return list(rows.scalars())


@dataclass(frozen=True)
class Actor:
    """Who changes users: an admin token (``admin:…``), or a tenant's own admin through a gateway."""

    name: str
    #: The tenant admin acting through ``/_gateway/users`` (None for the admin API): may not lock themselves out.
    user_id: uuid.UUID | None = None


class UserService:
    """The users of tenants: shared by the admin API, ``tenantctl`` and the tenant admins' ``/_gateway/users``."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    def _invitation(self, unit: Unit, user: TenantUser) -> InvitationView:
        token = INVITATION_PREFIX + secrets.token_urlsafe(32)
        expires = utcnow() + timedelta(seconds=self._ctx.settings.users.invitation_ttl_seconds)
        unit.session.add(
            UserInvitation(token_hash=digest(token), tenant_id=user.tenant_id, user_id=user.id, expires_at=expires)
        )
        return InvitationView(token=token, expires_at=expires)

    async def _user(self, session: AsyncSession, tenant: Tenant, raw_id: str, *, lock: bool = False) -> TenantUser:
        not_found = UserNotFoundError(f"no user {raw_id!r}")
        query = select(TenantUser).where(
            TenantUser.id == _parse_id(raw_id, not_found), TenantUser.tenant_id == tenant.id
        )
        user = (await session.execute(query.with_for_update() if lock else query)).scalar_one_or_none()
        if user is None:
            raise not_found
        return user

    async def create(self, ref: str, data: UserCreate, *, actor: Actor) -> UserCreated:
        """A new user with a single-use invitation (its token shown once).

        Raises:
            UserExistsError: the tenant has a user with this email (case-insensitive).
            InvalidStateError: the tenant is being deleted or deleted.
        """
        now = utcnow()
        try:
            async with unit_of_work(self._ctx) as work:
                tenant = await work.lock(ref, allowed=CHANGEABLE)
                user = TenantUser(
                    id=uuid.uuid4(), tenant_id=tenant.id, email=data.email.strip(), email_key=email_key(data.email),
                    name=data.name, role=data.role, created_at=now, updated_at=now, disabled=False,
                )  # fmt: skip
                work.session.add(user)
                await work.session.flush()
                invitation = self._invitation(work, user)
                await work.changed(tenant, actor=actor.name, action="user.create", target=str(user.id),
                                   after=_audited(user))  # fmt: skip
        except IntegrityError as exc:
            if "uq_tenant_users_tenant_email" in str(exc.orig):
                raise UserExistsError("the tenant already has a user with this email") from None
            raise
        return UserCreated(user=user_view(user), invitation=invitation)

    async def invite(self, ref: str, user_id: str, *, actor: Actor) -> InvitationView:
        """A new invitation for a user (earlier unused ones stop working): to set a forgotten password, too.

        Raises:
            UserNotFoundError: no such user in the tenant.
        """
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref, allowed=CHANGEABLE)
            user = await self._user(work.session, tenant, user_id, lock=True)
            await work.session.execute(
                update(UserInvitation)
                .where(UserInvitation.user_id == user.id, UserInvitation.used_at.is_(None))
                .values(used_at=utcnow())
            )
            invitation = self._invitation(work, user)
            await work.changed(tenant, actor=actor.name, action="user.invite", target=str(user.id),
                               after={"expires_at": invitation.expires_at.isoformat()})  # fmt: skip
        return invitation

    async def list(self, ref: str, *, limit: int = 100, cursor: str | None = None) -> UserPage:
        """A page of the tenant's users, oldest first.

        Raises:
            TenantNotFoundError: no such tenant.
            InvalidInputError: a cursor this API did not make.
        """
        after = decode_cursor(cursor) if cursor else None
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            query = select(TenantUser).where(TenantUser.tenant_id == tenant.id)
            if after is not None:
                query = query.where(tuple_(TenantUser.created_at, TenantUser.id) > tuple_(*after))
            rows = await session.execute(query.order_by(TenantUser.created_at, TenantUser.id).limit(limit + 1))
            page, next_cursor = split_page(list(rows.scalars()), limit)
        return UserPage(items=[user_view(u) for u in page], next_cursor=next_cursor)

    async def get(self, ref: str, user_id: str) -> UserView:
        """One user."""
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            return user_view(await self._user(session, tenant, user_id))

    def _not_self(self, actor: Actor, user: TenantUser, what: str) -> None:
        if actor.user_id is not None and actor.user_id == user.id:
            raise ConflictError(f"a tenant admin cannot {what} themselves", code="self_change")

    async def update(self, ref: str, user_id: str, patch: UserUpdate, *, actor: Actor) -> UserView:
        """Change role, name or ``disabled``; a changed role or a disable ends the user's sessions."""
        import msgspec  # noqa: PLC0415 - UNSET only

        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref)  # disabling is allowed in every status: withdrawing access is always safe
            user = await self._user(work.session, tenant, user_id, lock=True)
            before = _audited(user)
            end_sessions = False
            if patch.role is not msgspec.UNSET and patch.role != user.role:
                self._not_self(actor, user, "change the role of")
                user.role, end_sessions = patch.role, True
            if patch.disabled is not msgspec.UNSET and patch.disabled != user.disabled:
                self._not_self(actor, user, "disable")
                user.disabled = patch.disabled
                end_sessions = end_sessions or patch.disabled
            if patch.name is not msgspec.UNSET:
                user.name = patch.name
            if _audited(user) == before:
                return user_view(user)
            user.updated_at = utcnow()
            if end_sessions:
                await revoke_sessions(work.session, user_id=user.id, reason="user_changed")
            await work.changed(tenant, actor=actor.name, action="user.update", target=str(user.id),
                               before=before, after=_audited(user))  # fmt: skip
        return user_view(user)

    async def delete(self, ref: str, user_id: str, *, actor: Actor) -> None:
        """Delete a user; their sessions end (their access tokens are refused at once)."""
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref)
            user = await self._user(work.session, tenant, user_id, lock=True)
            self._not_self(actor, user, "delete")
            before = _audited(user)
            await revoke_sessions(work.session, user_id=user.id, reason="user_deleted")
            await work.session.delete(user)
            await work.changed(tenant, actor=actor.name, action="user.delete", target=str(user.id), before=before)

    async def acting_admin(self, tenant_id: str, on_behalf: str | None) -> Actor:
        """The tenant admin a gateway acts for (``X-On-Behalf-Of``): a user must still be an enabled admin of the
        tenant; a token of the tenant's own identity provider is vouched for by the gateway.

        Raises:
            ForbiddenError: 403 ``forbidden`` otherwise.
        """
        forbidden = ForbiddenError("Only the tenant's admins manage its users.", code="forbidden")
        kind, _, rest = (on_behalf or "").partition(":")
        if kind == "idp" and rest:
            return Actor(name=f"idp:{rest[:300]}")
        if kind != "user":
            raise forbidden
        async with self._ctx.sessions() as session:
            tenant = await tenant_by_id(session, tenant_id)
            uid = _parse_id(rest, forbidden)
            user = await session.get(TenantUser, uid)
        if user is None or user.tenant_id != tenant.id or user.disabled or user.role != "admin":
            raise forbidden
        return Actor(name=f"user:{uid}", user_id=uid)


# --- signing in -------------------------------------------------------------------------------------------------


class AuthService:
    """Sign-in, invitations, refresh, logout and password changes, for the gateways."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        settings = ctx.settings.users
        self._settings = settings
        self.throttle = Throttle(
            ctx.redis,
            window=settings.login_window_seconds,
            per_account=settings.login_max_failures,
            per_address=settings.login_max_address_failures,
        )

    @property
    def hasher(self) -> PasswordHasher:
        """The process's password hasher."""
        return self._ctx.passwords

    async def start_session(self, session: AsyncSession, user: TenantUser) -> SessionGrant:
        """A new session for the user and its first refresh token (in the caller's transaction)."""
        now = utcnow()
        family = UserSession(
            id=uuid.uuid4(),
            tenant_id=user.tenant_id,
            user_id=user.id,
            created_at=now,
            last_used_at=now,
            expires_at=now + timedelta(seconds=self._settings.session_max_seconds),
        )
        session.add(family)
        await session.flush()  # the session row before its first token's (no ORM relationship orders them)
        user.last_login_at = now
        return self._next_token(session, family, user, now)

    def _next_token(self, session: AsyncSession, family: UserSession, user: TenantUser, now: datetime) -> SessionGrant:
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        expires = min(now + timedelta(seconds=self._settings.refresh_token_ttl_seconds), family.expires_at)
        session.add(RefreshToken(token_hash=digest(token), session_id=family.id, issued_at=now, expires_at=expires))
        return SessionGrant(
            user=user_info(user),
            session_id=str(family.id),
            refresh_token=token,
            refresh_expires_in=max(1, int((expires - now).total_seconds())),
        )

    async def _audit_burst(self, tenant: Tenant, user: TenantUser | None, address: str, which: str) -> None:
        async with self._ctx.sessions() as session, session.begin():
            record(session, actor=f"address:{address}", action=f"user.login_{which}_locked",
                   target=str(user.id) if user else "unknown account", tenant_id=tenant.id,
                   after={"window_seconds": self._settings.login_window_seconds})  # fmt: skip
        _log.warning("login_failures_burst", tenant_id=str(tenant.id), limit=which)

    async def login(self, request: LoginRequest) -> SessionGrant:
        """Check an email and password in one tenant.

        Raises:
            TenantNotFoundError, ProblemError: unknown tenant, or one that is not served.
            TooManyAttemptsError: 429, the account or the address is at its failure limit.
            UnauthorizedError: 401 ``invalid_credentials`` (unknown email and wrong password alike).
            ForbiddenError: 403 ``user_disabled`` (only with the right password).
        """
        async with self._ctx.sessions() as session:
            tenant = await tenant_by_id(session, request.tenant_id)
            _refuse_unserved(tenant)
            key = email_key(request.email)
            await self.throttle.check(tenant.id, key, request.client_address)
            user = (
                await session.execute(
                    select(TenantUser).where(TenantUser.tenant_id == tenant.id, TenantUser.email_key == key)
                )
            ).scalar_one_or_none()
        ok = await self.hasher.verify(user.password_hash if user else None, request.password)
        if not ok or user is None:
            failure = await self.throttle.failed(tenant.id, key, request.client_address)
            if failure.account_locked:
                await self._audit_burst(tenant, user, request.client_address, "account")
            if failure.address_locked:
                await self._audit_burst(tenant, None, request.client_address, "address")
            raise invalid_credentials()
        stored = user.password_hash
        rehashed = await self.hasher.hash(request.password) if stored and self.hasher.needs_rehash(stored) else None
        async with self._ctx.sessions() as session, session.begin():
            current = await session.get(TenantUser, user.id, with_for_update=True)
            if current is None:
                raise invalid_credentials()
            if current.disabled:
                raise user_disabled()
            if rehashed is not None and current.password_hash == stored:
                current.password_hash = rehashed
            grant = await self.start_session(session, current)
        await self.throttle.succeeded(tenant.id, key)
        return grant

    async def accept_invitation(self, request: AcceptInvitationRequest) -> SessionGrant:
        """Set the invited user's password and sign them in; the invitation is spent.

        Raises:
            UnauthorizedError: 401 ``invalid_invitation``: unknown, used or expired.
            ForbiddenError: 403 ``tenant_mismatch`` (another tenant's invitation), ``user_disabled``.
            WeakPasswordError: 422 ``weak_password`` (the invitation is not spent).
        """
        token_hash = digest(request.token)
        async with self._ctx.sessions() as session:
            invitation = await session.get(UserInvitation, token_hash)
            user = await session.get(TenantUser, invitation.user_id) if invitation else None
        if invitation is None or user is None or invitation.used_at is not None or invitation.expires_at <= utcnow():
            raise _invalid_invitation()
        if request.tenant_id is not None and request.tenant_id != str(invitation.tenant_id):
            raise tenant_mismatch()
        check_password(request.password, email=user.email)
        password_hash = await self.hasher.hash(request.password)
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(str(invitation.tenant_id))
            _refuse_unserved(tenant)
            spent = await work.session.execute(
                update(UserInvitation)
                .where(UserInvitation.token_hash == token_hash, UserInvitation.used_at.is_(None),
                       UserInvitation.expires_at > utcnow())
                .values(used_at=utcnow())
                .returning(UserInvitation.user_id)
            )  # fmt: skip
            if spent.scalar_one_or_none() is None:
                raise _invalid_invitation()  # spent by a concurrent request
            current = await work.session.get(TenantUser, user.id, with_for_update=True)
            if current is None:
                raise _invalid_invitation()
            if current.disabled:
                raise user_disabled()
            current.password_hash = password_hash
            current.password_changed_at = current.updated_at = utcnow()
            grant = await self.start_session(work.session, current)
            await work.changed(tenant, actor=f"user:{current.id}", action="user.accept_invitation",
                               target=str(current.id), after={"status": "active"})  # fmt: skip
        return grant

    async def _spend(self, work: Unit, request: RefreshRequest) -> tuple[Tenant, UserSession, RefreshToken] | None:
        """The refresh token's row and session, locked; None when unknown."""
        token = (
            await work.session.execute(
                select(RefreshToken).where(RefreshToken.token_hash == digest(request.refresh_token)).with_for_update()
            )
        ).scalar_one_or_none()
        if token is None:
            return None
        family = await work.session.get(UserSession, token.session_id, with_for_update=True)
        if family is None:
            return None
        if request.tenant_id is not None and request.tenant_id != str(family.tenant_id):
            raise tenant_mismatch()
        tenant = await work.lock(str(family.tenant_id))
        return tenant, family, token

    async def refresh(self, request: RefreshRequest) -> SessionGrant:
        """Spend a refresh token for the next one; a spent one presented again revokes its whole session.

        Raises:
            UnauthorizedError: 401 ``invalid_refresh_token``: unknown, expired, revoked or spent (then revoked).
            ForbiddenError: 403 ``tenant_mismatch``, ``user_disabled``; the tenant's status refusal.
        """
        if not request.refresh_token.startswith(REFRESH_PREFIX):
            raise _invalid_refresh()
        reused: UserSession | None = None
        async with unit_of_work(self._ctx) as work:
            found = await self._spend(work, request)
            if found is None:
                raise _invalid_refresh()
            tenant, family, token = found
            now = utcnow()
            owner = await work.session.get(TenantUser, family.user_id) if family.user_id else None
            if owner is not None and owner.disabled:
                raise user_disabled()  # before the session's own state: a disabled user is told so (403)
            if family.revoked_at is not None:
                raise _invalid_refresh()
            if token.used_at is not None:
                # Reuse: revoke the family, commit that, then refuse (outside this block, so it commits).
                await revoke_sessions(work.session, session_id=family.id, reason="refresh_token_reused")
                await work.changed(tenant, actor="system", action="user.session_revoked",
                                   target=str(family.user_id or "deleted user"),
                                   after={"session_id": str(family.id), "reason": "refresh_token_reused"})  # fmt: skip
                reused = family
            else:
                if token.expires_at <= now or family.expires_at <= now or family.user_id is None:
                    raise _invalid_refresh()
                user = await work.session.get(TenantUser, family.user_id, with_for_update=True)
                if user is None:
                    raise _invalid_refresh()
                if user.disabled:
                    raise user_disabled()
                _refuse_unserved(tenant)
                token.used_at = now
                family.last_used_at = now
                grant = self._next_token(work.session, family, user, now)
        if reused is not None:
            _log.warning("refresh_token_reused", tenant_id=str(reused.tenant_id), session_id=str(reused.id))
            raise _invalid_refresh()
        return grant

    async def logout(self, request: RefreshRequest) -> None:
        """End the refresh token's whole session (an unknown token ends nothing, and is no error).

        Raises:
            ForbiddenError: 403 ``tenant_mismatch``.
        """
        if not request.refresh_token.startswith(REFRESH_PREFIX):
            return
        async with unit_of_work(self._ctx) as work:
            found = await self._spend(work, request)
            if found is None:
                return
            tenant, family, _ = found
            if await revoke_sessions(work.session, session_id=family.id, reason="logout"):
                await touch(work.session, tenant)
                work.publish("tenant.changed", tenant_id=tenant.id)

    async def change_password(self, request: PasswordChangeRequest) -> None:
        """A signed-in user's new password; every other session of the user ends.

        Raises:
            UnauthorizedError: 401 ``invalid_credentials`` (wrong current password: counted like a failed sign-in),
                ``invalid_session`` (the session ended).
            TooManyAttemptsError: 429.
            WeakPasswordError: 422 ``weak_password``.
        """
        ended = UnauthorizedError("The session has ended.", code="invalid_session")
        async with self._ctx.sessions() as session:
            tenant = await tenant_by_id(session, request.tenant_id)
            user = await session.get(TenantUser, _parse_id(request.user_id, ended))
            family = await session.get(UserSession, _parse_id(request.session_id, ended))
        if user is None or user.tenant_id != tenant.id or family is None or family.user_id != user.id:
            raise ended
        if family.revoked_at is not None:
            raise ended
        if user.disabled:
            raise user_disabled()
        await self.throttle.check(tenant.id, user.email_key, request.client_address)
        if not await self.hasher.verify(user.password_hash, request.current_password):
            failure = await self.throttle.failed(tenant.id, user.email_key, request.client_address)
            if failure.account_locked:
                await self._audit_burst(tenant, user, request.client_address, "account")
            raise invalid_credentials()
        check_password(request.new_password, email=user.email, field="new_password")
        if request.new_password == request.current_password:
            raise InvalidInputError(
                "the new password is the current one",
                code="weak_password",
                errors=[FieldError(field="new_password", message="must differ from the current password")],
            )
        password_hash = await self.hasher.hash(request.new_password)
        async with unit_of_work(self._ctx) as work:
            locked = await work.lock(str(tenant.id))
            current = await work.session.get(TenantUser, user.id, with_for_update=True)
            if current is None:
                raise ended
            current.password_hash = password_hash
            current.password_changed_at = current.updated_at = utcnow()
            revoked = await revoke_sessions(work.session, user_id=user.id, reason="password_changed", keep=family.id)
            await work.changed(locked, actor=f"user:{user.id}", action="user.password_change", target=str(user.id),
                               after={"sessions_ended": len(revoked)})  # fmt: skip
        await self.throttle.succeeded(tenant.id, user.email_key)

    async def user_info(self, tenant_id: str, user_id: str) -> UserInfo:
        """A user of the tenant, for ``/_gateway/me``.

        Raises:
            UserNotFoundError: no such user in the tenant.
        """
        not_found = UserNotFoundError("No such user.")
        async with self._ctx.sessions() as session:
            tenant = await tenant_by_id(session, tenant_id)
            user = await session.get(TenantUser, _parse_id(user_id, not_found))
        if user is None or user.tenant_id != tenant.id:
            raise not_found
        return user_info(user)


def owner_hook(email: str, password_hash: str) -> Callable[[Unit, Tenant], Awaitable[TenantUser]]:
    """What a sign-up adds to the new tenant's transaction: its first user, an admin with a password."""

    async def add_owner(unit: Unit, tenant: Tenant) -> TenantUser:
        now = utcnow()
        user = TenantUser(
            id=uuid.uuid4(), tenant_id=tenant.id, email=email.strip(), email_key=email_key(email), name=None,
            role="admin", password_hash=password_hash, password_changed_at=now, created_at=now, updated_at=now,
            disabled=False,
        )  # fmt: skip
        unit.session.add(user)
        await unit.session.flush()
        record(unit.session, actor="signup", action="user.create", target=str(user.id), tenant_id=tenant.id,
               after=_audited(user))  # fmt: skip
        return user

    return add_owner


async def sweep_sessions(ctx: AppContext) -> int:
    """Forget what can no longer matter: sessions ended or expired over two days ago (past the directory feed's
    horizon, with their refresh tokens), spent or expired refresh tokens and invitations. The rows removed."""
    horizon = utcnow() - 2 * REVOKED_SESSION_HORIZON
    removed = 0
    async with ctx.sessions() as session, session.begin():
        for statement in (
            delete(UserSession).where((UserSession.revoked_at < horizon) | (UserSession.expires_at < horizon)),
            delete(RefreshToken).where((RefreshToken.expires_at < horizon) | (RefreshToken.used_at < horizon)),
            delete(UserInvitation).where((UserInvitation.expires_at < horizon) | (UserInvitation.used_at < horizon)),
        ):
            result = await session.execute(statement, execution_options={"synchronize_session": False})
            removed += int(getattr(result, "rowcount", 0) or 0)
    return removed
