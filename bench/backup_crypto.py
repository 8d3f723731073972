"""``python -m bench.backup_crypto``: throughput of the stored-object encryption (tenant_service.backups.crypto).

The plaintext is fed in 64 KiB pieces, as a ``pg_dump`` pipe delivers it, and each figure is the median of the
runs. Encryption discards its output (as when it streams to the store); decryption reads a stored object from
memory; the pipeline decrypts what it encrypts, both on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from tenant_service.backups.crypto import decrypt_stream, encrypt_stream, new_data_key

PIECE = 64 * 1024
OBJECT_ID = "tenants/bench/backups/bench.bin"


async def _pieces(blob: bytes) -> AsyncIterator[bytes]:
    view = memoryview(blob)
    for start in range(0, len(view), PIECE):
        yield view[start : start + PIECE]


async def _drain(pieces: AsyncIterator[bytes]) -> int:
    size = 0
    async for piece in pieces:
        size += len(piece)
    return size


def _median_mb_per_s(size: int, runs: int, step: Callable[[], Coroutine[Any, Any, int]]) -> float:
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        asyncio.run(step())
        rates.append(size / (time.perf_counter() - started) / 1e6)
    return statistics.median(rates)


def main() -> None:
    """Measure and print MB/s (10**6 bytes per second) per direction and for the pipeline."""
    parser = argparse.ArgumentParser(prog="python -m bench.backup_crypto", description=__doc__)
    parser.add_argument("--mb", type=int, default=200, help="megabytes (10**6 bytes) of plaintext")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is printed)")
    args = parser.parse_args()
    size = args.mb * 1_000_000
    key = new_data_key()
    plaintext = os.urandom(size)

    async def encrypt_only() -> int:
        return await _drain(encrypt_stream(key, OBJECT_ID, _pieces(plaintext)))

    async def stored_object() -> bytes:
        return b"".join([piece async for piece in encrypt_stream(key, OBJECT_ID, _pieces(plaintext))])

    stored = asyncio.run(stored_object())

    async def decrypt_only() -> int:
        return await _drain(decrypt_stream(key, OBJECT_ID, _pieces(stored)))

    async def pipeline() -> int:
        return await _drain(decrypt_stream(key, OBJECT_ID, encrypt_stream(key, OBJECT_ID, _pieces(plaintext))))

    print(f"{args.mb} MB in {PIECE // 1024} KiB pieces, median of {args.runs} runs:")
    for name, step in (("encrypt", encrypt_only), ("decrypt", decrypt_only), ("encrypt -> decrypt", pipeline)):
        print(f"  {name:<18} {_median_mb_per_s(size, args.runs, step):7.0f} MB/s")


if __name__ == "__main__":
    main()
