"""Loading the tenant schema's SQL migrations: NNNN_name.sql, versions 1..N without gaps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenant_service.provisioning.schema import (
    DEFAULT_MIGRATIONS_DIR,
    SchemaError,
    SchemaMigration,
    head_version,
    load_migrations,
)


def _write(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(f"-- {name}\nSELECT 1;\n", encoding="utf-8")
    return directory


def test_shipped_migrations_load_in_order() -> None:
    migrations = load_migrations()
    assert [(m.version, m.name) for m in migrations] == [(1, "platform"), (2, "notes")]
    assert "CREATE TABLE notes" in migrations[1].sql
    assert head_version(migrations) == 2
    assert load_migrations(DEFAULT_MIGRATIONS_DIR) == migrations


def test_versions_are_ordered_numerically_and_other_files_are_ignored(tmp_path: Path) -> None:
    names = [f"{v:04d}_step_{v}.sql" for v in range(12, 0, -1)]
    directory = _write(tmp_path / "m", *names, "README.md", "notes.txt")
    (directory / "subdir.sql.d").mkdir()
    migrations = load_migrations(directory)
    assert [m.version for m in migrations] == list(range(1, 13))
    assert migrations[9] == SchemaMigration(10, "step_10", "-- 0010_step_10.sql\nSELECT 1;\n")
    assert head_version(migrations) == 12


def test_head_of_no_migrations_is_zero() -> None:
    assert head_version([]) == 0


@pytest.mark.parametrize(
    ("names", "found"),
    [
        (["0001_a.sql", "0003_c.sql"], "3"),
        (["0002_b.sql", "0003_c.sql"], "2"),
        (["0000_zero.sql", "0001_a.sql"], "0"),
        (["0001_a.sql", "0002_b.sql", "0004_d.sql"], "4"),
    ],
)
def test_a_gap_is_refused(tmp_path: Path, names: list[str], found: str) -> None:
    with pytest.raises(SchemaError, match=rf"1\.\.N without gaps; found {found}$"):
        load_migrations(_write(tmp_path / "m", *names))


def test_a_duplicate_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="without gaps"):
        load_migrations(_write(tmp_path / "m", "0001_a.sql", "0001_b.sql", "0002_c.sql"))


@pytest.mark.parametrize(
    "bad",
    [
        "1_short.sql",
        "00001_long.sql",
        "0003-dash.sql",
        "0003_Upper.sql",
        "0003_.sql",
        "0003_with space.sql",
        "0003_dots.v2.sql",
        "abcd_letters.sql",
        "0003_add_column.sql.sql",
        ".sql",
    ],
)
def test_a_badly_named_file_is_refused_by_name(tmp_path: Path, bad: str) -> None:
    directory = _write(tmp_path / "m", "0001_a.sql", "0002_b.sql", bad)
    with pytest.raises(SchemaError) as excinfo:
        load_migrations(directory)
    assert str(excinfo.value) == f"migration file {bad} must be named NNNN_name.sql"


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    # A mistyped TENANT_MIGRATIONS_DIR must not read as "the schema has no migrations" (head 0).
    with pytest.raises(SchemaError, match=r"no NNNN_name\.sql migrations"):
        load_migrations(tmp_path / "does-not-exist")


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"no NNNN_name\.sql migrations"):
        load_migrations(_write(tmp_path / "m", "README.md"))
