"""Stand-ins for the official base images, built from Debian's packages, once per recipe.

No image registry is reachable where these tests run, so ``python:3.11-slim-bookworm``, ``postgres`` and
``redis`` cannot be pulled. Instead: ``debootstrap --variant=minbase`` makes a Debian bookworm root file system
(slimmed like Debian's ``-slim`` images: no documentation, manual pages or translations), ``docker import`` turns
it into ``tenantry-standin/debian``, and the recipes in ``standins/`` add Debian's Python 3.11 (with the machine's
CA bundle, so pip and uv trust the same TLS as the machine), PostgreSQL 15 and Redis 7 (with entrypoints that
emulate what docker-compose.tenant.yml relies on in the official images).

Each image is tagged with a hash of its recipe (the Debian base's with the hash of the debootstrap step, the
Python one's with the CA bundle's), so a change of recipe builds a new one and an unchanged one is reused as it
is; older tags of the same image are removed. A lock file serialises the builds of two runs on one machine.

Environment:
    TENANTRY_DEBIAN_MIRROR: the Debian mirror for debootstrap (default http://deb.debian.org/debian).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tenantry_devtools.servers import apt_install

RECIPES: Final = Path(__file__).parent / "standins"
SUITE: Final = "bookworm"
MIRROR: Final = os.environ.get("TENANTRY_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
REPOSITORY: Final = "tenantry-standin"
_LOCK: Final = Path(tempfile.gettempdir()) / "tenantry-standins.lock"
#: What the Debian base leaves out, now and (through dpkg) in every package installed on top of it.
_DPKG_EXCLUDES: Final = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
"""
#: Part of the Debian base's hash: change it when the debootstrap step below changes.
_DEBIAN_RECIPE: Final = f"debootstrap --variant=minbase {SUITE} {MIRROR}\n{_DPKG_EXCLUDES}"


class StandInError(RuntimeError):
    """A stand-in image could not be built; the message says why and what to do."""


@dataclass(frozen=True)
class _Recipe:
    version: str
    files: tuple[str, ...]
    machine_files: tuple[Path, ...] = ()


_RECIPES: Final = {
    "python": _Recipe("3.11", ("python.Dockerfile",), (CA_BUNDLE,)),
    "postgres": _Recipe("15", ("postgres.Dockerfile", "postgres-entrypoint.sh")),
    "redis": _Recipe("7", ("redis.Dockerfile", "redis-entrypoint.sh")),
}


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(hashlib.sha256(part).digest())
    return hasher.hexdigest()[:16]


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Docker:
    def __init__(self, docker: list[str], env: dict[str, str]) -> None:
        self.docker = docker
        self.env = env

    def run(self, *args: str, stdin: int | None = None, input_file: Path | None = None) -> str:
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(input_file.open("rb")) if input_file else stdin
            done = subprocess.run(
                [*self.docker, *args],
                env=self.env,
                stdin=source if source is not None else subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
            raise StandInError(f"docker {' '.join(args[:2])} failed ({done.returncode}):\n" + "\n".join(output[-40:]))
        return done.stdout.decode(errors="replace")

    def has_image(self, reference: str) -> bool:
        return (
            subprocess.run(
                [*self.docker, "image", "inspect", reference],
                env=self.env,
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )

    def drop_other_tags(self, repository: str, keep: str) -> None:
        """Remove the older stand-ins of ``repository`` (best effort: one may still be in use)."""
        listed = self.run("image", "ls", repository, "--format", "{{.Repository}}:{{.Tag}}").split()
        for reference in listed:
            if reference != keep:
                subprocess.run([*self.docker, "rmi", reference], env=self.env, capture_output=True, check=False)


class StandIns:
    """The stand-in images: :meth:`image` builds one when its recipe has none yet, and says which to use.

    Each call holds a machine-wide lock, so two runs never build the same image twice; two calls in one process
    may run in threads (the Python base first, then the others while compose builds the service images).

    Attributes:
        built: The images built by this object, with the seconds each took (empty when all were cached).
    """

    def __init__(self, docker: list[str], env: dict[str, str]) -> None:
        """``docker`` is the CLI, ``env`` its environment (``DOCKER_HOST`` set)."""
        self._client = _Docker(docker, env)
        self.built: dict[str, float] = {}

    def image(self, name: str) -> str:
        """The reference of the stand-in ``name`` (``python``, ``postgres`` or ``redis``), built if missing.

        Raises:
            StandInError: A step failed; the message holds the tail of its output.
        """
        recipe = _RECIPES[name]
        for path in recipe.machine_files:
            if not path.is_file():
                raise StandInError(f"{path} is missing: apt-get install -y ca-certificates (the builds need it)")
        with _machine_lock():
            debian = self._debian()
            contents = [(RECIPES / f).read_bytes() for f in recipe.files]
            contents += [path.read_bytes() for path in recipe.machine_files]
            reference = f"{REPOSITORY}/{name}:{recipe.version}-{SUITE}-{_digest(debian.encode(), *contents)}"
            if not self._client.has_image(reference):
                started = time.monotonic()
                _build(self._client, reference, debian, [RECIPES / f for f in recipe.files], recipe.machine_files)
                self.built[reference] = time.monotonic() - started
            self._client.drop_other_tags(f"{REPOSITORY}/{name}", reference)
        return reference

    def _debian(self) -> str:
        debian = f"{REPOSITORY}/debian:{SUITE}-{_digest(_DEBIAN_RECIPE.encode())}"
        if not self._client.has_image(debian):
            started = time.monotonic()
            _import_debian(self._client, debian)
            self.built[debian] = time.monotonic() - started
            self._client.drop_other_tags(f"{REPOSITORY}/debian", debian)
        return debian


def _import_debian(client: _Docker, reference: str) -> None:
    if shutil.which("debootstrap") is None:
        try:
            apt_install(["debootstrap"], hint="Install debootstrap: apt-get install -y debootstrap (as root)")
        except RuntimeError as exc:
            raise StandInError(str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="tenantry-debootstrap-", dir="/var/tmp") as work:
        rootfs = Path(work) / "rootfs"
        log = Path(work) / "debootstrap.log"
        with log.open("wb") as out:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        if done.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise StandInError(
                f"debootstrap {SUITE} from {MIRROR} failed ({done.returncode}); set TENANTRY_DEBIAN_MIRROR to a "
                f"reachable Debian mirror if this one is not:\n{tail}"
            )
        _slim(rootfs)
        tarball = Path(work) / "rootfs.tar"
        subprocess.run(
            ["tar", "-C", str(rootfs), "--numeric-owner", "--exclude=./dev/*", "-cf", str(tarball), "."],
            check=True,
        )
        client.run("import", "--change", 'CMD ["bash"]', "-", reference, input_file=tarball)


def _slim(rootfs: Path) -> None:
    """What Debian's -slim images leave out; apt's caches and lists; the build machine's own name and resolver."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    for directory in ("usr/share/man", "usr/share/info", "usr/share/locale"):
        for child in (rootfs / directory).iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    for path in sorted((rootfs / "usr/share/doc").rglob("*"), reverse=True):
        if path.is_file() or path.is_symlink():
            if path.name != "copyright":
                path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    (rootfs / "etc/dpkg/dpkg.cfg.d/standin-slim").write_text(_DPKG_EXCLUDES)
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).write_text("")


def _build(client: _Docker, reference: str, debian: str, files: list[Path], extra: tuple[Path, ...]) -> None:
    with tempfile.TemporaryDirectory(prefix="tenantry-standin-") as context:
        for path in files:
            target = Path(context) / ("Dockerfile" if path.suffix == ".Dockerfile" else path.name)
            shutil.copy2(path, target)
        for path in extra:
            shutil.copy2(path, Path(context) / path.name)
        # The host's network: apt reaches Debian's mirror the way the machine does (the engine routes nothing).
        client.run("build", "--network", "host", "--build-arg", f"DEBIAN_IMAGE={debian}", "-t", reference, context)
