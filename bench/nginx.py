"""nginx as the benchmark's tiny upstream (1 KB body) and as the ``proxy_pass`` baseline."""

from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path
from typing import Final

from tenantry_devtools.processes import ServerProcess

BODY_BYTES: Final = 1024
#: The upstream's request counter (nginx stub_status), to count the requests a proxy really forwarded.
STATUS_PATH: Final = "/_bench_status"
_REQUESTS: Final = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", re.MULTILINE)
#: Exactly 1024 bytes of plain ASCII (no characters nginx's ``return`` would treat specially).
BODY: Final = ("tenantry-bench-" * 80)[: BODY_BYTES - 1] + "\n"


def nginx_binary() -> str:
    """Path of the nginx executable.

    Raises:
        RuntimeError: nginx is not installed.
    """
    found = shutil.which("nginx") or next(
        (str(p) for p in (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx")) if p.exists()), None
    )
    if found is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    return found


def _common(prefix: Path) -> str:
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
"""


def upstream_config(prefix: Path, port: int) -> str:
    """An nginx that answers every request with the same 1 KB ``text/plain`` body."""
    return (
        _common(prefix)
        + f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{BODY}";
        }}
        location = {STATUS_PATH} {{
            stub_status;
        }}
    }}
}}
"""
    )


def proxy_config(prefix: Path, port: int, upstream_port: int) -> str:
    """An nginx reverse proxy to ``upstream_port`` with pooled keep-alive connections to it."""
    return (
        _common(prefix)
        + f"""    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )


def nginx_service(name: str, prefix: Path, config: str, *, port: int, cpus: str | None) -> ServerProcess:
    """nginx in the foreground from ``prefix`` (all its files stay there), not started."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config)
    argv = [nginx_binary(), "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    return ServerProcess(name, argv, prefix / "stdout.log", port=port, cpus=cpus)


def parse_stub_status(text: str) -> int:
    """The ``requests`` counter of an nginx ``stub_status`` page.

    Raises:
        ValueError: not a stub_status page.
    """
    match = _REQUESTS.search(text)
    if match is None:
        raise ValueError(f"not an nginx stub_status page: {text[:200]!r}")
    return int(match.group(3))


def served_requests(base_url: str) -> int:
    """Requests the upstream nginx has served so far (each call of this function counts one itself)."""
    with urllib.request.urlopen(base_url + STATUS_PATH, timeout=5) as response:  # noqa: S310 - loopback
        return parse_stub_status(response.read().decode())
