"""Where backups and exports are kept: a directory (:class:`FileStore`) or an S3-compatible bucket (:class:`S3Store`).

Both hold opaque, already encrypted objects (:mod:`tenant_service.backups.crypto`) under relative keys such as
``tenants/<uuid>/backups/<uuid>.bin``, stream them in bounded memory, and write atomically: an object appears
whole or not at all. What an interrupted write leaves (a temporary file, an incomplete multipart upload) is never
visible as an object, and :meth:`ObjectStore.cleanup_incomplete` removes it, also after a ``kill -9``.

Every failure of the underlying storage is raised as :class:`ObjectStoreError` (a missing object as
:class:`ObjectNotFoundError`), so callers handle one small hierarchy whatever the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from tenantry_common.problems import ProblemError
from tenantry_common.settings import ConfigError, env_opt, env_str

#: ``BACKUP_STORE_URL`` when unset: the directory that the compose volume and the chart's volume are mounted on.
DEFAULT_STORE_URL: Final = "file:///var/lib/tenantry/backups"
#: ``S3_REGION`` when unset.
DEFAULT_S3_REGION: Final = "us-east-1"
#: Bytes per multipart part of :class:`S3Store` (its first 1000 parts; see :func:`_part_size`).
S3_PART_SIZE: Final = 8 * 1024 * 1024
#: Bytes per read of :meth:`ObjectStore.get`, and per write of :class:`FileStore`.
IO_CHUNK_SIZE: Final = 1024 * 1024

_SEGMENT: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}"
_KEY_PATTERN: Final = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_MAX_KEY_LENGTH: Final = 800
_BUCKET_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_INCOMPLETE_SUFFIX: Final = ".incomplete"
_NOT_FOUND_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_S3_DELETE_BATCH: Final = 1000
_T = TypeVar("_T")


class ObjectStoreError(ProblemError):
    """The object store failed (unreachable, refused, out of space); the message says which store and why."""

    status = 503
    code = "object_store_unavailable"


class ObjectNotFoundError(ObjectStoreError):
    """No object under this key."""

    status = 404
    code = "object_not_found"


def validate_key(key: str) -> str:
    """``key`` when it is a safe relative key: ``/``-separated segments of letters, digits, ``.``, ``_`` and ``-``.

    Each segment starts with a letter or a digit, which rules out ``..``, hidden names and the store's own
    temporary files; absolute paths, backslashes and empty segments are refused too.

    Raises:
        ValueError: anything else.
    """
    if len(key) > _MAX_KEY_LENGTH or not _KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"invalid object key {key!r}: expected relative segments of [A-Za-z0-9._-] separated by '/', each "
            "starting with a letter or a digit"
        )
    return key


def validate_prefix(prefix: str) -> str:
    """``prefix`` when it is empty or the start of a valid key (a trailing ``/`` allowed).

    Raises:
        ValueError: anything else.
    """
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


class ObjectStore(Protocol):
    """A flat namespace of immutable objects, written and read as streams."""

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the stream under ``key`` (replacing any object there) and return its size in bytes.

        Atomic: the object appears whole once this returns; if the stream or the store fails (or the caller is
        cancelled) nothing is stored and nothing is left behind.

        Raises:
            ValueError: an invalid key.
            ObjectStoreError: the store failed.
        """
        ...

    def get(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes, streamed in pieces of at most about :data:`IO_CHUNK_SIZE`.

        The key is checked at once; the object is looked up when iteration starts.

        Raises:
            ValueError: an invalid key.
            ObjectNotFoundError: no such object (from the first iteration, before any byte).
            ObjectStoreError: the store failed.
        """
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; nothing happens when there is none."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; return how many there were.

        Leftovers of interrupted writes are :meth:`cleanup_incomplete`'s.
        """
        ...

    async def list_keys(self, prefix: str = "") -> list[str]:
        """The keys starting with ``prefix`` (a plain string prefix, as in S3), sorted."""
        ...

    async def cleanup_incomplete(self, prefix: str = "", *, older_than: float = 0.0) -> int:
        """Remove what interrupted writes under ``prefix`` left, started at least ``older_than`` seconds ago.

        With the default every leftover goes, including a write in progress right now: pass a margin when other
        processes may be writing under the prefix. Returns how many leftovers were removed.
        """
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


# --- FileStore ------------------------------------------------------------------------------------------------


def _incomplete_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(8)}{_INCOMPLETE_SUFFIX}"


def _completed_name(incomplete: str) -> str | None:
    """The object name an incomplete file was for, or None when ``incomplete`` is not one."""
    if not (incomplete.startswith(".") and incomplete.endswith(_INCOMPLETE_SUFFIX)):
        return None
    name, dot, token = incomplete[1 : -len(_INCOMPLETE_SUFFIX)].rpartition(".")
    return name if dot and len(token) == 16 else None


def _may_hold(directory_key: str, prefix: str) -> bool:
    """Whether keys under ``directory_key`` (ending with ``/``) may start with ``prefix``."""
    return directory_key.startswith(prefix) or prefix.startswith(directory_key)


class FileStore:
    """Objects as files under ``root``: directories 0700, files 0600, each written to a temporary file first.

    Blocking file calls run in worker threads, one call at a time per operation, so the event loop never waits
    on the disk.
    """

    def __init__(self, root: Path) -> None:
        """Keep objects under ``root`` (created on first write when missing)."""
        self.root = root.resolve()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _make_dirs(self, directory: Path) -> None:
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
                # mkdir's mode is narrowed by the umask; the tree must be exactly 0700 whatever the umask.
                os.chmod(path, 0o700)

    def _open_incomplete(self, path: Path) -> tuple[IO[bytes], Path]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for attempt in range(3):
            self._make_dirs(path.parent)
            temp = path.parent / _incomplete_name(path.name)
            try:
                fd = os.open(temp, flags, 0o600)
            except FileNotFoundError:
                # delete_prefix removed the emptied directory between the mkdir and the open: make it again.
                if attempt == 2:
                    raise
                continue
            return os.fdopen(fd, "wb"), temp
        raise AssertionError("unreachable")

    @staticmethod
    def _commit(file: IO[bytes], temp: Path, path: Path) -> None:
        file.flush()
        os.fsync(file.fileno())
        file.close()
        os.replace(temp, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @staticmethod
    def _discard(file: IO[bytes], temp: Path) -> None:
        # A buffered file's close waits for a write still running in a worker thread (they share its lock), so
        # the descriptor is never closed under that write.
        with contextlib.suppress(OSError):
            file.close()
        with contextlib.suppress(OSError):
            temp.unlink()

    async def _io(self, action: str, key: str, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` in a worker thread, its OSError raised as :class:`ObjectStoreError`."""
        try:
            return await asyncio.to_thread(call, *args)
        except OSError as exc:
            raise ObjectStoreError(
                f"the file store at {self.root} could not {action} {key!r}: {exc.strerror or exc}"
            ) from exc

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """See :meth:`ObjectStore.put`: a temporary file, fsync, rename, fsync of the directory."""
        path = self._path(key)
        file, temp = await self._io("write", key, self._open_incomplete, path)
        written = 0
        try:
            pending = bytearray()
            async for piece in chunks:
                pending += piece
                written += len(piece)
                if len(pending) >= IO_CHUNK_SIZE:
                    full, pending = pending, bytearray()
                    await self._io("write", key, file.write, full)
            if pending:
                await self._io("write", key, file.write, pending)
            await self._io("write", key, self._commit, file, temp, path)
        except BaseException:
            self._discard(file, temp)
            raise
        return written

    def get(self, key: str) -> AsyncIterator[bytes]:
        """See :meth:`ObjectStore.get`."""
        return self._read(key, self._path(key))

    async def _read(self, key: str, path: Path) -> AsyncIterator[bytes]:
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in the file store at {self.root}") from None
        except OSError as exc:
            raise ObjectStoreError(f"the file store at {self.root} could not read {key!r}: {exc.strerror}") from exc
        try:
            while piece := await self._io("read", key, file.read, IO_CHUNK_SIZE):
                yield piece
        finally:
            file.close()

    async def exists(self, key: str) -> bool:
        """See :meth:`ObjectStore.exists`."""
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        """See :meth:`ObjectStore.delete`."""
        await self._io("delete", key, self._unlink, self._path(key))

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()

    def _walk(self, prefix: str) -> Iterator[tuple[str, str, Path]]:
        """``(directory key, file name, path)`` of every regular file in the directories ``prefix`` reaches."""
        directory, _, _ = prefix.rpartition("/")
        base = self.root / directory if directory else self.root
        for folder, dirs, files in os.walk(base):
            relative = Path(folder).relative_to(self.root).as_posix()
            folder_key = "" if relative == "." else relative + "/"
            # Only descend where keys starting with the prefix can be.
            dirs[:] = [d for d in dirs if _may_hold(folder_key + d + "/", prefix)]
            for name in files:
                path = Path(folder) / name
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    if stat.S_ISREG(path.lstat().st_mode):
                        yield folder_key, name, path

    def _keys(self, prefix: str) -> list[tuple[str, Path]]:
        return sorted(
            (folder + name, path)
            for folder, name, path in self._walk(prefix)
            if not name.startswith(".") and (folder + name).startswith(prefix)
        )

    async def list_keys(self, prefix: str = "") -> list[str]:
        """See :meth:`ObjectStore.list_keys`."""
        validate_prefix(prefix)
        return [key for key, _ in await self._io("list", prefix, self._keys, prefix)]

    def _delete_prefix(self, prefix: str) -> int:
        count = 0
        for _, path in self._keys(prefix):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                count += 1
        directory, _, _ = prefix.rpartition("/")
        base = self.root / directory if directory else self.root
        for folder, _, _ in os.walk(base, topdown=False):
            relative = Path(folder).relative_to(self.root).as_posix()
            if relative != "." and (relative + "/").startswith(prefix):
                with contextlib.suppress(OSError):  # not empty: a file that is not an object, or a write under way
                    os.rmdir(folder)
        return count

    async def delete_prefix(self, prefix: str) -> int:
        """See :meth:`ObjectStore.delete_prefix`; directories emptied under the prefix are removed too."""
        validate_prefix(prefix)
        return await self._io("delete", prefix, self._delete_prefix, prefix)

    def _cleanup_incomplete(self, prefix: str, older_than: float) -> int:
        count = 0
        now = time.time()
        for folder, name, path in self._walk(prefix):
            target = _completed_name(name)
            if target is None or not (folder + target).startswith(prefix):
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - path.lstat().st_mtime >= older_than:
                    path.unlink()
                    count += 1
        return count

    async def cleanup_incomplete(self, prefix: str = "", *, older_than: float = 0.0) -> int:
        """See :meth:`ObjectStore.cleanup_incomplete`: temporary files, by their last write."""
        validate_prefix(prefix)
        return await self._io("clean up", prefix, self._cleanup_incomplete, prefix, older_than)

    async def close(self) -> None:
        """Nothing to release."""


# --- S3Store --------------------------------------------------------------------------------------------------


def _part_size(part_number: int) -> int:
    """Bytes of part ``part_number`` (from 1): 8 MiB, one more 8 MiB every 1000 parts.

    S3 allows 10,000 parts per upload: that makes objects up to about 430 GiB, where a fixed 8 MiB would stop
    at 78 GiB, while the common small backup still goes in 8 MiB parts.
    """
    return S3_PART_SIZE * (1 + (part_number - 1) // 1000)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


#: What the S3 client raises when the store is unreachable, too slow or refuses a request.
_S3_FAILURES: Final = (ClientError, BotoCoreError, aiohttp.ClientError, TimeoutError)


class S3Store:
    """Objects in an S3-compatible bucket, under ``prefix``; large ones are written as multipart uploads."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = DEFAULT_S3_REGION,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 4,
    ) -> None:
        """Describe the bucket; the connection is made on first use.

        Args:
            bucket: the bucket, which must exist.
            prefix: prepended to every key (``backups`` or ``backups/`` alike).
            endpoint_url: the S3-compatible server (None: AWS's endpoint for ``region``).
            region: the bucket's region.
            access_key: with ``secret_key``; None for both uses botocore's credential chain (an instance role).
            secret_key: the secret of ``access_key``.
            connect_timeout: seconds to connect.
            read_timeout: seconds to wait for each read of a response.
            max_attempts: tries of each request (the first included) on a throttle or a transient failure.
        """
        self.bucket = bucket
        self.prefix = validate_prefix(prefix.strip("/") + "/" if prefix.strip("/") else "")
        self._endpoint_url = endpoint_url
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._config = AioConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # S3-compatible servers seldom answer virtual-host-style requests on their own endpoint.
            s3={"addressing_style": "path"} if endpoint_url else None,
            # Only what S3 requires: several S3-compatible servers refuse the newer default CRC checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self._endpoint_url!r})"

    @property
    def _where(self) -> str:
        return f"the S3 store {self.bucket}/{self.prefix}"

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                creator = get_session().create_client(
                    "s3",
                    region_name=self._region,
                    endpoint_url=self._endpoint_url,
                    aws_access_key_id=self._access_key,
                    aws_secret_access_key=self._secret_key,
                    config=self._config,
                )
                self._client = await self._stack.enter_async_context(creator)
            return self._client

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    @contextlib.contextmanager
    def _translated(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except _S3_FAILURES as exc:
            detail = f"{_error_code(exc)}: {exc}" if isinstance(exc, ClientError) else repr(exc)
            raise ObjectStoreError(f"{self._where} could not {action} {key!r}: {detail}") from exc

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """See :meth:`ObjectStore.put`: one PUT up to 8 MiB, else a multipart upload aborted on any failure."""
        full = self._full(key)
        with self._translated("write", key):
            s3 = await self._s3()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        pending = bytearray()
        written = 0
        try:
            async for piece in chunks:
                pending += piece
                written += len(piece)
                if len(pending) >= _part_size(len(parts) + 1):
                    if upload_id is None:
                        with self._translated("write", key):
                            created = await s3.create_multipart_upload(Bucket=self.bucket, Key=full)
                        upload_id = str(created["UploadId"])
                    parts.append(await self._upload_part(s3, key, upload_id, len(parts) + 1, pending))
            if upload_id is None:
                with self._translated("write", key):
                    await s3.put_object(Bucket=self.bucket, Key=full, Body=bytes(pending))
                return written
            if pending:
                parts.append(await self._upload_part(s3, key, upload_id, len(parts) + 1, pending))
            with self._translated("write", key):
                await s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id is not None:
                # Best effort: what an abort misses (the store is down, the process dies) cleanup_incomplete gets.
                with contextlib.suppress(*_S3_FAILURES):
                    await s3.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise
        return written

    async def _upload_part(self, s3: Any, key: str, upload_id: str, number: int, buffer: bytearray) -> dict[str, Any]:
        """Upload ``buffer`` as part ``number`` and empty it.

        The buffer is emptied as soon as it is copied, which keeps the peak at two parts (botocore copies one).
        """
        body = bytes(buffer)
        buffer.clear()
        with self._translated("write", key):
            response = await s3.upload_part(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id, PartNumber=number, Body=body
            )
        return {"ETag": response["ETag"], "PartNumber": number}

    def get(self, key: str) -> AsyncIterator[bytes]:
        """See :meth:`ObjectStore.get`: the response body, streamed."""
        return self._read(key, self._full(key))

    async def _read(self, key: str, full: str) -> AsyncIterator[bytes]:
        with self._translated("read", key):
            s3 = await self._s3()
            try:
                response = await s3.get_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND_CODES:
                    raise ObjectNotFoundError(f"no object {key!r} in {self._where}") from None
                raise
            # The body's context closes the connection also when the reader stops early.
            async with response["Body"] as body:
                async for piece in body.iter_chunks(IO_CHUNK_SIZE):
                    yield piece

    async def exists(self, key: str) -> bool:
        """See :meth:`ObjectStore.exists`."""
        full = self._full(key)
        with self._translated("look up", key):
            s3 = await self._s3()
            try:
                await s3.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND_CODES:
                    return False
                raise
            return True

    async def delete(self, key: str) -> None:
        """See :meth:`ObjectStore.delete`."""
        full = self._full(key)
        with self._translated("delete", key):
            s3 = await self._s3()
            await s3.delete_object(Bucket=self.bucket, Key=full)

    async def _pages(self, operation: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
        s3 = await self._s3()
        async for page in s3.get_paginator(operation).paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            yield page

    async def list_keys(self, prefix: str = "") -> list[str]:
        """See :meth:`ObjectStore.list_keys`."""
        validate_prefix(prefix)
        keys: list[str] = []
        with self._translated("list", prefix):
            async for page in self._pages("list_objects_v2", prefix):
                keys.extend(str(item["Key"]).removeprefix(self.prefix) for item in page.get("Contents", ()))
        return sorted(keys)

    async def delete_prefix(self, prefix: str) -> int:
        """See :meth:`ObjectStore.delete_prefix`: a batch delete per listed page."""
        validate_prefix(prefix)
        count = 0
        with self._translated("delete", prefix):
            s3 = await self._s3()
            async for page in self._pages("list_objects_v2", prefix):
                objects = [{"Key": item["Key"]} for item in page.get("Contents", ())]
                for start in range(0, len(objects), _S3_DELETE_BATCH):
                    batch = objects[start : start + _S3_DELETE_BATCH]
                    response = await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                    if errors := response.get("Errors"):
                        first = errors[0]
                        raise ObjectStoreError(
                            f"{self._where} could not delete {len(errors)} object(s) "
                            f"under {prefix!r}, e.g. {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
                        )
                    count += len(batch)
        return count

    async def cleanup_incomplete(self, prefix: str = "", *, older_than: float = 0.0) -> int:
        """See :meth:`ObjectStore.cleanup_incomplete`: aborts multipart uploads, by their start."""
        validate_prefix(prefix)
        count = 0
        now = time.time()
        with self._translated("clean up", prefix):
            s3 = await self._s3()
            async for page in self._pages("list_multipart_uploads", prefix):
                for upload in page.get("Uploads", ()):
                    if now - upload["Initiated"].timestamp() < older_than:
                        continue
                    with contextlib.suppress(ClientError):  # finished or aborted meanwhile
                        await s3.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        count += 1
        return count

    async def close(self) -> None:
        """Close the client's connections."""
        async with self._lock:
            await self._stack.aclose()
            self._client = None


# --- Settings -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileLocation:
    """A ``file://`` store URL, parsed."""

    root: Path
    """The directory that holds the objects."""


@dataclass(frozen=True)
class S3Location:
    """An ``s3://`` store URL, parsed."""

    bucket: str
    """The bucket."""
    prefix: str
    """Prepended to every key (empty, or ending with ``/``)."""


def parse_store_url(url: str) -> FileLocation | S3Location:
    """Where ``BACKUP_STORE_URL`` points: ``file:///absolute/path`` or ``s3://bucket[/prefix]``.

    Raises:
        ConfigError: any other form (the message shows the accepted ones).
    """
    forms = "use file:///absolute/path or s3://bucket/prefix"
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError(f"BACKUP_STORE_URL {url!r} has a query or a fragment; {forms}")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"BACKUP_STORE_URL {url!r} names a host; {forms} (three slashes)")
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"BACKUP_STORE_URL {url!r} needs an absolute directory other than /; {forms}")
        if any(segment in (".", "..") for segment in path.split("/")):
            raise ConfigError(f"BACKUP_STORE_URL {url!r} must not contain '.' or '..'; {forms}")
        return FileLocation(root=Path(path))
    if parts.scheme == "s3":
        if "@" in parts.netloc or ":" in parts.netloc:
            raise ConfigError(
                f"BACKUP_STORE_URL {url!r}: the s3:// form takes no credentials or port (set AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and S3_ENDPOINT_URL)"
            )
        if not _BUCKET_PATTERN.fullmatch(parts.netloc) or ".." in parts.netloc:
            raise ConfigError(f"BACKUP_STORE_URL {url!r}: {parts.netloc!r} is not a valid bucket name; {forms}")
        prefix = parts.path.strip("/")
        try:
            validate_prefix(prefix)
        except ValueError:
            raise ConfigError(
                f"BACKUP_STORE_URL {url!r}: the prefix {prefix!r} may hold only [A-Za-z0-9._-] segments"
            ) from None
        return S3Location(bucket=parts.netloc, prefix=prefix + "/" if prefix else "")
    raise ConfigError(f"BACKUP_STORE_URL {url!r} has an unsupported scheme; {forms}")


@dataclass(frozen=True)
class StoreSettings:
    """Where backups and exports are stored (contract §10; docs/backups.md)."""

    url: str = DEFAULT_STORE_URL
    """``BACKUP_STORE_URL``: ``file:///absolute/path`` (the default, /var/lib/tenantry/backups) or
    ``s3://bucket/prefix``."""
    s3_endpoint_url: str | None = None
    """``S3_ENDPOINT_URL``: the S3-compatible server (unset: AWS's endpoint for the region)."""
    s3_region: str = DEFAULT_S3_REGION
    """``S3_REGION``: the bucket's region."""
    access_key_id: str | None = None
    """``AWS_ACCESS_KEY_ID``: with the secret below; both unset use the platform's credentials (an instance role)."""
    secret_access_key: str | None = field(default=None, repr=False)
    """``AWS_SECRET_ACCESS_KEY``: the secret of the access key."""

    def __post_init__(self) -> None:
        parse_store_url(self.url)
        if self.s3_endpoint_url is not None:
            endpoint = urlsplit(self.s3_endpoint_url)
            if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
                raise ConfigError(f"S3_ENDPOINT_URL {self.s3_endpoint_url!r} must be an http:// or https:// URL")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ConfigError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")

    @property
    def location(self) -> FileLocation | S3Location:
        """The parsed :attr:`url`."""
        return parse_store_url(self.url)

    @classmethod
    def from_env(cls) -> StoreSettings:
        """Read the settings from the environment.

        Raises:
            ConfigError: an invalid URL, or only one of the two AWS variables.
        """
        return cls(
            url=env_str("BACKUP_STORE_URL", DEFAULT_STORE_URL),
            s3_endpoint_url=env_opt("S3_ENDPOINT_URL"),
            s3_region=env_str("S3_REGION", DEFAULT_S3_REGION),
            access_key_id=env_opt("AWS_ACCESS_KEY_ID"),
            secret_access_key=env_opt("AWS_SECRET_ACCESS_KEY"),
        )


def open_store(settings: StoreSettings) -> ObjectStore:
    """The store that ``settings`` describe (nothing is connected or created before its first use)."""
    location = settings.location
    if isinstance(location, FileLocation):
        return FileStore(location.root)
    return S3Store(
        location.bucket,
        location.prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.access_key_id,
        secret_key=settings.secret_access_key,
    )
