"""``deconvseg train --workers 2``: one member per worker of a local Dask cluster through Prefect,
against a real loopback ``prefect server start``, gives the ensemble the sequential run gives."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deconvseg.flows.cli import app
from deconvseg.flows.prefect_env import local_server
from flows_support import run
from test_cli_train import TINY as CLI_TINY

CLI = ["-c", "from deconvseg.flows.cli import app; app()"]
TINY = CLI_TINY + "device: cpu\n"  # the sequential run and the workers on the same device
STRUCTURE = ("arch", "arch_kwargs", "in_channels", "out_channels", "labels", "spacing", "patch_size", "normalization")


def _config(root, name):
    path = root / f"{name}.yaml"
    path.write_text(TINY.format(out=root / name))
    return path


@pytest.mark.timeout(240)
def test_members_on_a_local_dask_cluster_give_the_sequential_ensemble(tmp_path, prefect_env):
    sequential = CliRunner().invoke(app, ["train", str(_config(tmp_path, "seq")), "--quiet"])
    assert sequential.exit_code == 0, sequential.output
    home = tmp_path / "home"
    with local_server(home, log_path=tmp_path / "server.log") as api_url:
        env = {**prefect_env, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url}
        done = run([*CLI, "train", str(_config(tmp_path, "dask")), "--workers", "2", "--api-url", api_url], env)
    assert done.returncode == 0, done.stderr[-3000:]
    seq = json.loads((tmp_path / "seq" / "ensemble.json").read_text())
    dask = json.loads((tmp_path / "dask" / "ensemble.json").read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == dask
    assert set(dask) == set(seq) and dask["weights_order"] == seq["weights_order"] == ["a", "b"]
    assert dask["fusion"] == seq["fusion"] and dask["weights"] == seq["weights"]
    for name in ("a", "b"):
        ours, theirs = (json.loads((tmp_path / run_ / name / "model.json").read_text()) for run_ in ("dask", "seq"))
        assert {key: ours[key] for key in STRUCTURE} == {key: theirs[key] for key in STRUCTURE}
        # Same seed, batches seeded per step, one thread: the same weights, not just the same shapes.
        assert ours["weights_sha256"] == theirs["weights_sha256"]
        assert ours["metrics"] == theirs["metrics"] and ours["training"]["device"] == "cpu"
