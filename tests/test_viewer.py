"""The viewer's text builders and CLI refusals (fast; the browser test is in test_viewer_review.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from deconvseg.flows.prefect_env import free_port
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.viewer import app_config_js, nginx_server_block, viewer_url
from tests.viewer_support import NGINX, NginxServer

STUDY, SEG = "2.25.270405000517475436062691045842548910255", "2.25.46902046397248724589589053806670495911"


def _config(text: str) -> dict:
    return json.loads(text.split("window.config = ", 1)[1].rstrip().rstrip(";"))


def test_viewer_url_opens_the_study_with_our_seg_first():
    url = viewer_url("https://review.example.org/", STUDY, SEG)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "review.example.org", "/viewer")
    assert parse_qs(parts.query) == {"StudyInstanceUIDs": [STUDY], "initialSeriesInstanceUID": [SEG]}
    assert viewer_url("http://127.0.0.1:8080", STUDY) == f"http://127.0.0.1:8080/viewer?StudyInstanceUIDs={STUDY}"


@pytest.mark.parametrize("base, study", [("ftp://host", STUDY), ("review.example.org", STUDY),
                                         ("https://host/?a=1", STUDY), ("https://host", "1.2.x"),
                                         ("https://host", "1.2.3&SeriesInstanceUIDs=4")])
def test_viewer_url_refuses_a_bad_base_or_uid(base, study):
    with pytest.raises(InputError):
        viewer_url(base, study)


def test_app_config_points_only_at_our_dicomweb_root():
    text = app_config_js("/pacs/dicom-web/")
    config = _config(text)
    assert "http" not in text.split("*/", 1)[1]  # no external server left
    (source,) = config["dataSources"]
    roots = {source["configuration"][key] for key in ("qidoRoot", "wadoRoot", "wadoUriRoot")}
    assert roots == {"/pacs/dicom-web"}
    assert config["defaultDataSourceName"] == source["sourceName"]
    assert config["customizationService"]["global"]["ohif.tours"] == {"$set": []}
    assert config["disableConfirmationPrompts"] is True
    assert config["investigationalUseDialog"]["option"] == "configure"
    with pytest.raises(InputError):
        app_config_js("https://pacs.example.org/dicom-web")


def test_nginx_block_passes_authorization_through_unless_told():
    plain = nginx_server_block("http://127.0.0.1:8042/dicom-web", "127.0.0.1:8080", "/srv/ohif")
    assert "proxy_pass http://127.0.0.1:8042/dicom-web/;" in plain and "Authorization" not in plain
    assert "try_files $uri $uri/ /index.html;" in plain
    guarded = nginx_server_block("http://127.0.0.1:8042/dicom-web", "127.0.0.1:8080", "/srv/ohif",
                                 htpasswd="/etc/nginx/review.htpasswd")
    assert 'auth_basic_user_file "/etc/nginx/review.htpasswd";' in guarded
    assert 'proxy_set_header Authorization "";' in guarded  # nginx's users are not the PACS's
    for bad in ({"orthanc_url": "127.0.0.1:8042"}, {"listen": "8080"}, {"viewer_dir": "/srv/o;hif"}):
        args = {"orthanc_url": "http://127.0.0.1:8042/dicom-web", "listen": "127.0.0.1:8080",
                "viewer_dir": "/srv/ohif", **bad}
        with pytest.raises(InputError):
            nginx_server_block(**args)


def test_nginx_accepts_the_block(tmp_path):
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed; .ci/run installs Debian's nginx")
    block = nginx_server_block("http://127.0.0.1:8042/dicom-web", "127.0.0.1:8080", str(tmp_path),
                               upstream_authorization="Basic ZGVjb252c2VnOnNlY3JldA==")
    server = NginxServer(tmp_path / "nginx", block)
    server.write_config()
    checked = subprocess.run([NGINX, "-t", "-p", str(server.folder), "-c", str(server.folder / "nginx.conf")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_nginx_serves_the_viewer_over_tls(tmp_path):
    if not Path(NGINX).exists() or shutil.which("openssl") is None:
        pytest.skip("nginx and openssl are needed; .ci/run installs Debian's nginx")
    import requests

    cert, key = tmp_path / "review.crt", tmp_path / "review.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    (tmp_path / "ohif").mkdir()
    (tmp_path / "ohif" / "index.html").write_text("<html>viewer</html>")
    port = free_port()
    done = _cli("nginx-config", "--orthanc", "http://127.0.0.1:9/dicom-web", "--viewer-dir", str(tmp_path / "ohif"),
                "--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key))
    assert done.returncode == 0, done.stderr
    server = NginxServer(tmp_path / "nginx", done.stdout)
    try:
        server.start(f"https://127.0.0.1:{port}/", verify=str(cert))
        answer = requests.get(f"https://127.0.0.1:{port}/viewer?StudyInstanceUIDs={STUDY}", verify=str(cert),
                              timeout=10)
        assert answer.text == "<html>viewer</html>"
        assert answer.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    finally:
        server.stop()
    missing_key = _cli("nginx-config", "--orthanc", "http://127.0.0.1:9/dicom-web", "--viewer-dir",
                       str(tmp_path / "ohif"), "--tls-cert", str(cert))
    assert missing_key.returncode == 2 and "TLS needs both files" in missing_key.stderr


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "deconvseg"), "viewer", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_install_without_npm_is_one_line(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no npm on this PATH
    done = _cli("install", "--dir", str(tmp_path / "ohif"), env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: npm: is not installed; "
                                   "install Node.js and npm (Debian: apt-get install nodejs npm)")
    assert not (tmp_path / "ohif").exists()


def test_install_without_the_registry_is_one_line(tmp_path):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    env = {**os.environ, "npm_config_registry": "http://127.0.0.1:9/", "npm_config_fetch_retries": "0",
           "npm_config_cache": str(tmp_path / "npm-cache")}  # an empty cache: nothing served from it
    done = _cli("install", "--dir", str(tmp_path / "ohif"), env=env)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: @ohif/app@3.13.2: npm pack failed (ECONNREFUSED: ")
    assert line.endswith("; check that the npm registry is reachable (npm config get registry) or set a mirror")
    assert not (tmp_path / "ohif").exists()


def test_nginx_config_needs_an_installed_viewer(tmp_path):
    done = _cli("nginx-config", "--orthanc", "http://127.0.0.1:8042/dicom-web", "--viewer-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {tmp_path}: holds no index.html;")


def test_nginx_config_writes_upstream_credentials_privately(tmp_path):
    (tmp_path / "index.html").write_text("<html></html>")
    (tmp_path / "password").write_text("s3cret\n")
    out = tmp_path / "review.conf"
    done = _cli("nginx-config", "--orthanc", "http://127.0.0.1:8042/dicom-web", "--viewer-dir", str(tmp_path),
                "--listen", "127.0.0.1:9090", "--orthanc-user", "deconvseg",
                "--orthanc-password-file", str(tmp_path / "password"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert 'proxy_set_header Authorization "Basic ZGVjb252c2VnOnMzY3JldA==";' in out.read_text()
    assert "listen 127.0.0.1:9090;" in out.read_text()
    assert out.stat().st_mode & 0o077 == 0


def _dicom_case(folder: Path):
    """A phantom CT written as a DICOM series, read back (so the bundle references it), and its labels."""
    from deconvseg.pipeline.export.dicom_series import series_from_volume, write_series
    from deconvseg.pipeline.io.volumes import read_volume
    from deconvseg.pipeline.phantoms import PHANTOM_LABELS, make_phantom

    image, labels = make_phantom("CT", shape=(12, 24, 24), spacing=(10.0, 10.0, 16.0), seed=3)
    write_series(series_from_volume(image, series_description="phantom"), folder)
    read = read_volume(folder)
    return read, read.with_array(labels.array, kind="label"), PHANTOM_LABELS


def test_pacs_bundle_carries_the_viewer_url_of_its_seg(tmp_path):
    import pydicom

    from deconvseg.pipeline.export.bundle import write_bundle

    image, labels, table = _dicom_case(tmp_path / "series")
    summary = write_bundle(tmp_path / "out" / "case1", image, labels, table, viewer_base="https://review.example.org/")
    seg = pydicom.dcmread(tmp_path / "out" / "case1" / "seg.dcm", stop_before_pixels=True)
    expected = viewer_url("https://review.example.org", str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID))
    manifest = json.loads((tmp_path / "out" / "case1" / "manifest.json").read_text())
    assert manifest["viewer_url"] == summary.manifest["viewer_url"] == expected
    assert str(seg.StudyInstanceUID) == str(pydicom.dcmread(image.metadata["dicom_files"][0]).StudyInstanceUID)
    report = (tmp_path / "out" / "case1" / "report.html").read_text()
    assert f"<p id='viewer'><a href='{expected.replace('&', '&amp;')}'>" in report

    plain = write_bundle(tmp_path / "out" / "case2", image, labels, table)  # a folder bundle: file links only
    assert "viewer_url" not in plain.manifest
    assert "id='viewer'" not in (tmp_path / "out" / "case2" / "report.html").read_text()
    with pytest.raises(InputError):
        write_bundle(tmp_path / "out" / "case3", image, labels, table, viewer_base="review.example.org")
    assert not (tmp_path / "out" / "case3").exists()


def test_dashboard_row_links_the_viewer(tmp_path):
    from deconvseg.flows.dashboard import summary_row
    from deconvseg.pipeline.case import CaseSummary

    url = viewer_url("https://review.example.org", STUDY, SEG)
    row = summary_row(CaseSummary("c1", tmp_path, 1.0, [], {}, [], {}, url))
    assert row["link"] == url
    assert "link" not in summary_row(CaseSummary("c2", tmp_path, 1.0, [], {}, [], {}))
