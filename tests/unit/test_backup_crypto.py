"""Encryption of stored backups and exports (contract §10): per-tenant data keys and the chunked AEAD stream.

A stored object that was altered in any way (a byte, its chunks' order, its length, the object it claims to be,
the key) fails with ``backup_corrupt``; a data key is wrapped by the ENCRYPTION_KEYS ring and survives its rotation.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from tenant_service.backups.crypto import (
    DATA_KEY_BYTES,
    HEADER_BYTES,
    MAX_CHUNK_SIZE,
    CorruptObjectError,
    DataKeyUnreadableError,
    decrypt_stream,
    encrypt_stream,
    new_data_key,
    rewrap_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from tenant_service.secretbox import SecretBox, generate_key
from tenantry_common.problems import ProblemError

OBJECT_ID = "tenants/00000000-0000-0000-0000-000000000001/backups/00000000-0000-0000-0000-00000000000a.bin"
OTHER_OBJECT_ID = "tenants/00000000-0000-0000-0000-000000000001/backups/00000000-0000-0000-0000-00000000000b.bin"
CHUNK = 64  # small chunks keep the tamper tests exhaustive and fast
TAG = 16


async def pieces_of(data: bytes, sizes: tuple[int, ...] = (1, 7, 100, 3, 64, 65, 1000)) -> AsyncIterator[bytes]:
    """``data`` in pieces of cycling, uneven sizes."""
    position = 0
    index = 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        yield data[position : position + size]
        position += size
        index += 1


async def collect(pieces: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in pieces])


async def encrypt(data: bytes, key: bytes, object_id: str = OBJECT_ID, chunk_size: int = CHUNK) -> bytes:
    return await collect(encrypt_stream(key, object_id, pieces_of(data), chunk_size=chunk_size))


async def decrypt(stored: bytes, key: bytes, object_id: str = OBJECT_ID) -> bytes:
    return await collect(decrypt_stream(key, object_id, pieces_of(stored, (5, 1, 80, 17, 300))))


def sealed_chunks(stored: bytes, chunk_size: int = CHUNK) -> tuple[bytes, list[bytes]]:
    """The header and the sealed chunks of a stored object."""
    header, body = stored[:HEADER_BYTES], stored[HEADER_BYTES:]
    step = chunk_size + TAG
    return header, [body[i : i + step] for i in range(0, len(body), step)]


@pytest.fixture
def key() -> bytes:
    return new_data_key()


@pytest.fixture
async def stored(key: bytes) -> bytes:
    """An object of three full chunks and a partial one, under ``key``."""
    return await encrypt(os.urandom(3 * CHUNK + 10), key)


# --- Round trips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5 * CHUNK + 33])
async def test_an_object_of_any_size_round_trips(key: bytes, size: int) -> None:
    data = os.urandom(size)
    stored = await encrypt(data, key)
    chunks = max(1, -(-size // CHUNK))
    assert len(stored) == HEADER_BYTES + size + chunks * TAG
    assert await decrypt(stored, key) == data


async def test_an_empty_object_round_trips(key: bytes) -> None:
    stored = await encrypt(b"", key)
    assert len(stored) == HEADER_BYTES + TAG
    assert await decrypt(stored, key) == b""


async def test_pieces_of_any_size_are_rechunked_into_fixed_chunks(key: bytes) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    whole = [len(c) async for c in encrypt_stream(key, OBJECT_ID, pieces_of(data, (3 * 1024 * 1024 + 5,)))]
    tiny = [len(c) async for c in encrypt_stream(key, OBJECT_ID, pieces_of(data, (1, 4099, 77_777)))]
    assert whole == tiny == [HEADER_BYTES, 1024 * 1024 + TAG, 1024 * 1024 + TAG, 1024 * 1024 + TAG, 5 + TAG]


async def test_the_stored_object_holds_no_plaintext_and_differs_each_time(key: bytes) -> None:
    data = b"customer@example.com," * 100
    first, second = await encrypt(data, key), await encrypt(data, key)
    assert b"customer@example.com" not in first
    assert first != second  # a random nonce prefix per object
    assert await decrypt(first, key) == await decrypt(second, key) == data


async def test_decryption_yields_plaintext_chunk_by_chunk(key: bytes) -> None:
    data = os.urandom(10 * CHUNK)
    stored = await encrypt(data, key)
    pieces = [p async for p in decrypt_stream(key, OBJECT_ID, pieces_of(stored, (len(stored),)))]
    assert [len(p) for p in pieces] == [CHUNK] * 10


# --- Tampering ------------------------------------------------------------------------------------------------


async def assert_corrupt(stored: bytes, key: bytes, object_id: str = OBJECT_ID) -> None:
    with pytest.raises(CorruptObjectError) as raised:
        await decrypt(stored, key, object_id)
    assert raised.value.code == "backup_corrupt"
    assert isinstance(raised.value, ProblemError)


async def test_a_flipped_byte_anywhere_in_a_stored_object_is_refused_as_corrupt(key: bytes, stored: bytes) -> None:
    for position in range(len(stored)):
        for bit in (0x01, 0x80):
            altered = bytearray(stored)
            altered[position] ^= bit
            await assert_corrupt(bytes(altered), key)


async def test_reordered_chunks_are_refused_as_corrupt(key: bytes, stored: bytes) -> None:
    header, chunks = sealed_chunks(stored)
    await assert_corrupt(header + chunks[1] + chunks[0] + chunks[2] + chunks[3], key)
    await assert_corrupt(header + chunks[0] + chunks[2] + chunks[1] + chunks[3], key)


async def test_a_dropped_or_repeated_chunk_is_refused_as_corrupt(key: bytes, stored: bytes) -> None:
    header, chunks = sealed_chunks(stored)
    await assert_corrupt(header + chunks[0] + chunks[2] + chunks[3], key)
    await assert_corrupt(header + chunks[0] + chunks[0] + chunks[1] + chunks[2] + chunks[3], key)


@pytest.mark.parametrize("cut", [1, TAG, 10 + TAG, 10 + TAG + 1, 10 + TAG + CHUNK + TAG])
async def test_a_truncated_object_is_refused_as_corrupt(key: bytes, stored: bytes, cut: int) -> None:
    # Cutting exactly the last chunk (10 + TAG bytes) leaves a well-formed chunk that was not sealed as the last.
    await assert_corrupt(stored[:-cut], key)


@pytest.mark.parametrize("length", [0, 1, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + TAG - 1])
async def test_an_object_cut_to_its_header_is_refused_as_corrupt(key: bytes, stored: bytes, length: int) -> None:
    await assert_corrupt(stored[:length], key)


async def test_an_extended_object_is_refused_as_corrupt(key: bytes, stored: bytes) -> None:
    _, chunks = sealed_chunks(stored)
    await assert_corrupt(stored + chunks[-1], key)  # its own last chunk again
    await assert_corrupt(stored + b"\x00", key)
    await assert_corrupt(stored + os.urandom(CHUNK + TAG), key)
    other = await encrypt(os.urandom(CHUNK), key)
    await assert_corrupt(stored + other[HEADER_BYTES:], key)  # a chunk of another object under the same key


async def test_an_empty_object_extended_or_emptied_is_refused_as_corrupt(key: bytes) -> None:
    stored = await encrypt(b"", key)
    await assert_corrupt(stored[:HEADER_BYTES], key)
    await assert_corrupt(stored + stored[HEADER_BYTES:], key)


async def test_an_object_swapped_onto_another_object_id_is_refused_as_corrupt(key: bytes, stored: bytes) -> None:
    await assert_corrupt(stored, key, OTHER_OBJECT_ID)


async def test_chunks_spliced_from_another_object_are_refused_as_corrupt(key: bytes, stored: bytes) -> None:
    other = await encrypt(os.urandom(3 * CHUNK + 10), key)
    header, chunks = sealed_chunks(stored)
    _, other_chunks = sealed_chunks(other)
    await assert_corrupt(header + chunks[0] + other_chunks[1] + chunks[2] + chunks[3], key)


async def test_an_object_under_another_key_is_refused_as_corrupt(stored: bytes) -> None:
    await assert_corrupt(stored, new_data_key())


async def test_a_forged_header_is_refused_as_corrupt(key: bytes, stored: bytes) -> None:
    await assert_corrupt(b"XXXX" + stored[4:], key)
    await assert_corrupt(stored[:4] + b"\x02" + stored[5:], key)  # an unknown format version
    huge = (MAX_CHUNK_SIZE + 1).to_bytes(4, "big")
    await assert_corrupt(stored[:5] + huge + stored[9:], key)  # would make a reader buffer without bound
    await assert_corrupt(stored[:5] + (0).to_bytes(4, "big") + stored[9:], key)
    await assert_corrupt(stored[:5] + (CHUNK * 2).to_bytes(4, "big") + stored[9:], key)


async def test_a_key_or_chunk_size_out_of_bounds_is_refused_up_front(key: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        await encrypt(b"x", key[:16])
    with pytest.raises(ValueError, match="32 bytes"):
        await decrypt(b"x", key + b"x")
    for size in (0, MAX_CHUNK_SIZE + 1):
        with pytest.raises(ValueError, match="chunk_size"):
            await encrypt(b"x", key, chunk_size=size)


# --- Data keys ------------------------------------------------------------------------------------------------


def ring(*kids: str, keys: dict[str, str]) -> SecretBox:
    return SecretBox.from_config(",".join(f"{kid}:{keys[kid]}" for kid in kids))


@pytest.fixture
def ring_keys() -> dict[str, str]:
    return {"k1": generate_key(), "k2": generate_key()}


def test_a_data_key_is_32_random_bytes() -> None:
    first, second = new_data_key(), new_data_key()
    assert len(first) == len(second) == DATA_KEY_BYTES
    assert first != second


def test_a_wrapped_data_key_unwraps_for_its_tenant_only(ring_keys: dict[str, str]) -> None:
    box = ring("k1", keys=ring_keys)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    data_key = new_data_key()
    wrapped = wrap_data_key(box, tenant, data_key)
    assert unwrap_data_key(box, tenant, wrapped) == data_key
    assert unwrap_data_key(box, str(tenant), wrapped) == data_key
    assert data_key.hex() not in wrapped
    with pytest.raises(DataKeyUnreadableError) as raised:
        unwrap_data_key(box, other, wrapped)
    assert raised.value.code == "data_key_unreadable"
    with pytest.raises(DataKeyUnreadableError):
        unwrap_data_key(box, tenant, wrapped[:-2] + ("A" if wrapped[-2] != "A" else "B") + wrapped[-1])


def test_a_data_key_wrapped_by_the_old_key_unwraps_after_a_rotation_and_rewraps_with_the_new(
    ring_keys: dict[str, str],
) -> None:
    tenant = uuid.uuid4()
    data_key = new_data_key()
    wrapped_by_k1 = wrap_data_key(ring("k1", keys=ring_keys), tenant, data_key)

    rotated = ring("k2", "k1", keys=ring_keys)  # the new primary first, the old key still in the ring
    assert unwrap_data_key(rotated, tenant, wrapped_by_k1) == data_key
    rewrapped = rewrap_data_key(rotated, tenant, wrapped_by_k1)
    assert rewrapped is not None
    assert rewrapped.startswith("v1.k2.")
    assert rewrap_data_key(rotated, tenant, rewrapped) is None  # already under the primary

    # Once k1 is gone from the ring, only the rewrapped form unwraps.
    k2_only = ring("k2", keys=ring_keys)
    assert unwrap_data_key(k2_only, tenant, rewrapped) == data_key
    with pytest.raises(DataKeyUnreadableError):
        unwrap_data_key(k2_only, tenant, wrapped_by_k1)


async def test_a_rotation_rewraps_the_key_and_leaves_stored_objects_readable(ring_keys: dict[str, str]) -> None:
    tenant = uuid.uuid4()
    data_key = new_data_key()
    wrapped = wrap_data_key(ring("k1", keys=ring_keys), tenant, data_key)
    stored = await encrypt(b"backup made before the rotation", data_key)

    rotated = ring("k2", "k1", keys=ring_keys)
    rewrapped = rewrap_data_key(rotated, tenant, wrapped)
    assert rewrapped is not None
    assert await decrypt(stored, unwrap_data_key(ring("k2", keys=ring_keys), tenant, rewrapped)) == (
        b"backup made before the rotation"
    )


def test_wrapping_refuses_a_key_that_is_not_32_bytes(ring_keys: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        wrap_data_key(ring("k1", keys=ring_keys), uuid.uuid4(), b"short")
