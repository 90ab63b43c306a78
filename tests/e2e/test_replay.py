"""Dead letters sent back once their cause is fixed: they land once, however often replayed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson

from tests.conftest import Names
from tests.e2e.processes import REPO_ROOT, Chain
from tests.integration.kafka_helpers import produce, read_topic, settle_and_read


async def count_rows(db: asyncpg.Connection, expected: int, timeout_s: float = 60) -> int:
    async with asyncio.timeout(timeout_s):
        while (n := await db.fetchval("SELECT count(*) FROM sensor_readings")) < expected:
            await asyncio.sleep(0.25)
    return int(n)


def run_replay(topics: Names, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tools.replay", *args],
        cwd=REPO_ROOT,
        env=os.environ | topics.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


async def test_replayed_dead_letters_are_stored_once_after_the_rules_are_fixed(
    topics: Names, schema: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text("ranges:\n  temperature: {min: -50, max: 40}\n")
    chain = Chain(topics.run_id, topics.env(), tmp_path)
    t0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    readings = [
        {
            "device_id": f"hot-{i % 2}",
            "timestamp": (t0 + timedelta(minutes=i)).isoformat(),
            "temperature": 41 + i,
            "humidity": 30,
        }
        for i in range(5)
    ] + [{"device_id": "mild", "timestamp": t0.isoformat(), "temperature": 20}]
    try:
        chain.start("validate", RULES_FILE=str(strict))
        chain.start_all({"ingest": "ingest", "enrich": "enrich", "store": "store"})
        chain.services["validate"].wait_ready()
        async with httpx.AsyncClient(timeout=30) as http:
            body = b"\n".join(orjson.dumps(r) for r in readings)
            answer = await http.post(f"{chain.ingest_url}/v1/readings", content=body)
        assert answer.status_code == 202 and answer.json()["accepted"] == 6
        assert await count_rows(db, 1) == 1
        dead = await read_topic(topics.dlq, 5)
        assert {orjson.loads(d.value)["error_type"] for d in dead} == {"RuleViolation"}

        # The cause is fixed: validate runs with the default rules (temperature up to 100).
        assert chain.services["validate"].terminate() == 0
        chain.start("validate").wait_ready()
        assert '"records":5' in run_replay(topics, "--error-type", "RuleViolation", "--dry-run")
        assert await count_rows(db, 1) == 1  # a dry run sends nothing
        run_replay(topics, "--error-type", "RuleViolation")
        assert await count_rows(db, 6) == 6
        run_replay(topics, "--error-type", "RuleViolation", "--stage", "validate")
        await asyncio.sleep(3)
        assert await db.fetchval("SELECT count(*) FROM sensor_readings") == 6
        sources = await db.fetch("SELECT source, count(*) AS n FROM sensor_readings GROUP BY 1")
        assert {r["source"]: r["n"] for r in sources} == {"http": 1, "replay": 5}
        assert len(await settle_and_read(topics.dlq)) == 5  # replays were not refused again
    finally:
        codes = chain.stop_all()
        assert codes == dict.fromkeys(codes, 0)


async def test_enrich_and_store_dead_letters_are_found_by_device_and_carry_the_trace_id(
    topics: Names, schema: str, tmp_path: Path
) -> None:
    # Records no stage before wrote (a foreign producer, or a bug upstream), keyed and traced
    # as validate and enrich pass records on.
    chain = Chain(topics.run_id, topics.env(), tmp_path)
    traced = [("trace_id", b"0123456789abcdef0123456789abcdef")]
    try:
        chain.start_all({"enrich": "enrich", "store": "store"})
        await produce(topics.validated, [b'{"device_id": "foreign-1"'], b"foreign-1", traced)
        await produce(topics.enriched, [b'{"device_id": "foreign-1"}'], b"foreign-1", traced)
        letters = [orjson.loads(d.value) for d in await read_topic(topics.dlq, 2)]
        assert sorted((d["processing_stage"], d["error_type"]) for d in letters) == [
            ("enrich", "MalformedValidatedRecord"),
            ("store", "MalformedEnrichedRecord"),
        ]
        assert {(d["trace_id"], d["device_id"]) for d in letters} == {
            ("0123456789abcdef0123456789abcdef", "foreign-1")
        }
        assert '"records":2' in run_replay(topics, "--device", "foreign-1", "--dry-run")
    finally:
        codes = chain.stop_all()
        assert codes == dict.fromkeys(codes, 0)
