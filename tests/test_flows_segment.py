"""The batch flow on Prefect's embedded server with a temporary PREFECT_HOME (one child process).

Three runs in one process (the embedded server starts once): a batch of 4 phantoms with one
corrupt input, the same batch again (served from the cache), and again after one input changed.
"""

from __future__ import annotations

import json

import pytest

from deconvseg.flows.segment import is_transient, one_line
from flows_support import run, write_inputs, write_phantom, write_tiny_model
from deconvseg.pipeline.errors import InputError

DRIVER = """
import json, sys
from pathlib import Path
from deconvseg.flows.segment import segment_batch

source, out, model, changed, report = sys.argv[1:6]
runs = []

def stamp():
    return {p.parent.name: [p.stat().st_ino, p.stat().st_mtime_ns] for p in sorted(Path(out).glob("*/labels.nii.gz"))}

def batch():
    state = segment_batch(source, out, model, {"retry_delay_s": 0.1}, return_state=True)
    runs.append({"type": state.type.value, "message": state.message, "summary": state.result(raise_on_failure=False),
                 "bundles": stamp(), "entries": sorted(p.name for p in Path(out).iterdir())})

batch()
batch()
Path(source, "p1.nii.gz").write_bytes(Path(changed).read_bytes())
batch()
Path(report).write_text(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_env):
    root = tmp_path_factory.mktemp("batch")
    source = write_inputs(root / "in", [0, 1, 2, 3], corrupt="p3.nii.gz")
    changed = write_phantom(root / "changed.nii.gz", seed=50)
    model = write_tiny_model(root / "model")
    report = root / "runs.json"
    done = run(["-c", DRIVER, str(source), str(root / "out"), str(model), str(changed), str(report)], prefect_env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())


def _status(summary):
    return {row["case"]: row["status"] for row in summary["rows"]}


def test_failing_case_is_recorded_and_others_finish(runs):
    first = runs[0]
    assert first["type"] == "FAILED" and first["message"] == "1 of 4 cases failed (3 segmented, 0 cached)"
    assert _status(first["summary"]) == {"p0": "segmented", "p1": "segmented", "p2": "segmented", "p3": "failed"}
    [failure] = [row for row in first["summary"]["rows"] if row["status"] == "failed"]
    assert "p3.nii.gz" in failure["reason"] and "\n" not in failure["reason"]
    # no bundle and no temporary folder for p3; the lock file stays (the kernel releases the lock)
    assert first["entries"] == [".deconvseg-batch.lock", "batch.json", "p0", "p1", "p2"]
    segmented = [row for row in first["summary"]["rows"] if row["status"] == "segmented"]
    assert all(row["seconds"] > 0 and set(row["volumes_ml"]) <= {"liver", "spleen", "right_kidney", "left_kidney"}
               for row in segmented)


def test_rerun_hits_the_cache_without_running_the_network(runs):
    first, second = runs[0], runs[1]
    assert second["message"] == "1 of 4 cases failed (0 segmented, 3 cached)"
    assert _status(second["summary"]) == {"p0": "cached", "p1": "cached", "p2": "cached", "p3": "failed"}
    assert second["bundles"] == first["bundles"]  # same inode and mtime: nothing was rewritten
    cached = {row["case"]: row for row in second["summary"]["rows"] if row["status"] == "cached"}
    assert all(row["seconds"] == 0.0 for row in cached.values())
    before = {row["case"]: row["volumes_ml"] for row in first["summary"]["rows"]}
    assert all(cached[case]["volumes_ml"] == before[case] for case in cached)


def test_changed_input_is_recomputed(runs):
    second, third = runs[1], runs[2]
    assert _status(third["summary"]) == {"p0": "cached", "p1": "segmented", "p2": "cached", "p3": "failed"}
    assert third["bundles"]["p1"] != second["bundles"]["p1"]
    assert {k: v for k, v in third["bundles"].items() if k != "p1"} == \
        {k: v for k, v in second["bundles"].items() if k != "p1"}


def test_only_io_hiccups_are_retried():
    assert is_transient(OSError(5, "Input/output error")) and is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError(2, "gone")) and not is_transient(PermissionError(13, "no"))
    assert not is_transient(InputError("a.nii", "truncated", "re-copy")) and not is_transient(RuntimeError("bug"))
    assert one_line(ValueError("two\nlines")) == "ValueError: two lines"
