"""The gateway's pipelined RESP client against a real Redis: replies matched to calls, errors, AUTH and SELECT,
timeouts, reconnects; and its reply parser fed one byte at a time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.resp import RespClient, RespConnectionError, RespError, _parse, encode_command
from tenantry_devtools.servers import LocalRedis


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    folder: Path = tmp_path_factory.mktemp("resp")
    with LocalRedis(folder / "data", log_file=folder / "redis.log") as server:
        yield server


def _url(server: LocalRedis, auth: str = "", db: int = 0) -> str:
    return f"redis://{auth}127.0.0.1:{server.port}/{db}"


def test_parser_handles_every_split_point() -> None:
    replies = b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*3\r\n:0\r\n:7\r\n$3\r\nabc\r\n-ERR boom\r\n*0\r\n"
    expected = [b"OK", 42, b"hello", None, [0, 7, b"abc"], "ERR boom", []]
    for cut in range(len(replies) + 1):
        got: list[object] = []
        buffer = b""
        for part in (replies[:cut], replies[cut:]):
            buffer += part
            pos = 0
            while pos < len(buffer):
                parsed = _parse(buffer, pos)
                if parsed is None:
                    break
                value, pos = parsed
                got.append(str(value) if isinstance(value, RespError) else value)
            buffer = buffer[pos:]
        assert got == expected, cut


async def test_concurrent_calls_get_their_own_replies(own_redis: LocalRedis) -> None:
    client = RespClient(_url(own_redis), timeout=5)
    try:
        await client.call(encode_command(b"DEL", b"resp:counter"))
        replies = await asyncio.gather(*(client.call(encode_command(b"INCR", b"resp:counter")) for _ in range(2000)))
        assert replies == list(range(1, 2001))  # one pipelined connection: answers in call order
        assert await client.call(encode_command(b"SET", b"resp:k", b"v" * 100_000)) == b"OK"
        assert await client.call(encode_command(b"GET", b"resp:k")) == b"v" * 100_000
        with pytest.raises(RespError, match="WRONGTYPE"):
            await client.call(encode_command(b"LPUSH", b"resp:k", b"x"))
        assert await client.call(encode_command(b"PING")) == b"PONG"  # the error did not break the stream
    finally:
        client.close()


async def test_auth_and_database_from_the_url(own_redis: LocalRedis) -> None:
    admin = RespClient(_url(own_redis), timeout=5)
    try:
        await admin.call(encode_command(b"SELECT", b"3"))
        await admin.call(encode_command(b"SET", b"resp:db", b"three"))
        await admin.call(encode_command(b"ACL", b"SETUSER", b"quota", b"on", b">s3cret", b"~*", b"+@all"))
        named = RespClient(_url(own_redis, "quota:s3cret@", db=3), timeout=5)
        assert await named.call(encode_command(b"GET", b"resp:db")) == b"three"
        named.close()
        wrong = RespClient(_url(own_redis, "quota:wrong@"), timeout=5)
        with pytest.raises(RespConnectionError, match="refused the connection setup") as caught:
            await wrong.call(encode_command(b"PING"))
        assert "wrong" not in str(caught.value)  # the password never appears in an error
        wrong.close()
    finally:
        await admin.call(encode_command(b"ACL", b"DELUSER", b"quota"))
        admin.close()


async def test_a_silent_server_times_out_and_a_dead_one_fails_fast() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RespConnectionError):
            await client.call(encode_command(b"PING"))
        assert loop.time() - started < 0.3 + 2.0  # the timeout plus slack for a loaded machine, not a hang
        client.close()
    finally:
        listener.close()
    dead = RespClient(f"redis://127.0.0.1:{port}/0", timeout=2)
    with pytest.raises(RespConnectionError, match="cannot connect"):
        await dead.call(encode_command(b"PING"))


async def test_reconnects_after_the_server_drops_the_connection(own_redis: LocalRedis) -> None:
    client = RespClient(_url(own_redis), timeout=5)
    admin = RespClient(_url(own_redis), timeout=5)
    try:
        await client.call(encode_command(b"CLIENT", b"SETNAME", b"victim"))
        await admin.call(encode_command(b"CLIENT", b"KILL", b"SKIPME", b"yes", b"TYPE", b"normal"))
        # The kill may still be in flight: the first call can fail, a later one reconnects.
        for _ in range(50):
            try:
                assert await client.call(encode_command(b"PING")) == b"PONG"
                break
            except RespConnectionError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("never reconnected")
    finally:
        client.close()
        admin.close()
