"""The Grafana provisioning of deploy/grafana: the dashboards can be imported into any Grafana
(their data sources are variables whose defaults are the provisioned ones, and no query depends
on the scrape job's name), every PromQL expression passes promtool and selects only metrics the
services export, and the dashboards show what the issue asks for. The SQL runs against real
data in tests/integration/test_dashboards.py, the PromQL on a real Prometheus server in
tests/e2e/test_dashboards.py.
"""

from __future__ import annotations

import re
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


def test_dashboards_are_importable_their_datasources_are_variables_set_to_provisioned_ones() -> (
    None
):
    # A fixed uid would find nothing in a Grafana whose data sources have other uids; a datasource
    # variable takes the provisioned one here and any data source of its type elsewhere.
    provisioned = grafana.datasources()
    for name, dashboard in grafana.dashboards().items():
        assert dashboard.get("id") is None, name  # an id would overwrite another dashboard
        sources = grafana.datasource_variables(dashboard)
        assert sources, name
        for variable in sources.values():
            default = variable["current"]["value"]
            assert provisioned[default]["type"] == variable["query"], (name, variable["name"])
        references = list(grafana.datasource_references(dashboard))
        assert len(references) >= 10, name
        for where, reference in references:
            # A bare string is a data source's name: as fixed as a uid.
            assert isinstance(reference, dict), (name, where, reference)
            match = grafana.DATASOURCE_REFERENCE.fullmatch(reference.get("uid", ""))
            assert match and match.group(1) in sources, (name, where, reference)
            assert sources[match.group(1)]["query"] == reference["type"], (name, where, reference)
        for panel in grafana.panels(dashboard):
            if panel["type"] != "row":
                assert panel["targets"], (name, panel["title"])
                assert all("datasource" in target for target in panel["targets"]), panel["title"]


def test_no_dashboard_query_depends_on_the_scrape_job_s_name() -> None:
    # Kubernetes' pod scrape names the job after itself (kubernetes-pods), compose's
    # prometheus.yml sensor-pipeline: the panels select by the services' own stage label.
    for query in promql_queries():
        assert not re.search(r"\bjob\s*(=|!=|=~|!~)", query.text), query


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
        "datasource",
        "site",
        "device",
        "silent_after",
    }
