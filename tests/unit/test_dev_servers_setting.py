"""``make dev``'s DEV_SERVERS: which throw-away PostgreSQL servers it starts, and what the tenant-service is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantry_devtools import dev


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(dev, "RUN", tmp_path)
    monkeypatch.setattr(dev, "LOGS", tmp_path / "logs")
    for name in ("DEV_SERVERS", "DEV_PG_PORT", "DEV_PG2_PORT", "EXTRA_DATABASE_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_one_server_by_default(run_dir: Path) -> None:
    assert dev._second_postgres() is None
    assert dev._extra_servers(None) == ""


def test_dev_servers_2_adds_one_on_the_next_port_registered_as_second(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEV_SERVERS", "2")
    second = dev._second_postgres()
    assert second is not None
    assert second.data_dir == run_dir / "postgres2"
    assert second.port == 5434
    assert dev._extra_servers(second) == "second=postgresql://postgres@127.0.0.1:5434/postgres"

    monkeypatch.setenv("DEV_PG_PORT", "6000")
    assert dev._second_postgres().port == 6001  # type: ignore[union-attr]
    monkeypatch.setenv("DEV_PG2_PORT", "7000")
    assert dev._second_postgres().port == 7000  # type: ignore[union-attr]


def test_a_second_server_made_before_is_started_whatever_dev_servers_says(run_dir: Path) -> None:
    # Tenants may live on it: a later `make dev` without DEV_SERVERS=2 must not leave them without their server.
    (run_dir / "postgres2").mkdir()
    (run_dir / "postgres2" / "PG_VERSION").write_text("15\n")
    assert dev._second_postgres() is not None


def test_an_exported_extra_servers_value_is_kept_and_second_added_once(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEV_SERVERS", "2")
    second = dev._second_postgres()
    monkeypatch.setenv("EXTRA_DATABASE_SERVERS", "big=postgresql://u:p@db:5432/postgres")
    assert dev._extra_servers(second) == (
        "big=postgresql://u:p@db:5432/postgres;second=postgresql://postgres@127.0.0.1:5434/postgres"
    )
    monkeypatch.setenv("EXTRA_DATABASE_SERVERS", "second=postgresql://u:p@elsewhere:5432/postgres")
    assert dev._extra_servers(second) == "second=postgresql://u:p@elsewhere:5432/postgres"


@pytest.mark.parametrize("value", ["0", "3", "two"])
def test_other_dev_servers_values_are_refused_with_a_message(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DEV_SERVERS", value)
    with pytest.raises(SystemExit, match="DEV_SERVERS must be 1 or 2"):
        dev._second_postgres()
