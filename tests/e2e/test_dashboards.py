"""Every PromQL query of the Grafana dashboards, run on a real Prometheus server that scrapes the
four services: each answers without error and finds data, under the compose scrape config of
deploy/prometheus/prometheus.yml and under a Kubernetes-style pod scrape (another job name, no
`stage` target label). The alert and recording rules of deploy/prometheus/rules are loaded by the
same server and must evaluate without error.

The server is Debian's `prometheus` package (`make tools` installs it); without it the test
fails, never skips. The SQL of the dashboards runs in tests/integration/test_dashboards.py.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests import grafana
from tests.conftest import Names
from tests.e2e.processes import Chain, drop_schema, prepare_topics_and_schema
from tests.unit.test_alerts import PROMETHEUS_DIR, RULE_FILES, rules

pytestmark = pytest.mark.e2e

STAGES = ("ingest", "validate", "enrich", "store")
# What Grafana would put for $__rate_interval and $__interval on a short time range here: the
# readings of the test are sent well within it, so rates are not zero.
INTERVAL = "1m"
# Each run sends 6 valid readings, one the validate stage rejects and a broken NDJSON line
# ingest rejects, so both stages have DLQ and error series.
VALID_PER_RUN = 6

# Queries that may find nothing on the data of this test, and why. Empty for now: the services
# create every series the panels select at start-up (libs/common/metrics.initialise), and the
# test's bad readings create the DLQ and error series (which have no known labels up front).
MAY_BE_EMPTY: dict[str, str] = {}

# Alerts that may be pending or firing on this test's data, and why; any other one is a rule
# that misreads a healthy chain (as PipelineStageDown did when it selected job="sensor-pipeline").
MAY_ALERT = {
    "PipelineHighErrorRate": "1 of the 8 records ingest takes in per run, and 1 of the 7 "
    "validate takes in, are bad on purpose: over its 5 %",
}


@pytest.fixture(scope="module")
def chain(stack: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    prometheus_binary()  # before anything starts
    run_id = uuid.uuid4().hex[:12]
    names = Names(run_id)
    asyncio.run(prepare_topics_and_schema(names))
    services = Chain(run_id, names.env(), tmp_path_factory.mktemp("dashboards"))
    try:
        services.start_all({stage: stage for stage in STAGES})
        yield services
    finally:
        codes = services.stop_all()
        asyncio.run(drop_schema(names))
    assert codes == dict.fromkeys(STAGES, 0)


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "the prometheus server is missing: run `make tools` (Debian's prometheus package)",
            pytrace=False,
        )
    return binary


def compose_scrape(ports: dict[str, int]) -> dict[str, Any]:
    """The sensor-pipeline job of deploy/prometheus/prometheus.yml, aimed at the test's ports."""
    shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    [job] = [j for j in shipped["scrape_configs"] if j["job_name"] == "sensor-pipeline"]
    for group in job["static_configs"]:
        group["targets"] = [f"127.0.0.1:{ports[group['labels']['stage']]}"]
    return dict(job)


def pod_scrape(ports: dict[str, int]) -> dict[str, Any]:
    """What a kubernetes-pods scrape gives: its own job name, no stage label on the targets."""
    targets = [f"127.0.0.1:{ports[stage]}" for stage in STAGES]
    return {"job_name": "kubernetes-pods", "static_configs": [{"targets": targets}]}


SCRAPES = {"compose": compose_scrape, "kubernetes-pods": pod_scrape}


class Prometheus:
    """A private Prometheus server: scrapes every second, evaluates the pipeline's rules."""

    def __init__(self, scrape: dict[str, Any], port: int, directory: Path) -> None:
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(path) for path in RULE_FILES],
            "scrape_configs": [scrape],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.log_path = directory / "prometheus.log"
        self.url = f"http://127.0.0.1:{port}"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def wait_until(self, what: str, condition: Any, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"prometheus exited {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if condition():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"prometheus: not {what} after {timeout_s}s:\n{self.log_tail()}")

    def query(self, expr: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.http.get("/api/v1/query", params={"query": expr}).json()
        return answer

    def value(self, expr: str) -> float:
        """The single value `expr` gives, or -1 while it gives none."""
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else -1.0

    def rule_states(self) -> list[dict[str, Any]]:
        groups = self.http.get("/api/v1/rules").json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def send_readings(chain: Chain) -> None:
    stamp = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    run = uuid.uuid4().hex[:6]

    def reading(index: int, **fields: Any) -> dict[str, Any]:
        return {
            "device_id": f"dash-{run}-{index % 3}",
            "timestamp": (stamp - timedelta(seconds=index)).isoformat(),
            "temperature": 21.5,
            "humidity": 40.0,
            "pressure": 1010.0,
            "location": {"latitude": 52.52, "longitude": 13.40},
        } | fields

    array = orjson.dumps(
        [reading(i) for i in range(VALID_PER_RUN - 1)] + [reading(99, temperature=150)]
    )
    ndjson = orjson.dumps(reading(VALID_PER_RUN - 1)) + b"\n{broken"
    url = f"{chain.ingest_url}/v1/readings"
    with httpx.Client(timeout=30) as http:
        assert [http.post(url, content=body).status_code for body in (array, ndjson)] == [202, 202]


def expanded(text: str, stage: str) -> str:
    return grafana.expand_promql(text, interval=INTERVAL, values={"stage": stage})


@pytest.mark.parametrize("scrape", sorted(SCRAPES))
def test_every_dashboard_query_finds_data_on_a_prometheus_scraping_the_services(
    chain: Chain, scrape: str, free_port: int, tmp_path: Path
) -> None:
    ports = {stage: chain.services[stage].port for stage in STAGES}
    prometheus = Prometheus(SCRAPES[scrape](ports), free_port, tmp_path)
    try:
        feed(prometheus, chain)
        problems = query_problems(prometheus) + rule_problems(prometheus)
    finally:
        prometheus.stop()
    assert problems == [], "\n".join(problems)


def feed(prometheus: Prometheus, chain: Chain) -> None:
    """Wait until Prometheus scrapes the services, send readings, wait until it counted them."""
    prometheus.wait_until("ready", lambda: prometheus.http.get("/-/ready").status_code == 200)
    # Two good scrapes of every target before the readings: their counters' rise shows in rate().
    prometheus.wait_until(
        "scraping every service",
        lambda: prometheus.value("count(sum_over_time(up[1m]) >= 2)") == 4,
    )
    stored = "sum(pipeline_messages_out_total{stage='store'})"
    before = prometheus.value(stored)
    send_readings(chain)
    prometheus.wait_until(
        "seeing the readings stored", lambda: prometheus.value(stored) == before + VALID_PER_RUN
    )
    prometheus.wait_until(
        "evaluating every rule",
        lambda: all(r["health"] != "unknown" for r in prometheus.rule_states()),
    )
    time.sleep(2)  # two more evaluations (1 s apart) of the rules, on the counted readings


def query_problems(prometheus: Prometheus) -> list[str]:
    """What is wrong with the answers to the dashboards' queries: errors, no data, a $stage
    that does not select its stage."""
    problems: list[str] = []
    queries = grafana.queries(grafana.PROMETHEUS_UID)
    assert len(queries) >= 20
    for query in queries:
        text = query.text
        if query.where.startswith("variable "):
            text = grafana.label_values_metric(text)
        answer = prometheus.query(expanded(text, ".*"))
        if answer["status"] != "success":
            problems.append(f"{query}: {answer.get('error')}")
            continue
        result = answer["data"]["result"]
        if not result:
            if str(query) not in MAY_BE_EMPTY:
                problems.append(f"{query}: no data for {expanded(text, '.*')}")
            continue
        if "$stage" in text:
            problems += stage_filter_problems(prometheus, query, text, result)
    [variable] = [q for q in queries if q.where == "variable stage"]
    found = prometheus.query(grafana.label_values_metric(variable.text))["data"]["result"]
    if {series["metric"].get("stage") for series in found} != set(STAGES):
        problems.append(f"{variable}: offers {found}")
    return problems


def rule_problems(prometheus: Prometheus) -> list[str]:
    """Rules that failed to evaluate, recorded series that are empty, unexpected alerts."""
    problems: list[str] = []
    states = prometheus.rule_states()
    if len(states) != len(rules()):
        problems.append(f"{len(states)} rules loaded of the {len(rules())} in {RULE_FILES}")
    problems += [
        f"rule {r['name']}: {r['health']} {r.get('lastError')}"
        for r in states
        if r["health"] != "ok"
    ]
    for rule in rules():
        if "record" in rule and not prometheus.query(rule["record"])["data"]["result"]:
            problems.append(f"recording rule {rule['record']}: no data")
    alerts = prometheus.query("ALERTS")["data"]["result"]
    problems += [
        f"alert on a healthy chain: {alert['metric']}"
        for alert in alerts
        if alert["metric"]["alertname"] not in MAY_ALERT
    ]
    return problems


def stage_filter_problems(
    prometheus: Prometheus, query: grafana.Query, text: str, result: list[dict[str, Any]]
) -> list[str]:
    """With $stage set to one stage, the query finds that stage's series and only those."""
    problems = []
    stages = {series["metric"].get("stage") for series in result}
    if None in stages:
        return [f"{query}: a series without a stage label: {result}"]
    for stage in sorted(stages):
        picked = prometheus.query(expanded(text, stage))["data"]["result"]
        if not picked or {series["metric"]["stage"] for series in picked} != {stage}:
            problems.append(f"{query}: $stage={stage} finds {picked}")
    return problems
