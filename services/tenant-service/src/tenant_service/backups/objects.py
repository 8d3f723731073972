"""A tenant's stored objects: where they live in the store, and how they are sealed with the tenant's data key.

Every object is encrypted (AES-256-GCM in chunks, :mod:`.crypto`) with its tenant's data key, bound to its own
key in the store, so the store holds no plaintext and no usable key. Each tenant's data key is wrapped by the
``ENCRYPTION_KEYS`` ring in the registry; purge deletes it, which makes every object of the tenant unreadable
before the objects themselves are deleted (crypto-shredding).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert

from tenant_service.backups.crypto import (
    CorruptObjectError,
    decrypt_stream,
    encrypt_stream,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from tenant_service.backups.store import ObjectNotFoundError
from tenant_service.context import AppContext
from tenant_service.db.models import TenantDataKey
from tenantry_common.problems import ConflictError, NotFoundError

TENANTS_PREFIX: Final = "tenants/"


class BackupCorruptError(ConflictError):
    """A stored object does not decrypt, or does not match the checksum recorded when it was made."""

    code = "backup_corrupt"


class ObjectGoneError(NotFoundError):
    """The stored object (or the tenant's data key) no longer exists: deleted, expired or purged."""

    code = "backup_not_found"


def tenant_prefix(tenant_id: uuid.UUID) -> str:
    """Where every object of a tenant lives."""
    return f"{TENANTS_PREFIX}{tenant_id}/"


def backup_key(tenant_id: uuid.UUID, backup_id: uuid.UUID) -> str:
    """The store key of a backup."""
    return f"{tenant_prefix(tenant_id)}backups/{backup_id}.pgdump.enc"


def export_key(tenant_id: uuid.UUID, export_id: uuid.UUID) -> str:
    """The store key of an export."""
    return f"{tenant_prefix(tenant_id)}exports/{export_id}.tar.gz.enc"


async def data_key(ctx: AppContext, tenant_id: uuid.UUID, *, create: bool) -> bytes:
    """The tenant's data key (made on first use when ``create``).

    Raises:
        ObjectGoneError: the tenant has no data key (purged, or never backed up) and ``create`` is false.
    """
    async with ctx.sessions() as session, session.begin():
        wrapped = await session.scalar(select(TenantDataKey.wrapped).where(TenantDataKey.tenant_id == tenant_id))
        if wrapped is None:
            if not create:
                raise ObjectGoneError("the tenant's stored data is gone (its key was destroyed)")
            candidate = wrap_data_key(ctx.box, tenant_id, new_data_key())
            await session.execute(
                insert(TenantDataKey).values(tenant_id=tenant_id, wrapped=candidate).on_conflict_do_nothing()
            )
            wrapped = await session.scalar(select(TenantDataKey.wrapped).where(TenantDataKey.tenant_id == tenant_id))
    if wrapped is None:  # the tenant was purged meanwhile
        raise ObjectGoneError("the tenant's stored data is gone (its key was destroyed)")
    return unwrap_data_key(ctx.box, tenant_id, wrapped)


async def rewrap_data_keys(ctx: AppContext) -> int:
    """Re-wrap every data key not wrapped by the ring's primary key (``ENCRYPTION_KEYS`` rotation); the stored
    objects stay as they are. Returns how many were re-wrapped."""
    count = 0
    async with ctx.sessions() as session, session.begin():
        for row in (await session.execute(select(TenantDataKey).with_for_update())).scalars():
            if ctx.box.needs_rotation(row.wrapped):
                row.wrapped = wrap_data_key(
                    ctx.box, row.tenant_id, unwrap_data_key(ctx.box, row.tenant_id, row.wrapped)
                )
                count += 1
    return count


async def destroy_data_key(ctx: AppContext, tenant_id: uuid.UUID) -> None:
    """Crypto-shredding: without its key, no object of the tenant can be read again, wherever copies went."""
    async with ctx.sessions() as session, session.begin():
        await session.execute(delete(TenantDataKey).where(TenantDataKey.tenant_id == tenant_id))


@dataclass
class Written:
    """What was stored: the plaintext's size and SHA-256 (what a download delivers and a restore checks)."""

    size: int
    sha256: str


async def write_object(
    ctx: AppContext,
    tenant_id: uuid.UUID,
    key: str,
    plaintext: AsyncIterable[bytes],
    on_bytes: Callable[[int], object] | None = None,
) -> Written:
    """Encrypt ``plaintext`` with the tenant's data key and stream it into the store under ``key``."""
    secret = await data_key(ctx, tenant_id, create=True)
    digest = hashlib.sha256()
    size = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal size
        async for chunk in plaintext:
            digest.update(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(size)
            yield chunk

    await ctx.store.put(key, encrypt_stream(secret, key, counted()))
    return Written(size=size, sha256=digest.hexdigest())


async def read_object(ctx: AppContext, tenant_id: uuid.UUID, key: str, sha256: str | None) -> AsyncIterator[bytes]:
    """The decrypted object, streamed; checked against ``sha256`` at its end.

    Raises:
        ObjectGoneError: no data key, or no such object.
        BackupCorruptError: it does not decrypt (altered, truncated, swapped) or its checksum differs.
    """
    secret = await data_key(ctx, tenant_id, create=False)
    digest = hashlib.sha256()
    try:
        async for chunk in decrypt_stream(secret, key, ctx.store.get(key)):
            digest.update(chunk)
            yield chunk
    except CorruptObjectError:
        raise BackupCorruptError("the stored object was altered or damaged; it cannot be used") from None
    except ObjectNotFoundError:
        raise ObjectGoneError("the stored object is gone") from None
    if sha256 is not None and digest.hexdigest() != sha256:
        raise BackupCorruptError("the stored object does not match the checksum recorded when it was made")


async def verify_object(ctx: AppContext, tenant_id: uuid.UUID, key: str, sha256: str | None) -> None:
    """Read the whole object once (nothing kept) to prove it is intact before a download starts.

    Raises:
        ObjectGoneError: no data key, or no such object.
        BackupCorruptError: altered or damaged.
    """
    async for _ in read_object(ctx, tenant_id, key, sha256):
        pass


async def delete_tenant_objects(ctx: AppContext, tenant_id: uuid.UUID) -> int:
    """Delete every stored object of the tenant (after :func:`destroy_data_key`)."""
    prefix = tenant_prefix(tenant_id)
    await ctx.store.cleanup_incomplete(prefix)
    return await ctx.store.delete_prefix(prefix)
