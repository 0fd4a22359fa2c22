"""The training loop: a few hundred MNIST images reach a lower loss than at the start."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from deconvseg.models.autoencoders import build_autoencoder
from deconvseg.pipeline.autoencoding.fit import AutoencoderTrainConfig, gaussian_noise, reconstruction_metrics, train_autoencoder
from deconvseg.pipeline.autoencoding.mnist import read_mnist
from tests.conftest import shared_path



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def few_images() -> torch.Tensor:
    split = read_mnist(shared_path("mnist"), "test")
    return torch.from_numpy(split.as_float()[:300])


@pytest.mark.parametrize("name", ["conv", "conv_upsample", "fc"])
def test_few_hundred_images_train_to_lower_loss(few_images, name):
    model = build_autoencoder(name, 32)
    before = reconstruction_metrics(model, few_images)["test_mse"]
    history = train_autoencoder(model, few_images, AutoencoderTrainConfig(epochs=4, batch_size=32, seed=0))
    assert len(history.epoch_loss) == 5
    assert history.epoch_loss[-1] < 0.7 * history.epoch_loss[0]
    assert reconstruction_metrics(model, few_images)["test_mse"] < 0.7 * before


def test_denoising_option_corrupts_inputs_only(few_images):
    corrupt = gaussian_noise(0.3)
    original = few_images[:4].clone()
    noisy = corrupt(few_images[:4], np.random.default_rng(0))
    assert torch.equal(few_images[:4], original)
    assert 0.0 <= float(noisy.min()) and float(noisy.max()) <= 1.0 and not torch.equal(noisy, original)
    model = build_autoencoder("fc", 32)
    history = train_autoencoder(model, few_images, AutoencoderTrainConfig(epochs=3, batch_size=32, noise_std=0.3))
    assert history.epoch_loss[-1] < history.epoch_loss[0]


def test_training_is_reproducible_with_its_seed(few_images):
    config = AutoencoderTrainConfig(epochs=1, batch_size=64, seed=3, noise_std=0.1)
    model = build_autoencoder("fc")
    losses = [train_autoencoder(copy.deepcopy(model), few_images[:128], config).epoch_loss for _ in range(2)]
    assert losses[0] == losses[1]
