"""A real S3-compatible server for the tests: moto's server as a child process on 127.0.0.1.

The backup store talks to it over HTTP exactly as it talks to S3 or MinIO (nothing is patched in-process).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tenantry_devtools.processes import ServerProcess, StartupError, free_port, http_ok, log_tail

if TYPE_CHECKING:  # the root conftest imports this module before application code may be imported
    from tenant_service.backups.store import S3Store, StoreSettings

#: The bucket that :func:`running_s3_server` creates.
BUCKET = "tenantry-test"
REGION = "us-east-1"

_FIX = (
    "The S3 tests run moto's server (`python -m moto.server`), which the dev dependency moto[server] provides: "
    "run `make install` (uv sync --all-packages) and check that `.venv/bin/python -m moto.server --help` works."
)


@dataclass(frozen=True)
class S3Server:
    """What :func:`running_s3_server` (and the ``s3_server`` fixture) yields."""

    endpoint_url: str
    """``http://127.0.0.1:<port>``."""
    bucket: str
    """A bucket that exists."""
    region: str
    """The region to sign for."""
    access_key: str
    """Any key works with moto; these are passed as a real deployment would pass them."""
    secret_key: str
    """The secret of ``access_key``."""

    def store(self, prefix: str = "") -> S3Store:
        """An :class:`S3Store` on the bucket under ``prefix``."""
        from tenant_service.backups.store import S3Store

        return S3Store(self.bucket, prefix, self.endpoint_url, self.region, self.access_key, self.secret_key)

    def settings(self, prefix: str = "") -> StoreSettings:
        """The :class:`StoreSettings` a deployment would have for the bucket under ``prefix``."""
        from tenant_service.backups.store import StoreSettings

        return StoreSettings(
            url=f"s3://{self.bucket}/{prefix}".rstrip("/"),
            s3_endpoint_url=self.endpoint_url,
            s3_region=self.region,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
        )

    def client(self) -> Any:
        """A plain boto3 client, to look at the bucket behind the store's back."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


@contextlib.contextmanager
def running_s3_server(log_dir: Path | None = None, bucket: str = BUCKET) -> Iterator[S3Server]:
    """Start moto's S3 server on a free loopback port, create ``bucket``, yield it, and stop the server.

    Fails the calling test (never skips) with the fix when the server does not start.
    """
    folder = log_dir or Path(tempfile.mkdtemp(prefix="tenantry-s3-"))
    port = free_port()
    server = ServerProcess(
        "moto S3 server",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        folder / "moto.log",
        port=port,
    )
    error: str | None = None
    try:
        server.start("/moto-api/data.json", timeout=60)
    except (StartupError, OSError) as exc:
        error = str(exc)
    try:
        if error is not None:
            # Failing outside the except block keeps the report free of a chained traceback.
            pytest.fail(f"No S3 server for the tests: {error}\n{_FIX}", pytrace=False)
        found = S3Server(
            endpoint_url=server.url,
            bucket=bucket,
            region=REGION,
            access_key="tenantry-test-access-key",
            secret_key="tenantry-test-secret-key",
        )
        found.client().create_bucket(Bucket=bucket)
        if not http_ok(f"{server.url}/moto-api/data.json"):
            pytest.fail(f"The S3 server stopped answering:\n{log_tail(server.log_path)}", pytrace=False)
        yield found
    finally:
        server.stop()
