"""Redis calls per request: ``INFO commandstats`` deltas, and client commands seen by ``MONITOR``.

``INFO commandstats`` also counts the commands a Lua script runs inside Redis (an EVALSHA whose script calls GET,
INCR and TTL counts 1 + 3), so it measures work inside Redis, not round trips. The client commands a process
sends (its "Redis calls") are counted with ``MONITOR``, which tags commands run by scripts with the source
``lua``. ``INFO`` itself is excluded from both: it is the harness's own measurement call, not the platform's. So is
the gateways' heartbeat (once a second per worker, whatever the traffic): ``MONITOR`` recognises it by its script's
SHA, and a monitored run takes it out of its ``INFO commandstats`` delta too.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from collections import Counter
from typing import Final
from urllib.parse import urlsplit

from tenantry_common.holds import HEARTBEAT_SCRIPT

_CMDSTAT: Final = re.compile(r"^cmdstat_([^:]+):calls=(\d+)", re.MULTILINE)
#: Commands the harness itself sends while measuring (INFO snapshots, the MONITOR that counts calls).
OWN_COMMANDS: Final = frozenset({"info", "monitor"})
#: The gateways' heartbeat (tenantry_common.holds): background work, not a request's.
HEARTBEAT_SHA: Final = hashlib.sha1(HEARTBEAT_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's script name
#: The commands one heartbeat runs inside Redis (its script is straight-line: each exactly once).
HEARTBEAT_SCRIPT_COMMANDS: Final = ("time", "zadd", "zremrangebyscore", "expire")


def parse_commandstats(text: str) -> dict[str, int]:
    """``cmdstat_evalsha:calls=12,usec=...`` lines → ``{"evalsha": 12}``."""
    return {name: int(calls) for name, calls in _CMDSTAT.findall(text)}


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two snapshots, without the harness's own and without zeros."""
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in set(before) | set(after)}
    return {name: n for name, n in sorted(delta.items()) if n and name not in OWN_COMMANDS}


_MONITOR_LINE: Final = re.compile(r'^\+?\d+\.\d+ \[\d+ ([^\]]+)\] "((?:[^"\\]|\\.)*)"')


def parse_monitor_line(line: str) -> tuple[str, str] | None:
    """``+1700000000.123 [0 127.0.0.1:5555] "EVALSHA" ...`` → ``("127.0.0.1:5555", "evalsha")``; None if no command."""
    match = _MONITOR_LINE.match(line.strip())
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def is_heartbeat(line: str) -> bool:
    """A gateway's heartbeat call (an EVALSHA of the heartbeat script)."""
    parsed = parse_monitor_line(line)
    return parsed is not None and parsed[1] == "evalsha" and f'"{HEARTBEAT_SHA}"' in line


def split_monitor(lines: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Commands sent by clients and commands run by scripts (source ``lua``), by command name; without the
    harness's own commands and the gateways' heartbeats (their calls and what their script ran)."""
    clients: Counter[str] = Counter()
    scripts: Counter[str] = Counter()
    for line in lines:
        parsed = parse_monitor_line(line)
        if parsed is None or is_heartbeat(line):
            continue
        source, command = parsed
        if command in OWN_COMMANDS:
            continue
        (scripts if source == "lua" else clients)[command] += 1
    scripts.subtract(dict.fromkeys(HEARTBEAT_SCRIPT_COMMANDS, sum(map(is_heartbeat, lines))))
    return dict(sorted(clients.items())), {k: n for k, n in sorted(scripts.items()) if n > 0}


def without_heartbeats(delta: dict[str, int], heartbeats: int) -> dict[str, int]:
    """An ``INFO commandstats`` delta without the work of ``heartbeats`` heartbeats (counted with ``MONITOR``)."""
    work = dict.fromkeys(("evalsha", *HEARTBEAT_SCRIPT_COMMANDS), heartbeats)
    return {name: n - work.get(name, 0) for name, n in delta.items() if n - work.get(name, 0) > 0}


class RedisMonitor:
    """Collects ``MONITOR`` lines in a thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        #: The gateways' heartbeats seen (after :meth:`stop`).
        self.heartbeats = 0
        self._lines: list[str] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect and start collecting."""
        sock = socket.create_connection(self._address, timeout=5)
        sock.sendall(b"MONITOR\r\n")
        reader = sock.makefile("rb")
        if not reader.readline().startswith(b"+OK"):
            raise RuntimeError("Redis refused MONITOR")
        sock.settimeout(None)
        self._sock = sock

        def collect() -> None:
            with contextlib.suppress(OSError, ValueError):
                for raw in reader:
                    self._lines.append(raw.decode("utf-8", "replace"))

        self._thread = threading.Thread(target=collect, name="redis-monitor", daemon=True)
        self._thread.start()

    def stop(self, drain: float = 0.3) -> tuple[dict[str, int], dict[str, int]]:
        """Stop (after ``drain`` seconds for lines in flight); return client and script commands by name."""
        time.sleep(drain)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.heartbeats = sum(map(is_heartbeat, self._lines))
        return split_monitor(self._lines)


def _info(host: str, port: int, section: str, timeout: float = 5.0) -> str:
    """``INFO <section>`` as Redis's own text, over a plain socket (no client library reshapes it)."""
    request = f"*2\r\n$4\r\nINFO\r\n${len(section)}\r\n{section}\r\n".encode()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        header = reader.readline()
        if not header.startswith(b"$"):
            raise RuntimeError(f"unexpected Redis reply to INFO: {header[:200]!r}")
        return reader.read(int(header[1:])).decode()


class RedisStats:
    """Snapshots of one Redis server's command counters."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379

    def snapshot(self) -> dict[str, int]:
        """Calls per command since the server started."""
        return parse_commandstats(_info(self._host, self._port, "commandstats"))

    def pid(self) -> int:
        """The server's process id."""
        match = re.search(r"^process_id:(\d+)", _info(self._host, self._port, "server"), re.MULTILINE)
        if match is None:
            raise RuntimeError("INFO server has no process_id")
        return int(match.group(1))
