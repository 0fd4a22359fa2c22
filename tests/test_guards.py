"""Resource guards: the memory estimate follows its formula and refuses with the figure; time limits fire in any thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from deconvseg.models.registry import build_model
from deconvseg.pipeline.errors import ResourceError
from deconvseg.pipeline.guards import (CaseTimeout, activation_bytes, check_memory, estimate_peak_memory, time_limit,
                             working_size)
from deconvseg.pipeline.ensemble import Ensemble
from deconvseg.pipeline.resample import resample_to_spacing
from deconvseg.pipeline.volume import Volume

META = {"spacing": [2.0, 2.0, 4.0], "patch_size": [8, 16, 16], "in_channels": 1, "out_channels": 3,
        "labels": [{"value": 1, "name": "a"}, {"value": 2, "name": "b"}], "normalization": {"scheme": "mr_zscore"}}


def _member(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("deconvnet3d", in_channels=1, out_channels=3, widths=[4, 8]).eval(), dict(META)


def _model(*seeds: int) -> Ensemble:
    return Ensemble.from_networks([_member(seed) for seed in seeds])


def _image(shape=(20, 40, 30), spacing=(1.0, 1.0, 2.0)) -> Volume:
    return Volume(np.zeros(shape, np.float32), spacing=spacing, metadata={"source": "scan.nii.gz"})


def test_working_size_matches_the_resampler():
    image = _image((13, 37, 29), (0.7, 0.9, 2.5))
    assert working_size(image, (2.0, 2.0, 4.0)) == resample_to_spacing(image, (2.0, 2.0, 4.0)).array.size


def test_estimate_follows_the_formula_and_grows_with_members_and_size():
    image = _image()
    one = estimate_peak_memory(image, _model(0))
    n_w = working_size(image, META["spacing"])
    assert one.parts["probability_maps"] == 8 * 3 * n_w + (1 + 8) * n_w
    assert one.parts["working_images"] == 8 * n_w and one.parts["input"] == image.array.nbytes
    assert one.parts["activations"] > 4 * 16 * 16 * 8 * 4  # at least the first block's 4 feature maps
    two = estimate_peak_memory(image, _model(0, 1))
    assert two.parts["probability_maps"] == 8 * 3 * n_w + (2 + 8) * n_w and two.total > one.total
    big_image = _image((40, 80, 60))
    bigger = estimate_peak_memory(big_image, _model(0))  # 8x the voxels: restoring now outweighs inference
    n_big = working_size(big_image, META["spacing"])
    assert "probability_maps" not in bigger.parts and bigger.total > one.total
    assert bigger.parts["restore_and_export"] == 10 * n_big + 13 * big_image.array.size


def test_activations_are_measured_once_per_network_and_patch():
    member = _model(0).members[0]
    first = activation_bytes(member.network, member.spec)
    assert activation_bytes(member.network, member.spec) == first
    larger = member.spec.model_copy(update={"patch_size": (16, 32, 32)})
    assert activation_bytes(member.network, larger) == pytest.approx(8 * first, rel=0.01)


def test_case_over_budget_is_refused_with_the_figure_and_the_budget():
    image, members = _image(), _model(0)
    estimate = check_memory(image, members, budget_mib=10_000)
    with pytest.raises(ResourceError) as info:
        check_memory(image, members, budget_mib=estimate.mib / 2)
    message = str(info.value)
    assert message.startswith("scan.nii.gz: predicted peak memory ") and "\n" not in message
    assert f"{estimate.mib:,.0f} MiB exceeds the budget of {estimate.mib / 2:,.0f} MiB" in message


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_time_limit_stops_a_busy_block_and_names_it():
    start = time.monotonic()
    with pytest.raises(CaseTimeout, match=r"^p7 \(in/p7.nii.gz\): exceeded the time limit of 0.2 s"):
        with time_limit(0.2, "p7 (in/p7.nii.gz)"):
            _spin(5.0)
    assert time.monotonic() - start < 2.0


def test_time_limit_works_in_a_worker_thread_and_leaves_no_stray_exception():
    outcome = {}

    def work() -> None:
        try:
            with time_limit(0.2, "case"):
                _spin(5.0)
        except CaseTimeout as err:
            outcome["error"] = str(err)
        with time_limit(1.0, "quick"):  # finishes in time: nothing fires afterwards
            _spin(0.05)
        _spin(1.5)
        outcome["after"] = True

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert outcome == {"error": outcome.get("error"), "after": True} and "exceeded the time limit" in outcome["error"]


def test_no_limit_and_bad_limit():
    with time_limit(None):
        _spin(0.01)
    with pytest.raises(ValueError, match="positive"):
        with time_limit(0):
            pass
