"""The object store of backups and exports (contract §10): a directory and an S3-compatible bucket alike.

Every test runs against both stores: a FileStore in a temporary directory and an S3Store on moto's S3 server,
a real process spoken to over HTTP (the ``s3_server`` fixture).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import stat
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support.s3 import S3Server
from tenant_service.backups.crypto import CorruptObjectError, decrypt_stream, encrypt_stream, new_data_key
from tenant_service.backups.store import (
    S3_PART_SIZE,
    FileStore,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    S3Store,
    open_store,
)
from tenantry_devtools.processes import ROOT, free_port

MiB = 1024 * 1024


class Backend:
    """One store under test, and a way to look behind its back."""

    def __init__(self, kind: str, store: ObjectStore, *, root: Path | None = None, s3: S3Server | None = None) -> None:
        self.kind = kind
        self.store = store
        self.root = root
        self.s3 = s3

    @property
    def s3_store(self) -> S3Store:
        assert isinstance(self.store, S3Store)
        return self.store

    def leftovers(self) -> list[str]:
        """What interrupted writes left: temporary files, or incomplete multipart uploads."""
        if self.root is not None:
            return sorted(str(p.relative_to(self.root)) for p in self.root.rglob(".*.incomplete"))
        assert self.s3 is not None
        uploads = self.s3.client().list_multipart_uploads(Bucket=self.s3.bucket, Prefix=self.s3_store.prefix)
        return sorted(upload["Key"] for upload in uploads.get("Uploads", ()))

    def raw(self, key: str) -> bytes:
        if self.root is not None:
            return (self.root / key).read_bytes()
        assert self.s3 is not None
        response = self.s3.client().get_object(Bucket=self.s3.bucket, Key=self.s3_store.prefix + key)
        return bytes(response["Body"].read())

    def overwrite(self, key: str, data: bytes) -> None:
        if self.root is not None:
            (self.root / key).write_bytes(data)
            return
        assert self.s3 is not None
        self.s3.client().put_object(Bucket=self.s3.bucket, Key=self.s3_store.prefix + key, Body=data)

    def child_env(self) -> dict[str, str]:
        """The environment a separate process needs to open the same store through StoreSettings.from_env."""
        if self.root is not None:
            return {"BACKUP_STORE_URL": f"file://{self.root}"}
        assert self.s3 is not None
        return {
            "BACKUP_STORE_URL": f"s3://{self.s3.bucket}/{self.s3_store.prefix}",
            "S3_ENDPOINT_URL": self.s3.endpoint_url,
            "S3_REGION": self.s3.region,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
        }


@pytest.fixture(params=["file", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "file":
        root = tmp_path / "backups"
        made = Backend("file", FileStore(root), root=root)
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        # Each test has a prefix of its own in the session's bucket.
        made = Backend("s3", server.store(f"test-{uuid.uuid4().hex}"), s3=server)
    yield made
    await made.store.close()


def tenant_key(kind: str = "backups") -> str:
    return f"tenants/{uuid.uuid4()}/{kind}/{uuid.uuid4()}.bin"


async def uneven_pieces(total: int, seed: int = 7, largest: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``total`` pseudo-random bytes in pieces of random sizes between 1 byte and ``largest``."""
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        size = min(rng.randint(1, largest), total - sent)
        sent += size
        yield rng.randbytes(size)


async def digest_of(pieces: AsyncIterator[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async for piece in pieces:
        size += len(piece)
        digest.update(piece)
    return size, digest.hexdigest()


async def collect(pieces: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in pieces])


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


# --- Streaming and memory -------------------------------------------------------------------------------------


async def test_a_30_mb_stream_in_uneven_pieces_round_trips_in_bounded_memory(backend: Backend) -> None:
    store = backend.store
    key = tenant_key()
    total = 30 * MiB + 12345
    # What any first call loads once (botocore's service model) is not part of the stream's cost.
    assert not await store.exists(key)
    # A FileStore holds about one write of 1 MiB; an S3Store one part of 8 MiB plus botocore's copy of it.
    bound = 4 * MiB if backend.kind == "file" else 2 * S3_PART_SIZE + 4 * MiB

    tracemalloc.start()
    try:
        written = await store.put(key, uneven_pieces(total))
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        size, digest = await digest_of(store.get(key))
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert written == size == total
    assert digest == (await digest_of(uneven_pieces(total)))[1]
    assert put_peak < bound, f"put held {put_peak / MiB:.1f} MiB for a {total / MiB:.0f} MiB object"
    assert get_peak < bound, f"get held {get_peak / MiB:.1f} MiB for a {total / MiB:.0f} MiB object"
    assert await store.list_keys(key) == [key]


@pytest.mark.parametrize("size", [0, 1, MiB, 3 * MiB + 1])
async def test_objects_of_any_size_round_trip(backend: Backend, size: int) -> None:
    key = tenant_key()
    assert await backend.store.put(key, uneven_pieces(size)) == size
    data = await collect(uneven_pieces(size))
    assert await collect(backend.store.get(key)) == data


async def test_a_put_replaces_the_object_under_the_same_key(backend: Backend) -> None:
    key = tenant_key()
    await backend.store.put(key, one(b"first version"))
    await backend.store.put(key, one(b"second"))
    assert await collect(backend.store.get(key)) == b"second"
    assert await backend.store.list_keys(key.rpartition("/")[0]) == [key]


# --- Atomicity ------------------------------------------------------------------------------------------------


class SourceFailedError(Exception):
    """What the stream being stored raises midway."""


async def failing_after(size: int) -> AsyncIterator[bytes]:
    async for piece in uneven_pieces(size):
        yield piece
    raise SourceFailedError("pg_dump died")


# 100 KiB fails within the first part (an S3Store has not started a multipart upload yet); 20 MiB after two
# uploaded parts.
@pytest.mark.parametrize("size", [100 * 1024, 20 * MiB], ids=["small", "multipart"])
async def test_a_put_whose_stream_fails_midway_leaves_no_object_and_no_leftovers(backend: Backend, size: int) -> None:
    key = tenant_key()
    with pytest.raises(SourceFailedError):
        await backend.store.put(key, failing_after(size))
    assert not await backend.store.exists(key)
    assert await backend.store.list_keys() == []
    assert backend.leftovers() == []
    assert await backend.store.cleanup_incomplete() == 0
    with pytest.raises(ObjectNotFoundError):
        await collect(backend.store.get(key))


async def test_a_cancelled_put_leaves_no_object_and_no_leftovers(backend: Backend) -> None:
    key = tenant_key()
    midway = asyncio.Event()

    async def stalls_after_two_parts() -> AsyncIterator[bytes]:
        async for piece in uneven_pieces(2 * S3_PART_SIZE + MiB):
            yield piece
        midway.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(backend.store.put(key, stalls_after_two_parts()))
    await asyncio.wait_for(midway.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await backend.store.exists(key)
    assert await backend.store.list_keys() == []
    assert backend.leftovers() == []


_KILLED_WRITER = """
import asyncio, os, sys
from tenant_service.backups.store import StoreSettings, open_store

async def source():
    for _ in range(3):
        yield os.urandom(8 * 1024 * 1024)
    print("midway", flush=True)
    await asyncio.Event().wait()

asyncio.run(open_store(StoreSettings.from_env()).put(sys.argv[1], source()))
"""


async def test_a_put_killed_with_sigkill_midway_is_undone_by_cleanup_incomplete(backend: Backend) -> None:
    key = tenant_key()
    tenant_prefix = key.partition("/backups/")[0] + "/"
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_WRITER, key,
        env={**os.environ, **backend.child_env()}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(writer.stdout.readline(), 60)  # type: ignore[union-attr]
        if line != b"midway\n":
            _, err = await writer.communicate()
            pytest.fail(f"the writer did not get midway: {line!r}\n{err.decode(errors='replace')}")
        writer.send_signal(signal.SIGKILL)
        assert await writer.wait() == -signal.SIGKILL
    finally:
        if writer.returncode is None:
            writer.kill()
            await writer.wait()

    assert not await backend.store.exists(key)
    assert await backend.store.list_keys() == []
    assert len(backend.leftovers()) == 1
    if backend.kind == "file":
        # A margin spares writes that may still be under way in other processes. (Not checked on moto's server:
        # it reports every multipart upload as started on 2010-11-10.)
        assert await backend.store.cleanup_incomplete(tenant_prefix, older_than=3600) == 0
    assert await backend.store.cleanup_incomplete("tenants/not-this-one/") == 0
    assert len(backend.leftovers()) == 1

    assert await backend.store.cleanup_incomplete(tenant_prefix) == 1
    assert backend.leftovers() == []
    assert await backend.store.cleanup_incomplete(tenant_prefix) == 0
    await backend.store.put(key, one(b"written again"))
    assert await collect(backend.store.get(key)) == b"written again"


# --- Listing and deleting -------------------------------------------------------------------------------------


async def test_delete_is_idempotent_and_delete_prefix_removes_only_that_prefix(backend: Backend) -> None:
    store = backend.store
    keys = [
        "tenants/a/backups/1.bin",
        "tenants/a/exports/2.tar.gz",
        "tenants/ab/backups/3.bin",
        "tenants/b/backups/4.bin",
    ]
    for key in keys:
        await store.put(key, one(key.encode()))

    assert await store.list_keys() == keys
    assert await store.list_keys("tenants/a/") == keys[:2]
    assert await store.list_keys("tenants/a") == keys[:3]  # a plain string prefix, as in S3
    assert await store.list_keys("tenants/a/backups/1.bin") == keys[:1]
    assert await store.list_keys("tenants/c/") == []

    await store.delete(keys[0])
    await store.delete(keys[0])
    await store.delete("tenants/never/was.bin")
    assert not await store.exists(keys[0])
    assert await store.exists(keys[1])

    assert await store.delete_prefix("tenants/a/") == 1
    assert await store.delete_prefix("tenants/a/") == 0
    assert await store.list_keys() == keys[2:]
    assert await collect(store.get(keys[2])) == keys[2].encode()
    assert await store.delete_prefix("") == 2
    assert await store.list_keys() == []


async def test_delete_prefix_removes_a_tenant_with_more_objects_than_one_listing_page(backend: Backend) -> None:
    keys = [f"tenants/many/backups/{i:05d}.bin" for i in range(1100)]
    await asyncio.gather(*(backend.store.put(key, one(b"x")) for key in keys))
    assert await backend.store.list_keys("tenants/many/") == keys
    assert await backend.store.delete_prefix("tenants/many/") == 1100
    assert await backend.store.list_keys() == []


async def test_reading_a_missing_object_raises_object_not_found(backend: Backend) -> None:
    pieces = backend.store.get(tenant_key())
    with pytest.raises(ObjectNotFoundError) as raised:
        await anext(pieces)
    assert raised.value.status == 404
    assert raised.value.code == "object_not_found"
    assert isinstance(raised.value, ObjectStoreError)


UNSAFE_KEYS = [
    "",
    "../escape.bin",
    "tenants/../../escape.bin",
    "/etc/passwd",
    "tenants\\a\\b.bin",
    "tenants//a.bin",
    "tenants/a/",
    "tenants/./a.bin",
    ".hidden",
    "tenants/.a.bin.0123456789abcdef.incomplete",
    "tenants/a b.bin",
    "tenants/ä.bin",
    "tenants/a?.bin",
    "tenants/a\x00.bin",
    "C:\\backups\\a.bin",
    "x" * 900,
]


@pytest.mark.parametrize("key", UNSAFE_KEYS)
async def test_unsafe_keys_are_refused(backend: Backend, key: str) -> None:
    store = backend.store
    with pytest.raises(ValueError, match="invalid object key"):
        await store.put(key, one(b"x"))
    with pytest.raises(ValueError, match="invalid object key"):
        store.get(key)
    with pytest.raises(ValueError, match="invalid object key"):
        await store.exists(key)
    with pytest.raises(ValueError, match="invalid object key"):
        await store.delete(key)
    assert await store.list_keys() == []
    if backend.root is not None:
        assert [p for p in backend.root.parent.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("prefix", ["../", "/etc/", "tenants/../", "tenants\\", "tenants//", ".hidden/", "a b"])
async def test_unsafe_prefixes_are_refused(backend: Backend, prefix: str) -> None:
    for call in (backend.store.list_keys, backend.store.delete_prefix, backend.store.cleanup_incomplete):
        with pytest.raises(ValueError, match="invalid object key"):
            await call(prefix)


# --- Encrypted objects ----------------------------------------------------------------------------------------


async def test_an_encrypted_object_round_trips_through_the_store_and_holds_no_plaintext(backend: Backend) -> None:
    key = tenant_key()
    data_key = new_data_key()
    plaintext = b"PGDMP" + b"secret customer row\n" * 50_000
    await backend.store.put(key, encrypt_stream(data_key, key, one(plaintext)))
    assert b"secret customer row" not in backend.raw(key)
    assert await collect(decrypt_stream(data_key, key, backend.store.get(key))) == plaintext


async def test_a_flipped_byte_in_a_stored_object_is_refused_as_corrupt(backend: Backend) -> None:
    key = tenant_key()
    data_key = new_data_key()
    await backend.store.put(key, encrypt_stream(data_key, key, uneven_pieces(3 * MiB), chunk_size=MiB))
    stored = bytearray(backend.raw(key))
    stored[len(stored) // 2] ^= 0x01
    backend.overwrite(key, bytes(stored))
    with pytest.raises(CorruptObjectError) as raised:
        await collect(decrypt_stream(data_key, key, backend.store.get(key)))
    assert raised.value.code == "backup_corrupt"


async def test_an_object_copied_onto_another_key_is_refused_as_corrupt(backend: Backend) -> None:
    key, other = tenant_key(), tenant_key()
    data_key = new_data_key()
    await backend.store.put(key, encrypt_stream(data_key, key, one(b"tenant data")))
    await backend.store.put(other, backend.store.get(key))
    with pytest.raises(CorruptObjectError):
        await collect(decrypt_stream(data_key, other, backend.store.get(other)))


# --- Store-specific -------------------------------------------------------------------------------------------


async def test_the_file_store_keeps_its_directories_and_files_private(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = FileStore(root)
    key = "tenants/a/backups/1.bin"
    previous = os.umask(0o002)
    try:
        await store.put(key, one(b"x"))
    finally:
        os.umask(previous)
    for directory in (root, root / "tenants", root / "tenants/a", root / "tenants/a/backups"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((root / key).stat().st_mode) == 0o600


async def test_the_file_store_removes_the_directories_that_delete_prefix_empties(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.put("tenants/a/backups/1.bin", one(b"x"))
    await store.put("tenants/b/backups/2.bin", one(b"x"))
    await store.delete_prefix("tenants/a/")
    assert sorted(p.name for p in (tmp_path / "tenants").iterdir()) == ["b"]


async def test_the_file_store_refuses_to_read_through_a_file_where_a_directory_should_be(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.put("tenants/a", one(b"x"))
    with pytest.raises(ObjectNotFoundError):
        await collect(store.get("tenants/a/backups/1.bin"))
    assert not await store.exists("tenants/a/backups/1.bin")
    with pytest.raises(ObjectStoreError, match="could not write"):
        await store.put("tenants/a/backups/1.bin", one(b"x"))


async def test_the_s3_store_keeps_objects_under_the_url_prefix(s3_server: S3Server) -> None:
    prefix = f"deploy-{uuid.uuid4().hex}/backups"
    store = open_store(s3_server.settings(prefix))
    try:
        await store.put("tenants/a/backups/1.bin", one(b"x"))
        listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix.split("/", maxsplit=1)[0])
        assert [item["Key"] for item in listed["Contents"]] == [f"{prefix}/tenants/a/backups/1.bin"]
        assert await store.list_keys() == ["tenants/a/backups/1.bin"]
    finally:
        await store.close()


async def test_an_unreachable_s3_store_fails_fast_with_an_object_store_error() -> None:
    store = S3Store(
        "tenantry-test", "", f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s",
        connect_timeout=1, read_timeout=1, max_attempts=2,
    )  # fmt: skip
    started = time.monotonic()
    try:
        with pytest.raises(ObjectStoreError, match="could not write") as raised:
            await store.put("tenants/a/backups/1.bin", one(b"x"))
        assert raised.value.status == 503
        with pytest.raises(ObjectStoreError, match="could not read"):
            await collect(store.get("tenants/a/backups/1.bin"))
    finally:
        await store.close()
    assert time.monotonic() - started < 30
