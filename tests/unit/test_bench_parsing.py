"""The benchmark harness's pure logic (bench/): wrk and Redis output parsing, statistics, targets, the results file
and the report page. No processes: ``make bench`` itself is not part of ``make test``."""

from __future__ import annotations

import math
import sys

import pytest

from support.platform import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.nginx import BODY, BODY_BYTES, parse_stub_status
from bench.redisstats import (
    HEARTBEAT_SHA,
    calls_delta,
    parse_commandstats,
    parse_monitor_line,
    split_monitor,
    without_heartbeats,
)
from bench.report import render
from bench.results import (
    ERROR,
    MISS,
    PASS,
    Target,
    all_targets,
    evaluate,
    format_number,
    load_results,
    median,
    merge_results,
    percentile,
    requirement_text,
    safe_ratio,
)
from bench.wrk import (
    WrkError,
    calibrated_delay,
    delay_script,
    paced_load,
    parse_time_ms,
    parse_wrk_output,
    wrk_command,
)

WRK_LATENCY_REPORT = """\
Running 5s test @ http://127.0.0.1:40001/bench
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.34us  301.00us  12.50ms   91.20%
    Req/Sec    39.12k     2.01k   41.00k    88.00%
  Latency Distribution
     50%  750.00us
     75%    0.90ms
     90%    1.10ms
     99%    2.01s
  194812 requests in 5.00s, 231.57MB read
Requests/sec:  38962.40
Transfer/sec:     46.31MB
"""

WRK_WITH_ERRORS = """\
Running 1s test @ http://127.0.0.1:48123/nonexistent
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.59ms    5.58ms  39.66ms   88.30%
    Req/Sec     1.21k   394.71     1.57k    90.00%
  Latency Distribution
     50%    2.38ms
     75%    5.06ms
     90%   11.44ms
     99%   27.83ms
  1221 requests in 1.01s, 620.04KB read
  Socket errors: connect 0, read 3, write 0, timeout 7
  Non-2xx or 3xx responses: 1221
Requests/sec:   1209.48
Transfer/sec:    614.19KB
"""


# --- wrk -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [("812.34us", 0.81234), ("0.90ms", 0.9), ("2.01s", 2010.0), ("1.50m", 90_000.0), ("3ms", 3.0)],
)
def test_wrk_times_are_normalised_to_milliseconds(text: str, ms: float) -> None:
    assert math.isclose(parse_time_ms(text), ms)


@pytest.mark.parametrize("text", ["", "12", "1.2 ms", "1.2ns", "abc"])
def test_a_non_time_is_refused(text: str) -> None:
    with pytest.raises(WrkError):
        parse_time_ms(text)


def test_latency_report_is_parsed_with_mixed_units() -> None:
    result = parse_wrk_output(WRK_LATENCY_REPORT)
    assert result.requests == 194812
    assert math.isclose(result.duration_s, 5.0)
    assert math.isclose(result.rps, 38962.40)
    assert math.isclose(result.latency_avg_ms, 0.81234)
    assert math.isclose(result.p50_ms, 0.75)
    assert math.isclose(result.p75_ms, 0.9)
    assert math.isclose(result.p90_ms, 1.1)
    assert math.isclose(result.p99_ms, 2010.0)
    assert result.non_2xx == 0
    assert result.errors == 0


def test_non_2xx_and_socket_errors_are_counted() -> None:
    result = parse_wrk_output(WRK_WITH_ERRORS)
    assert result.non_2xx == 1221
    assert result.socket_errors == {"connect": 0, "read": 3, "write": 0, "timeout": 7}
    assert result.errors == 10
    assert math.isclose(result.p99_ms, 27.83)


def test_output_without_latency_distribution_is_an_error() -> None:
    without = "\n".join(line for line in WRK_LATENCY_REPORT.splitlines() if "%" not in line or "Stdev" in line)
    with pytest.raises(WrkError, match="latency distribution"):
        parse_wrk_output(without)
    with pytest.raises(WrkError):
        parse_wrk_output(WRK_LATENCY_REPORT.replace("Requests/sec:", "Reqs:"))


def test_wrk_command_is_pinned_and_carries_headers_and_script(tmp_path) -> None:
    script = tmp_path / "paced.lua"
    argv = wrk_command(
        "http://127.0.0.1:1/x",
        threads=1,
        connections=32,
        duration_s=5,
        headers={"Host": "a.b"},
        script=script,
        cpus="1",
    )
    assert argv[:3] == ["taskset", "-c", "1"]
    assert argv[3:8] == ["wrk", "-t1", "-c32", "-d5s", "--latency"]
    assert argv[argv.index("-H") : argv.index("-H") + 2] == ["-H", "Host: a.b"]
    assert argv[-3:] == ["-s", str(script), "http://127.0.0.1:1/x"]
    assert wrk_command("u", threads=1, connections=1, duration_s=2.5, headers={})[0] == "wrk"


def test_paced_load_offers_the_rate_with_whole_millisecond_delays() -> None:
    conns, delay = paced_load(1000, 32)
    assert (conns, delay) == (32, 32)  # 32 connections x one request per 32 ms = 1,000 req/s
    conns, delay = paced_load(20_000, 32)  # a delay under 10 ms would round badly: more connections instead
    assert conns == 200
    assert delay == 10
    script = delay_script(32)
    assert "function delay()" in script
    assert "math.random(16, 48)" in script  # jittered around the mean, so connections do not move in step
    with pytest.raises(ValueError):
        paced_load(0, 32)


def test_calibrated_delay_takes_the_response_time_off_the_wait() -> None:
    # 32 connections waiting 32 ms achieved 800 req/s: each request took 8 ms, so a 24 ms wait offers 1,000 req/s.
    assert calibrated_delay(1000, 32, 32, 800) == 24
    assert calibrated_delay(1000, 32, 32, 1000) == 32  # no response time to take off
    assert calibrated_delay(1000, 32, 5, 100) == 1  # never below 1 ms
    assert calibrated_delay(1000, 32, 32, 0) == 32  # a failed trial keeps the first guess


# --- Redis and nginx counters ----------------------------------------------------------------------------


COMMANDSTATS = (
    "# Commandstats\r\n"
    "cmdstat_evalsha:calls=1000,usec=9000,usec_per_call=9.00,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_get:calls=2000,usec=1000,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_client|setname:calls=2,usec=3,usec_per_call=1.50,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_info:calls=7,usec=300,usec_per_call=42.86,rejected_calls=0,failed_calls=0\r\n"
)


def test_commandstats_are_parsed_and_diffed_without_the_harness_info() -> None:
    before = parse_commandstats(COMMANDSTATS)
    assert before == {"evalsha": 1000, "get": 2000, "client|setname": 2, "info": 7}
    after = {**before, "evalsha": 1500, "get": 3000, "info": 9, "ttl": 4, "monitor": 1}
    assert calls_delta(before, after) == {"evalsha": 500, "get": 1000, "ttl": 4}
    assert calls_delta(before, before) == {}


def test_monitor_lines_separate_client_calls_from_script_internals() -> None:
    assert parse_monitor_line('+1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" "ab" "2"') == (
        "127.0.0.1:5555",
        "evalsha",
    )
    assert parse_monitor_line('+1700000000.123457 [0 lua] "get" "t:{x}:m:1"') == ("lua", "get")
    assert parse_monitor_line("+OK") is None
    lines = [
        '+1.1 [0 127.0.0.1:1] "evalsha" "x"',
        '+1.2 [0 lua] "get" "a"',
        '+1.3 [0 lua] "incr" "a"',
        '+1.4 [0 127.0.0.1:2] "info" "commandstats"',
        '+1.5 [0 127.0.0.1:1] "evalsha" "x"',
    ]
    assert split_monitor(lines) == ({"evalsha": 2}, {"get": 1, "incr": 1})


def test_the_gateways_heartbeat_is_background_work_not_a_requests() -> None:
    heartbeat = [
        f'+2.1 [0 127.0.0.1:3] "evalsha" "{HEARTBEAT_SHA}" "1" "tenantry:gateways:i" "vm:1:ab" "60"',
        '+2.2 [0 lua] "TIME"',
        '+2.3 [0 lua] "ZADD" "tenantry:gateways:i" "1700000000.5" "vm:1:ab"',
        '+2.4 [0 lua] "ZREMRANGEBYSCORE" "tenantry:gateways:i" "-inf" "1699999940.5"',
        '+2.5 [0 lua] "EXPIRE" "tenantry:gateways:i" "60"',
    ]
    quota = ['+2.6 [0 127.0.0.1:1] "evalsha" "x"', '+2.7 [0 lua] "expire" "a" "65"']
    assert split_monitor(heartbeat * 2 + quota) == ({"evalsha": 1}, {"expire": 1})
    assert split_monitor(heartbeat) == ({}, {})
    delta = {"evalsha": 3, "time": 2, "zadd": 2, "zremrangebyscore": 2, "expire": 3}
    assert without_heartbeats(delta, 2) == {"evalsha": 1, "expire": 1}
    assert without_heartbeats(delta, 0) == delta


def test_stub_status_and_the_upstream_body() -> None:
    page = "Active connections: 3 \nserver accepts handled requests\n 12 12 4567 \nReading: 0 Writing: 1 Waiting: 2 \n"
    assert parse_stub_status(page) == 4567
    with pytest.raises(ValueError):
        parse_stub_status("<html>not it</html>")
    assert len(BODY.encode()) == BODY_BYTES == 1024
    assert '"' not in BODY
    assert "\\" not in BODY


# --- statistics and targets ------------------------------------------------------------------------------


def test_median_and_percentile() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        median([])
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert safe_ratio(1, 0) is None
    assert safe_ratio(None, 2) is None
    assert safe_ratio(3, 2) == 1.5


@pytest.mark.parametrize(
    ("measured", "op", "limit", "tolerance", "status"),
    [
        (0.2, ">=", 0.15, 0.0, PASS),
        (0.1, ">=", 0.15, 0.0, MISS),
        (0.15, ">=", 0.15, 0.0, PASS),
        (1.1, "<=", 1.1, 0.0, PASS),
        (1.2, "<=", 1.1, 0.0, MISS),
        (1.009, "==", 1.0, 0.01, PASS),
        (1.011, "==", 1.0, 0.01, MISS),
        (0.0, "==", 0.0, 0.0, PASS),
        (1.0, "==", 0.0, 0.0, MISS),
        (None, "<=", 1.0, 0.0, ERROR),
        (float("nan"), ">=", 1.0, 0.0, ERROR),
    ],
)
def test_targets_are_evaluated(measured, op, limit, tolerance, status) -> None:
    assert evaluate(measured, op, limit, tolerance) == status
    target = Target("x.y", "desc", measured, op, limit, tolerance=tolerance)
    assert target.status == status
    assert target.to_dict()["status"] == status


def test_requirement_text_and_number_format() -> None:
    assert requirement_text({"op": "<=", "limit": 1.1, "unit": ""}) == "≤ 1.10"
    assert requirement_text({"op": ">=", "limit": 0.15, "unit": ""}) == "≥ 0.150"
    assert requirement_text({"op": "==", "limit": 1.0, "tolerance": 0.01, "unit": ""}) == "= 1 ± 0.0100"
    assert requirement_text({"op": "<=", "limit": 200.0, "unit": "ms"}) == "≤ 200 ms"
    assert format_number(38962.4) == "38,962"
    assert format_number(0.75) == "0.750"
    assert format_number(12.345) == "12.3"
    assert format_number(None) == "n/a"
    assert format_number(0) == "0"


# --- results file and report -----------------------------------------------------------------------------


def _section(title: str, targets: list[Target]) -> dict:
    return {
        "title": title,
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 1.0,
        "invocation": "python -m bench",
        "machine": {"nproc": 2, "cpu_model": "Test CPU"},
        "load_before": [0.1, 0.2, 0.3],
        "load_after": [0.4, 0.5, 0.6],
        "settings": {"runs": 3},
        "method": ["how"],
        "commands": ["wrk -t1 -c32 -d5s --latency http://x"],
        "tables": [{"title": "T", "columns": ["a", "b"], "rows": [["1", "2|3"]]}],
        "data": {},
        "targets": [t.to_dict() for t in targets],
        "notes": [],
        "errors": [],
    }


def test_a_partial_run_replaces_its_sections_and_keeps_the_others() -> None:
    old = {"schema": 1, "updated_at": "old", "sections": {"gateway": {"v": 1}, "fleet": {"v": 1}}}
    fresh = {"updated_at": "new", "machine": {}, "sections": {"fleet": {"v": 2}}}
    merged = merge_results(old, fresh)
    assert merged["sections"] == {"gateway": {"v": 1}, "fleet": {"v": 2}}
    assert merged["updated_at"] == "new"
    assert merge_results(None, fresh)["sections"] == {"fleet": {"v": 2}}
    assert merge_results({"schema": 99, "sections": {"gateway": {}}}, fresh)["sections"] == {"fleet": {"v": 2}}


def test_report_shows_targets_verdicts_and_only_the_runs_own_numbers_under_a_miss() -> None:
    results = {
        "schema": 1,
        "sections": {
            "fleet": _section("4. Fleet migration", [Target("fleet.ratio", "Fleet ratio", 1.7, "<=", 1.5)]),
            "gateway": _section("1. Gateway", [Target("gateway.redis", "Redis calls", 1.0, "==", 1.0, tolerance=0.01)]),
        },
    }
    page = render(results)
    assert page.index("## 1. Gateway") < page.index("## 4. Fleet migration")  # the order
    assert "**1 of 2 targets met.**" in page
    assert "**PASS**" in page
    assert "**MISS**" in page
    assert "2\\|3" in page  # table cells are escaped
    assert "wrk -t1 -c32 -d5s --latency http://x" in page
    # Under a missed target: this run's numbers and nothing written by hand (no placeholder to fill in).
    miss = page.split("### Missed: Fleet ratio\n\n", 1)[1].split("\n\n", 1)[0]
    assert miss.startswith("This run (target id `fleet.ratio`): measured 1.70, required ≤ 1.50")
    assert "Placeholder" not in page
    assert "### Missed: Redis calls" not in page  # a target met gets nothing
    assert "[bench/analysis.md](../bench/analysis.md)" in page  # the dated, hand-written analyses are linked


def test_the_hand_written_analyses_are_never_pasted_into_the_generated_page() -> None:
    results = load_results(ROOT / "bench" / "results.json")
    assert results is not None
    missed = [t["id"] for t in all_targets(results) if t["status"] == MISS]
    analysis = (ROOT / "bench" / "analysis.md").read_text()
    assert any(f"## {target}" in analysis for target in missed)  # the analysis discusses a target this run missed
    page = render(results)
    for paragraph in analysis.split("\n\n"):
        if len(paragraph) > 80:
            assert paragraph.strip() not in page


def test_paired_ratio_is_the_median_of_the_runs_own_ratios() -> None:
    from bench.results import paired_ratio

    # The machine slows down in the second run: both sides drop, their ratio does not.
    value, text = paired_ratio([80.0, 40.0, 90.0], [100.0, 50.0, 100.0])
    assert value == 0.8
    assert text == "median of the runs' ratios 0.800, 0.800, 0.900"
    assert paired_ratio([1.0], [0.0]) == (None, "no complete run")


SERVICE_LOG = """\
{"event": "tenant_created", "timestamp": "2026-11-24T10:00:00.000000Z", "level": "info"}
not json at all "hold_placed"
{"hold_id": "abc", "seconds": 5.0, "event": "hold_placed", "level": "info", "timestamp": "2026-11-24T10:00:01.000000Z"}
{"hold_id": "abc", "gateways": 1, "seconds": 0.031, "event": "hold_drained", "timestamp": "2026-11-24T10:00:01.031000Z"}
{"hold_id": "abc", "seconds": 0.25, "event": "hold_released", "timestamp": "2026-11-24T10:00:01.250000Z"}
{"hold_id": "def", "seconds": 0.1, "event": "hold_released", "timestamp": "2026-11-24T10:00:09.100000+00:00"}
"""

GATEWAY_METRICS = """\
# HELP tenantry_gateway_hold_wait_seconds How long held requests waited
# TYPE tenantry_gateway_hold_wait_seconds histogram
tenantry_gateway_hold_wait_seconds_bucket{le="0.01"} 0.0
tenantry_gateway_hold_wait_seconds_bucket{le="0.1"} 1.0
tenantry_gateway_hold_wait_seconds_bucket{le="0.25"} 4.0
tenantry_gateway_hold_wait_seconds_bucket{le="+Inf"} 4.0
tenantry_gateway_hold_wait_seconds_count 4.0
tenantry_gateway_hold_wait_seconds_sum 0.6
tenantry_gateway_held_requests_total{outcome="released"} 4.0
garbage line
"""


def test_holds_are_read_from_the_tenant_service_log() -> None:
    from bench.cutover import parse_hold_log

    spans = parse_hold_log(SERVICE_LOG)
    assert [s.hold_id for s in spans] == ["abc", "def"]
    first, second = spans
    assert first.seconds == pytest.approx(0.25)
    assert first.released - first.placed == pytest.approx(0.25)
    assert first.drained_s == 0.031
    assert second.drained_s is None  # no hold_drained line for it
    assert second.released - first.released == pytest.approx(7.85)  # Z and +00:00 are the same clock


def test_the_gateways_hold_wait_histogram_is_diffed_between_scrapes() -> None:
    from bench.cutover import histogram_delta, parse_prometheus

    after = parse_prometheus(GATEWAY_METRICS)
    assert after['tenantry_gateway_held_requests_total{outcome="released"}'] == 4.0
    before = {"tenantry_gateway_hold_wait_seconds_count": 1.0, "tenantry_gateway_hold_wait_seconds_sum": 0.05,
              'tenantry_gateway_hold_wait_seconds_bucket{le="0.1"}': 1.0,
              'tenantry_gateway_hold_wait_seconds_bucket{le="0.25"}': 1.0,
              'tenantry_gateway_hold_wait_seconds_bucket{le="+Inf"}': 1.0}  # fmt: skip
    delta = histogram_delta(before, after)
    assert delta.count == 3.0
    assert delta.sum == pytest.approx(0.55)
    assert delta.buckets == [(0.01, 0.0), (0.1, 0.0), (0.25, 3.0), (math.inf, 3.0)]
    assert delta.quantile_bound(0.5) == 0.25
    assert delta.quantile_bound(1.0) == 0.25
    assert delta.mean == pytest.approx(0.55 / 3)
    empty = histogram_delta(after, after)
    assert empty.mean is None
    assert empty.quantile_bound(0.5) is None


def test_requests_in_flight_during_a_hold_and_failures() -> None:
    from bench.cutover import Timed, elapsed_seconds, failed, overlapping

    requests = [
        Timed(sent=9.0, ms=500, status=200),  # done 9.5: before
        Timed(sent=9.8, ms=400, status=200),  # in flight when the hold began at 10.0
        Timed(sent=10.1, ms=300, status=200),  # held
        Timed(sent=10.5, ms=10, status=503),  # sent after it ended
        Timed(sent=10.2, ms=5, status=0),  # no answer, within
    ]
    assert overlapping(requests, 10.0, 10.4) == [requests[1], requests[2], requests[4]]
    assert failed(requests) == [requests[3], requests[4]]
    assert elapsed_seconds("2026-11-24T10:00:00.5Z", "2026-11-24T10:00:02+00:00") == 1.5


def test_the_write_pause_is_the_longest_gap_between_acknowledgements_around_an_operation() -> None:
    from bench.cutover import longest_gap

    acks = [1.0, 1.1, 1.2, 2.9, 3.0, 3.05, 5.0, 5.1]  # a 1.7 s pause from 1.2, another of 1.95 s from 3.05
    assert longest_gap(acks, 1.5, 2.0) == pytest.approx(1.7)  # the gap spans the whole operation
    assert longest_gap(list(reversed(acks)), 1.15, 3.01) == pytest.approx(1.7)  # any order
    assert longest_gap(acks, 2.95, 3.5) == pytest.approx(1.95)  # a gap that began during the operation counts
    assert longest_gap(acks, 0.0, 1.15) == pytest.approx(0.1)
    assert longest_gap(acks, 5.05, 5.2) is None  # nothing acknowledged after it: the pause had not ended
    assert longest_gap([], 0.0, 1.0) is None


def test_a_sections_summary_is_rendered_after_its_tables() -> None:
    section = _section("8. Moves", [])
    section["summary"] = ["A logical move paused writes for 0.2 s.", "More."]
    page = render({"schema": 1, "sections": {"moves": section}})
    assert "**What it shows.** A logical move paused writes for 0.2 s.\n\nMore." in page
    assert page.index("**T**") < page.index("**What it shows.**")
    assert "**What it shows.**" not in render({"schema": 1, "sections": {"moves": _section("8. Moves", [])}})


def test_an_operations_time_is_split_by_the_progress_steps_seen() -> None:
    from bench.sections.backups import OperationRun, median_steps

    def op(wall: float, steps: list[tuple[float, str]]) -> OperationRun:
        return OperationRun({}, {"started_at": "2026-11-24T10:00:00Z", "finished_at": "2026-11-24T10:00:03Z"},
                            wall, steps)  # fmt: skip

    first = op(3.0, [(0.0, "pending"), (0.1, "creating"), (0.4, "restoring")])
    assert first.work_s == 3.0
    assert first.step_seconds() == pytest.approx({"pending": 0.1, "creating": 0.3, "restoring": 2.6})
    second = op(5.0, [(0.0, "creating"), (1.0, "restoring")])
    third = op(4.0, [(0.0, "creating"), (0.5, "restoring"), (1.0, "creating")])  # a step seen twice adds up
    assert third.step_seconds() == pytest.approx({"creating": 3.5, "restoring": 0.5})
    medians = median_steps([first, second, third])
    assert list(medians) == ["pending", "creating", "restoring"]
    assert medians == pytest.approx({"pending": 0.0, "creating": 1.0, "restoring": 2.6})


# --------------------------------------------------------------------------- the scale section (bench/capacity.py)


def test_provisioning_windows_are_counted_in_completion_order() -> None:
    from bench.capacity import Span, blocks, window

    # Four creates, two at a time; they complete at 1, 2, 3 and 5 s (listed out of order on purpose).
    spans = [Span(0.0, 2.0), Span(0.0, 1.0), Span(2.0, 5.0), Span(1.0, 3.0)]
    first = window(spans, 0, 2)
    assert first["seconds"] == 2.0  # from the pass's start to the 2nd completion
    assert first["rate"] == 1.0
    assert first["p50_ms"] == pytest.approx(1500)
    last = window(spans, 2, 2)
    assert (last["from_s"], last["to_s"]) == (2.0, 5.0)  # from the completion before the window
    assert last["rate"] == pytest.approx(2 / 3)
    assert last["max_ms"] == pytest.approx(3000)
    assert [(b["first"], b["last"]) for b in blocks(spans, 3)] == [(1, 3), (4, 4)]
    with pytest.raises(ValueError, match="outside"):
        window(spans, 3, 2)
    with pytest.raises(ValueError, match="≥ 1"):
        blocks(spans, 0)


def test_sampled_counters_are_interpolated_and_clamped() -> None:
    from bench.capacity import interpolate

    samples = [(0.0, 10.0), (1.0, 12.0), (3.0, 13.0)]
    assert interpolate(samples, 0.5) == pytest.approx(11.0)
    assert interpolate(samples, 2.0) == pytest.approx(12.5)
    assert interpolate(samples, 1.0) == 12.0
    assert interpolate(samples, -1.0) == 10.0
    assert interpolate(samples, 9.0) == 13.0
    with pytest.raises(ValueError, match="no samples"):
        interpolate([], 1.0)


def test_du_output_and_proc_status_are_parsed() -> None:
    from bench.capacity import parse_du, parse_status_kb

    assert parse_du("7479296\tbase\n540672\tglobal\ndu: cannot read x\n16781312\tpg_wal\n") == {
        "base": 7479296,
        "global": 540672,
        "pg_wal": 16781312,
    }
    status = "Name:\tpython\nVmPeak:\t  300000 kB\nVmRSS:\t  137216 kB\nThreads:\t4\n"
    assert parse_status_kb(status, "VmRSS") == 137216
    assert parse_status_kb(status, "VmHWM") is None


def test_postgres_process_titles_are_classified() -> None:
    from bench.capacity import backend_kind, parse_children

    assert backend_kind("postgres: autovacuum worker t1a2b3c4_s_00001\x00") == (
        "autovacuum worker",
        "t1a2b3c4_s_00001",
    )
    assert backend_kind("postgres: autovacuum worker ") == ("autovacuum worker", "")
    assert backend_kind("postgres: autovacuum launcher ") == ("autovacuum launcher", "")
    assert backend_kind("postgres: main: checkpointer ") == ("checkpointer", "")  # cluster_name prefix
    assert backend_kind("postgres: postgres tenantry 127.0.0.1(5432) idle")[0] == "client backend"
    # A child that has not set its title yet still shows the postmaster's command line.
    assert backend_kind("/usr/lib/postgresql/15/bin/postgres\x00-D\x00/tmp/x\x00") == ("starting", "")
    assert parse_children("101 102 \n") == [101, 102]
    assert parse_children("") == []


def test_idle_cpu_is_a_share_of_one_core_by_kind() -> None:
    from bench.capacity import IdleResult, cpu_delta

    delta = cpu_delta({"postmaster": 1.0, "autovacuum worker": 0.5}, {"postmaster": 1.2, "exited": 3.0})
    assert delta == pytest.approx({"autovacuum worker": -0.5, "exited": 3.0, "postmaster": 0.2})
    result = IdleResult(seconds=10.0, cpu={"exited": 0.9, "autovacuum worker": 0.1, "checkpointer": 0.5},
                        databases_visited=["a", "b", "a"])  # fmt: skip
    assert result.total_cpu == pytest.approx(1.5)
    assert result.core_percent() == pytest.approx(15.0)
    assert result.core_percent(["exited", "autovacuum worker"]) == pytest.approx(10.0)
    assert result.workers == 3
    assert result.to_dict()["distinct_databases_visited"] == 2


def test_autovacuum_workers_are_read_from_a_debug1_server_log() -> None:
    from bench.capacity import parse_autovacuum_log

    log = (
        '2026-12-02 16:07:20.101 UTC [4242] DEBUG:  autovacuum: processing database "t1a2b3c4_s_00001"\n'
        "2026-12-02 16:07:20.150 UTC [17] DEBUG:  checkpoint sync: number=1 file=base/1/2 time=0.01 ms\n"
        '2026-12-02 16:07:20.212 UTC [4243] DEBUG:  autovacuum: processing database "postgres"\n'
        '2026-12-02 16:07:20.330 UTC [4244] DEBUG:  autovacuum: processing database "t1a2b3c4_s_00001"\n'
    )
    assert parse_autovacuum_log(log) == ["t1a2b3c4_s_00001", "postgres", "t1a2b3c4_s_00001"]
    assert parse_autovacuum_log("") == []


def test_the_machines_cpu_and_dirty_pages_are_read_from_proc() -> None:
    from bench.capacity import parse_proc_stat, parse_status_kb

    stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\nintr 12345\n"
    assert parse_proc_stat(stat) == {"user": 100, "nice": 5, "system": 50, "idle": 1000, "iowait": 20, "irq": 1,
                                     "softirq": 2, "steal": 3}  # fmt: skip
    assert parse_proc_stat("cpu  1 2 3 4\n")["iowait"] == 0  # an old kernel's shorter line
    with pytest.raises(ValueError, match="no cpu line"):
        parse_proc_stat("intr 1\n")
    assert parse_status_kb("MemTotal:       24683520 kB\nDirty:              2760 kB\n", "Dirty") == 2760


def test_autovacuum_worker_rate_follows_naptime_and_the_launchers_floor() -> None:
    from bench.capacity import expected_worker_rate, setting_seconds

    assert setting_seconds("60s") == 60.0
    assert setting_seconds("1min") == 60.0
    assert setting_seconds("500ms") == 0.5
    assert setting_seconds("15") == 15.0
    with pytest.raises(ValueError, match="could not convert"):
        setting_seconds("soon")
    assert expected_worker_rate(0, 60.0) == 0.0
    assert expected_worker_rate(3, 60.0) == pytest.approx(0.05)  # each of 3 databases once a minute
    assert expected_worker_rate(500, 60.0) == pytest.approx(500 / 60)  # 120 ms apart
    # 1,000 databases would be 60 ms apart: below the launcher's 100 ms floor, so 110 ms apart.
    assert expected_worker_rate(1000, 60.0) == pytest.approx(1 / 0.11)
    assert expected_worker_rate(600, 60.0) == pytest.approx(1 / 0.11)  # exactly 100 ms: also spaced out


def test_the_stored_hashs_argon2_parameters_are_read() -> None:
    from bench.sections.users import argon2_parameters

    encoded = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"
    assert argon2_parameters(encoded) == {"type": "argon2id", "m": 65536, "t": 3, "p": 4}
    assert argon2_parameters("$argon2i$v=19$m=8192,t=1,p=1$s$h")["type"] == "argon2i"
    for bad in ("", "$2b$12$bcrypt", "$argon2id$v=19$m=65536,t=3$s$h", "$argon2id$v=19$m=x,t=3,p=4$s$h"):
        with pytest.raises(ValueError, match="argon2"):
            argon2_parameters(bad)


def test_the_sign_in_script_posts_each_users_json_in_turn() -> None:
    from bench.sections.users import login_script, spread

    script = login_script([{"email": "a@example.com", "password": "it's \\ secret"}, {"email": "b@example.com"}])
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    # JSON inside single-quoted Lua strings: quotes and backslashes escaped for Lua, JSON's own escapes kept.
    assert """  '{"email":"a@example.com","password":"it\\'s \\\\\\\\ secret"}',""" in script
    assert """  '{"email":"b@example.com"}',""" in script
    assert "n = n % #bodies + 1" in script
    assert spread(2.0, 1.0) == spread(1.0, 2.0) == 2.0
    assert spread(1.0, 1.0) == 1.0
    assert spread(None, 1.0) is None
    assert spread(0.0, 1.0) is None
