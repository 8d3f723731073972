"""``python -m bench``: run the benchmark sections and write bench/results.json and docs/benchmarks.md."""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Final

from bench.context import BenchContext, Settings, now_iso, say, shout
from bench.platform import PYCACHE, ROOT, Backends, ensure_tools, machine_info
from bench.procs import Registry
from bench.report import SECTION_ORDER, render
from bench.results import PASS, load_results, merge_results, save_results
from bench.sections import (
    apps,
    backups,
    catchup,
    console,
    fleet,
    gateway,
    moves,
    provisioning,
    scale,
    tenants,
    usage,
    users,
    webhooks,
)
from tenantry_devtools.processes import use_bytecode_cache

SECTIONS: Final[dict[str, Callable[[BenchContext], dict[str, Any]]]] = {
    "gateway": gateway.run,
    "tenants": tenants.run,
    "provisioning": provisioning.run,
    "fleet": fleet.run,
    "apps": apps.run,
    "backups": backups.run,
    "scale": scale.run,
    "moves": moves.run,
    "users": users.run,
    "usage": usage.run,
    "webhooks": webhooks.run,
    "console": console.run,
    "catchup": catchup.run,
}


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"sections to run, comma-separated or repeated ({', '.join(SECTION_ORDER)}); default all",
    )
    parser.add_argument("--runs", type=int, default=defaults.runs, help="runs per measurement (medians; ≥ 3 for docs)")
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=defaults.connections, help="wrk connections (-c)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="wrk threads (-t)")
    parser.add_argument(
        "--tenant-counts",
        type=_int_list,
        default=defaults.tenant_counts,
        help="directory sizes of the tenants section, e.g. 1,1000,10000",
    )
    parser.add_argument(
        "--prov-sequential",
        type=int,
        default=defaults.prov_sequential,
        help="tenants created one at a time per run (provisioning)",
    )
    parser.add_argument(
        "--prov-parallel-total",
        type=int,
        default=defaults.prov_parallel_total,
        help="tenants created by the parallel workers per run (provisioning)",
    )
    parser.add_argument(
        "--prov-workers", type=int, default=defaults.prov_workers, help="parallel workers (provisioning)"
    )
    parser.add_argument("--fleet-size", type=int, default=defaults.fleet_size, help="tenant databases (fleet)")
    parser.add_argument(
        "--fleet-concurrency",
        type=int,
        default=defaults.fleet_concurrency,
        help="migrate-tenants --concurrency (fleet)",
    )
    parser.add_argument("--app-tenants", type=int, default=defaults.app_tenants, help="tenants active in turn (apps)")
    parser.add_argument("--cold-per-run", type=int, default=defaults.cold_per_run, help="cold tenants per run (apps)")
    parser.add_argument(
        "--backup-mb", type=int, default=defaults.backup_mb, help="megabytes of data in the backed-up tenant (backups)"
    )
    parser.add_argument(
        "--hold-clients",
        type=int,
        default=defaults.hold_clients,
        help="clients sending requests through the gateway during in-place restores (backups)",
    )
    parser.add_argument(
        "--scale-tenants",
        type=int,
        default=defaults.scale_tenants,
        help="real tenant databases created on one server (scale)",
    )
    parser.add_argument(
        "--scale-idle-seconds",
        type=float,
        default=defaults.scale_idle_seconds,
        help="seconds of each idle-CPU window of the server (scale)",
    )
    parser.add_argument(
        "--move-mb", type=int, default=defaults.move_mb, help="megabytes of data in the tenant moved (moves)"
    )
    parser.add_argument(
        "--move-pause-mb",
        type=int,
        default=defaults.move_pause_mb,
        help="megabytes of data in the tenant moved under a steady writer (moves)",
    )
    parser.add_argument(
        "--move-pauses",
        type=int,
        default=defaults.move_pauses,
        help="moves per mode under a steady writer, back and forth (moves)",
    )
    parser.add_argument(
        "--move-writers",
        type=int,
        default=defaults.move_writers,
        help="clients writing notes through the gateway during those moves (moves)",
    )
    parser.add_argument(
        "--login-samples",
        type=int,
        default=defaults.login_samples,
        help="sequential sign-ins per run, and as many of each failure kind (users)",
    )
    parser.add_argument(
        "--login-clients",
        type=_int_list,
        default=defaults.login_clients,
        help="concurrent sign-in clients, e.g. 4,8,16 (users)",
    )
    parser.add_argument(
        "--login-seconds", type=float, default=defaults.login_seconds, help="seconds per concurrent sign-in run (users)"
    )
    parser.add_argument(
        "--users-baseline",
        default=defaults.users_baseline,
        help="git revision of the gateway compared on the proxied path (users; the commit before tenant users)",
    )
    parser.add_argument(
        "--users-proxied-runs",
        type=int,
        default=defaults.users_proxied_runs,
        help="runs of the proxied rows, whose ratios are a few percent apart (users)",
    )
    parser.add_argument(
        "--usage-baseline",
        default=defaults.usage_baseline,
        help="git revision of the gateway compared with usage counting on (usage; the commit before it)",
    )
    parser.add_argument(
        "--catchup-baseline",
        default=defaults.catchup_baseline,
        help="git revision of the gateway compared with catch-up syncs (catchup; the commit before them)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json", help="results file")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report page")
    parser.add_argument("--fresh", action="store_true", help="do not keep other sections of the results file")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs) afterwards")
    args = parser.parse_args(argv)
    chosen = [s.strip() for item in args.only for s in item.split(",") if s.strip()] or list(SECTION_ORDER)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTION_ORDER)}")
    args.sections = [s for s in SECTION_ORDER if s in chosen]
    if args.runs < 1 or args.duration <= 0:
        parser.error("--runs must be ≥ 1 and --duration > 0")
    if args.backup_mb < 1 or args.hold_clients < 1:
        parser.error("--backup-mb and --hold-clients must be ≥ 1")
    if args.scale_tenants < 3 or args.scale_idle_seconds <= 0:
        parser.error("--scale-tenants must be ≥ 3 and --scale-idle-seconds > 0")
    if min(args.move_mb, args.move_pause_mb, args.move_pauses, args.move_writers) < 1:
        parser.error("--move-mb, --move-pause-mb, --move-pauses and --move-writers must be ≥ 1")
    counts = (args.login_samples, args.users_proxied_runs, *args.login_clients)
    if not args.login_clients or min(counts) < 1 or args.login_seconds <= 0:
        parser.error("--login-samples, --login-clients and --users-proxied-runs must be ≥ 1, --login-seconds > 0")
    return args


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run; 0 when every section ran (missed targets are reported, not an exit status), 1 on errors."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings(
        runs=args.runs,
        duration=args.duration,
        connections=args.connections,
        threads=args.threads,
        tenant_counts=args.tenant_counts,
        prov_sequential=args.prov_sequential,
        prov_parallel_total=args.prov_parallel_total,
        prov_workers=args.prov_workers,
        fleet_size=args.fleet_size,
        fleet_concurrency=args.fleet_concurrency,
        app_tenants=args.app_tenants,
        cold_per_run=args.cold_per_run,
        backup_mb=args.backup_mb,
        hold_clients=args.hold_clients,
        scale_tenants=args.scale_tenants,
        scale_idle_seconds=args.scale_idle_seconds,
        move_mb=args.move_mb,
        move_pause_mb=args.move_pause_mb,
        move_pauses=args.move_pauses,
        move_writers=args.move_writers,
        login_samples=args.login_samples,
        login_clients=args.login_clients,
        login_seconds=args.login_seconds,
        users_baseline=args.users_baseline,
        users_proxied_runs=args.users_proxied_runs,
        usage_baseline=args.usage_baseline,
        catchup_baseline=args.catchup_baseline,
    )
    # Also SIGINT: a shell that starts the harness in the background ignores it otherwise.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    use_bytecode_cache(PYCACHE)
    installed = ensure_tools()
    if installed:
        say(f"installed {', '.join(installed)}")
    root = Path(tempfile.mkdtemp(prefix="tenantry-bench-"))
    root.chmod(0o755)  # PostgreSQL runs as the postgres user and must traverse it
    registry = Registry()
    sections: dict[str, Any] = {}
    failed = False
    say(f"state and logs in {root}")
    try:
        backends = Backends(root)
        backends.start(registry)
        machine = machine_info()
        machine["postgres"] = backends.postgres_version()
        nproc = int(machine["nproc"])
        ctx = BenchContext(
            settings=settings,
            root=root,
            registry=registry,
            backends=backends,
            machine=machine,
            cpu_test="0" if nproc >= 2 else None,
            cpu_load="1" if nproc >= 2 else None,
            invocation=("python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)).strip(),
        )
        for name in args.sections:
            say(f"=== section {name}")
            sections[name] = SECTIONS[name](ctx)
            failed |= bool(sections[name]["errors"])
            _write(args, machine, sections)
    except KeyboardInterrupt:
        shout("interrupted; stopping everything that was started")
        failed = True
    finally:
        problems = registry.stop_all()
        for problem in problems:
            shout(f"cleanup: {problem}")
        if args.keep_tmp or failed:
            say(f"kept {root} (logs under {root / 'logs'})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if sections:
        targets = [t for s in sections.values() for t in s["targets"]]
        passed = sum(1 for t in targets if t["status"] == PASS)
        say(f"this run: {passed} of {len(targets)} targets met; wrote {args.json} and {args.markdown}")
    return 1 if failed else 0


def _write(args: argparse.Namespace, machine: dict[str, Any], sections: dict[str, Any]) -> None:
    fresh = {"updated_at": now_iso(), "machine": machine, "sections": dict(sections)}
    results = merge_results(None if args.fresh else load_results(args.json), fresh)
    save_results(args.json, results)
    args.markdown.write_text(render(results))


if __name__ == "__main__":
    sys.exit(main())
