"""The Grafana provisioning of deploy/grafana: the dashboards refer only to provisioned data
sources, every PromQL expression passes promtool and selects only metrics the services export,
and the dashboards show what the issue asks for. The SQL runs against real data in
tests/integration/test_dashboards.py.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests import grafana
from tests.unit.test_alerts import (
    SERVER_SERIES,
    exported_metric_names,
    metric_names_in,
    promtool,
    rules,
)

PROMQL_VALUES = {"stage": ".*"}


def promql_queries() -> list[grafana.Query]:
    found = []
    for query in grafana.queries(grafana.PROMETHEUS_UID):
        text = query.text
        if query.where.startswith("variable "):
            text = grafana.label_values_metric(text)
        found.append(
            grafana.Query(
                query.dashboard,
                query.where,
                query.datasource_uid,
                grafana.expand_promql(text, interval="1m", values=PROMQL_VALUES),
            )
        )
    return found


def test_the_provisioned_datasources_are_prometheus_and_timescaledb_as_postgresql() -> None:
    sources = grafana.datasources()
    assert sources[grafana.PROMETHEUS_UID]["type"] == "prometheus"
    assert sources[grafana.PROMETHEUS_UID]["url"] == "http://prometheus:9090"
    timescale = sources[grafana.TIMESCALEDB_UID]
    assert timescale["type"] == "grafana-postgresql-datasource"
    assert timescale["jsonData"]["timescaledb"] is True
    assert timescale["jsonData"]["database"] == "sensors"


def test_the_dashboard_provider_loads_the_folder_compose_mounts() -> None:
    provider_file = grafana.GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
    [provider] = yaml.safe_load(provider_file.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards"


def test_every_panel_and_variable_uses_a_provisioned_datasource() -> None:
    provisioned = set(grafana.datasources())
    for name, dashboard in grafana.dashboards().items():
        for panel in grafana.panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in provisioned, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in provisioned, (name, panel["title"])
        for variable in grafana.variables(dashboard):
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] in provisioned, (name, variable["name"])


def test_dashboards_have_unique_uids_and_panel_ids() -> None:
    uids = [dashboard["uid"] for dashboard in grafana.dashboards().values()]
    assert sorted(uids) == ["pipeline-health", "sensor-data"]
    for name, dashboard in grafana.dashboards().items():
        ids = [panel["id"] for panel in grafana.panels(dashboard)]
        assert len(ids) == len(set(ids)), name
        assert all(panel["title"] for panel in grafana.panels(dashboard)), name


def test_every_promql_expression_of_the_dashboards_passes_promtool(tmp_path: Path) -> None:
    queries = promql_queries()
    assert len(queries) >= 20
    # promtool checks expressions inside rule files: each becomes a recording rule.
    rule_file = tmp_path / "dashboards.yml"
    rule_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard-queries",
                        "rules": [
                            {"record": f"dashboard:query_{index}:check", "expr": query.text}
                            for index, query in enumerate(queries)
                        ],
                    }
                ]
            }
        )
    )
    result = promtool("check", "rules", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_dashboard_promql_selects_only_metrics_the_services_export() -> None:
    known = exported_metric_names() | SERVER_SERIES
    known |= {rule["record"] for rule in rules() if "record" in rule}
    for query in promql_queries():
        used = metric_names_in(query.text)
        assert used, query
        assert used - known == set(), query


def test_the_health_dashboard_shows_every_metric_family_of_the_issue() -> None:
    text = " ".join(query.text for query in promql_queries())
    for family in (
        "pipeline_messages_in_total",
        "pipeline_messages_out_total",
        "pipeline_processing_seconds_bucket",
        "pipeline_end_to_end_seconds_bucket",
        "pipeline_errors_total",
        "pipeline_dlq_records_total",
        "pipeline_duplicates_dropped_total",
        "pipeline_retries_total",
        "pipeline_consumer_lag",
        "pipeline_batch_size_sum",
        "pipeline_db_write_seconds_bucket",
        "pipeline_ingest_requests_total",
        "pipeline_ready",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "up",
    ):
        assert family in text, family


def test_the_sensor_dashboard_buckets_with_time_bucket_and_shows_what_the_issue_asks() -> None:
    dashboard = grafana.dashboards()["sensor-data.json"]
    sql = {
        panel["title"]: panel["targets"][0]["rawSql"]
        for panel in grafana.panels(dashboard)
        if panel.get("targets")
    }
    time_series = [panel for panel in grafana.panels(dashboard) if panel["type"] == "timeseries"]
    assert time_series
    for panel in time_series:
        assert "time_bucket('$__interval', time)" in panel["targets"][0]["rawSql"], panel["title"]
    assert "heat_index" in sql["Heat index and dew point"]
    assert "dew_point" in sql["Heat index and dew point"]
    [geomap] = [panel for panel in grafana.panels(dashboard) if panel["type"] == "geomap"]
    assert {"latitude", "longitude"} <= set(
        geomap["targets"][0]["rawSql"].replace(",", " ").split()
    )
    assert "$silent_after" in sql["Devices that went silent"]
    assert {variable["name"] for variable in grafana.variables(dashboard)} == {
        "site",
        "device",
        "silent_after",
    }
