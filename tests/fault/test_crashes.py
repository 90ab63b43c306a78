"""Crash anywhere: each stage killed with SIGKILL at random moments while a stream flows, then
restarted. The table ends with exactly the valid unique readings, the DLQ with the bad ones."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable

import asyncpg

from tests.conftest import Names
from tests.e2e.processes import Chain
from tests.fault.conftest import KAFKA, record_figures
from tests.fault.traffic import Traffic, send_http, send_mqtt, settle

STAGES = {"ingest": "ingest", "validate": "validate", "enrich": "enrich", "store": "store"}
# The soak variant (make soak) runs longer; the default keeps `make test` quick.
DURATION_S = float(os.environ.get("FAULT_DURATION_S", "30"))
RATE = 100.0


async def chaos(chain: Chain, stop: asyncio.Event, kills: dict[str, int], seed: int) -> None:
    # Every stage in turn, in a shuffled order each round, at a random moment.
    rng = random.Random(seed)
    order: list[str] = []
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        if not order:
            order = rng.sample(list(STAGES), len(STAGES))
        name = order.pop()
        chain.kill(name)
        kills[name] = kills.get(name, 0) + 1
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        chain.start(name)
        await asyncio.to_thread(chain.services[name].wait_ready, 90)


async def test_stages_killed_at_random_moments_lose_and_duplicate_nothing(
    fault_names: Names, fault_db: asyncpg.Connection, fault_chain: Chain
) -> None:
    count = int(DURATION_S * RATE)
    traffic, messages = Traffic.make(count)
    fault_chain.start_all(STAGES)
    stop = asyncio.Event()
    kills: dict[str, int] = {}
    chaos_task = asyncio.create_task(chaos(fault_chain, stop, kills, seed=11))
    started = time.monotonic()
    sent_in: dict[str, float] = {}

    async def timed(name: str, sending: Awaitable[None]) -> None:
        await sending
        sent_in[name] = round(time.monotonic() - started, 1)

    await asyncio.gather(
        timed("mqtt", send_mqtt(fault_chain, messages[::2], RATE / 2, traffic)),
        timed("http", send_http(fault_chain, messages[1::2], RATE / 2, traffic)),
    )
    stop.set()
    await chaos_task
    outcome = await settle(fault_db, fault_names.dlq, KAFKA, traffic)
    figures = outcome.figures(traffic) | {
        "kills": kills,
        "seconds": round(time.monotonic() - started, 1),
    }
    record_figures("crash_anywhere", figures)

    assert set(kills) == set(STAGES), kills
    assert outcome.lost == 0, figures
    assert outcome.unexpected == 0, figures
    assert outcome.bad_missing_from_dlq == 0 and outcome.dlq_not_bad == 0, figures
    codes = fault_chain.stop_all()
    assert codes == dict.fromkeys(codes, 0), codes


async def test_sigterm_drains_commits_and_exits_0_within_the_bound(
    fault_names: Names, fault_db: asyncpg.Connection, fault_chain: Chain
) -> None:
    traffic, messages = Traffic.make(600, bad_share=0.02, seed=3)
    fault_chain.start_all(STAGES)
    sender = asyncio.create_task(send_http(fault_chain, messages, 200, traffic))
    timings: dict[str, float] = {}
    for name in ("validate", "enrich", "store", "ingest"):
        await asyncio.sleep(0.7)
        began = time.monotonic()
        code = fault_chain.services[name].terminate(timeout_s=25)
        timings[name] = round(time.monotonic() - began, 2)
        assert code == 0, f"{name} exited {code} on SIGTERM"
        fault_chain.start(name)
        await asyncio.to_thread(fault_chain.services[name].wait_ready, 90)
    await sender
    outcome = await settle(fault_db, fault_names.dlq, KAFKA, traffic)
    record_figures("graceful_shutdown", outcome.figures(traffic) | {"sigterm_to_exit_s": timings})
    assert outcome.lost == 0 and outcome.unexpected == 0, outcome
    assert outcome.dlq_records == outcome.dlq_distinct == len(traffic.bad)
    assert max(timings.values()) < 20, timings
