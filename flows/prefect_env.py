"""The one place that decides how Prefect runs for deconvseg: offline, quiet, own home.

Nothing here writes ``os.environ``. Settings reach Prefect in one of two ways:

- a **subprocess environment** (``prefect_environment``): the CLI runs every flow in a child
  process started with it, and so does ``local_server``; Dask workers of a local cluster inherit
  it from that child. This is the only way to switch off Prefect's import-time telemetry
  (``DO_NOT_TRACK`` is read from the environment when ``prefect`` is imported).
- a **settings context** (``prefect_settings``) for Python callers who run a flow in-process.

The embedded (ephemeral) server gets a generous start-up timeout: a cold start on a busy
two-core machine can take well over Prefect's default 20 s.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from deconvseg.flows.lifeline import PARENT_PID_VARIABLE, supervised
from deconvseg.pipeline.errors import ResourceError

STARTUP_TIMEOUT_S = 180
_OFFLINE = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(STARTUP_TIMEOUT_S),
    "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",  # Dask's per-worker start/stop chatter
}


def offline_settings(home: str | Path | None = None, api_url: str | None = None) -> dict[str, str]:
    """Environment-style Prefect settings for an offline, quiet run.

    Args:
        home: ``PREFECT_HOME`` (database, results, logs); ``None`` keeps Prefect's own choice
            (``$PREFECT_HOME`` or ``~/.prefect``).
        api_url: a running server's API (``http://127.0.0.1:4200/api``); ``None`` keeps whatever
            the caller's environment says, ``""`` forces the embedded server.

    Returns:
        Variable name -> value.
    """
    settings = dict(_OFFLINE)
    if home is not None:
        settings["PREFECT_HOME"] = str(Path(home).expanduser().resolve())
    if api_url is not None:
        settings["PREFECT_API_URL"] = api_url
    return settings


def prefect_environment(
    home: str | Path | None = None, api_url: str | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A complete environment for a child process: ``base`` (default: this process's), the offline
    settings, and this process's PID, which a child that calls
    ``deconvseg.flows.lifeline.watch_parent_from_environment`` outlives by well under a second."""
    env = dict(os.environ if base is None else base)
    env.update(offline_settings(home, api_url))
    env[PARENT_PID_VARIABLE] = str(os.getpid())  # the child ends with this process (deconvseg.flows.lifeline)
    return env


@contextlib.contextmanager
def prefect_settings(home: str | Path | None = None, api_url: str | None = None) -> Iterator[None]:
    """Apply the offline settings to in-process Prefect calls for the duration of the block.

    ``DO_NOT_TRACK`` is no Prefect setting; set it in the environment that imports Prefect.
    """
    from prefect.settings import temporary_settings

    updates = {k: v for k, v in offline_settings(home, api_url).items() if k.startswith("PREFECT_")}
    with temporary_settings(updates=updates):
        yield


def stop_process(process: subprocess.Popen, grace_s: float) -> None:
    """Terminate ``process``; kill it if it has not exited after ``grace_s`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(api_url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``{api_url}/health`` until it answers 200.

    Raises:
        ResourceError: the server did not answer within ``timeout_s`` or its process exited.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ResourceError(
                f"Prefect server exited with status {process.returncode}; run "
                "'prefect server start --host 127.0.0.1' by hand to see why"
            )
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise ResourceError(
        f"Prefect server at {api_url} did not answer within {timeout_s:.0f} s; "
        "raise the timeout or start the server yourself"
    )


@contextlib.contextmanager
def local_server(
    home: str | Path | None = None,
    port: int | None = None,
    timeout_s: float = STARTUP_TIMEOUT_S,
    log_path: str | Path | None = None,
) -> Iterator[str]:
    """Run ``prefect server start`` on 127.0.0.1 for the duration of the block; yield its API URL.

    The server is stopped by its PID (terminate, then kill after 10 s), and it runs under
    ``deconvseg.flows.lifeline``: if this process dies, even by SIGKILL, the server ends too.

    Args:
        home: its ``PREFECT_HOME`` (the database lives there).
        port: loopback port; a free one by default.
        timeout_s: how long to wait for ``/api/health``.
        log_path: file that receives the server's output (discarded by default).
    """
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_environment(home, api_url="")
    command = supervised(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--analytics-off",
            "--log-level",
            "WARNING",
        ]
    )
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(log_path, "ab")) if log_path else subprocess.DEVNULL
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_healthy(api_url, timeout_s, process)
            yield api_url
        finally:
            stop_process(process, grace_s=10)
