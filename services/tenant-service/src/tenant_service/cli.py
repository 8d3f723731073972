"""``tenantctl``: the tenant-service's command line, on the same wiring as the HTTP app."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar

import click
import msgspec
from sqlalchemy.exc import DBAPIError

from tenant_service.apikeys.schemas import ApiKeyCreate
from tenant_service.apikeys.service import ApiKeyService
from tenant_service.backups.objects import rewrap_data_keys
from tenant_service.backups.service import BackupService
from tenant_service.config import Settings
from tenant_service.context import AppContext, open_context
from tenant_service.db.migrate import upgrade_registry
from tenant_service.internal.service import SecretUnreadableError
from tenant_service.operations.kinds import handlers
from tenant_service.operations.runner import OperationRunner
from tenant_service.operations.schemas import OperationView
from tenant_service.operations.service import OperationService
from tenant_service.provisioning.fleet import migrate_fleet, migrate_template
from tenant_service.provisioning.provisioner import password_context
from tenant_service.provisioning.reconciler import Reconciler
from tenant_service.provisioning.schema import SchemaError
from tenant_service.secretbox import DecryptionError, generate_key
from tenant_service.servers.moves import request_drain, request_move
from tenant_service.servers.schemas import MoveRequest, ServerCreate
from tenant_service.servers.service import ServerService
from tenant_service.tenants.schemas import TenantCreate
from tenant_service.tenants.service import TenantService
from tenant_service.tenants.usage import tenant_usage_history
from tenant_service.usage.history import history_window
from tenant_service.users.schemas import UserCreate, UserUpdate
from tenant_service.users.service import Actor, UserService
from tenant_service.webhooks.schemas import WebhookCreate, WebhookRotate, WebhookUpdate
from tenant_service.webhooks.service import WebhookService
from tenantry_common.logging import configure_logging, redact_value
from tenantry_common.problems import ProblemError
from tenantry_common.settings import ConfigError

T = TypeVar("T")
_ACTOR = f"cli:{getpass.getuser()}"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(msgspec.to_builtins(value), indent=2, default=str))


def _run(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Run an async command in a fresh context; print problems as one clean line and exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        async def main() -> T:
            settings = Settings.from_env()
            configure_logging("tenantctl", fmt=settings.log_format, level=settings.log_level)
            async with open_context(settings) as ctx:
                return await fn(ctx, *args, **kwargs)

        try:
            return asyncio.run(main())
        except ProblemError as exc:
            click.echo(f"error: {exc.code}: {exc.detail or exc.code}", err=True)
            sys.exit(1)
        except ConfigError as exc:
            click.echo(f"configuration error: {exc}", err=True)
            sys.exit(2)
        except SchemaError as exc:
            click.echo(f"error: schema: {exc}", err=True)
            sys.exit(1)
        except (OSError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and exc.statement is not None:
                raise
            # A connection that could not be made (server down, credentials, database name): the driver's
            # own error, not the SQLAlchemy wrapper around it.
            cause: BaseException = exc
            if isinstance(exc, DBAPIError) and exc.orig is not None:
                cause = exc.orig.__cause__ or exc.orig
            reason = (str(cause).splitlines() or [""])[0]
            click.echo(f"error: {type(cause).__name__}: {redact_value(reason)}", err=True)
            sys.exit(1)

    return wrapper


@click.group()
def main() -> None:
    """Manage the Tenantry tenant registry and tenant databases."""


@main.command()
@click.option("--host", default=None, help="Listen address (default TENANT_SERVICE_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default TENANT_SERVICE_PORT or 8001).")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP API (and the background reconciler)."""
    import uvicorn  # noqa: PLC0415 - only the server needs it

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    uvicorn.run(
        "tenant_service.app:asgi_factory",
        factory=True,
        host=host or settings.http.host,
        port=port if port is not None else settings.http.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
        server_header=False,
    )


@main.command()
@_run
async def migrate(ctx: AppContext) -> None:
    """Upgrade the registry schema and the template database (safe to run concurrently)."""
    await upgrade_registry(ctx.engine)
    version = await migrate_template(ctx)
    click.echo(f"registry migrated; template {ctx.cluster.template} at schema version {version}")
    for server in (await ServerService(ctx).list()).items:
        click.echo(f"  server {server.name}: template at schema version {server.template_version}")


@main.command("migrate-tenants")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True)
@_run
async def migrate_tenants(ctx: AppContext, concurrency: int) -> None:
    """Bring every tenant database to the template's schema head; resumable after failures."""
    from rich.progress import Progress  # noqa: PLC0415 - only this command draws progress

    with Progress(console=None, transient=False, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("migrating tenants", total=None)

        def start(total: int) -> None:
            progress.update(task, total=total)

        def advance(_slug: str, _ok: bool) -> None:
            progress.advance(task)

        report = await migrate_fleet(ctx, concurrency=concurrency, on_progress=advance, on_start=start)
    click.echo(
        f"schema head {report.head}: {len(report.migrated)} migrated, {len(report.up_to_date)} already up to date, "
        f"{len(report.failed)} failed"
    )
    for slug, reason in sorted(report.failed.items()):
        click.echo(f"FAILED {slug}: {reason}")
    if report.failed:
        sys.exit(1)


@main.command()
@_run
async def reconcile(ctx: AppContext) -> None:
    """One reconciler pass: finish or undo half-done work, drop orphans."""
    report = await Reconciler(ctx).run_once()
    _echo_json(dict(report.__dict__))


@main.command("rotate-encryption")
@_run
async def rotate_encryption(ctx: AppContext) -> None:
    """Re-encrypt every stored secret with the primary key of ENCRYPTION_KEYS (old keys can then be removed)."""
    from sqlalchemy import select  # noqa: PLC0415

    from tenant_service.db.models import Server, Tenant, Webhook  # noqa: PLC0415
    from tenant_service.servers.pool import password_context as server_password_context  # noqa: PLC0415
    from tenant_service.webhooks.signing import secret_context  # noqa: PLC0415

    count = 0
    unreadable: list[str] = []
    async with ctx.sessions() as session, session.begin():
        for tenant in (await session.execute(select(Tenant).with_for_update())).scalars():
            if ctx.box.needs_rotation(tenant.db_password_enc):
                context = password_context(tenant.id)
                try:
                    password = ctx.box.decrypt(tenant.db_password_enc, context)
                except DecryptionError:  # a key missing from the ring, a tampered or moved ciphertext
                    unreadable.append(tenant.slug)
                    continue
                tenant.db_password_enc = ctx.box.encrypt(password, context)
                count += 1
        for server in (await session.execute(select(Server).with_for_update())).scalars():
            if server.password_enc is not None and ctx.box.needs_rotation(server.password_enc):
                context = server_password_context(server.name)
                try:
                    password = ctx.box.decrypt(server.password_enc, context)
                except DecryptionError:
                    unreadable.append(f"server {server.name}")
                    continue
                server.password_enc = ctx.box.encrypt(password, context)
                count += 1
        for webhook in (await session.execute(select(Webhook).with_for_update())).scalars():
            context = secret_context(webhook.id)
            for column in ("secret_enc", "previous_secret_enc"):
                sealed = getattr(webhook, column)
                if sealed is None or not ctx.box.needs_rotation(sealed):
                    continue
                try:
                    secret = ctx.box.decrypt(sealed, context)
                except DecryptionError:
                    unreadable.append(f"webhook {webhook.id}")
                    continue
                setattr(webhook, column, ctx.box.encrypt(secret, context))
                count += 1
    click.echo(f"re-encrypted {count} secret(s) with key {ctx.box.primary_kid}")
    click.echo(f"re-wrapped {await rewrap_data_keys(ctx)} data key(s); stored backups and exports are unchanged")
    if unreadable:
        raise SecretUnreadableError(
            f"{len(unreadable)} secret(s) do not decrypt for their tenant and were left as they are: "
            + ", ".join(sorted(unreadable))
        )


@main.command("generate-key")
@click.option("--kid", default="k1", show_default=True)
def generate_key_cmd(kid: str) -> None:
    """Print a new ENCRYPTION_KEYS entry."""
    click.echo(f"{kid}:{generate_key()}")


@main.group()
def tenants() -> None:
    """Tenant lifecycle."""


@tenants.command("create")
@click.argument("slug")
@click.option("--name", required=True)
@click.option("--plan", default=None)
@click.option("--domain", "domains", multiple=True)
@_run
async def tenants_create(ctx: AppContext, slug: str, name: str, plan: str | None, domains: tuple[str, ...]) -> None:
    """Create and provision a tenant; prints it with its first API key (shown once)."""
    created = await TenantService(ctx).create(
        TenantCreate(slug=slug, name=name, plan=plan, domains=list(domains)), actor=_ACTOR
    )
    _echo_json({"tenant": created.view, "api_key": created.api_key})


@tenants.command("list")
@click.option("--status", default=None)
@click.option("--plan", default=None)
@click.option("--q", default=None)
@click.option("--limit", type=click.IntRange(1, 200), default=50)
@_run
async def tenants_list(ctx: AppContext, status: str | None, plan: str | None, q: str | None, limit: int) -> None:
    """List tenants."""
    page = await TenantService(ctx).list(status=status, plan=plan, q=q, limit=limit)
    for t in page.items:
        click.echo(f"{t.id}  {t.slug:<32} {t.status:<12} {t.plan:<12} {t.database.name}")


@tenants.command("show")
@click.argument("ref")
@_run
async def tenants_show(ctx: AppContext, ref: str) -> None:
    """Show one tenant."""
    _echo_json(await TenantService(ctx).get(ref))


def _transition_command(action: str, help_text: str) -> None:
    @tenants.command(action, help=help_text)
    @click.argument("ref")
    @_run
    async def command(ctx: AppContext, ref: str) -> None:
        _echo_json(await TenantService(ctx).transition(ref, action, actor=_ACTOR))


_transition_command("suspend", "Suspend a tenant.")
_transition_command("resume", "Resume a suspended tenant.")
_transition_command("restore", "Restore a soft-deleted tenant.")


@tenants.command("usage")
@click.argument("ref")
@click.option("--granularity", type=click.Choice(["hour", "day"]), default="hour", show_default=True)
@click.option("--from", "start", default=None, help="ISO 8601; default: 24 hours or 30 days back")
@click.option("--to", "end", default=None, help="ISO 8601; default: now")
@click.option("--json", "as_json", is_flag=True, help="The admin API's answer, as JSON.")
@_run
async def tenants_usage(
    ctx: AppContext, ref: str, granularity: str, start: str | None, end: str | None, as_json: bool
) -> None:
    """A tenant's usage history (docs/usage.md): requests served and rejected per hour or day."""
    window = history_window(granularity, start, end)
    usage = await tenant_usage_history(ctx, await TenantService(ctx).get(ref), window)
    if as_json:
        _echo_json(usage)
        return
    size = "database_bytes" if granularity == "day" else ""
    click.echo(f"{'start':<26} {'requests':>12} {'rejected':>10} {size:>16}".rstrip())
    for bucket in usage.history:
        extra = f" {bucket.database_bytes:>16}" if granularity == "day" and bucket.database_bytes is not None else ""
        click.echo(f"{bucket.start:%Y-%m-%dT%H:%M:%SZ}{'':<6} {bucket.requests:>12} {bucket.rejected:>10}{extra}")


@tenants.command("delete")
@click.argument("ref")
@click.option("--purge", is_flag=True, help="Drop the database and role now.")
@_run
async def tenants_delete(ctx: AppContext, ref: str, purge: bool) -> None:
    """Soft-delete a tenant (or purge it)."""
    service = TenantService(ctx)
    view = await (service.purge(ref, actor=_ACTOR) if purge else service.transition(ref, "delete", actor=_ACTOR))
    _echo_json(view)


@main.group()
def webhooks() -> None:
    """Webhook subscriptions (docs/webhooks.md)."""


@webhooks.command("create")
@click.argument("url")
@click.option("--event", "events", multiple=True, required=True, help="An event name; repeat for more.")
@_run
async def webhooks_create(ctx: AppContext, url: str, events: tuple[str, ...]) -> None:
    """Subscribe URL to events; prints the webhook with its signing secret (shown once)."""
    _echo_json(await WebhookService(ctx).create(WebhookCreate(url=url, events=list(events)), actor=_ACTOR))


@webhooks.command("list")
@click.option("--limit", type=click.IntRange(1, 200), default=50)
@_run
async def webhooks_list(ctx: AppContext, limit: int) -> None:
    """Webhooks, oldest first (never their secrets)."""
    page = await WebhookService(ctx).list(limit=limit)
    for w in page.items:
        state = "disabled" if not w.enabled else f"{w.consecutive_failures} failing" if w.consecutive_failures else "ok"
        click.echo(f"{w.id}  {w.url:<48} {state:<12} {','.join(w.events)}")


@webhooks.command("update")
@click.argument("webhook_id")
@click.option("--url", default=None)
@click.option("--event", "events", multiple=True, help="The new event list; repeat for more.")
@click.option("--enable/--disable", "enabled", default=None, help="Enable (its pending deliveries go on) or disable.")
@_run
async def webhooks_update(
    ctx: AppContext, webhook_id: str, url: str | None, events: tuple[str, ...], enabled: bool | None
) -> None:
    """Change a webhook's URL, events, or whether it is enabled."""
    data = WebhookUpdate(url=url, events=list(events) if events else None, enabled=enabled)
    _echo_json(await WebhookService(ctx).update(webhook_id, data, actor=_ACTOR))


@webhooks.command("rotate-secret")
@click.argument("webhook_id")
@click.option("--grace-seconds", type=click.IntRange(0, 7 * 24 * 3600), default=24 * 3600, show_default=True)
@_run
async def webhooks_rotate_secret(ctx: AppContext, webhook_id: str, grace_seconds: int) -> None:
    """A new signing secret (shown once); the old one signs next to it for the grace period."""
    rotated = await WebhookService(ctx).rotate_secret(webhook_id, WebhookRotate(grace_seconds), actor=_ACTOR)
    _echo_json(rotated)


@webhooks.command("delete")
@click.argument("webhook_id")
@_run
async def webhooks_delete(ctx: AppContext, webhook_id: str) -> None:
    """Remove a webhook; nothing more is delivered to it."""
    await WebhookService(ctx).delete(webhook_id, actor=_ACTOR)
    click.echo(f"deleted {webhook_id}")


@main.group("api-keys")
def api_keys() -> None:
    """Tenant API keys."""


@api_keys.command("create")
@click.argument("ref")
@click.option("--name", required=True)
@click.option("--scope", "scopes", multiple=True)
@click.option("--expires-at", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z"]), default=None)
@_run
async def api_keys_create(
    ctx: AppContext, ref: str, name: str, scopes: tuple[str, ...], expires_at: datetime | None
) -> None:
    """Create a key; its secret is printed once."""
    _echo_json(
        await ApiKeyService(ctx).create(
            ref, ApiKeyCreate(name=name, scopes=list(scopes), expires_at=expires_at), actor=_ACTOR
        )
    )


@main.group()
def users() -> None:
    """A tenant's users (contract §12)."""


@users.command("create")
@click.argument("ref")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(["admin", "user", "viewer"]), default="user", show_default=True)
@click.option("--name", default=None)
@_run
async def users_create(ctx: AppContext, ref: str, email: str, role: str, name: str | None) -> None:
    """Create a user; the invitation token (to set a password) is printed once."""
    try:
        data = msgspec.convert({"email": email, "role": role, "name": name}, UserCreate)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(str(exc)) from None
    _echo_json(await UserService(ctx).create(ref, data, actor=Actor(_ACTOR)))


@users.command("list")
@click.argument("ref")
@click.option("--limit", type=click.IntRange(1, 200), default=100)
@_run
async def users_list(ctx: AppContext, ref: str, limit: int) -> None:
    """The tenant's users (never a password hash or a token)."""
    _echo_json(await UserService(ctx).list(ref, limit=limit))


@users.command("disable")
@click.argument("ref")
@click.argument("user_id")
@_run
async def users_disable(ctx: AppContext, ref: str, user_id: str) -> None:
    """Disable a user: sign-in and refresh answer 403, the user's sessions end."""
    _echo_json(await UserService(ctx).update(ref, user_id, UserUpdate(disabled=True), actor=Actor(_ACTOR)))


@users.command("enable")
@click.argument("ref")
@click.argument("user_id")
@_run
async def users_enable(ctx: AppContext, ref: str, user_id: str) -> None:
    """Enable a disabled user again."""
    _echo_json(await UserService(ctx).update(ref, user_id, UserUpdate(disabled=False), actor=Actor(_ACTOR)))


@users.command("invite")
@click.argument("ref")
@click.argument("user_id")
@_run
async def users_invite(ctx: AppContext, ref: str, user_id: str) -> None:
    """A new invitation for a user (a forgotten password too); its token is printed once."""
    _echo_json(await UserService(ctx).invite(ref, user_id, actor=Actor(_ACTOR)))


@api_keys.command("revoke")
@click.argument("ref")
@click.argument("key_id")
@_run
async def api_keys_revoke(ctx: AppContext, ref: str, key_id: str) -> None:
    """Revoke a key."""
    await ApiKeyService(ctx).revoke(ref, key_id, actor=_ACTOR)
    click.echo("revoked")


@api_keys.command("rotate")
@click.argument("ref")
@click.argument("key_id")
@click.option("--grace-seconds", type=click.IntRange(0, 30 * 86400), default=None)
@_run
async def api_keys_rotate(ctx: AppContext, ref: str, key_id: str, grace_seconds: int | None) -> None:
    """Replace a key; the old one keeps working for the grace period."""
    _echo_json(await ApiKeyService(ctx).rotate(ref, key_id, grace_seconds, actor=_ACTOR))


async def _follow(ctx: AppContext, op: OperationView, wait: bool) -> None:
    """Run the operation here and print how it ended (``--no-wait``: leave it to the service's runners)."""
    if wait:
        runner = OperationRunner(ctx, handlers(ctx), workers=1, poll_seconds=1.0)
        await runner.run_now(uuid.UUID(op.id))
        op = await OperationService(ctx).get(op.id)
    _echo_json(op)
    if op.state in ("failed", "cancelled"):
        sys.exit(1)


_WAIT = click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Run it here and wait, or leave it to the service."
)


@main.group()
def backups() -> None:
    """Backups of tenant databases (encrypted, in BACKUP_STORE_URL)."""


@backups.command("create")
@click.argument("ref")
@click.option("--note", default=None)
@_WAIT
@_run
async def backups_create(ctx: AppContext, ref: str, note: str | None, wait: bool) -> None:
    """Back up a tenant's database; prints the operation (its result names the backup)."""
    await _follow(ctx, await BackupService(ctx).request_backup(ref, note=note, actor=_ACTOR), wait)


@backups.command("list")
@click.argument("ref")
@click.option("--limit", type=click.IntRange(1, 200), default=50)
@_run
async def backups_list(ctx: AppContext, ref: str, limit: int) -> None:
    """A tenant's backups, newest first."""
    page = await BackupService(ctx).list_backups(ref, limit=limit)
    for b in page.items:
        size = "-" if b.size_bytes is None else f"{b.size_bytes}"
        click.echo(f"{b.id}  {b.created_at:%Y-%m-%d %H:%M:%S}  {b.kind:<12} {b.state:<10} {size:>12}  {b.note or ''}")


@backups.command("restore")
@click.argument("ref")
@click.argument("backup_id")
@_WAIT
@_run
async def backups_restore(ctx: AppContext, ref: str, backup_id: str, wait: bool) -> None:
    """Replace a tenant's data with one of its backups (a pre_restore backup is taken first)."""
    await _follow(ctx, await BackupService(ctx).request_restore(ref, backup_id, actor=_ACTOR), wait)


@backups.command("download")
@click.argument("ref")
@click.argument("backup_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), required=True)
@_run
async def backups_download(ctx: AppContext, ref: str, backup_id: str, output: str) -> None:
    """Write a backup as a pg_restore custom-format archive."""
    download = await BackupService(ctx).download_backup(ref, backup_id, actor=_ACTOR)
    await _write(download.chunks, output)


@tenants.command("export")
@click.argument("ref")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None)
@_WAIT
@_run
async def tenants_export(ctx: AppContext, ref: str, output: str | None, wait: bool) -> None:
    """Export a tenant's data (.tar.gz of CSV files with a manifest); with --output, also write it there."""
    op = await BackupService(ctx).request_export(ref, actor=_ACTOR)
    await _follow(ctx, op, wait)
    if output and wait:
        export_id = (await OperationService(ctx).get(op.id)).result or {}
        download = await BackupService(ctx).download_export(ref, str(export_id.get("export_id")), actor=_ACTOR)
        await _write(download.chunks, output)


@tenants.command("move")
@click.argument("ref")
@click.argument("server")
@click.option("--mode", type=click.Choice(["auto", "logical", "dump"]), default="auto", show_default=True)
@_WAIT
@_run
async def tenants_move(ctx: AppContext, ref: str, server: str, mode: str, wait: bool) -> None:
    """Move a tenant's database to another server (online when both servers allow it)."""
    op = await request_move(ctx, ref, MoveRequest(server=server, mode=mode), actor=_ACTOR)  # type: ignore[arg-type]
    await _follow(ctx, op, wait)


@main.group()
def servers() -> None:
    """PostgreSQL servers that hold tenant databases."""


@servers.command("list")
@_run
async def servers_list(ctx: AppContext) -> None:
    """Every server with its state and load."""
    for s in (await ServerService(ctx).list()).items:
        size = "-" if s.database_bytes is None else f"{s.database_bytes}"
        online = "online-moves" if s.can_move_online else "dump-moves"
        click.echo(
            f"{s.name:<16} {s.host}:{s.port:<6} {s.state:<9} {s.tenants:>6}/{s.capacity:<6} {size:>14}  "
            f"pg{s.version or '?'} {online} {'reachable' if s.reachable else 'UNREACHABLE'}"
        )


@servers.command("add")
@click.argument("name")
@click.option("--url", envvar="SERVER_URL", prompt=True, hide_input=True, help="Admin URL (or SERVER_URL).")
@click.option("--capacity", type=click.IntRange(0, 1_000_000), default=None)
@click.option("--label", "labels", multiple=True, help="key=value, repeatable")
@_run
async def servers_add(ctx: AppContext, name: str, url: str, capacity: int | None, labels: tuple[str, ...]) -> None:
    """Register a server (checked; the template is created there). The URL is read from a prompt or SERVER_URL
    so that its password stays out of the shell history."""
    pairs = dict(label.partition("=")[::2] for label in labels)
    data = msgspec.convert({"name": name, "url": url, "capacity": capacity, "labels": pairs}, ServerCreate)
    _echo_json(await ServerService(ctx).register(data, actor=_ACTOR))


@servers.command("drain")
@click.argument("name")
@_run
async def servers_drain(ctx: AppContext, name: str) -> None:
    """Move every tenant off a server, then disable it; the service's runners do the moves (follow the printed
    operation with ``tenantctl operations show``)."""
    _echo_json(await request_drain(ctx, name, actor=_ACTOR))


@main.group()
def operations() -> None:
    """Long-running work: backups, restores, clones, exports."""


@operations.command("show")
@click.argument("op_id")
@_run
async def operations_show(ctx: AppContext, op_id: str) -> None:
    """One operation."""
    _echo_json(await OperationService(ctx).get(op_id))


@operations.command("cancel")
@click.argument("op_id")
@_run
async def operations_cancel(ctx: AppContext, op_id: str) -> None:
    """Cancel an operation that can still be undone."""
    _echo_json(await OperationService(ctx).cancel(op_id, actor=_ACTOR))


async def _write(chunks: AsyncIterator[bytes], output: str) -> None:
    with open(output, "wb") as handle:  # noqa: ASYNC230 - a CLI writing its one output file
        async for chunk in chunks:
            handle.write(chunk)
