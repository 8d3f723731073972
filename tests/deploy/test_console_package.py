"""The tenant-service's wheel (what the image's ``uv sync --no-editable`` installs) carries the console's templates,
stylesheet and vendored htmx, not only its Python modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "services" / "tenant-service"
CONSOLE = SERVICE / "src" / "tenant_service" / "console"


def test_the_wheel_carries_every_template_and_static_file(tmp_path: Path) -> None:
    subprocess.run(
        [*_uv(), "build", "--wheel", "--quiet", "--out-dir", str(tmp_path), str(SERVICE)],
        check=True,
        timeout=300,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        "tenant_service/console/" + p.relative_to(CONSOLE).as_posix()
        for folder in ("templates", "static")
        for p in (CONSOLE / folder).rglob("*")
        if p.is_file()
    }
    assert shipped, "no console files found"
    assert {n for n in shipped if n.endswith(".html")}
    assert "tenant_service/console/static/htmx.min.js" in shipped
    assert "tenant_service/console/static/console.css" in shipped
    assert shipped <= names, sorted(shipped - names)


def test_the_vendored_htmx_keeps_its_licence() -> None:
    head = (CONSOLE / "static" / "htmx.min.js").read_text()[:200]
    assert head.startswith("/*! htmx 2.")
    assert "Zero-Clause BSD" in head
    assert "Permission to use, copy, modify" in (CONSOLE / "static" / "htmx.LICENSE.txt").read_text()


def _uv() -> list[str]:
    """uv as ``make`` runs it: ``uv run`` names itself in ``UV``; else on PATH; else the machine Python's module."""
    if os.environ.get("UV"):
        return [os.environ["UV"]]
    if found := shutil.which("uv"):
        return [found]
    return ["python3", "-m", "uv"]
