"""Child processes that never outlive the process that started them.

A SIGKILL of ``deconvseg batch`` cannot be caught, so its children have to notice on their own:
a child started with ``prefect_environment`` finds its parent's PID in ``PARENT_PID_VARIABLE``
and calls ``watch_parent`` first thing. A daemon thread then checks four times a second that the
parent is still its parent; when it is not (the parent died and the child was re-parented), the
child ends its whole family -- the Prefect server it started, Dask workers, anything below it --
and then itself. A SIGTERM (the CLI stopping its child) ends the family the same way, so
Prefect's temporary server never outlives the batch.

A program that cannot call ``watch_parent`` itself (``prefect server start``) runs under
``python -m deconvseg.flows.lifeline PARENT_PID -- COMMAND...`` (``supervised``), which watches
for it and passes the command's exit status on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import psutil

PARENT_PID_VARIABLE = "DECONVSEG_PARENT_PID"
POLL_S = 0.25
GRACE_S = 3.0  # what the family gets to stop cleanly after SIGTERM, before SIGKILL


def end_family(grace_s: float = GRACE_S, status: int = 128 + signal.SIGTERM) -> None:
    """Terminate every descendant of this process (SIGTERM, then SIGKILL after ``grace_s``), then exit."""
    try:
        family = psutil.Process().children(recursive=True)
    except psutil.Error:
        family = []
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended meanwhile
            process.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended meanwhile
            process.kill()
    os._exit(status)  # no clean-up of our own: the parent that would want it is gone or asked us to stop


def watch_parent(parent_pid: int, poll_s: float = POLL_S) -> None:
    """End this process and its family as soon as ``parent_pid`` is no longer its parent, or on SIGTERM.

    Must be called from the main thread (it installs the SIGTERM handler).
    """
    if os.getppid() != parent_pid:  # the parent died before we got here
        end_family(grace_s=0.0)
    signal.signal(signal.SIGTERM, lambda signum, frame: end_family())

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        end_family()

    threading.Thread(target=watch, name="deconvseg-lifeline", daemon=True).start()


def watch_parent_from_environment() -> None:
    """``watch_parent`` for the PID in ``PARENT_PID_VARIABLE`` (nothing when it is not set)."""
    value = os.environ.get(PARENT_PID_VARIABLE, "")
    if value.isdigit():
        watch_parent(int(value))


def supervised(command: Sequence[str], parent_pid: int | None = None) -> list[str]:
    """``command`` wrapped so that it ends when ``parent_pid`` (default: this process) dies."""
    pid = os.getpid() if parent_pid is None else parent_pid
    return [sys.executable, "-m", "deconvseg.flows.lifeline", str(pid), "--", *command]


def main(argv: list[str]) -> int:
    """``PARENT_PID -- COMMAND...``: run COMMAND until it exits or PARENT_PID dies; its exit status."""
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m deconvseg.flows.lifeline PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    watch_parent(int(argv[0]))
    return subprocess.call(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
