"""The review stack for the viewer tests: nginx in front of OHIF and Orthanc, and headless Chromium.

nginx (Debian package) runs as this user with its own prefix, temp folders and port, in the
foreground, and is stopped by PID. Chromium is driven over the DevTools protocol with the
``websockets`` client Prefect already installs: no browser download, no Playwright.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from deconvseg.flows.prefect_env import stop_process

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MIME_TYPES = Path("/etc/nginx/mime.types")


@dataclass
class NginxServer:
    """nginx in the foreground with ``server_block`` as its only server."""

    folder: Path
    server_block: str
    process: subprocess.Popen | None = None

    def write_config(self) -> Path:
        """Write ``nginx.conf``: a main config (own pid, logs, temp folders) around the server block."""
        for sub in ("logs", "tmp"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "server.conf").write_text(self.server_block)
        temp = {name: self.folder / "tmp" / name for name in ("client", "proxy", "fastcgi", "uwsgi", "scgi")}
        # As root, nginx's workers would drop to 'nobody', who cannot read pytest's private tmp folders.
        user = "user root;" if os.geteuid() == 0 else ""
        main = f"""
{user}
worker_processes 1;
pid {self.folder}/nginx.pid;
error_log {self.folder}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    include {MIME_TYPES};
    default_type application/octet-stream;
    access_log {self.folder}/logs/access.log;
    client_body_temp_path {temp['client']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    sendfile on;
    include {self.folder}/server.conf;
}}
"""
        (self.folder / "nginx.conf").write_text(main)
        return self.folder / "nginx.conf"

    def start(self, url: str, timeout_s: float = 20.0, verify: bool | str = True) -> None:
        """Start nginx in the foreground and wait until ``url`` answers (``verify``: TLS as in requests)."""
        self.write_config()
        log = (self.folder / "logs" / "stderr.log").open("ab")
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"), "-g", "daemon off;"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: "
                                   f"{(self.folder / 'logs' / 'stderr.log').read_text()[-2000:]}")
            try:
                if requests.get(url, timeout=1, verify=verify).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"nginx did not answer on {url} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace_s=10)


@dataclass
class Browser:
    """Headless Chromium with a fresh profile, one page, driven over the DevTools protocol."""

    width: int = 1280
    height: int = 800
    process: subprocess.Popen | None = None
    profile: tempfile.TemporaryDirectory | None = None
    socket: Any = None
    console: list[str] = field(default_factory=list)
    _next_id: int = 0

    def start(self, timeout_s: float = 30.0) -> None:
        from websockets.sync.client import connect

        if CHROMIUM is None:
            pytest.skip("chromium is not installed; .ci/run installs Debian's chromium")
        self.profile = tempfile.TemporaryDirectory(prefix="deconvseg-chromium-")
        profile = Path(self.profile.name)
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json() if t["type"] == "page"]
        self.socket = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout_s)
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout_s: float = 60.0, **params: Any) -> dict:
        """Send one DevTools command and return its result (console messages on the way are kept)."""
        self._next_id += 1
        self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"]["args"]
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args)[:500])
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float, interval_s: float = 0.25) -> Any:
        """Evaluate ``expression`` until it is truthy; its value, or ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval_s)
        raise TimeoutError(f"waited {timeout_s} s for {expression}; console tail: {self.console[-5:]}")

    def screenshot(self, clip: dict | None = None) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])

    def stop(self) -> None:
        if self.socket is not None:
            self.socket.close()
        if self.process is not None:
            stop_process(self.process, grace_s=10)
        if self.profile is not None:
            self.profile.cleanup()


@dataclass(frozen=True)
class StoredCase:
    """An ACDC MR study and our review bundle of it, its SEG and RTSTRUCT stored in the PACS."""

    study_uid: str
    seg_series_uid: str
    viewer_url: str  # from the bundle's manifest.json
    label_map: Any  # numpy (z, y, x) of the values the SEG encodes
    slice_mm: float
    segment_names: tuple[str, ...]


def store_acdc_case(server: Any, h5_path: Path, folder: Path, viewer_base: str) -> StoredCase:
    """Make an MR series from an ACDC volume, read it back, write our bundle of its labels with
    ``viewer_base`` (as a PACS case gets it), and upload the series, SEG and RTSTRUCT with ``POST /instances``.

    The labels are the volume's reference labels, so the viewer test does not depend on a model's quality.
    """
    import h5py
    import numpy as np
    import pydicom

    from deconvseg.pipeline.export.bundle import write_bundle
    from deconvseg.pipeline.io.volumes import read_volume
    from deconvseg.pipeline.labels import ACDC
    from tests.orthanc_support import write_mr_series

    image_files = write_mr_series(h5_path, folder / "mr")
    image = read_volume(folder / "mr")
    with h5py.File(h5_path) as handle:
        labels = np.asarray(handle["label"], dtype=np.uint8)
    bundle = write_bundle(folder / "out" / "acdc-case", image, image.with_array(labels, kind="label"), ACDC,
                          viewer_base=viewer_base)
    server.upload([*image_files, bundle.path / "rtstruct.dcm", bundle.path / "seg.dcm"])
    seg = pydicom.dcmread(bundle.path / "seg.dcm", stop_before_pixels=True)
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    return StoredCase(str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID), manifest["viewer_url"], labels,
                      float(image.spacing[2]), tuple(label.name for label in ACDC))
