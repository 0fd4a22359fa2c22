"""The Xu et al. deblurring CNN: k† initialisation, shapes, checkpoint round trip, bundled weights, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deconvseg.models.deblur_cnn import DeblurCNN, deblur_cnn_image
from deconvseg.pipeline.checkpoints import load_checkpoint, save_checkpoint
from deconvseg.pipeline.deblur import filters as D
from deconvseg.pipeline.deblur.data import HELD_OUT, TRAINING
from deconvseg.pipeline.deblur.stage import DeblurConfig, deblur_image, find_dcnn_weights
from deconvseg.pipeline.deblur.train import DeblurTrainConfig, build_initialised_model, train_deblur_cnn
from deconvseg.pipeline.deblur.degrade import xu_degradation
from deconvseg.pipeline.errors import ConfigError
from deconvseg.pipeline.deblur.psf import disk_psf, gaussian_psf

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights" / "deblur"


def small_model(rank: int = 4, length: int = 9, seed: int = 0) -> tuple[DeblurCNN, np.ndarray]:
    torch.manual_seed(seed)
    kdag = D.pseudo_inverse_kernel(disk_psf(2), 0.01, energy=0.999, max_size=length)
    kdag = np.pad(kdag, (length - kdag.shape[0]) // 2)
    sep = D.kernel_svd(kdag, rank=rank, keep_dc=False)
    model = DeblurCNN(rank=rank, length=length, hidden=6, outlier_kernel=4, out_kernel=2)
    model.init_from_separable(sep.u, sep.s, sep.v)
    return model, kdag


def test_initialised_deconvolution_equals_separable_kdag(rng):
    model, kdag = small_model()  # the outlier branch starts at zero: the output is the channel sum k† * y
    image = rng.random((30, 37))
    expected = D.apply_separable(image, D.kernel_svd(kdag, rank=4, keep_dc=False))
    restored = deblur_cnn_image(model.eval(), image, tile=16)
    assert restored.shape == image.shape
    assert np.allclose(restored, expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(21, 21), (22, 35), (40, 19)])
def test_forward_shrinks_by_shrink_and_image_keeps_shape(shape, rng):
    model, _ = small_model()
    x = torch.from_numpy(rng.random((2, 1, shape[0] + model.shrink, shape[1] + model.shrink)).astype(np.float32))
    assert model(x).shape == (2, 1, *shape)
    assert deblur_cnn_image(model.eval(), rng.random(shape)).shape == shape


def test_constructor_refusals():
    with pytest.raises(ValueError, match="odd"):
        DeblurCNN(length=8)
    with pytest.raises(ValueError, match="even"):
        DeblurCNN(outlier_kernel=5, out_kernel=2)
    with pytest.raises(ValueError, match="shape"):
        DeblurCNN(rank=2, length=5).init_from_separable(np.zeros((3, 5)), np.zeros(3), np.zeros((3, 5)))


def test_checkpoint_round_trip(tmp_path, rng):
    model, _ = small_model(seed=3)
    save_checkpoint(tmp_path / "ckpt", model, {"arch": "deblur_cnn", "arch_kwargs": model.config, "degradation": "xu"})
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["arch"] == "deblur_cnn" and meta["degradation"] == "xu" and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    image = rng.random((25, 25))
    assert np.array_equal(deblur_cnn_image(model.eval(), image), deblur_cnn_image(loaded, image))


def test_training_runs_and_never_sees_held_out(tmp_path):
    assert not set(HELD_OUT) & set(TRAINING)
    cfg = DeblurTrainConfig(degradation="gaussian", rank=4, hidden=4, batch=2, patch=8, copies=1, max_crop=96,
                            max_steps=3, checkpoint_steps=2, threads=1)
    saved = []
    model, meta = train_deblur_cnn(cfg, checkpoint=lambda net, info: saved.append(info["training"]["steps"]))
    assert saved == [2]
    assert meta["training"]["steps"] == 3 and np.isfinite(meta["training"]["final_loss"])
    assert meta["training"]["held_out"] == list(HELD_OUT)
    assert model.config["rank"] == 4 and model.config["length"] == 25  # k† support chosen by energy


def test_untrained_model_is_unit_gain_kdag():
    model = build_initialised_model(DeblurTrainConfig(degradation="gaussian", hidden=4))
    flat = torch.full((1, 1, model.shrink + 5, model.shrink + 5), 0.4)
    with torch.no_grad():
        assert torch.allclose(model(flat), torch.full((1, 1, 5, 5), 0.4), atol=1e-5)  # no Wiener DC shrink


def test_bundled_xu_weights_restore_better_than_blurred_and_wiener(rng):
    folder = WEIGHTS / "xu"
    if not (folder / "model.json").is_file():
        pytest.fail(f"bundled weights missing in {folder}; train with deconvseg deblur-train configs/deblur-train-xu.yaml")
    from skimage import data

    image = data.camera()[100:260, 150:330] / 255.0  # a held-out image
    degraded, reference = xu_degradation()(image, rng)
    dcnn = deblur_image(degraded, disk_psf(7), "dcnn")
    wiener = deblur_image(degraded, disk_psf(7), "wiener")
    error = {name: np.sqrt(np.mean((np.clip(x, 0, 1) - reference) ** 2)) for name, x in
             {"blurred": degraded, "wiener": wiener, "dcnn": dcnn}.items()}
    assert error["dcnn"] < error["wiener"] < error["blurred"]


def test_dcnn_weights_are_specific_to_their_psf():
    if not (WEIGHTS / "xu" / "model.json").is_file():
        pytest.skip("bundled weights not trained yet")
    assert find_dcnn_weights(disk_psf(7)).name == "xu"
    with pytest.raises(ConfigError, match="no weights"):
        find_dcnn_weights(gaussian_psf(3.0))
    with pytest.raises(ConfigError, match="no weights"):
        deblur_image(np.zeros((32, 32)), disk_psf(4), "dcnn", DeblurConfig())
