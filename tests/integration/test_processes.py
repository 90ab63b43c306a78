"""tools/processes.py against real child processes (no servers needed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tools.processes import ExitedEarly, NotReady, ServiceProcess, free_ports


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= port <= 65535 for port in ports)


def test_a_process_that_ignores_sigterm_is_asked_for_its_stacks_then_killed(tmp_path: Path):
    process = ServiceProcess(
        "stubborn", "tests.integration.stubborn", tmp_path / "stubborn.log"
    ).start()
    deadline = time.monotonic() + 10
    while "started" not in process.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    ended = process.stop_sync(timeout_s=0.5)
    assert ended.killed and ended.code == -9
    assert ended.how == "killed after 0.5 s"
    assert "asked for the stacks" in process.log_tail()
    assert process.stop_sync() is ended  # stopping twice: the same answer
    assert not process.alive


def test_a_process_that_exits_at_once_is_reported_as_exited_not_as_late(tmp_path: Path):
    process = ServiceProcess(
        "missing",
        "tests.integration.no_such_module",
        tmp_path / "missing.log",
        port=free_ports(1)[0],
    ).start()
    with pytest.raises(ExitedEarly, match="missing exited with code 1 while starting"):
        process.wait_ready_sync(timeout_s=30)
    assert "No module named" in process.log_tail()
    assert process.stop_sync().how == "exit 1 (before shutdown)"


async def test_a_process_whose_port_never_answers_is_not_ready_in_time(tmp_path: Path):
    process = ServiceProcess(
        "silent", "tests.integration.stubborn", tmp_path / "silent.log", port=free_ports(1)[0]
    ).start()
    try:
        with pytest.raises(NotReady, match=r"silent is not ready after 0.5 s \(last: no answer"):
            await process.wait_ready(timeout_s=0.5)
    finally:
        process.kill()
    assert not process.alive


async def test_a_process_without_a_port_is_ready_once_it_runs(tmp_path: Path):
    process = ServiceProcess("peer", "tests.integration.stubborn", tmp_path / "peer.log").start()
    try:
        await asyncio.wait_for(process.wait_ready(), 5)
        assert process.alive
    finally:
        process.kill()
