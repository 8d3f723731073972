"""docs/benchmarks.md from the results file (every section present in it, in the issue's order)."""

from __future__ import annotations

from typing import Any, Final

from bench.results import MISS, PASS, all_targets, format_number, requirement_text

SECTION_ORDER: Final = (
    "gateway", "tenants", "provisioning", "fleet", "apps", "backups", "scale", "moves", "users", "usage", "webhooks",
    "console", "catchup",
)  # fmt: skip
#: The hand-written, dated analyses of targets missed in past runs: linked from the page, never pasted into it
#: (prose about one day's runs would otherwise stand under another run's numbers).
ANALYSIS_LINK: Final = "[bench/analysis.md](../bench/analysis.md)"


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


def _measured(target: dict[str, Any], load_before: str, load_after: str) -> str:
    """What this run measured for a target it did not meet: its own numbers, nothing written by hand."""
    if target["status"] != MISS:
        return f"Not measured (target id `{target['id']}`): see the section's errors above."
    unit = f" {target['unit']}" if target.get("unit") else ""
    return (
        f"This run (target id `{target['id']}`): measured {format_number(target.get('measured'))}{unit}, required "
        f"{requirement_text(target)}"
        + (f"; {target['detail']}" if target.get("detail") else "")
        + f". Load average during the section went from {load_before} to {load_after}."
    )


def _section(section: dict[str, Any]) -> list[str]:
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
    for index, paragraph in enumerate(section.get("summary", [])):
        out += [("**What it shows.** " if index == 0 else "") + paragraph, ""]
    if section.get("targets"):
        out += ["**Targets**", "", *_targets_table(section["targets"]), ""]
    for note in section.get("notes", []):
        out += [f"> Note: {note}", ""]
    for error in section.get("errors", []):
        first = error.splitlines()[0] if error else error
        out += [f"> **Error:** {first}", ""]
    for target in section.get("targets", []):
        if target["status"] != PASS:
            verdict = "Missed" if target["status"] == MISS else "Not measured"
            out += [f"### {verdict}: {target['description']}", "", _measured(target, load_before, load_after), ""]
    if section.get("commands"):
        out += ["<details><summary>Exact commands</summary>", "", "```"]
        out += section["commands"]
        out += ["```", "", "</details>", ""]
    return out


def render(results: dict[str, Any]) -> str:
    """The whole Markdown page: the numbers of ``results`` and nothing else."""
    sections = results.get("sections", {})
    targets = all_targets(results)
    passed = sum(1 for t in targets if t["status"] == PASS)
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (bench/report.py) from bench/results.json; edits here are overwritten. -->",
        "",
        "`make bench` starts its own PostgreSQL, Redis, nginx and the platform's processes on free loopback ports, "
        "loads them with `wrk` and raw PostgreSQL statements, and writes this page and `bench/results.json` "
        "(every number, target and verdict). Ratios compare numbers measured in the same run on the same machine.",
        "",
        "- A target's ratio is the median of the runs' own ratios: each run measures both sides side by side (the "
        "rows interleave), so a machine that speeds up or slows down between runs cancels out. The target's "
        "detail lists every run's ratio and the medians of each side; the section tables show medians over runs.",
        '- Everything: `make bench`. One or more sections: `make bench ARGS="--only gateway,tenants --runs 3 '
        f'--duration 5"` (sections: {", ".join(SECTION_ORDER)}; `python -m bench --help` lists every option).',
        "- A partial run replaces only its sections in `bench/results.json` and keeps the others (each section "
        "says when and how it was measured); `--fresh` starts the file afresh.",
        "- Throw-away PostgreSQL runs with `fsync=off`, `synchronous_commit=off`, `full_page_writes=off` "
        "(tenantry_devtools.servers); the raw baselines run on the same server, so ratios are unaffected.",
        f"- Everything on this page is measured by the run it describes. Profiles and explanations of missed "
        f"targets are written by hand, dated, in {ANALYSIS_LINK}: they describe the runs of their date, not "
        "necessarily these.",
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
            out += _section(sections[name])
    return "\n".join(out).rstrip() + "\n"
