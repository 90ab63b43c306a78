"""tools/run_view.py: /metrics text to counters, two scrapes to rates, numbers to a table."""

from __future__ import annotations

import asyncio
import io
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from libs.common import metrics
from tools import run_view
from tools.fleet import Counts, TransportCounts
from tools.processes import ExitedEarly, NotReady, ServiceProcess, wait_all_ready
from tools.run_view import (
    DbStatus,
    Display,
    Rates,
    Scrape,
    SimStatus,
    StageRow,
    Startup,
    ViewState,
    baseline,
    end_checks,
    parse_metrics,
    per_second,
    rates,
    render_summary,
    render_view,
    sample_name,
    status_line,
)

VALIDATE_METRICS = """\
# HELP pipeline_messages_in_total Records a stage took in.
# TYPE pipeline_messages_in_total counter
pipeline_messages_in_total{stage="validate"} 1200.0
# HELP pipeline_messages_in_created Records a stage took in.
# TYPE pipeline_messages_in_created gauge
pipeline_messages_in_created{stage="validate"} 1.7643e+09
# HELP pipeline_messages_out_total Records a stage passed on (produced or stored).
# TYPE pipeline_messages_out_total counter
pipeline_messages_out_total{stage="validate"} 1150.0
# HELP pipeline_dlq_records_total Records sent to the dead-letter topic, by stage and error type.
# TYPE pipeline_dlq_records_total counter
pipeline_dlq_records_total{error_type="RuleViolation",stage="validate"} 20.0
pipeline_dlq_records_total{error_type="SchemaViolation",stage="validate"} 18.0
# HELP pipeline_duplicates_dropped_total Readings dropped as duplicates.
# TYPE pipeline_duplicates_dropped_total counter
pipeline_duplicates_dropped_total{stage="validate"} 12.0
# HELP pipeline_consumer_lag Records between the committed position and the end.
# TYPE pipeline_consumer_lag gauge
pipeline_consumer_lag{partition="0",stage="validate",topic="sensor-data"} 3.0
pipeline_consumer_lag{partition="1",stage="validate",topic="sensor-data"} 0.0
pipeline_consumer_lag{partition="2",stage="validate",topic="sensor-data"} 4.0
# HELP pipeline_ready 1 when the stage is connected to all it needs.
# TYPE pipeline_ready gauge
pipeline_ready{stage="validate"} 1.0
# HELP pipeline_messages_in_total Records a stage took in.
pipeline_messages_out_total{stage="other"} 99999.0
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 3.2
"""

INGEST_METRICS = """\
# TYPE pipeline_messages_in_total counter
pipeline_messages_in_total{stage="ingest"} 500.0
# TYPE pipeline_messages_out_total counter
pipeline_messages_out_total{stage="ingest"} 490.0
# TYPE pipeline_ready gauge
pipeline_ready{stage="ingest"} 0.0
"""


def test_parsing_metrics_sums_dlq_over_error_types_and_lag_over_partitions():
    scrape = parse_metrics(VALIDATE_METRICS, "validate", at=10.0)
    assert scrape == Scrape(
        at=10.0,
        messages_in=1200,
        messages_out=1150,
        dlq=38,
        duplicates=12,
        lag=7,
        ready=True,
    )


def test_parsing_metrics_ignores_other_stages_and_leaves_missing_lag_unknown():
    scrape = parse_metrics(INGEST_METRICS, "ingest", at=0.0)
    assert (scrape.messages_in, scrape.messages_out, scrape.dlq) == (500, 490, 0)
    assert scrape.lag is None  # ingest consumes no topic
    assert scrape.ready is False


def test_parsing_metrics_of_a_stage_that_counted_nothing_yet_gives_zeros():
    scrape = parse_metrics("", "store", at=1.0)
    assert (scrape.messages_in, scrape.messages_out, scrape.lag, scrape.ready) == (0, 0, None, None)


def test_rates_are_counter_differences_over_the_time_between_two_scrapes():
    older = Scrape(at=100.0, messages_in=1000, messages_out=900)
    newer = Scrape(at=102.5, messages_in=1250, messages_out=1150)
    assert rates(older, newer) == Rates(in_per_s=100.0, out_per_s=100.0)


def test_rates_from_two_real_scrapes_of_metrics_text():
    first = parse_metrics(VALIDATE_METRICS, "validate", at=50.0)
    later_text = VALIDATE_METRICS.replace(
        'in_total{stage="validate"} 1200.0', 'in_total{stage="validate"} 1600.0'
    ).replace('out_total{stage="validate"} 1150.0', 'out_total{stage="validate"} 1350.0')
    second = parse_metrics(later_text, "validate", at=54.0)
    assert rates(first, second) == Rates(in_per_s=100.0, out_per_s=50.0)


def test_a_counter_that_went_down_means_the_service_restarted_and_counts_from_zero():
    assert per_second(older=5000, newer=300, seconds=3) == pytest.approx(100.0)


def test_rates_are_unknown_without_two_scrapes_or_without_time_between_them():
    only = Scrape(at=1.0, messages_in=10)
    assert rates(None, only) == Rates()
    assert rates(only, only) == Rates()


def test_the_rate_baseline_is_the_oldest_scrape_within_the_window():
    history = [Scrape(at=t) for t in (0.0, 1.0, 2.0, 3.0, 6.5, 7.0)]
    assert baseline(history, window_s=5.0) == Scrape(at=2.0)
    assert baseline(history[:1], window_s=5.0) is None
    # A gap longer than the window: the scrape before the newest still gives a rate.
    assert baseline([Scrape(at=0.0), Scrape(at=60.0)], window_s=5.0) == Scrape(at=0.0)


def test_the_rate_baseline_works_on_the_bounded_history_the_monitor_keeps():
    history = deque((Scrape(at=float(t)) for t in range(10)), maxlen=4)
    assert baseline(history, window_s=2.0) == Scrape(at=7.0)


def _state(**overrides) -> ViewState:
    counts = Counts(
        mqtt=TransportCounts(valid=480, late=5, bad=10, duplicates=4),
        http=TransportCounts(valid=470, late=6, bad=11, duplicates=6, failed=2),
        elapsed_s=10.0,
    )
    log_dir = run_view.REPO_ROOT / ".stack" / "logs"
    stages = [
        StageRow(
            name="ingest",
            metrics_url="http://127.0.0.1:8080/metrics",
            log_path=log_dir / "ingest.log",
            state="ready",
            rates=Rates(98.5, 96.0),
            latest=Scrape(at=1, messages_in=981, messages_out=960, dlq=11),
        ),
        StageRow(
            name="validate",
            metrics_url="http://127.0.0.1:8081/metrics",
            log_path=log_dir / "validate.log",
            state="ready",
            rates=Rates(96.0, 94.0),
            latest=Scrape(at=1, messages_in=960, messages_out=940, dlq=10, duplicates=10, lag=7),
        ),
        StageRow(
            name="enrich",
            metrics_url="http://127.0.0.1:8082/metrics",
            log_path=log_dir / "enrich.log",
            state="exited 1",
        ),
        StageRow(
            name="store",
            metrics_url="http://127.0.0.1:8083/metrics",
            log_path=log_dir / "store.log",
            state="not ready",
            latest=Scrape(at=1, messages_in=900, messages_out=900, lag=0),
        ),
    ]
    values: dict[str, Any] = {
        "elapsed_s": 12.0,
        "stages": stages,
        "db": DbStatus(rows=10_950, rows_at_start=10_000),
        "sim": SimStatus(counts, target_rate=100.0, devices=50),
        "log_dir": log_dir,
    }
    values.update(overrides)
    return ViewState(**values)


def _text(renderable) -> str:
    console = Console(file=io.StringIO(), width=160, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_view_shows_each_stage_with_rates_dlq_and_lag():
    text = _text(render_view(_state()))
    validate_line = next(line for line in text.splitlines() if "validate" in line)
    for cell in ("ready", "96.0", "94.0", "960", "940", "10", "7"):
        assert cell in validate_line
    ingest_line = next(line for line in text.splitlines() if line.strip().startswith("│ ingest"))
    assert "98.5" in ingest_line and "–" in ingest_line  # ingest has no lag
    enrich_line = next(line for line in text.splitlines() if "│ enrich" in line)
    assert "exited 1" in enrich_line


def test_the_view_shows_rows_the_simulator_counts_and_where_metrics_and_logs_are():
    text = _text(render_view(_state()))
    assert "10,950" in text and "+950 this run" in text
    assert "target 100/s" in text and "actual 98.1/s" in text  # 981 sent in 10 s
    total_line = next(line for line in text.splitlines() if "total" in line)
    for cell in ("981", "950", "11", "21", "10", "2"):
        assert cell in total_line
    for port in (8080, 8081, 8082, 8083):
        assert f"http://127.0.0.1:{port}/metrics" in text
    assert ".stack/logs/<stage>.log" in text


def test_the_view_without_the_simulator_or_database_says_what_is_unknown():
    text = _text(render_view(_state(sim=None, db=DbStatus(error="connection refused"))))
    assert "Simulator" not in text
    assert "Rows in sensor_readings: –" in text and "connection refused" in text


def test_the_status_line_for_a_pipe_holds_every_stage_on_one_line():
    line = status_line(_state())
    assert "\n" not in line
    assert "validate[ready] in 96.0/s out 94.0/s dlq 10 lag 7" in line
    assert "rows 10,950" in line and "sim sent 981" in line


def test_the_end_checks_set_what_was_sent_against_what_the_pipeline_counted():
    checks = {c.what: c for c in end_checks(_state())}
    rows = checks["valid readings sent -> rows added"]
    assert (rows.expected, rows.observed, rows.ok) == (950, 950, True)
    dlq = checks["bad readings sent -> DLQ records"]
    assert (dlq.expected, dlq.observed, dlq.ok) == (21, 21, True)
    dupes = checks["duplicates sent -> dropped by validate"]
    assert (dupes.expected, dupes.observed) == (10, 10)
    assert end_checks(_state(sim=None)) == []


def test_the_summary_says_how_each_service_ended_and_where_its_log_is():
    ended = [("ingest", "exit 0 in 0.4 s"), ("enrich", "killed after 20 s")]
    text = _text(render_summary(_state(phase="stopped"), ended))
    assert "exit 0 in 0.4 s" in text and "killed after 20 s" in text
    assert str(Path(".stack/logs/enrich.log")) in text
    assert "Sent and counted" in text


# --------------------------------------------------------------------------- start-up


class _Exited:
    """Stands in for a Popen whose process is gone."""

    returncode = 3

    def poll(self) -> int:
        return 3


def _services(tmp_path: Path) -> list[ServiceProcess]:
    return [
        ServiceProcess(name, f"services.{name}", tmp_path / f"{name}.log", port=port)
        for name, port in (
            ("ingest", 18080),
            ("validate", 18081),
        )
    ]


async def test_waiting_for_readiness_ends_when_every_service_answers_ready(tmp_path):
    answered = httpx.MockTransport(lambda request: httpx.Response(200, json={"ready": True}))
    seen: list[dict[str, str]] = []
    async with httpx.AsyncClient(transport=answered) as client:
        ready = await wait_all_ready(
            _services(tmp_path), client, asyncio.Event(), lambda s, _: seen.append(dict(s))
        )
    assert ready
    assert seen[-1] == {"ingest": "ready", "validate": "ready"}


async def test_a_service_not_ready_in_time_is_named_with_its_log_file_and_last_answer(tmp_path):
    def readyz(request: httpx.Request) -> httpx.Response:
        if request.url.port == 18080:
            return httpx.Response(200, json={"ready": True})
        return httpx.Response(503, json={"ready": False, "checks": {"kafka": False}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(readyz)) as client:
        with pytest.raises(NotReady) as caught:
            await wait_all_ready(
                _services(tmp_path), client, asyncio.Event(), lambda *_: None, timeout_s=0.3
            )
    message = str(caught.value)
    assert "validate is not ready after 0.3 s" in message
    assert '"kafka":false' in message
    assert str(tmp_path / "validate.log") in message


async def test_a_service_that_dies_while_starting_is_reported_at_once(tmp_path):
    services = _services(tmp_path)
    services[1].popen = _Exited()  # type: ignore[assignment]
    refused = httpx.MockTransport(lambda request: httpx.Response(503))
    async with httpx.AsyncClient(transport=refused) as client:
        with pytest.raises(ExitedEarly, match="validate exited with code 3 while starting"):
            await wait_all_ready(services, client, asyncio.Event(), lambda *_: None)


def test_the_parser_reads_the_sample_names_the_services_export():
    assert sample_name(metrics.MESSAGES_IN) == "pipeline_messages_in_total"
    assert sample_name(metrics.CONSUMER_LAG) == "pipeline_consumer_lag"


def test_without_a_terminal_the_display_prints_a_status_line_at_most_every_few_seconds():
    out = io.StringIO()
    console = Console(file=out, width=300, color_system=None)
    assert not console.is_terminal
    with Display(console, plain_every_s=60.0) as display:
        display.update(Startup({"ingest": "ready", "validate": "no answer"}, 1.5))
        display.update(_state())  # within the minute: not printed
    lines = out.getvalue().splitlines()
    assert lines == ["starting, 1.5 s: ingest[ready]  validate[no answer]"]
    with Display(console, plain_every_s=0.0) as display:
        display.update(_state())
    assert out.getvalue().splitlines()[-1] == status_line(_state())
