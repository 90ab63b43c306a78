"""Every SQL query of the Grafana dashboards, variables' included, run against TimescaleDB
filled by the real chain (the four services as processes) and expanded as Grafana expands it:
each returns rows, for all devices, for one site and for one device.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests import grafana
from tests.conftest import Names, connect_to_schema
from tests.e2e.processes import Chain, drop_schema, prepare_topics_and_schema

pytestmark = pytest.mark.integration

BERLIN = {"latitude": 52.52, "longitude": 13.40}
HAMBURG = {"latitude": 53.55, "longitude": 9.99}
MUNICH = {"latitude": 48.14, "longitude": 11.58}
# device -> (site in the registry or None, location, how long ago its last reading was)
DEVICES: dict[str, tuple[str | None, dict[str, float], timedelta]] = {
    "dash-a1": ("berlin-roof", BERLIN, timedelta(minutes=1)),
    "dash-a2": ("berlin-roof", BERLIN, timedelta(minutes=2)),
    "dash-s1": ("berlin-roof", BERLIN, timedelta(hours=2)),  # went silent
    "dash-b1": ("hamburg-port", HAMBURG, timedelta(minutes=1)),
    "dash-u1": (None, MUNICH, timedelta(minutes=3)),  # not in the registry
}
HISTORY = timedelta(hours=3)
EVERY = timedelta(minutes=10)


@dataclass(frozen=True)
class Data:
    names: Names
    rows: int
    start: datetime
    end: datetime


def readings(now: datetime) -> list[dict[str, Any]]:
    found = []
    for index, (device, (_, location, last)) in enumerate(DEVICES.items()):
        moment, step = now - last, 0
        while moment > now - HISTORY:
            found.append(
                {
                    "device_id": device,
                    "timestamp": moment.isoformat(),
                    "temperature": 24.0 + index + (step % 6),
                    "humidity": 40.0 + 5 * (step % 5),
                    "pressure": 1005.0 + index,
                    "location": location,
                }
            )
            moment, step = moment - EVERY, step + 1
    return found


async def fill(names: Names, chain: Chain, now: datetime) -> int:
    conn = await connect_to_schema(names.schema())
    try:
        await conn.executemany(
            "INSERT INTO devices (device_id, model, site, owner) VALUES ($1, 'TH-200', $2, 'ops')",
            [(device, site) for device, (site, _, _) in DEVICES.items() if site],
        )
        await asyncio.sleep(1.5)  # one registry refresh of enrich
        sent = readings(now)
        async with httpx.AsyncClient(timeout=30) as http:
            body = b"\n".join(orjson.dumps(r) for r in sent)
            answer = await http.post(f"{chain.ingest_url}/v1/readings", content=body)
        assert answer.status_code == 202 and answer.json()["accepted"] == len(sent)
        async with asyncio.timeout(60):
            while (n := await conn.fetchval("SELECT count(*) FROM sensor_readings")) < len(sent):
                await asyncio.sleep(0.25)
        return int(n)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def data(stack: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    names = Names(uuid.uuid4().hex[:12])
    asyncio.run(prepare_topics_and_schema(names))
    chain = Chain(names.run_id, names.env(), tmp_path_factory.mktemp("dashboards"))
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        chain.start_all({stage: stage for stage in ("ingest", "validate", "enrich", "store")})
        rows = asyncio.run(fill(names, chain, now))
    finally:
        chain.stop_all()
    try:
        # Grafana's default range of the sensor dashboard: the last 6 hours.
        yield Data(names, rows, now - timedelta(hours=6), now)
    finally:
        asyncio.run(drop_schema(names))


@pytest.fixture
async def db(data: Data) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_to_schema(data.names.schema())
    try:
        yield conn
    finally:
        await conn.close()


def sql_queries() -> list[grafana.Query]:
    return grafana.queries(grafana.TIMESCALEDB_UID)


def sensor_dashboard() -> dict[str, Any]:
    return grafana.dashboards()["sensor-data.json"]


def multi_value_variables() -> frozenset[str]:
    return frozenset(
        variable["name"]
        for variable in grafana.variables(sensor_dashboard())
        if variable.get("multi") or variable.get("includeAll")
    )


async def run_query(db: asyncpg.Connection, data: Data, text: str, **values: Any) -> list[Any]:
    sql = grafana.expand_sql(
        text,
        start=data.start,
        end=data.end,
        interval=values.pop("interval"),
        values=values,
        multi=multi_value_variables(),
    )
    return list(await db.fetch(sql))


async def variable_options(
    db: asyncpg.Connection, data: Data, name: str, **values: Any
) -> list[str]:
    """What Grafana offers for variable `name` (and so what "All" stands for)."""
    [variable] = [v for v in grafana.variables(sensor_dashboard()) if v["name"] == name]
    rows = await run_query(db, data, grafana.variable_query(variable), interval="1m", **values)
    return [row[0] for row in rows]


def default_of(name: str) -> str:
    [variable] = [v for v in grafana.variables(sensor_dashboard()) if v["name"] == name]
    value = variable["current"]["value"]
    assert isinstance(value, str)
    return value


async def scenario(db: asyncpg.Connection, data: Data, which: str) -> dict[str, Any]:
    """Variable values as Grafana would set them: All, one site, or one device."""
    sites = await variable_options(db, data, "site")
    if which == "one site":
        sites = ["berlin-roof"]
    devices = await variable_options(db, data, "device", site=sites)
    if which == "one device":
        devices = ["dash-s1"]
    interval = {"all": "5m", "one site": "1m", "one device": "1h"}[which]
    return {
        "site": sites,
        "device": devices,
        "silent_after": default_of("silent_after"),
        "interval": interval,
    }


def test_the_sensor_dashboard_has_sql_for_every_panel_and_variable() -> None:
    wheres = {query.where for query in sql_queries()}
    assert {"variable site", "variable device"} <= wheres
    assert len(sql_queries()) >= 12


async def test_the_variables_offer_the_sites_and_devices_the_chain_stored(
    db: asyncpg.Connection, data: Data
) -> None:
    assert data.rows == len(readings(data.end))
    assert await variable_options(db, data, "site") == [
        "berlin-roof",
        "hamburg-port",
        "unregistered",
    ]
    assert await variable_options(db, data, "device", site=["berlin-roof"]) == [
        "dash-a1",
        "dash-a2",
        "dash-s1",
    ]


@pytest.mark.parametrize("which", ["all", "one site", "one device"])
async def test_every_dashboard_sql_query_returns_rows(
    db: asyncpg.Connection, data: Data, which: str
) -> None:
    values = await scenario(db, data, which)
    empty, failed = [], []
    for query in sql_queries():
        try:
            rows = await run_query(db, data, query.text, **values)
        except asyncpg.PostgresError as error:
            failed.append(f"{query}: {error!r}")
            continue
        if not rows:
            empty.append(str(query))
    assert failed == [] and empty == [], {"failed": failed, "empty": empty}


def panel_sql(title: str) -> str:
    [panel] = [p for p in grafana.panels(sensor_dashboard()) if p["title"] == title]
    text = panel["targets"][0]["rawSql"]
    assert isinstance(text, str)
    return text


async def test_the_silent_devices_panel_lists_only_the_device_that_stopped_sending(
    db: asyncpg.Connection, data: Data
) -> None:
    values = await scenario(db, data, "all")
    rows = await run_query(db, data, panel_sql("Devices that went silent"), **values)
    assert [(r["device_id"], r["site"]) for r in rows] == [("dash-s1", "berlin-roof")]
    assert 2 * 3600 - 60 <= rows[0]["silent_for"] <= 2 * 3600 + 60


async def test_the_map_places_every_device_at_its_latest_location(
    db: asyncpg.Connection, data: Data
) -> None:
    values = await scenario(db, data, "all")
    rows = await run_query(db, data, panel_sql("Devices by location"), **values)
    placed = {r["device_id"]: (r["latitude"], r["longitude"], r["site"]) for r in rows}
    assert placed == {
        device: (location["latitude"], location["longitude"], site or "unregistered")
        for device, (site, location, _) in DEVICES.items()
    }


async def test_heat_index_and_dew_point_come_bucketed_from_the_enriched_rows(
    db: asyncpg.Connection, data: Data
) -> None:
    values = await scenario(db, data, "one device") | {"interval": "30m"}
    rows = await run_query(db, data, panel_sql("Heat index and dew point"), **values)
    # dash-s1 sent every 10 minutes for an hour: 30-minute buckets hold two or three readings.
    assert 2 <= len(rows) <= 4
    for row in rows:
        assert row["heat index"] is not None and row["dew point"] is not None
        assert row["dew point"] < row["temperature"]
