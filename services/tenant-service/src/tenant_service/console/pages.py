"""The console's pages. Each calls the same services as the admin API, with the signed-in admin as the actor, so
each action lands in the audit log exactly as the API's would."""

from __future__ import annotations

import hmac
import uuid
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import PathParameter, QueryParameter
from litestar.response import Redirect, Template
from markupsafe import Markup
from sqlalchemy import select

from tenant_service.apikeys.schemas import ApiKeyCreate
from tenant_service.apikeys.service import ApiKeyService
from tenant_service.audit.service import list_entries, record
from tenant_service.auth import actor, match_token
from tenant_service.backups.service import BackupService
from tenant_service.console.chart import usage_chart_svg
from tenant_service.console.sessions import (
    COOKIE,
    MAX_FAILURES,
    SignInThrottle,
    create_session,
    end_session,
    recent_failures,
    sweep_sessions,
)
from tenant_service.console.web import (
    SIGN_IN,
    console_before_request,
    context,
    page,
    problem_page,
    safe_next,
)
from tenant_service.db.models import Server, Tenant
from tenant_service.operations.schemas import FINISHED
from tenant_service.operations.service import OperationService
from tenant_service.outbox import EVENT_TYPES
from tenant_service.plans.service import PlanLimits, PlanPut, PlanService
from tenant_service.servers.moves import request_move
from tenant_service.servers.schemas import MoveRequest
from tenant_service.servers.service import ServerService
from tenant_service.tenants.issuers import JwtIssuerService
from tenant_service.tenants.lookup import find_tenant
from tenant_service.tenants.schemas import TenantCreate
from tenant_service.tenants.service import TenantService
from tenant_service.tenants.usage import tenant_usage
from tenant_service.usage.history import history_window, usage_history
from tenant_service.users.schemas import UserCreate, UserUpdate
from tenant_service.users.service import Actor, UserService
from tenant_service.webhooks.controllers import webhook_service
from tenant_service.webhooks.schemas import MAX_GRACE_SECONDS, WebhookCreate, WebhookRotate, WebhookUpdate
from tenantry_common.lifecycle import TenantStatus
from tenantry_common.problems import FieldError, InvalidInputError, ProblemError

AnyRequest = Request[Any, Any, Any]
Ref = Annotated[str, PathParameter(max_length=64)]
PathName = Annotated[str, PathParameter(max_length=253)]
Query = Annotated[str | None, QueryParameter(required=False, max_length=512)]
PAGE_SIZE: Final = 50
#: Notices a redirect may name (``?done=``): a fixed set, so a link cannot put arbitrary text on the page.
NOTICES: Final = {
    "suspended": "The tenant is suspended: gateways refuse its requests.",
    "resumed": "The tenant is active again.",
    "deleted": "The tenant is deleted (its database is kept for the retention period).",
    "restored": "The tenant is restored.",
    "domain-added": "The domain was added.",
    "domain-removed": "The domain was removed.",
    "key-revoked": "The API key was revoked.",
    "backup-started": "A backup was started; its progress shows under Operations.",
    "restore-started": "A restore was started; its progress shows under Operations.",
    "move-started": "A move was started; its progress shows under Operations.",
    "purged": "The tenant was purged: its database, role, backups and keys are gone.",
    "plan-saved": "The plan was saved.",
    "user-disabled": "The user is disabled: their sessions ended.",
    "user-enabled": "The user is enabled again.",
    "signed-out": "You are signed out.",
    "webhook-saved": "The webhook was saved: events from now on are matched against its new list.",
    "webhook-deleted": "The webhook was deleted: nothing more is sent to it.",
    "redelivery-queued": "The delivery was queued again: it is attempted now, with a fresh retry period.",
    "webhook-enabled": "The webhook is enabled: its pending deliveries go on, and new events are queued for it.",
    "webhook-disabled": "The webhook is disabled: nothing is sent to it until it is enabled again.",
}
_throttle = SignInThrottle()


async def _form(request: AnyRequest) -> dict[str, str]:
    """The POSTed form's single values (the CSRF check already read it)."""
    form = await request.form()
    return {k: v.strip() for k, v in form.items() if isinstance(v, str)}


def _invalid(field: str, message: str) -> InvalidInputError:
    return InvalidInputError(message, errors=[FieldError(field=field, message=message)])


def _convert(value: dict[str, Any], kind: type[Any]) -> Any:
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidInputError(str(exc)) from None


def _notice(done: str | None) -> str | None:
    return NOTICES.get(done or "")


def _client(request: AnyRequest) -> str:
    return request.client.host if request.client else "unknown"


def _tenant_url(ref: str, done: str) -> str:
    return f"/console/tenants/{quote(ref, safe='')}?done={done}"


class ConsoleController(Controller):
    """Every page and action of the console."""

    path = "/console"
    include_in_schema = False
    before_request = staticmethod(console_before_request)
    exception_handlers = {  # noqa: RUF012 - Litestar's declared attribute
        ProblemError: problem_page,
        ValidationException: problem_page,
        HTTPException: problem_page,
    }

    # --- signing in and out ------------------------------------------------------------------------

    @get("/", sync_to_thread=False)
    def home(self) -> Redirect:
        """The tenants list."""
        return Redirect("/console/tenants", status_code=303)

    @get("/sign-in", sync_to_thread=False)
    def sign_in_form(self, request: AnyRequest, done: Query = None) -> Template:
        """The sign-in form."""
        nxt = request.query_params.get("next")
        return page(request, "sign_in.html", next=safe_next(nxt), notice=_notice(done), error=None)

    @post("/sign-in", status_code=303)
    async def sign_in(self, request: AnyRequest) -> Response[Any]:
        """Exchange an admin token for a session cookie; the token is never stored. A wrong token says only that it
        is wrong; failures are audited and, past a few per address, refused for a while."""
        ctx = context(request)
        form = await _form(request)
        nxt = safe_next(form.get("next"))
        address = _client(request)
        if _throttle.blocked(address) or await recent_failures(ctx, address) >= MAX_FAILURES:
            return page(
                request,
                "sign_in.html",
                status_code=429,
                next=nxt,
                notice=None,
                error="Too many failed sign-ins from this address: wait a few minutes.",
            )
        name = match_token(form.get("token", ""), ctx.settings.security.admin_tokens)
        if name is None:
            _throttle.failed(address)
            async with ctx.sessions() as session, session.begin():
                record(session, actor="anonymous", action="console.sign_in_failed", target=address)
            return page(
                request,
                "sign_in.html",
                status_code=401,
                next=nxt,
                notice=None,
                error="That token is not valid.",
            )
        who = f"admin:{name}"
        _throttle.succeeded(address)
        await sweep_sessions(ctx, ctx.settings.console)
        session_id = await create_session(ctx, name, form.get("token", ""))
        async with ctx.sessions() as session, session.begin():
            record(session, actor=who, action="console.sign_in", target=address)
        secure = request.url.scheme == "https" or ctx.settings.console.secure_cookies
        return Redirect(
            nxt,
            status_code=303,
            cookies=[
                Cookie(
                    key=COOKIE,
                    value=session_id,
                    path="/console",
                    httponly=True,
                    samesite="strict",
                    secure=secure,
                    max_age=ctx.settings.console.session_max_seconds,
                )
            ],
        )

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: AnyRequest) -> Response[Any]:
        """End the session: its row is deleted, the cookie cleared."""
        ctx = context(request)
        await end_session(ctx, request.cookies.get(COOKIE, ""))
        async with ctx.sessions() as session, session.begin():
            record(session, actor=actor(request), action="console.sign_out", target="console")
        response = Redirect(f"{SIGN_IN}?done=signed-out", status_code=303)
        response.delete_cookie(COOKIE, path="/console")
        return response

    # --- tenants -----------------------------------------------------------------------------------

    @get("/tenants")
    async def tenants(
        self,
        request: AnyRequest,
        q: Query = None,
        status: Query = None,
        plan: Query = None,
        server: Query = None,
        cursor: Query = None,
        done: Query = None,
    ) -> Template:
        """Tenants with search, status/plan/server filters and keyset paging (the admin list service)."""
        ctx = context(request)
        q, status, plan, server = (v.strip()[:200] or None if v else None for v in (q, status, plan, server))
        result = await TenantService(ctx).list(
            status=status, plan=plan, q=q, limit=PAGE_SIZE, cursor=cursor or None, server=server
        )
        plans = [p.name for p in (await PlanService(ctx).list()).items]
        async with ctx.sessions() as session:
            servers = list((await session.execute(select(Server.name).order_by(Server.name))).scalars())
        filters = {"q": q or "", "status": status or "", "plan": plan or "", "server": server or ""}
        next_query = "&".join(f"{k}={_quote(v)}" for k, v in filters.items() if v)
        return page(
            request,
            "tenants.html",
            tenants=result.items,
            next_cursor=result.next_cursor,
            next_query=next_query,
            filters=filters,
            statuses=list(TenantStatus),
            plans=plans,
            servers=servers,
            paged=bool(cursor),
            notice=_notice(done),
        )

    @get("/tenants/new", sync_to_thread=False)
    def new_tenant(self, request: AnyRequest) -> Template:
        """The create form."""
        return page(request, "tenant_new.html", values={})

    @post("/tenants", status_code=201)
    async def create_tenant(self, request: AnyRequest) -> Template:
        """Create and provision a tenant; its first API key is shown once, on this response only."""
        ctx = context(request)
        form = await _form(request)
        body: dict[str, Any] = {"slug": form.get("slug", ""), "name": form.get("name", "")}
        if form.get("plan"):
            body["plan"] = form["plan"]
        domains = [d.strip() for d in form.get("domains", "").replace(",", " ").split() if d.strip()]
        if domains:
            body["domains"] = domains
        data = _convert(body, TenantCreate)
        created = await TenantService(ctx).create(data, actor=actor(request), wait=True)
        return await self._tenant_page(
            request, created.view.slug, status_code=201, new_key=created.api_key.key, new_key_name="first key"
        )

    @get("/tenants/{ref:str}")
    async def tenant(self, request: AnyRequest, ref: Ref, done: Query = None) -> Template:
        """One tenant: status and actions, database and server, domains, keys, issuers, users, backups, operations
        and its audit trail."""
        return await self._tenant_page(request, ref, notice=_notice(done))

    async def _tenant_page(self, request: AnyRequest, ref: Ref, *, status_code: int = 200, **extra: Any) -> Template:
        ctx = context(request)
        tenant = await TenantService(ctx).get(ref)
        tid = tenant.id
        usage = await tenant_usage(ctx, tenant)
        history = await usage_history(ctx, tid, history_window("day", None, None))
        # The SVG is built by usage_chart_svg, which escapes everything it writes: safe to mark as markup.
        chart = Markup(  # noqa: S704
            usage_chart_svg(
                [(b.start.date(), b.requests + b.rejected, b.rejected) for b in history],
                title="Requests per day, last 30 days",
            )
        )
        keys = (await ApiKeyService(ctx).list(tid)).items
        issuers = await JwtIssuerService(ctx).list(tid)
        users = (await UserService(ctx).list(tid, limit=50)).items
        backups = (await BackupService(ctx).list_backups(tid, limit=20)).items
        operations = (await OperationService(ctx).list(tenant=tid, limit=10)).items
        async with ctx.sessions() as session:
            audit = await list_entries(session, tenant_id=uuid.UUID(tid), limit=20, before_id=None)
            servers = list(
                (
                    await session.execute(select(Server.name).where(Server.state == "active").order_by(Server.name))
                ).scalars()
            )
        extra.setdefault("notice", None)
        return page(
            request,
            "tenant.html",
            status_code=status_code,
            tenant=tenant,
            usage=usage,
            usage_chart=chart,
            usage_bars={
                name: _bar_width(u.used, u.limit or 0)
                for name, u in (("minute", usage.requests_minute), ("day", usage.requests_day))
                if u is not None
            },
            bar_width=_BAR,
            keys=keys,
            issuers=issuers,
            users=users,
            backups=backups,
            operations=operations,
            running=any(op.state not in FINISHED for op in operations),
            audit=audit,
            servers=[s for s in servers if s != tenant.database.server],
            **extra,
        )

    @get("/tenants/{ref:str}/operations")
    async def tenant_operations(self, request: AnyRequest, ref: Ref) -> Template:
        """The operations panel alone: htmx polls it every second while one runs (without JavaScript, a reload)."""
        ctx = context(request)
        tenant = await TenantService(ctx).get(ref)
        operations = (await OperationService(ctx).list(tenant=tenant.id, limit=10)).items
        return page(
            request,
            "_operations.html",
            tenant=tenant,
            operations=operations,
            running=any(op.state not in FINISHED for op in operations),
        )

    @post("/tenants/{ref:str}/lifecycle/{action:str}", status_code=303)
    async def lifecycle(self, request: AnyRequest, ref: Ref, action: PathName) -> Redirect:
        """Suspend, resume, delete (soft) or restore."""
        done = {"suspend": "suspended", "resume": "resumed", "delete": "deleted", "restore": "restored"}.get(action)
        if done is None:
            raise _invalid("action", "unknown action")
        view = await TenantService(context(request)).transition(ref, action, actor=actor(request))
        return Redirect(_tenant_url(view.slug, done), status_code=303)

    @post("/tenants/{ref:str}/purge", status_code=303)
    async def purge(self, request: AnyRequest, ref: Ref) -> Redirect:
        """Drop everything now: only when the slug was typed into the form."""
        ctx = context(request)
        typed = (await request.form()).get("confirm_slug")  # exactly as typed: not even whitespace is forgiven
        tenant = await TenantService(ctx).get(ref)
        if not isinstance(typed, str) or not hmac.compare_digest(typed.encode(), tenant.slug.encode()):
            raise _invalid("confirm_slug", "Type the tenant's slug exactly to purge it; nothing was changed.")
        await TenantService(ctx).purge(tenant.id, actor=actor(request))
        return Redirect("/console/tenants?done=purged", status_code=303)

    @post("/tenants/{ref:str}/domains", status_code=303)
    async def add_domain(self, request: AnyRequest, ref: Ref) -> Redirect:
        """Add a custom domain."""
        form = await _form(request)
        view = await TenantService(context(request)).add_domain(ref, form.get("domain", ""), actor=actor(request))
        return Redirect(_tenant_url(view.slug, "domain-added"), status_code=303)

    @post("/tenants/{ref:str}/domains/remove", status_code=303)
    async def remove_domain(self, request: AnyRequest, ref: Ref) -> Redirect:
        """Remove a custom domain."""
        form = await _form(request)
        await TenantService(context(request)).remove_domain(ref, form.get("domain", ""), actor=actor(request))
        return Redirect(_tenant_url(ref, "domain-removed"), status_code=303)

    @post("/tenants/{ref:str}/api-keys", status_code=201)
    async def new_key(self, request: AnyRequest, ref: Ref) -> Template:
        """A new key: its secret is in this response only (never in a URL, a session or a later page)."""
        form = await _form(request)
        data = _convert({"name": form.get("name", "")}, ApiKeyCreate)
        created = await ApiKeyService(context(request)).create(ref, data, actor=actor(request))
        return await self._tenant_page(request, ref, status_code=201, new_key=created.key, new_key_name=created.name)

    @post("/tenants/{ref:str}/api-keys/{key_id:str}/rotate", status_code=201)
    async def rotate_key(self, request: AnyRequest, ref: Ref, key_id: PathName) -> Template:
        """A new key replacing ``key_id`` (which keeps working for the default grace period); shown once."""
        created = await ApiKeyService(context(request)).rotate(ref, key_id, None, actor=actor(request))
        return await self._tenant_page(request, ref, status_code=201, new_key=created.key, new_key_name=created.name)

    @post("/tenants/{ref:str}/api-keys/{key_id:str}/revoke", status_code=303)
    async def revoke_key(self, request: AnyRequest, ref: Ref, key_id: PathName) -> Redirect:
        """Revoke a key now."""
        await ApiKeyService(context(request)).revoke(ref, key_id, actor=actor(request))
        return Redirect(_tenant_url(ref, "key-revoked"), status_code=303)

    @post("/tenants/{ref:str}/users", status_code=201)
    async def invite_user(self, request: AnyRequest, ref: Ref) -> Template:
        """Invite a user: the invitation token is shown on this response only."""
        form = await _form(request)
        body: dict[str, Any] = {"email": form.get("email", ""), "role": form.get("role") or "user"}
        if form.get("name"):
            body["name"] = form["name"]
        created = await UserService(context(request)).create(
            ref, _convert(body, UserCreate), actor=Actor(name=actor(request))
        )
        return await self._tenant_page(
            request, ref, status_code=201, invitation=created.invitation.token, invited=created.user.email
        )

    @post("/tenants/{ref:str}/users/{user_id:str}/{change:str}", status_code=303)
    async def change_user(self, request: AnyRequest, ref: Ref, user_id: PathName, change: PathName) -> Redirect:
        """Disable (the user's sessions end) or enable a user."""
        if change not in ("disable", "enable"):
            raise _invalid("change", "unknown change")
        patch = UserUpdate(disabled=change == "disable")
        await UserService(context(request)).update(ref, user_id, patch, actor=Actor(name=actor(request)))
        return Redirect(_tenant_url(ref, f"user-{change}d"), status_code=303)

    @post("/tenants/{ref:str}/backups", status_code=303)
    async def backup(self, request: AnyRequest, ref: Ref) -> Redirect:
        """Start a backup (an operation)."""
        form = await _form(request)
        await BackupService(context(request)).request_backup(ref, note=form.get("note") or None, actor=actor(request))
        request.app.state.background.wake_operations()
        return Redirect(_tenant_url(ref, "backup-started"), status_code=303)

    @post("/tenants/{ref:str}/restore-backup", status_code=303)
    async def restore_backup(self, request: AnyRequest, ref: Ref) -> Redirect:
        """Replace the tenant's data with a backup's (an operation; a pre-restore backup is taken first)."""
        form = await _form(request)
        await BackupService(context(request)).request_restore(ref, form.get("backup_id", ""), actor=actor(request))
        request.app.state.background.wake_operations()
        return Redirect(_tenant_url(ref, "restore-started"), status_code=303)

    @post("/tenants/{ref:str}/move", status_code=303)
    async def move(self, request: AnyRequest, ref: Ref) -> Redirect:
        """Move the tenant's database to another server (an operation)."""
        form = await _form(request)
        data = _convert({"server": form.get("server", "")}, MoveRequest)
        await request_move(context(request), ref, data, actor=actor(request))
        request.app.state.background.wake_operations()
        return Redirect(_tenant_url(ref, "move-started"), status_code=303)

    # --- servers, plans, audit ---------------------------------------------------------------------

    @get("/servers")
    async def servers(self, request: AnyRequest) -> Template:
        """Every server with its tenants against its capacity."""
        items = (await ServerService(context(request)).list()).items
        bars = {s.name: _bar_width(s.tenants, s.capacity) for s in items}
        return page(request, "servers.html", servers=items, bars=bars, bar_width=_BAR)

    @get("/plans")
    async def plans(self, request: AnyRequest, done: Query = None) -> Template:
        """Plans and their limits, each with an edit form."""
        items = (await PlanService(context(request)).list()).items
        thresholds = {p.name: ", ".join(_percent(t) for t in p.alert_thresholds) for p in items}
        return page(request, "plans.html", plans=items, thresholds=thresholds, notice=_notice(done))

    @post("/plans/{name:str}", status_code=303)
    async def save_plan(self, request: AnyRequest, name: PathName) -> Redirect:
        """Replace a plan's limits and alert thresholds (its placement labels are kept; so are its thresholds when the
        form has no such field)."""
        ctx = context(request)
        form = await _form(request)
        limits: dict[str, Any] = {}
        for field in PlanLimits.__struct_fields__:
            raw = form.get(field, "")
            if raw:
                if not raw.isdigit() or len(raw) > 12:
                    raise _invalid(field, "must be a whole number")
                limits[field] = int(raw)
        current = next((p for p in (await PlanService(ctx).list()).items if p.name == name), None)
        body: dict[str, Any] = {"limits": limits, "placement_labels": current.placement_labels if current else {}}
        if "alert_thresholds" in form:
            body["alert_thresholds"] = _thresholds(form["alert_thresholds"])
        elif current is not None:
            body["alert_thresholds"] = current.alert_thresholds
        data = _convert(body, PlanPut)
        await PlanService(ctx).put(name, data, actor=actor(request))
        return Redirect("/console/plans?done=plan-saved", status_code=303)

    # --- webhooks -----------------------------------------------------------------------------------

    @get("/webhooks")
    async def webhooks(self, request: AnyRequest, done: Query = None, cursor: Query = None) -> Template:
        """Every webhook with how its deliveries go, and the create form."""
        result = await webhook_service(request, context(request)).list(limit=PAGE_SIZE, cursor=cursor or None)
        return page(
            request,
            "webhooks.html",
            webhooks=result.items,
            next_cursor=result.next_cursor,
            paged=bool(cursor),
            event_types=EVENT_TYPES,
            notice=_notice(done),
        )

    @post("/webhooks", status_code=201)
    async def create_webhook(self, request: AnyRequest) -> Template:
        """Subscribe a URL to events: its signing secret is in this response only."""
        url, events = await _webhook_form(request)
        data = _convert({"url": url, "events": events}, WebhookCreate)
        created = await webhook_service(request, context(request)).create(data, actor=actor(request))
        return await self._webhook_page(request, created.id, status_code=201, new_secret=created.secret)

    @get("/webhooks/{webhook_id:str}")
    async def webhook(
        self, request: AnyRequest, webhook_id: Ref, done: Query = None, status: Query = None, cursor: Query = None
    ) -> Template:
        """One webhook: its subscription (editable), its secret's rotation, its deliveries (newest first) with
        redelivery, and deletion."""
        return await self._webhook_page(
            request, webhook_id, status=status or None, cursor=cursor or None, notice=_notice(done)
        )

    async def _webhook_page(
        self,
        request: AnyRequest,
        webhook_id: str,
        *,
        status_code: int = 200,
        status: str | None = None,
        cursor: str | None = None,
        **extra: Any,
    ) -> Template:
        service = webhook_service(request, context(request))
        webhook = await service.get(webhook_id)
        deliveries = await service.deliveries(webhook.id, status=status, limit=PAGE_SIZE, cursor=cursor)
        extra.setdefault("notice", None)
        return page(
            request,
            "webhook.html",
            status_code=status_code,
            webhook=webhook,
            deliveries=deliveries.items,
            next_cursor=deliveries.next_cursor,
            paged=bool(cursor),
            status=status or "",
            event_types=EVENT_TYPES,
            **extra,
        )

    @post("/webhooks/{webhook_id:str}", status_code=303)
    async def save_webhook(self, request: AnyRequest, webhook_id: Ref) -> Redirect:
        """A new URL and events."""
        url, events = await _webhook_form(request)
        data = _convert({"url": url, "events": events}, WebhookUpdate)
        view = await webhook_service(request, context(request)).update(webhook_id, data, actor=actor(request))
        return Redirect(f"/console/webhooks/{view.id}?done=webhook-saved", status_code=303)

    @post("/webhooks/{webhook_id:str}/rotate-secret", status_code=201)
    async def rotate_webhook_secret(self, request: AnyRequest, webhook_id: Ref) -> Template:
        """A new signing secret, shown in this response only; the old one keeps signing for the hours asked."""
        raw = (await _form(request)).get("grace_hours", "")
        if not (raw.isascii() and raw.isdigit()) or int(raw) * 3600 > MAX_GRACE_SECONDS:
            raise _invalid("grace_hours", f"a whole number of hours from 0 to {MAX_GRACE_SECONDS // 3600}")
        data = WebhookRotate(grace_seconds=int(raw) * 3600)
        rotated = await webhook_service(request, context(request)).rotate_secret(webhook_id, data, actor=actor(request))
        return await self._webhook_page(request, rotated.id, status_code=201, new_secret=rotated.secret)

    @post("/webhooks/{webhook_id:str}/enable", status_code=303)
    async def enable_webhook(self, request: AnyRequest, webhook_id: Ref) -> Redirect:
        """Enable a disabled webhook: its pending deliveries go on."""
        data = WebhookUpdate(enabled=True)
        view = await webhook_service(request, context(request)).update(webhook_id, data, actor=actor(request))
        return Redirect(f"/console/webhooks/{view.id}?done=webhook-enabled", status_code=303)

    @post("/webhooks/{webhook_id:str}/disable", status_code=303)
    async def disable_webhook(self, request: AnyRequest, webhook_id: Ref) -> Redirect:
        """Disable a webhook: nothing is sent to it until it is enabled again."""
        data = WebhookUpdate(enabled=False)
        view = await webhook_service(request, context(request)).update(webhook_id, data, actor=actor(request))
        return Redirect(f"/console/webhooks/{view.id}?done=webhook-disabled", status_code=303)

    @post("/webhooks/{webhook_id:str}/delete", status_code=303)
    async def delete_webhook(self, request: AnyRequest, webhook_id: Ref) -> Redirect:
        """Delete a webhook and its pending deliveries."""
        await webhook_service(request, context(request)).delete(webhook_id, actor=actor(request))
        return Redirect("/console/webhooks?done=webhook-deleted", status_code=303)

    @post("/webhooks/{webhook_id:str}/deliveries/{delivery_id:str}/redeliver", status_code=303)
    async def redeliver(self, request: AnyRequest, webhook_id: Ref, delivery_id: Ref) -> Redirect:
        """Queue one delivery again, now."""
        view = await webhook_service(request, context(request)).redeliver(webhook_id, delivery_id, actor=actor(request))
        return Redirect(f"/console/webhooks/{view.webhook_id}?done=redelivery-queued", status_code=303)

    @get("/audit")
    async def audit(self, request: AnyRequest, tenant: Query = None, cursor: Query = None) -> Template:
        """The audit log, newest first, 50 a page."""
        ctx = context(request)
        before_id = None
        if cursor:
            if not (cursor.isascii() and cursor.isdigit()) or int(cursor) >= 2**63:
                raise _invalid("cursor", "not a cursor")
            before_id = int(cursor)
        async with ctx.sessions() as session:
            tenant_row: Tenant | None = await find_tenant(session, tenant) if tenant else None
            rows = await list_entries(
                session, tenant_id=tenant_row.id if tenant_row else None, limit=PAGE_SIZE + 1, before_id=before_id
            )
        entries = rows[:PAGE_SIZE]
        next_cursor = str(entries[-1].id) if len(rows) > PAGE_SIZE else None
        return page(
            request, "audit.html", entries=entries, next_cursor=next_cursor, tenant=tenant or "", paged=bool(cursor)
        )


#: Width of a capacity bar in the servers page's SVG (the filled part is a ``width`` attribute, not a style).
_BAR: Final = 240


def _bar_width(tenants: int, capacity: int) -> int:
    if capacity <= 0:
        return _BAR if tenants else 0
    return min(_BAR, round(_BAR * tenants / capacity))


def _percent(fraction: float) -> str:
    """``0.8`` → ``80``, ``0.125`` → ``12.5``."""
    return f"{fraction * 100:.6g}"


def _thresholds(raw: str) -> list[float]:
    """The plans form's ``80, 100`` (percentages of ``requests_per_day``) as the API's fractions; empty: none."""
    parts = raw.replace(",", " ").replace("%", " ").split()
    if len(parts) > 20:
        raise _invalid("alert_thresholds", "at most 20 thresholds")
    try:
        percents = [Decimal(p) for p in parts]
    except InvalidOperation:
        raise _invalid("alert_thresholds", "percentages separated by commas, e.g. 80, 100") from None
    if any(not p.is_finite() or p <= 0 or p > 1000 for p in percents):
        raise _invalid("alert_thresholds", "each percentage above 0 and at most 1000")
    return [float(p / 100) for p in percents]


async def _webhook_form(request: AnyRequest) -> tuple[str, list[str]]:
    """The webhook form's URL and its checked events (at least one)."""
    form = await request.form()
    url = form.get("url")
    events = [e for e in form.getall("events", []) if isinstance(e, str)]
    if not events:
        raise _invalid("events", "choose at least one event")
    return (url.strip() if isinstance(url, str) else ""), events


def _quote(value: str) -> str:
    return quote(value, safe="")
