"""Loss, schedule, resumable state, and short real training runs on tiny phantoms."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest
import torch

from deconvseg.models.registry import build_model
from deconvseg.pipeline.checkpoints import load_checkpoint
from deconvseg.pipeline.training.checkpointing import load_train_state, save_train_state
from deconvseg.pipeline.training.losses import dice_ce_loss, lr_factor
from deconvseg.pipeline.training.trainer import RESUME, MemberConfig, TrainConfig, train_ensemble, train_member
from deconvseg.pipeline.training.data import DataConfig, PhantomData, load_training_data

TINY_NET = {"widths": [4, 8, 16]}


def tiny_config(out, steps=12, **kw) -> TrainConfig:
    data = DataConfig(
        phantom=PhantomData(n_train=2, n_val=1, shape=(16, 32, 32), spacing=(8.0, 8.0, 12.0)),
        spacing=(8.0, 8.0, 12.0),
    )
    base = dict(
        out=out, data=data, patch_size=(8, 16, 16), batch_size=2, steps=steps, lr=3e-3, warmup_steps=2,
        val_every=steps, checkpoint_every=4, threads=1,
        members=[MemberConfig(name="m", arch="deconvnet3d", arch_kwargs=TINY_NET, seed=5)],
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_data():
    return load_training_data(tiny_config("unused").data)


def test_dice_ce_loss_is_small_for_confident_correct_logits_and_large_otherwise():
    target = torch.zeros((1, 4, 4, 4), dtype=torch.long)
    target[0, 1:3, 1:3, 1:3] = 1
    good = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float() * 20 - 10
    assert float(dice_ce_loss(good, target)) < 1e-3
    assert float(dice_ce_loss(-good, target)) > 1.5


def test_lr_factor_warms_up_then_decays_to_near_zero():
    factors = [lr_factor(s, s / 100, warmup=10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(0.91**0.9)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] < 0.05


def test_train_state_round_trip_restores_optimizer_and_rng(tmp_path):
    torch.set_num_threads(1)  # as the training code does; more threads than free cores only spin
    model = build_model("deconvnet3d", in_channels=1, out_channels=2, **TINY_NET)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(1, 1, 4, 8, 8)
    model(x).sum().backward()
    opt.step()
    save_train_state(tmp_path / "state", model, opt, {"step": 7, "rng": np.random.default_rng(1).bit_generator.state})
    expected_draw = torch.rand(3)
    model2 = build_model("deconvnet3d", in_channels=1, out_channels=2, **TINY_NET)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0)
    state = load_train_state(tmp_path / "state", model2, opt2)
    assert state["step"] == 7 and opt2.param_groups[0]["lr"] == 1e-3
    torch.testing.assert_close(torch.rand(3), expected_draw)
    for p1, p2 in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(opt.state[p1]["exp_avg"], opt2.state[p2]["exp_avg"])
        torch.testing.assert_close(opt.state[p1]["step"], opt2.state[p2]["step"])
    assert not list((tmp_path / "state").glob("*.pt"))


def test_a_few_steps_lower_the_loss(tiny_data, tmp_path):
    config = tiny_config(tmp_path / "run", steps=30)
    losses = []
    meta = train_member(config, config.members[0], tiny_data, tmp_path / "run" / "m", callback=lambda e: None if e.validated else losses.append(e.loss))
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    assert set(meta["metrics"]["val_dice"]) == {"liver", "spleen", "right_kidney", "left_kidney"}
    model, saved = load_checkpoint(tmp_path / "run" / "m")
    assert saved["normalization"]["scheme"] == "ct" and saved["spacing"] == [8.0, 8.0, 12.0]
    assert saved["training"]["seconds"] > 0 and not (tmp_path / "run" / "m" / RESUME).exists()


class Interrupt(Exception):
    pass


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(tiny_data, tmp_path):
    full = tiny_config(tmp_path / "full", steps=10, checkpoint_every=4)
    reference: list[float] = []
    train_member(full, full.members[0], tiny_data, tmp_path / "full" / "m", callback=lambda e: None if e.validated else reference.append(e.loss))

    cut = tiny_config(tmp_path / "cut", steps=10, checkpoint_every=4)
    folder = tmp_path / "cut" / "m"

    def stop_at_6(event):
        if event.step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_member(cut, cut.members[0], tiny_data, folder, callback=stop_at_6)
    assert json.loads((folder / RESUME / "state.json").read_text())["step"] == 4
    resumed: list[int] = []
    losses: list[float] = []
    train_member(cut, cut.members[0], tiny_data, folder, callback=lambda e: None if e.validated else (resumed.append(e.step), losses.append(e.loss)))
    assert resumed[0] == 5 and resumed[-1] == 10
    np.testing.assert_allclose(losses, reference[4:], rtol=1e-4)


def test_ensemble_writes_ensemble_json_and_skips_finished_members(tiny_data, tmp_path):
    members = [
        MemberConfig(name="b", arch="fcn3d", arch_kwargs=TINY_NET, seed=2, steps=4),
        MemberConfig(name="a", arch_kwargs=TINY_NET, seed=1),
    ]
    config = tiny_config(
        tmp_path / "ens", steps=4, members=members, postprocess_candidates=[{"step": "largest_component"}],
        fusion="weighted_mean", fusion_weights={"b": 2.0},
    )
    pending = train_ensemble(config, tiny_data, only=["a"])
    assert pending == {"members_pending": ["b"]}
    summary = train_ensemble(config, tiny_data)
    written = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert written == summary and list(written["members"]) == ["b", "a"] and written["fusion"] == "weighted_mean"
    # weights follow load_ensemble's order (sorted folder names), not the config's
    assert written["weights_order"] == ["a", "b"] and written["weights"] == [1.0, 2.0]
    assert {"steps", "rejected", "dice"} <= set(written["postprocess"])
    assert written["metrics"]["cases"] == 1 and 0.0 <= written["metrics"]["mean_dice"] <= 1.0
    assert math.isclose(written["train_seconds"], sum(m["seconds"] for m in written["members"].values()), abs_tol=0.2)
    # a member swapped for another: the gather fits the plan to the members as they are now
    shutil.rmtree(tmp_path / "ens" / "b")
    swapped = [members[1], MemberConfig(name="c", arch_kwargs=TINY_NET, seed=3, steps=4)]
    again = train_ensemble(config.model_copy(update={"members": swapped, "fusion_weights": {}}), tiny_data)
    assert again["weights_order"] == ["a", "c"] and "postprocess" in again


def test_weighted_fusion_without_weights_takes_each_members_validation_dice_per_class(tiny_data, tmp_path):
    from deconvseg.pipeline.fusion import dice_weights

    config = tiny_config(
        tmp_path / "dw", steps=4,
        members=[MemberConfig(name=n, arch="deconvnet3d", arch_kwargs=TINY_NET, seed=i) for i, n in enumerate("ab")],
        fusion="weighted_mean",
    )
    written = train_ensemble(config, tiny_data)
    metas = [json.loads((tmp_path / "dw" / n / "model.json").read_text()) for n in "ab"]
    expected = dice_weights([meta["metrics"] for meta in metas], tiny_data.labels.names)
    assert np.allclose(written["weights"], expected, atol=1e-4) and np.asarray(written["weights"]).shape == (2, 5)


def test_time_budget_stops_early_with_a_validated_checkpoint(tiny_data, tmp_path):
    config = tiny_config(tmp_path / "budget", steps=10_000, time_budget_s=1.0)
    meta = train_member(config, config.members[0], tiny_data, tmp_path / "budget" / "m")
    assert 0 < meta["training"]["steps_done"] < 10_000
    assert meta["training"]["history"][-1]["step"] == meta["training"]["steps_done"]


def test_a_cpu_budget_counts_this_process_cpu_seconds_not_the_wall_clock(tiny_data, tmp_path):
    config = tiny_config(tmp_path / "cpu", steps=10_000, time_budget_s=1.0, budget_clock="cpu")
    started = time.process_time()
    meta = train_member(config, config.members[0], tiny_data, tmp_path / "cpu" / "m")
    assert 0 < meta["training"]["steps_done"] < 10_000
    assert time.process_time() - started >= 1.0 and meta["training"]["budget_clock"] == "cpu"
    assert meta["training"]["seconds"] >= 1.0 and meta["training"]["wall_seconds_this_run"] > 0


def test_a_member_without_its_final_record_is_not_finished(tmp_path):
    from deconvseg.pipeline.training.trainer import is_trained

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"training": {"step": 40}}))
    assert not is_trained(folder)
    (folder / "model.json").write_text(json.dumps({"training": {"step": 40, "seconds": 12.0}}))
    assert is_trained(folder)
    (folder / RESUME).mkdir()
    (folder / RESUME / "state.json").write_text("{}")
    assert not is_trained(folder)


def test_a_member_with_its_own_spacing_trains_on_that_grid_and_the_ensemble_fuses_on_the_finest(tiny_data, tmp_path):
    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.segment import member_probabilities

    members = [
        MemberConfig(name="coarse", arch_kwargs=TINY_NET, seed=1),
        MemberConfig(name="fine", arch_kwargs=TINY_NET, seed=2, spacing=(4.0, 4.0, 12.0), patch_size=(8, 32, 32)),
    ]
    train_ensemble(tiny_config(tmp_path / "ens", steps=2, members=members), tiny_data)
    fine = json.loads((tmp_path / "ens" / "fine" / "model.json").read_text())
    assert fine["spacing"] == [4.0, 4.0, 12.0] and fine["patch_size"] == [8, 32, 32]
    assert json.loads((tmp_path / "ens" / "coarse" / "model.json").read_text())["spacing"] == [8.0, 8.0, 12.0]
    image = tiny_data.val[0].original.image
    stack, grid = member_probabilities(image, load_ensemble(tmp_path / "ens"))
    assert grid.spacing == pytest.approx((4.0, 4.0, 12.0))  # the 2x finer in-plane grid of "fine"
    assert stack.shape[0] == 2 and stack.shape[2:] == grid.shape
    np.testing.assert_allclose(stack.sum(axis=1), 1.0, atol=1e-4)
