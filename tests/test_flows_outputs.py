"""The batch lock on an output folder and the sweep of what a killed run left half-written."""

from __future__ import annotations

import pytest

from deconvseg.flows.outputs import batch_lock, sweep_partial
from deconvseg.pipeline.errors import ResourceError


def test_a_second_batch_into_the_same_folder_is_refused(tmp_path):
    with batch_lock(tmp_path):
        with pytest.raises(ResourceError, match="another batch is writing into this folder"):
            with batch_lock(tmp_path):
                pass
    with batch_lock(tmp_path):  # released on exit
        pass


def test_sweep_removes_only_this_batchs_leftovers(tmp_path):
    for name in [".a.tmp-x1", ".a.old-x2", ".b.tmp-x3", "a", "c"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "labels.nii.gz").write_bytes(b"partial")
    (tmp_path / ".tmp-123.json").write_text("{")
    removed = sweep_partial(tmp_path, ["a", "c"])
    assert sorted(p.name for p in removed) == [".a.old-x2", ".a.tmp-x1", ".tmp-123.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.tmp-x3", "a", "c"]
