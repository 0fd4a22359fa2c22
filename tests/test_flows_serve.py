"""The batch CLI against a real ``prefect server start`` on a free loopback port (one per module):
artifacts read back through the API, a local Dask cluster of 2 workers, a cron deployment, the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from deconvseg.flows.prefect_env import local_server
from flows_support import REPO, run, write_inputs, write_tiny_model

CLI = ["-c", "from deconvseg.flows.cli import app; app()"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, prefect_env):
    home = tmp_path_factory.mktemp("server-home")
    with local_server(home, log_path=home / "server.log") as api_url:
        assert api_url.startswith("http://127.0.0.1:")
        yield {**prefect_env, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url}


@pytest.fixture(scope="module")
def batch_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    return {"root": root, "source": write_inputs(root / "in", [4, 5, 6]), "model": write_tiny_model(root / "model")}


def _batch(batch_inputs, env, out, *extra):
    config = batch_inputs["root"] / "batch.yaml"
    config.write_text("threads: 1\nretry_delay_s: 0.1\ndashboard_key: test-batch\n")
    return run([*CLI, "batch", str(batch_inputs["source"]), "--out", str(out), "--model", str(batch_inputs["model"]),
                "--config", str(config), "--json", *extra], env)


@pytest.fixture(scope="module")
def default_run(server, batch_inputs):
    out = batch_inputs["root"] / "out-default"
    done = _batch(batch_inputs, server, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(done.stdout.strip().splitlines()[-1])


def _api(env, path, body):
    response = httpx.post(f"{env['PREFECT_API_URL']}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_artifacts_are_readable_through_the_api(server, default_run):
    out, summary = default_run
    assert summary["counts"] == {"cases": 3, "segmented": 3, "cached": 0, "failed": 0}
    keys = ["test-batch-cases", "test-batch-summary", "test-batch-progress"]
    found = {a["key"]: a for a in _api(server, "/artifacts/filter", {"artifacts": {"key": {"any_": keys}}})}
    assert set(found) == set(keys)
    table = found["test-batch-cases"]["data"]
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["case"] for row in table] == ["p4", "p5", "p6"] and {row["status"] for row in table} == {"segmented"}
    assert {"case", "status", "seconds", "uncertainty", "qa_flags", "reason"} <= set(table[0])
    markdown = found["test-batch-summary"]["data"]
    # the report's path as text: browsers refuse file:// links from the Prefect UI (report_base_url makes links)
    assert "**3 cases**" in markdown and f"report: `{out / 'p5' / 'report.html'}`" in markdown
    assert "file://" not in markdown and table[0]["link"] == str(out / "p4" / "report.html")
    assert float(found["test-batch-progress"]["data"]) == 100.0
    [flow_run] = _api(server, "/flow_runs/filter", {"flows": {"name": {"any_": ["segment-batch"]}}, "limit": 5})
    assert flow_run["state"]["type"] == "COMPLETED" and flow_run["state"]["message"].startswith("0 of 3 cases failed")


def _voxels(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_local_dask_cluster_gives_the_same_outputs(server, batch_inputs, default_run):
    default_out, _ = default_run
    out = batch_inputs["root"] / "out-dask"
    done = _batch(batch_inputs, server, out, "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["counts"]["segmented"] == 3
    for case in ("p4", "p5", "p6"):
        for name in ("labels.nii.gz", "uncertainty.nii.gz"):
            np.testing.assert_array_equal(_voxels(out / case / name), _voxels(default_out / case / name))
        assert json.loads((out / case / "stats.json").read_text()) == \
            json.loads((default_out / case / "stats.json").read_text())


def test_cron_deployment_is_visible_with_its_schedule(server, batch_inputs):
    out = batch_inputs["root"] / "out-cron"
    command = [sys.executable, *CLI, "batch", str(batch_inputs["source"]), "--out", str(out),
               "--model", str(batch_inputs["model"]), "--cron", "0 2 * * *", "--name", "test-nightly"]
    env = {**os.environ, **server, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, deployments = time.monotonic() + 120, []
        while time.monotonic() < deadline and not deployments and process.poll() is None:
            time.sleep(1)
            deployments = _api(server, "/deployments/filter", {"deployments": {"name": {"any_": ["test-nightly"]}}})
        assert deployments, f"no deployment; serve exited {process.poll()}"
        [deployment] = deployments
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
        assert deployment["parameters"]["out"] == str(out.resolve())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_cron_without_a_server_is_a_one_line_error(batch_inputs, prefect_env):
    done = run([*CLI, "batch", str(batch_inputs["source"]), "--out", str(batch_inputs["root"] / "x"),
                "--model", str(batch_inputs["model"]), "--cron", "0 2 * * *"], prefect_env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "prefect server start" in done.stderr


def test_demo_leaves_one_bundle_per_phantom(server, batch_inputs, tmp_path):
    done = run([*CLI, "demo", "--out", str(tmp_path / "demo"), "--cases", "2", "--model", str(batch_inputs["model"])],
               server)
    assert done.returncode == 0, done.stderr[-3000:]
    bundles = sorted(p.parent.name for p in (tmp_path / "demo").glob("*/manifest.json"))
    assert bundles == ["phantom-01", "phantom-02-dicom"]
    assert (tmp_path / "demo" / "phantom-02-dicom" / "seg.dcm").is_file()
    assert str(tmp_path / "demo" / "phantom-01" / "report.html") in done.stdout


def test_prefect_yaml_deploys_the_nightly_batch(server):
    env = {**server, "DECONVSEG_REPO": str(REPO)}
    created = run(["-m", "prefect", "work-pool", "create", "deconvseg", "--type", "process"], env)
    assert created.returncode == 0, created.stderr[-2000:]
    deployed = run(["-m", "prefect", "--no-prompt", "deploy", "--all"], env)
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    [deployment] = _api(server, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}})
    assert deployment["entrypoint"] == "flows/segment.py:segment_batch"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
    assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
