"""A child process for tests/integration/test_processes.py: ignores SIGTERM, says so on SIGUSR1
(as the services log their tasks' stacks), and otherwise waits to be killed."""

import signal
import sys
import time


def _dump(signum: int, frame: object) -> None:
    sys.stdout.write("asked for the stacks\n")
    sys.stdout.flush()


signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGUSR1, _dump)
sys.stdout.write("started\n")
sys.stdout.flush()
while True:
    time.sleep(0.1)
