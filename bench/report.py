"""docs/benchmarks.md from the results file (every section present in it, in the issue's order)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from bench.results import MISS, PASS, all_targets, format_number, requirement_text

SECTION_ORDER: Final = ("gateway", "tenants", "provisioning", "fleet", "apps")
#: Hand-written analyses of missed targets: ``## <target id>`` headings followed by Markdown.
ANALYSIS_FILE: Final = Path(__file__).with_name("analysis.md")


def load_analyses(path: Path = ANALYSIS_FILE) -> dict[str, str]:
    """``{target id: markdown}`` from the analysis file (empty when there is none)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    analyses: dict[str, str] = {}
    for block in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        analyses[heading.strip()] = body.strip()
    return analyses


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _targets_table(targets: list[dict[str, Any]]) -> list[str]:
    rows = []
    for t in targets:
        unit = f" {t['unit']}" if t.get("unit") else ""
        measured = format_number(t.get("measured")) + (unit if t.get("measured") is not None else "")
        ratio = format_number(t["ratio"]) if t.get("ratio") is not None else ""
        result = {PASS: "**PASS**", MISS: "**MISS**"}.get(t["status"], "**ERROR** (not measured)")
        rows.append([t["description"], measured, requirement_text(t), ratio, t.get("detail", ""), result])
    return _table(["Target", "Measured", "Required", "Ratio", "From", "Result"], rows)


def _machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine.get('nproc')} cores ({machine.get('cpu_model')}), {machine.get('memory_gb')} GB, "
        f"kernel {machine.get('kernel')}; Python {machine.get('python')}, {machine.get('nginx')}, "
        f"{machine.get('wrk')}, {machine.get('redis')}, PostgreSQL {machine.get('postgres', '?')}"
    )


def _section(name: str, section: dict[str, Any], analyses: dict[str, str]) -> list[str]:
    out = [f"## {section['title']}", ""]
    load_before = ", ".join(format_number(x) for x in section.get("load_before", []))
    load_after = ", ".join(format_number(x) for x in section.get("load_after", []))
    out += [
        f"Measured {section['started_at']} ({section['duration_s']} s) with `{section.get('invocation', '')}` on "
        f"{_machine_line(section.get('machine', {}))}. Load average (1, 5, 15 min) before: {load_before}; "
        f"after: {load_after}.",
        "",
    ]
    if section.get("settings"):
        out += ["Settings: " + ", ".join(f"{k} = {v}" for k, v in section["settings"].items()) + ".", ""]
    for paragraph in section.get("method", []):
        out += [f"- {paragraph}"]
    if section.get("method"):
        out.append("")
    for table in section.get("tables", []):
        out += [f"**{table['title']}**", "", *_table(table["columns"], table["rows"]), ""]
    if section.get("targets"):
        out += ["**Targets**", "", *_targets_table(section["targets"]), ""]
    for note in section.get("notes", []):
        out += [f"> Note: {note}", ""]
    for error in section.get("errors", []):
        first = error.splitlines()[0] if error else error
        out += [f"> **Error:** {first}", ""]
    misses = [t for t in section.get("targets", []) if t["status"] != PASS]
    for target in misses:
        out += [f"### Analysis: {target['description']} ({target['status']})", ""]
        text = analyses.get(target["id"])
        if text:
            out += [text, ""]
        else:
            out += [
                f"*Placeholder — profile pending (target id `{target['id']}`; write the analysis under "
                f"`## {target['id']}` in bench/analysis.md and it replaces this paragraph).* Observed: measured "
                f"{format_number(target.get('measured'))}{' ' + target['unit'] if target.get('unit') else ''}, "
                f"required {requirement_text(target)}"
                + (f" ({target['detail']})" if target.get("detail") else "")
                + f"; load average during the section went from {load_before} to {load_after}.",
                "",
            ]
    if section.get("commands"):
        out += ["<details><summary>Exact commands</summary>", "", "```"]
        out += section["commands"]
        out += ["```", "", "</details>", ""]
    return out


def render(results: dict[str, Any], analyses: dict[str, str] | None = None) -> str:
    """The whole Markdown page."""
    analyses = load_analyses() if analyses is None else analyses
    sections = results.get("sections", {})
    targets = all_targets(results)
    passed = sum(1 for t in targets if t["status"] == PASS)
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (bench/report.py) from bench/results.json; edits here are overwritten. "
        "Analyses of missed targets live in bench/analysis.md. -->",
        "",
        "`make bench` starts its own PostgreSQL, Redis, nginx and the platform's processes on free loopback ports, "
        "loads them with `wrk` and raw PostgreSQL statements, and writes this page and `bench/results.json` "
        "(every number, target and verdict). Ratios compare numbers measured in the same run on the same machine.",
        "",
        "- A target's ratio is the median of the runs' own ratios: each run measures both sides side by side (the "
        "rows interleave), so a machine that speeds up or slows down between runs cancels out. The target's "
        "detail lists every run's ratio and the medians of each side; the section tables show medians over runs.",
        '- Everything: `make bench`. One or more sections: `make bench ARGS="--only gateway,tenants --runs 3 '
        '--duration 5"` (sections: gateway, tenants, provisioning, fleet, apps; `python -m bench --help` lists '
        "every option).",
        "- A partial run replaces only its sections in `bench/results.json` and keeps the others (each section "
        "says when and how it was measured); `--fresh` starts the file afresh.",
        "- Throw-away PostgreSQL runs with `fsync=off`, `synchronous_commit=off`, `full_page_writes=off` "
        "(tenantry_devtools.servers); the raw baselines run on the same server, so ratios are unaffected.",
        "",
        f"**{passed} of {len(targets)} targets met.**",
        "",
        *_table(
            ["Section", "Target", "Measured", "Required", "Result"],
            [
                [
                    sections[name]["title"],
                    t["description"],
                    format_number(t.get("measured")) + (f" {t['unit']}" if t.get("unit") else ""),
                    requirement_text(t),
                    t["status"],
                ]
                for name in SECTION_ORDER
                if name in sections
                for t in sections[name].get("targets", [])
            ],
        ),
        "",
    ]
    for name in SECTION_ORDER:
        if name in sections:
            out += _section(name, sections[name], analyses)
    return "\n".join(out).rstrip() + "\n"
