"""One way to run a service as a child process: `python -m <module>` with its environment, its
output in a log file and its HTTP port; wait for its /readyz; stop it as an orchestrator would.

tools.run, the end-to-end and fault tests and the benchmark all start their processes here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from libs.common.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# After SIGUSR1 a service logs every asyncio task's stack (libs/common/lifecycle.py): the time
# it gets to write them before SIGKILL.
DUMP_WAIT_S = 1.0
POLL_S = 0.1
LOG_TAIL_LINES = 40


def free_ports(n: int) -> list[int]:
    """`n` different ports nothing listens on now (all bound at once, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


class ProcessError(PipelineError):
    """A child process that did not come up; names it and its log."""

    def __init__(self, process: ServiceProcess, what: str) -> None:
        super().__init__(f"{process.name} {what}; see its log: {process.log_path}")
        self.process = process


class ExitedEarly(ProcessError):
    """It exited before it was ready."""


class NotReady(ProcessError):
    """It runs but did not answer /readyz 200 in time."""


@dataclass(frozen=True, slots=True)
class Ended:
    """How a process ended: its exit code and a few words for people."""

    code: int | None
    how: str
    killed: bool = False


# Loaded here, not in the child: between fork and exec the child should do as little as can be.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when its parent dies, even by SIGKILL, so no orphan keeps
    # its port. Runs in the child between fork and exec.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _readiness(response: httpx.Response) -> tuple[bool, str]:
    if response.status_code == 200:
        return True, "ready"
    return False, f"/readyz {response.status_code}: {response.text[:120]}"


class ServiceProcess:
    """`python -m <module>` as a child process, its stdout and stderr in `log_path`.

    `port`: its HTTP port (passed as HTTP_PORT; None for a process without one, which counts
    as ready once it runs). `https_port`: ingest's HTTPS readings port (passed as HTTPS_PORT;
    None: the process's own setting, 8443 by default). `own_session`: a Ctrl-C in the terminal
    does not reach it. `die_with_parent`: it gets SIGTERM if this process dies (Linux).
    `append_log`: keep what earlier runs wrote to the log.
    """

    def __init__(
        self,
        name: str,
        module: str,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        https_port: int | None = None,
        host: str = HOST,
        cwd: Path = REPO_ROOT,
        own_session: bool = False,
        die_with_parent: bool = False,
        append_log: bool = False,
    ) -> None:
        self.name, self.module, self.log_path = name, module, log_path
        self.env = dict(env or {})
        self.port, self.host, self.cwd = port, host, cwd
        self.https_port = https_port
        self.own_session = own_session
        self.die_with_parent = die_with_parent
        self.append_log = append_log
        self.popen: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.ended: Ended | None = None

    def start(self, base_env: Mapping[str, str] | None = None) -> ServiceProcess:
        """Start it with `base_env` (default: this process's environment) plus its own env."""
        env = dict(os.environ if base_env is None else base_env) | self.env
        if self.port is not None:
            env["HTTP_PORT"] = str(self.port)
        if self.https_port is not None:
            env["HTTPS_PORT"] = str(self.https_port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab" if self.append_log else "wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.own_session,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def https_url(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_running(self) -> None:
        """Raise ExitedEarly when the process is gone."""
        code = self.returncode
        if code is not None:
            raise ExitedEarly(self, f"exited with code {code} while starting")

    async def probe_ready(self, client: httpx.AsyncClient) -> tuple[bool, str]:
        """One /readyz: ready or not, and why not (a process without a port: whether it runs)."""
        if self.port is None:
            return self.alive, "running" if self.alive else "not running"
        try:
            return _readiness(await client.get(f"{self.url}/readyz", timeout=1.0))
        except httpx.HTTPError as error:
            return False, f"no answer ({type(error).__name__})"

    def probe_ready_sync(self, client: httpx.Client) -> tuple[bool, str]:
        if self.port is None:
            return self.alive, "running" if self.alive else "not running"
        try:
            return _readiness(client.get(f"{self.url}/readyz", timeout=1.0))
        except httpx.HTTPError as error:
            return False, f"no answer ({type(error).__name__})"

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until /readyz answers 200; ExitedEarly or NotReady otherwise."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as client:
            while True:
                self.check_running()
                ok, why = await self.probe_ready(client)
                if ok:
                    return
                if time.monotonic() > deadline:
                    raise NotReady(self, f"is not ready after {timeout_s:g} s (last: {why})")
                await asyncio.sleep(POLL_S)

    def wait_ready_sync(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """wait_ready for code without an event loop (it blocks the caller)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client() as client:
            while True:
                self.check_running()
                ok, why = self.probe_ready_sync(client)
                if ok:
                    return
                if time.monotonic() > deadline:
                    raise NotReady(self, f"is not ready after {timeout_s:g} s (last: {why})")
                time.sleep(POLL_S)

    async def metrics(self, client: httpx.AsyncClient | None = None, timeout_s: float = 5.0) -> str:
        """Its /metrics text."""
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(httpx.AsyncClient())
            response = await client.get(self.metrics_url, timeout=timeout_s)
            response.raise_for_status()
            return response.text

    def metrics_sync(self, timeout_s: float = 5.0) -> str:
        response = httpx.get(self.metrics_url, timeout=timeout_s)
        response.raise_for_status()
        return response.text

    def stop_sync(self, timeout_s: float = STOP_TIMEOUT_S) -> Ended:
        """SIGTERM and wait up to `timeout_s`; then SIGUSR1 (the stacks to the log) and SIGKILL.

        Returns how it ended; once stopped, the same answer again.
        """
        if self.ended is not None:
            return self.ended
        proc = self.popen
        if proc is None:
            return Ended(None, "not started")
        if proc.poll() is not None:
            self.ended = Ended(proc.returncode, f"exit {proc.returncode} (before shutdown)")
            return self.ended
        self.stopping = True
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            # Ask it what it is waiting on before it goes: the stack dump is the first clue.
            proc.send_signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(DUMP_WAIT_S)
            proc.kill()
            proc.wait()
            self.ended = Ended(proc.returncode, f"killed after {timeout_s:g} s", killed=True)
        else:
            took = time.monotonic() - started
            self.ended = Ended(proc.returncode, f"exit {proc.returncode} in {took:.1f} s")
        return self.ended

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> Ended:
        """stop_sync in a thread, so the event loop goes on meanwhile."""
        return await asyncio.to_thread(self.stop_sync, timeout_s)

    def kill(self) -> None:
        """SIGKILL and reap, as a crash would end it."""
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait()


async def wait_all_ready(
    processes: Sequence[ServiceProcess],
    client: httpx.AsyncClient,
    stop: asyncio.Event,
    show: Callable[[dict[str, str], float], None],
    timeout_s: float = READY_TIMEOUT_S,
) -> bool:
    """Until every process answers /readyz 200, calling `show(status, waited)` each round;
    False when `stop` is set meanwhile, ExitedEarly or NotReady when one does not come up."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = {p.name: "starting" for p in processes}
    while not stop.is_set():
        pending = [p for p in processes if status[p.name] != "ready"]
        if not pending:
            show(status, loop.time() - started)
            return True
        for process in pending:
            process.check_running()
        answers = await asyncio.gather(*(p.probe_ready(client) for p in pending))
        for process, (ok, why) in zip(pending, answers, strict=True):
            status[process.name] = "ready" if ok else why
        waited = loop.time() - started
        show(status, waited)
        if waited > timeout_s:
            late = next(p for p in processes if status[p.name] != "ready")
            raise NotReady(late, f"is not ready after {timeout_s:g} s (last: {status[late.name]})")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    return False
