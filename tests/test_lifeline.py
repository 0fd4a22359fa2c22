"""Children die with their parent, even when the parent is SIGKILLed (issue 17): the in-process watch that
the batch child runs, and the supervisor that wraps ``prefect server start``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from flows_support import REPO

# A parent that starts a child and prints the child's and the grandchild's PIDs, then waits to be killed.
_PARENT = """
import subprocess, sys, time
from deconvseg.flows.prefect_env import prefect_environment
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=prefect_environment(sys.argv[2]),
                         stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(600)
"""
_WATCHING_CHILD = """
import subprocess, time
from deconvseg.flows.lifeline import watch_parent_from_environment
watch_parent_from_environment()
grandchild = subprocess.Popen(["sleep", "600"])
print(grandchild.pid, flush=True)
time.sleep(600)
"""
# A parent that runs ``sleep`` under the supervisor and prints the supervisor's and sleep's PIDs.
_SUPERVISING_PARENT = """
import subprocess, time
import psutil
from deconvseg.flows.lifeline import supervised
supervisor = subprocess.Popen(supervised(["sleep", "600"]))
while not psutil.Process(supervisor.pid).children():
    time.sleep(0.05)
print(supervisor.pid, *(p.pid for p in psutil.Process(supervisor.pid).children()), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_parent_and_wait(*args: str) -> tuple[list[int], float]:
    """Start ``python -c ARGS...``, read the PIDs it prints, SIGKILL it; the PIDs still alive and the wait."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", *args], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) >= 2 and all(_alive(p) for p in pids)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    start = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - start < 10:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)], time.monotonic() - start


def test_a_watching_child_and_its_children_end_when_the_parent_is_killed(tmp_path):
    survivors, seconds = _kill_parent_and_wait(_PARENT, _WATCHING_CHILD, str(tmp_path))
    assert survivors == [] and seconds < 5


def test_a_supervised_command_ends_when_the_parent_is_killed():
    survivors, seconds = _kill_parent_and_wait(_SUPERVISING_PARENT)
    assert survivors == [] and seconds < 5
