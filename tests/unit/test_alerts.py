"""The Prometheus configuration and alert rules of deploy/prometheus: valid for promtool, each
alert fires and stays quiet in its unit tests, and every metric they use is one the services
export.

promtool is Debian's `prometheus` package (deploy/prometheus/ensure-promtool.sh installs it);
without it these tests fail, never skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import libs.common.metrics  # noqa: F401  (registers the pipeline's metrics in REGISTRY)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
REQUIRED_ALERTS = {
    "PipelineHighErrorRate",
    "PipelineHighProcessingLatency",
    "PipelineConsumerLagGrowing",
    "PipelineDlqSpike",
    "PipelineStageDown",
    "PipelineDatabaseWritesFailing",
    "PipelineDeviceSilent",
}
# Series a Prometheus server makes itself, not the services.
SERVER_SERIES = {"up"}
PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "Inf", "NaN"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is missing: run `bash deploy/prometheus/ensure-promtool.sh` "
            "(Debian's prometheus package)",
            pytrace=False,
        )
    return subprocess.run(
        [binary, *map(str, args)], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )


def rules() -> list[dict[str, Any]]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def exported_metric_names() -> set[str]:
    """Every sample name the services' registry exposes, process_* and the like included."""
    names = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)
        kind_suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("_count", "_sum", "_created"),
        }.get(metric.type, ())
        names.update(metric.name + suffix for suffix in kind_suffixes)
    return names


def metric_names_in(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects: strings, label matchers, ranges and
    grouping clauses removed, what is left that is not a function or a keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return set(names) - PROMQL_KEYWORDS


def test_promtool_accepts_every_rule_file() -> None:
    assert RULE_FILES
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_config_and_the_rule_files_it_loads() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


def test_every_alert_fires_and_stays_quiet_in_the_promtool_unit_tests() -> None:
    assert RULE_TESTS
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_has_a_test_where_it_fires_and_one_where_it_does_not() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts()) == fired == quiet


def test_the_alerts_of_the_issue_are_all_there() -> None:
    assert REQUIRED_ALERTS <= set(alerts())


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"].split()) >= 10, name


def test_the_original_designs_thresholds_are_kept() -> None:
    error_rate, latency = (
        alerts()["PipelineHighErrorRate"],
        alerts()["PipelineHighProcessingLatency"],
    )
    assert (error_rate["expr"].split()[-2:], error_rate["for"]) == ([">", "0.05"], "5m")
    assert (latency["expr"].split()[-2:], latency["for"]) == ([">", "30"], "10m")
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    assert "histogram_quantile(0.95" in recorded[latency["expr"].split()[0]]


def test_rules_use_only_metrics_the_services_export_or_rules_record() -> None:
    known = exported_metric_names() | SERVER_SERIES
    known |= {rule["record"] for rule in rules() if "record" in rule}
    used = set().union(*(metric_names_in(rule["expr"]) for rule in rules()))
    assert used, "no metric names found: the name extraction is broken"
    assert used - known == set()
