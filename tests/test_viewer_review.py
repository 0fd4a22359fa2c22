"""End to end: OHIF behind nginx beside a real Orthanc opens our ``viewer_url`` with the SEG shown.

The viewer is installed once with ``deconvseg viewer install`` into a cache folder in the temporary
directory, keyed by OHIF's version and our app-config.js (a changed config reinstalls; npm keeps the
tarball in its own cache). Orthanc, nginx and Chromium run on loopback and are stopped by PID.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from deconvseg.flows.prefect_env import free_port
from deconvseg.pipeline.viewer import OHIF_VERSION, app_config_js, viewer_url
from tests.conftest import shared_path
from tests.orthanc_support import start_orthanc
from tests.viewer_support import CHROMIUM, NGINX, Browser, NginxServer, store_acdc_case

log = logging.getLogger(__name__)
SCREENSHOT_ENV = "DECONVSEG_REVIEW_SCREENSHOT"  # set to a path to keep the review's screenshot (docs/)
OVERLAY_TIMEOUT_S = 90.0
DECONVSEG = Path(sys.executable).parent / "deconvseg"


@pytest.fixture(scope="session")
def ohif_dir() -> Path:
    """OHIF installed by our CLI, once (reused while its version and our config stay the same)."""
    key = hashlib.sha256(app_config_js().encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"deconvseg-ohif-{OHIF_VERSION}-{key}"
    if (folder / "index.html").is_file():
        return folder
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (needed once to fetch @ohif/app); install Node.js and npm")
    done = subprocess.run([str(DECONVSEG), "viewer", "install", "--dir", str(folder)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0 and "npm pack failed" in done.stderr:
        pytest.skip(f"the npm registry did not give @ohif/app: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return folder


def test_install_leaves_the_viewer_and_our_config(ohif_dir):
    assert (ohif_dir / "index.html").is_file()
    config = (ohif_dir / "app-config.js").read_text()
    assert config == app_config_js("/dicom-web")
    assert "cloudfront" not in config and "https://" not in config


def _overlay_pixels(png: bytes) -> np.ndarray:
    """Pixels of the viewport's canvas that are coloured (the MR image is grey; our segments are not): (N, 2) x, y."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    ys, xs = np.nonzero(chroma > 40)
    return np.stack([xs, ys], axis=1)


def _viewport_png(browser: Browser) -> bytes:
    """The viewport's own canvas (image and segmentation, none of the page's text or dialogs) as PNG."""
    url = browser.evaluate("cornerstone.getEnabledElements()[0].viewport.canvas.toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


_VIEWPORT_JS = """(() => {
  if (!window.cornerstone) return null;
  const element = cornerstone.getEnabledElements()[0];
  if (!element || !element.viewport || !element.viewport.getCurrentImageId()) return null;
  const vp = element.viewport;
  const plane = cornerstone.metaData.get('imagePlaneModule', vp.getCurrentImageId());
  const reps = cornerstoneTools.segmentation.state.getSegmentationRepresentations(vp.id) || [];
  const ipp = plane.imagePositionPatient, r = plane.rowCosines, c = plane.columnCosines;
  const step = (v, s) => ipp.map((p, i) => p + s * v[i]);
  return JSON.stringify({reps: reps.length, ipp, spacing: [plane.rowPixelSpacing, plane.columnPixelSpacing],
    scale: vp.canvas.width / vp.canvas.getBoundingClientRect().width,
    origin: vp.worldToCanvas(ipp), col: vp.worldToCanvas(step(r, plane.columnPixelSpacing)),
    row: vp.worldToCanvas(step(c, plane.rowPixelSpacing))});
})()"""


def _inside_heart(pixels: np.ndarray, view: dict, heart: np.ndarray) -> float:
    """Fraction of coloured viewport pixels that fall on a labelled voxel (dilated by one) of the slice shown."""
    from scipy.ndimage import binary_dilation

    origin, col, row = (np.asarray(view[k]) for k in ("origin", "col", "row"))
    # canvas = origin + i * (col - origin) + j * (row - origin); solve for the voxel (i = column, j = row)
    basis = np.stack([col - origin, row - origin], axis=1)
    ij = np.linalg.solve(basis, (pixels / view["scale"] - origin).T).T
    i, j = np.round(ij[:, 0]).astype(int), np.round(ij[:, 1]).astype(int)
    grown = binary_dilation(heart, iterations=1)
    ok = (j >= 0) & (j < heart.shape[0]) & (i >= 0) & (i < heart.shape[1])
    hits = np.zeros(len(pixels), dtype=bool)
    hits[ok] = grown[j[ok], i[ok]]
    return float(hits.mean()) if len(pixels) else 0.0


def test_viewer_url_opens_the_study_with_our_segmentation(ohif_dir, tmp_path):
    if CHROMIUM is None or not Path(NGINX).exists():
        pytest.skip("chromium and nginx are needed; .ci/run installs Debian's chromium and nginx")
    h5 = shared_path("acdc", "volumes", "patient002_frame01.h5")
    orthanc = start_orthanc(tmp_path / "orthanc")
    nginx = browser = None
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        case = store_acdc_case(orthanc, h5, tmp_path / "case", viewer_base=base)  # the bundle's viewer_url
        assert case.viewer_url == viewer_url(base, case.study_uid, case.seg_series_uid)
        user, password = orthanc.auth
        (tmp_path / "orthanc-password").write_text(password)
        written = subprocess.run(  # the deployment's own command writes the server block
            [str(DECONVSEG), "viewer", "nginx-config", "--orthanc", orthanc.dicomweb, "--listen", f"127.0.0.1:{port}",
             "--viewer-dir", str(ohif_dir), "--orthanc-user", user,
             "--orthanc-password-file", str(tmp_path / "orthanc-password"), "--out", str(tmp_path / "review.conf")],
            capture_output=True, text=True, timeout=120)
        assert written.returncode == 0, written.stderr
        nginx = NginxServer(tmp_path / "nginx", (tmp_path / "review.conf").read_text())
        nginx.start(f"{base}/")
        assert requests.get(f"{base}/dicom-web/studies/{case.study_uid}/series", timeout=10).ok  # through nginx

        browser = Browser()
        browser.start()
        started = time.monotonic()
        browser.call("Page.navigate", url=case.viewer_url)
        # The overlay on screen: a segmentation representation in the viewport, then coloured pixels.
        deadline = started + OVERLAY_TIMEOUT_S
        while True:
            view = json.loads(browser.wait_for(_VIEWPORT_JS, timeout_s=max(1.0, deadline - time.monotonic())) or "{}")
            pixels = _overlay_pixels(_viewport_png(browser)) if view.get("reps") else np.empty((0, 2))
            if len(pixels) >= 300 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        to_overlay = time.monotonic() - started
        assert view.get("reps"), "OHIF did not lay a segmentation over the viewport"
        assert len(pixels) >= 300, f"only {len(pixels)} coloured pixels in the viewport after {to_overlay:.0f} s"
        k = int(round(view["ipp"][2] / case.slice_mm))  # our series: origin 0, slices along z
        heart = case.label_map[k] > 0
        inside = _inside_heart(pixels, view, heart)
        elsewhere = _inside_heart(pixels, view, np.roll(heart, heart.shape[1] // 4, axis=1))  # the check can fail
        log.warning("viewer_url to overlay on screen: %.1f s; %d coloured pixels, %.3f on the heart (%.3f if shifted)",
                    to_overlay, len(pixels), inside, elsewhere)
        assert heart.any() and inside > 0.9 and elsewhere < 0.5

        # The segmentation panel lists our segment names (after the investigational-use notice).
        browser.wait_for("!!document.querySelector('[data-cy=confirm-and-hide-button]')", timeout_s=30)
        browser.evaluate("document.querySelector('[data-cy=confirm-and-hide-button]').click()")
        browser.evaluate("document.querySelector('[data-cy=panelSegmentation-btn]').click()")
        names = json.dumps(list(case.segment_names))
        browser.wait_for(f"{names}.every(n => document.body.innerText.includes(n))", timeout_s=30)
        assert "deconvseg segmentation" in browser.evaluate("document.body.innerText")
        assert not browser.evaluate("!!document.querySelector('[data-cy=confirm-and-hide-button]')")
        assert not browser.evaluate("!!document.querySelector('.shepherd-element')")  # no first-visit tour
        origins = browser.evaluate(
            "[...new Set(performance.getEntriesByType('resource').map(e => new URL(e.name).origin))]")
        assert set(origins) <= {base}, origins  # everything from our one origin: no external server
        browser.evaluate("(() => { const vp = cornerstone.getEnabledElements()[0].viewport;"
                         " vp.setImageIdIndex(Math.floor(vp.getImageIds().length / 2)); })()")  # a mid-ventricle slice
        time.sleep(1.5)
        shot = browser.screenshot()
        (tmp_path / "review.png").write_bytes(shot)
        if os.environ.get(SCREENSHOT_ENV):
            Path(os.environ[SCREENSHOT_ENV]).write_bytes(shot)
    finally:
        if browser is not None:
            browser.stop()
        if nginx is not None:
            nginx.stop()
        orthanc.stop()


def test_nginx_passes_the_browsers_credentials_to_the_pacs(tmp_path):
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed; .ci/run installs Debian's nginx")
    orthanc = start_orthanc(tmp_path / "orthanc")
    nginx = None
    try:
        (tmp_path / "ohif").mkdir()
        (tmp_path / "ohif" / "index.html").write_text("<html>viewer</html>")
        port = free_port()
        written = subprocess.run([str(DECONVSEG), "viewer", "nginx-config", "--orthanc", orthanc.dicomweb,
                                  "--listen", f"127.0.0.1:{port}", "--viewer-dir", str(tmp_path / "ohif")],
                                 capture_output=True, text=True, timeout=120)
        assert written.returncode == 0, written.stderr
        nginx = NginxServer(tmp_path / "nginx", written.stdout)
        base = f"http://127.0.0.1:{port}"
        nginx.start(f"{base}/")
        assert requests.get(f"{base}/viewer", timeout=10).text == "<html>viewer</html>"  # the SPA's routes
        assert requests.get(f"{base}/dicom-web/studies", timeout=10).status_code == 401
        assert requests.get(f"{base}/dicom-web/studies", auth=orthanc.auth, timeout=10).status_code == 200
    finally:
        if nginx is not None:
            nginx.stop()
        orthanc.stop()
