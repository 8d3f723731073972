"""Encryption of stored backups and exports: per-tenant data keys and a streaming AEAD.

Each tenant has a random 32-byte data key. Only its wrapped form is kept (in the registry), sealed by the
``ENCRYPTION_KEYS`` ring (:class:`~tenant_service.secretbox.SecretBox`) and bound to the tenant, so the object store
never holds plaintext or a usable key, and rotating ``ENCRYPTION_KEYS`` re-wraps data keys without touching a
single stored object. Destroying the wrapped key makes every object of the tenant unreadable.

An object is encrypted with AES-256-GCM in fixed-size chunks, the STREAM construction (Hoang, Reyhanitabar, Rogaway
and Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015)::

    header  = MAGIC (4) | VERSION (1) | chunk size (4, big-endian) | nonce prefix (7, random per object)
    chunk i = AES-256-GCM(key, nonce = prefix | i (4, big-endian) | last (1: 0 or 1),
                          plaintext chunk i, associated data = header | object id)

Every chunk but the last holds exactly ``chunk size`` bytes of plaintext; the last holds the rest (possibly
nothing: an empty object is its header and one empty final chunk). The counter in the nonce refuses reordered or
dropped chunks, the last-chunk flag refuses a truncated or extended object, the header in the associated data
refuses an altered header, and the object id refuses an object moved onto another id.

Decryption is streaming: it yields a chunk's plaintext as soon as that chunk is authenticated, so a reader learns
that an object was cut short or extended only at its end. Whoever consumes :func:`decrypt_stream` must not commit
to what it read (switch a restored database in, finish a download) before the iterator is exhausted.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenant_service.secretbox import DecryptionError, SecretBox
from tenantry_common.problems import ConflictError, ProblemError

#: Size of a data key, in bytes (AES-256).
DATA_KEY_BYTES: Final = 32
#: Plaintext bytes per sealed chunk unless a caller chooses otherwise.
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
#: The largest chunk size accepted, so that a forged header cannot make a reader buffer without bound.
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024

_MAGIC: Final = b"TNTE"
_VERSION: Final = 1
_HEADER: Final = struct.Struct(">4sBI7s")
_PREFIX_BYTES: Final = 7
_TAG_BYTES: Final = 16
_MAX_CHUNKS: Final = 2**32
HEADER_BYTES: Final = _HEADER.size


class CorruptObjectError(ConflictError):
    """A stored object does not decrypt: altered, truncated, extended, of another object, or under another key."""

    code = "backup_corrupt"


class DataKeyUnreadableError(ProblemError):
    """A wrapped data key does not unwrap (a key missing from the ring, or a wrapped key of another tenant)."""

    status = 500
    code = "data_key_unreadable"


def new_data_key() -> bytes:
    """A fresh random data key for a tenant."""
    return os.urandom(DATA_KEY_BYTES)


def data_key_context(tenant_id: uuid.UUID | str) -> str:
    """Associated data binding a wrapped data key to its tenant."""
    return f"tenant:{tenant_id}:data-key"


def wrap_data_key(box: SecretBox, tenant_id: uuid.UUID | str, key: bytes) -> str:
    """Seal ``key`` with the ring's primary key, bound to ``tenant_id`` (the form the registry keeps)."""
    _check_key(key)
    return box.encrypt(base64.b64encode(key).decode("ascii"), data_key_context(tenant_id))


def unwrap_data_key(box: SecretBox, tenant_id: uuid.UUID | str, wrapped: str) -> bytes:
    """The data key sealed by :func:`wrap_data_key` for ``tenant_id``, with any key of the ring.

    Raises:
        DataKeyUnreadableError: the key it was sealed with is not in the ring, it was sealed for another tenant,
            or it was altered.
    """
    try:
        key = base64.b64decode(box.decrypt(wrapped, data_key_context(tenant_id)), validate=True)
    except (DecryptionError, binascii.Error) as exc:
        raise DataKeyUnreadableError(f"the data key of tenant {tenant_id} does not unwrap") from exc
    if len(key) != DATA_KEY_BYTES:
        raise DataKeyUnreadableError(f"the data key of tenant {tenant_id} is not {DATA_KEY_BYTES} bytes")
    return key


def rewrap_data_key(box: SecretBox, tenant_id: uuid.UUID | str, wrapped: str) -> str | None:
    """``wrapped`` sealed again with the ring's primary key, or None when it already is.

    This is all that a rotation of ``ENCRYPTION_KEYS`` changes: stored objects stay as they are.

    Raises:
        DataKeyUnreadableError: as :func:`unwrap_data_key`.
    """
    if not box.needs_rotation(wrapped):
        return None
    return wrap_data_key(box, tenant_id, unwrap_data_key(box, tenant_id, wrapped))


def _check_key(key: bytes) -> None:
    if len(key) != DATA_KEY_BYTES:
        raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes, got {len(key)}")


def _nonce(prefix: bytes, counter: int, *, last: bool) -> bytes:
    if counter >= _MAX_CHUNKS:
        raise ValueError("an object has at most 2**32 chunks")
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


async def encrypt_stream(
    key: bytes, object_id: str, chunks: AsyncIterable[bytes], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """Encrypt a stream of any-sized pieces of plaintext for the object ``object_id``.

    Yields the header, then one sealed chunk per ``chunk_size`` bytes of plaintext. Holds at most one chunk plus
    one incoming piece in memory.

    Args:
        key: the tenant's data key (:func:`new_data_key`).
        object_id: what the object is (its store key, say); the same id must be given to :func:`decrypt_stream`.
        chunks: the plaintext.
        chunk_size: plaintext bytes per sealed chunk, 1 to :data:`MAX_CHUNK_SIZE`.

    Raises:
        ValueError: a key that is not 32 bytes, or a chunk size out of bounds.
    """
    _check_key(key)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}, got {chunk_size}")
    aead = AESGCM(key)
    prefix = os.urandom(_PREFIX_BYTES)
    header = _HEADER.pack(_MAGIC, _VERSION, chunk_size, prefix)
    associated = header + object_id.encode()
    yield header
    counter = 0
    pending = bytearray()
    async for piece in chunks:
        pending += piece
        start = 0
        # A chunk is sealed as "not last" only once a byte after it is known to exist.
        while len(pending) - start > chunk_size:
            nonce = _nonce(prefix, counter, last=False)
            sealed = aead.encrypt(nonce, memoryview(pending)[start : start + chunk_size], associated)
            counter += 1
            start += chunk_size
            yield sealed
        del pending[:start]
    yield aead.encrypt(_nonce(prefix, counter, last=True), pending, associated)


def _parse_header(header: bytes) -> tuple[int, bytes]:
    magic, version, chunk_size, prefix = _HEADER.unpack(header)
    if magic != _MAGIC:
        raise CorruptObjectError("the stored object is not an encrypted Tenantry object")
    if version != _VERSION:
        raise CorruptObjectError(f"the stored object has an unknown format version {version}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise CorruptObjectError("the stored object's header is corrupt")
    return chunk_size, prefix


async def decrypt_stream(key: bytes, object_id: str, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Decrypt what :func:`encrypt_stream` made for ``object_id``, from pieces of any size.

    Yields each chunk's plaintext once that chunk is authenticated; the object as a whole is authentic only when
    the iterator ends without an error (see the module's docstring).

    Raises:
        CorruptObjectError: the object was altered, truncated or extended, was made for another object id, or
            under another key.
        ValueError: a key that is not 32 bytes.
    """
    _check_key(key)
    aead = AESGCM(key)
    pending = bytearray()
    associated = b""
    prefix = b""
    sealed_size = 0
    counter = 0

    def open_chunk(sealed: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        try:
            return aead.decrypt(_nonce(prefix, counter, last=last), sealed, associated)
        except (InvalidTag, ValueError):
            raise CorruptObjectError(
                "the stored object does not decrypt: altered, truncated, of another object or under another key"
            ) from None

    async for piece in chunks:
        pending += piece
        start = 0
        if not associated:
            if len(pending) < HEADER_BYTES:
                continue
            header = bytes(pending[:HEADER_BYTES])
            chunk_size, prefix = _parse_header(header)
            sealed_size = chunk_size + _TAG_BYTES
            associated = header + object_id.encode()
            start = HEADER_BYTES
        while len(pending) - start > sealed_size:
            plaintext = open_chunk(memoryview(pending)[start : start + sealed_size], last=False)
            counter += 1
            start += sealed_size
            yield plaintext
        del pending[:start]
    if not associated:
        raise CorruptObjectError("the stored object is truncated: its header is incomplete")
    if len(pending) < _TAG_BYTES:
        raise CorruptObjectError("the stored object is truncated")
    yield open_chunk(pending, last=True)
