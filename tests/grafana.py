"""The Grafana dashboards of deploy/grafana, read as tests need them: every query with the panel
it belongs to, and SQL and PromQL expanded the way Grafana expands them before it runs them.

Only the macros and variables the dashboards use are known here; `expand_sql` and
`expand_promql` refuse a text with anything left to expand, so a dashboard that starts using
another one fails its tests instead of being run half-expanded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yml"

PROMETHEUS_UID = "prometheus"
TIMESCALEDB_UID = "timescaledb"

# How a panel, target or variable names its data source so that the dashboard can be imported
# into any Grafana: `${name}` of a datasource variable of the dashboard, whose default (its
# `current` value) is the uid provisioned by provisioning/datasources/datasources.yml.
DATASOURCE_REFERENCE = re.compile(r"\$\{(\w+)\}")

# What a variable expands to in Grafana's SQL data sources: a multi-value (or "All") variable as
# a comma-separated list of quoted literals, a single-value one as its text.
VariableValue = str | Sequence[str]


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # the panel's title, or "variable <name>"
    datasource_uid: str
    text: str

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}"


def dashboards() -> dict[str, dict[str, Any]]:
    """Each dashboard JSON by file name."""
    return {
        path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def datasources() -> dict[str, dict[str, Any]]:
    """The provisioned data sources by uid."""
    provisioned = yaml.safe_load(DATASOURCES_FILE.read_text())
    return {source["uid"]: source for source in provisioned["datasources"]}


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    variables_: list[dict[str, Any]] = dashboard.get("templating", {}).get("list", [])
    return variables_


def datasource_variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's variables of type datasource, by name."""
    return {v["name"]: v for v in variables(dashboard) if v.get("type") == "datasource"}


def datasource_references(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every `datasource` value anywhere in a dashboard's JSON, with the path to it."""
    if isinstance(node, dict):
        if "datasource" in node:
            yield where, node["datasource"]
        for key, value in node.items():
            yield from datasource_references(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from datasource_references(value, f"{where}/{index}")


def queries(datasource_uid: str) -> list[Query]:
    """Every query of every dashboard that runs on `datasource_uid` (with the datasource variables
    at their defaults), variables' included."""
    found: list[Query] = []
    for name, dashboard in dashboards().items():
        sources = datasource_variables(dashboard)
        for variable in variables(dashboard):
            runs_on = _default_uid(variable, sources)
            if variable.get("type") == "query" and runs_on == datasource_uid:
                found.append(
                    Query(
                        name,
                        f"variable {variable['name']}",
                        datasource_uid,
                        variable_query(variable),
                    )
                )
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                uid = _default_uid(target, sources) or _default_uid(panel, sources)
                if uid == datasource_uid:
                    text = target.get("rawSql") or target.get("expr") or ""
                    found.append(Query(name, f"{panel['title']} [{target['refId']}]", uid, text))
    return found


def variable_query(variable: Mapping[str, Any]) -> str:
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    assert isinstance(text, str)
    return text


def _default_uid(
    element: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]]
) -> str | None:
    """The uid `element` runs on: a `${name}` reference resolved to the variable's default."""
    source = element.get("datasource")
    if not isinstance(source, dict):
        return None
    uid = source.get("uid")
    if not isinstance(uid, str):
        return None
    reference = DATASOURCE_REFERENCE.fullmatch(uid)
    if reference and reference.group(1) in sources:
        default = sources[reference.group(1)].get("current", {}).get("value")
        return default if isinstance(default, str) else None
    return uid


# --- SQL (Grafana's PostgreSQL data source) -----------------------------------------------------


def _timestamp(moment: datetime) -> str:
    return f"'{moment.strftime('%Y-%m-%dT%H:%M:%SZ')}'"


def _sql_value(value: VariableValue, multi: bool) -> str:
    if isinstance(value, str) and not multi:
        return value
    values = [value] if isinstance(value, str) else list(value)
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def expand_sql(
    text: str,
    *,
    start: datetime,
    end: datetime,
    interval: str,
    values: Mapping[str, VariableValue],
    multi: frozenset[str] = frozenset(),
) -> str:
    """`text` as Grafana sends it to PostgreSQL for this time range (UTC), interval and variables.

    `multi` names the multi-value / include-All variables, whose values Grafana quotes.
    """
    expanded = re.sub(
        r"\$__timeFilter\(\s*([\w.\"]+)\s*\)",
        lambda m: f"{m.group(1)} BETWEEN {_timestamp(start)} AND {_timestamp(end)}",
        text,
    )
    expanded = expanded.replace("$__timeFrom()", _timestamp(start))
    expanded = expanded.replace("$__timeTo()", _timestamp(end))
    expanded = expanded.replace("$__interval", interval)
    # Longest names first, so $device_id would not be taken for $device.
    for name in sorted(values, key=len, reverse=True):
        value = _sql_value(values[name], name in multi)
        expanded = expanded.replace("${" + name + "}", value).replace("$" + name, value)
    leftover = re.findall(r"\$\{?\w+", expanded)
    assert not leftover, f"not expanded: {leftover} in {text!r}"
    return expanded


# --- PromQL ---------------------------------------------------------------------------------------


def expand_promql(text: str, *, interval: str, values: Mapping[str, str]) -> str:
    """`text` with Grafana's interval variables and the dashboard's variables filled in."""
    expanded = text.replace("$__rate_interval", interval).replace("$__interval", interval)
    for name in sorted(values, key=len, reverse=True):
        expanded = expanded.replace("${" + name + "}", values[name]).replace(
            "$" + name, values[name]
        )
    leftover = re.findall(r"\$\{?\w+", expanded)
    assert not leftover, f"not expanded: {leftover} in {text!r}"
    return expanded


def label_values_metric(query: str) -> str:
    """The selector of a `label_values(selector, label)` variable query (Grafana's, not PromQL)."""
    match = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", query)
    assert match, f"not a label_values() query: {query!r}"
    return match.group(1)
