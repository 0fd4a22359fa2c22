"""Autoencoder networks: shapes, parameter counts, and what switch unpooling does."""

from __future__ import annotations

import pytest
import torch

from deconvseg.models.autoencoders import ConvAutoencoder, FCAutoencoder, ShapeAutoencoder3D, build_autoencoder, count_parameters



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.mark.parametrize("name", ["conv", "conv_upsample", "fc"])
@pytest.mark.parametrize("code_size", [8, 32])
def test_image_autoencoders_keep_shape_and_code_size(name, code_size):
    model = build_autoencoder(name, code_size)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert model(x).shape == x.shape
    code = model.encode(x)
    code = code[0] if isinstance(code, tuple) else code
    assert code.shape == (3, code_size)


def test_conv_models_share_weights_layout_and_have_fewer_parameters_than_fc():
    conv, upsample, fc = (count_parameters(build_autoencoder(n, 32)) for n in ("conv", "conv_upsample", "fc"))
    assert conv == upsample
    assert conv < fc


def test_switch_unpooling_puts_each_maximum_back_at_its_position():
    model = ConvAutoencoder()
    x = torch.rand(2, 16, 28, 28, generator=torch.Generator().manual_seed(1))
    pooled, switches = model.pool(x)
    restored = model._up(pooled, switches)
    window_max = torch.nn.functional.max_pool2d(x, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    is_max = x == window_max
    assert torch.equal(restored[is_max], x[is_max])
    assert torch.count_nonzero(restored[~is_max]) == 0
    assert torch.count_nonzero(restored) == pooled.numel()  # one value per 2x2 window


def test_switch_decoder_depends_on_switches_and_upsample_decoder_does_not():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 1, 28, 28, generator=gen), torch.rand(1, 1, 28, 28, generator=gen)
    for mode, depends in (("switch", True), ("upsample", False)):
        model = ConvAutoencoder(unpool=mode).eval()
        code, switches_a = model.encode(a)
        _, switches_b = model.encode(b)
        same = torch.allclose(model.decode(code, switches_a), model.decode(code, switches_b))
        assert same is not depends


def test_fc_autoencoder_hidden_layers():
    model = FCAutoencoder(code_size=16, hidden=(128, 64))
    assert [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)] == [128, 64, 16]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_shape_autoencoder_returns_class_logits_on_its_grid():
    model = ShapeAutoencoder3D(n_classes=4, grid=(8, 32, 24), channels=(4, 8, 8), code_size=16)
    x = torch.zeros(2, 4, 8, 32, 24)
    assert model(x).shape == (2, 4, 8, 32, 24)
    assert model.encode(x).shape == (2, 16)
    spatial = ShapeAutoencoder3D(n_classes=4, grid=(8, 32, 24), channels=(4, 8, 8), code_size=2, bottleneck="spatial")
    assert spatial(x).shape == (2, 4, 8, 32, 24)
    assert spatial.encode(x).shape == (2, 2, 1, 4, 3)
    with pytest.raises(ValueError, match="divisible by 8"):
        ShapeAutoencoder3D(grid=(10, 32, 32))
    with pytest.raises(ValueError, match="bottleneck"):
        ShapeAutoencoder3D(bottleneck="sparse")


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown autoencoder"):
        build_autoencoder("vae")
    with pytest.raises(ValueError, match="unpool"):
        ConvAutoencoder(unpool="bilinear")
