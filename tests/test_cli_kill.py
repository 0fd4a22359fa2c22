"""SIGKILL of ``deconvseg batch``: within seconds no process of that run remains (flow child, Prefect's
temporary server), and a rerun gives the clean run's labels (issue 17)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import psutil

from flows_support import REPO, run, write_inputs, write_tiny_model

CLI = ["-c", "from deconvseg.flows.cli import app; app()"]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _labels(out):
    return {p.parent.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*/labels.nii.gz"))}


def test_sigkill_of_the_batch_cli_leaves_no_process_and_a_rerun_gives_the_clean_labels(tmp_path, prefect_env):
    model = write_tiny_model(tmp_path / "model", members=1)
    source = write_inputs(tmp_path / "in", [21, 22])
    env = {**prefect_env, "PREFECT_HOME": str(tmp_path / "home")}  # embedded server: the CLI's child starts one

    def batch(out):
        return [*CLI, "batch", str(source), "--out", str(out), "--model", str(model)]

    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    assert run(batch(clean), env).returncode == 0
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    cli = subprocess.Popen([sys.executable, *batch(crashed)], env=full_env, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    family: set[int] = set()
    try:  # kill once a bundle is complete, remembering every process the run started
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and cli.poll() is None and not list(crashed.glob("*/manifest.json")):
            family |= {p.pid for p in psutil.Process(cli.pid).children(recursive=True)}
            time.sleep(0.05)
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait()
    assert len(family) >= 2, "the run had no flow child with a server below it"
    start = time.monotonic()
    while any(_alive(pid) for pid in family) and time.monotonic() - start < 10:
        time.sleep(0.1)
    assert [pid for pid in family if _alive(pid)] == [], "processes of the killed run remain"
    assert time.monotonic() - start < 5
    assert run(batch(crashed), env).returncode == 0
    clean_labels, rerun_labels = _labels(clean), _labels(crashed)
    assert clean_labels.keys() == rerun_labels.keys() == {"p21", "p22"}
    assert all(np.array_equal(clean_labels[k], rerun_labels[k]) for k in clean_labels)
