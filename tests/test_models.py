"""Networks: shape kept for odd sizes, gradients reach every parameter, switch unpooling, two-scale crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deconvseg.models.blocks import crop_center, per_level, triple
from deconvseg.models.deconvnet3d import DeconvNet3d, unpool
from deconvseg.models.fcn3d import FCN3d
from deconvseg.models.registry import build_model
from deconvseg.models.two_scale import TwoScaleNet, upsample_center

ODD = (7, 37, 41)
ANISO = dict(widths=(4, 8, 12), pool_sizes=[(1, 2, 2), (2, 2, 2)], kernel_sizes=[(1, 3, 3), 3, 3])

NETWORKS = {
    "deconvnet3d-none": lambda: DeconvNet3d(1, 3, skip="none", **ANISO),
    "deconvnet3d-concat": lambda: DeconvNet3d(1, 3, skip="concat", **ANISO),
    "deconvnet3d-add-batch": lambda: DeconvNet3d(1, 3, skip="add", norm="batch", **ANISO),
    "deconvnet3d-iso-deep": lambda: DeconvNet3d(2, 2, widths=(4, 4, 4, 4), norm="none", convs_per_block=1),
    "fcn3d": lambda: FCN3d(1, 3, **ANISO),
    "fcn3d-wide-fuse": lambda: FCN3d(1, 3, fuse_channels=6, **ANISO),
    "two_scale": lambda: TwoScaleNet(1, 3, context_factor=(1, 3, 3), **ANISO),
}


def _inputs(net: torch.nn.Module, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    channels = net.local.encoder[0][0].in_channels if isinstance(net, TwoScaleNet) else net.encoder[0][0].in_channels
    x = torch.randn(2, channels, *shape, generator=gen)
    return (x, torch.randn(x.shape, generator=gen)) if isinstance(net, TwoScaleNet) else (x,)


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("shape", [ODD, (4, 16, 16), (1, 9, 5)])
def test_output_keeps_input_shape(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = NETWORKS[name]().eval()
    with torch.no_grad():
        out = net(*_inputs(net, shape))
    assert out.shape == (2, net.out_channels, *shape)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    net = NETWORKS[name]().train()
    shape = (5, 13, 11)
    out = net(*_inputs(net, shape))
    target = torch.randint(0, net.out_channels, (2, *shape), generator=torch.Generator().manual_seed(1))
    F.cross_entropy(out, target).backward()
    for pname, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


def test_unpooling_puts_values_at_the_switches() -> None:
    x = torch.zeros(1, 1, 2, 4, 5)
    x[0, 0, 1, 0, 1] = 5.0  # maximum of window (0, 0, 0)
    x[0, 0, 0, 3, 2] = 7.0  # window (0, 1, 1)
    x[0, 0, 0, 2, 4] = 3.0  # window (0, 1, 2): the last, partial window of an odd axis (ceil mode)
    x[0, 0, 1, 1, 3] = -1.0
    pooled, switches = F.max_pool3d(x, 2, 2, ceil_mode=True, return_indices=True)
    assert pooled.shape == (1, 1, 1, 2, 3)
    values = torch.arange(1.0, 7.0).reshape(1, 1, 1, 2, 3)  # distinct values to follow each one
    out = unpool(values, switches, (2, 2, 2), x.shape[-3:])
    assert out.shape == x.shape
    assert out[0, 0, 1, 0, 1] == 1.0 and out[0, 0, 0, 3, 2] == 5.0 and out[0, 0, 0, 2, 4] == 6.0
    assert torch.count_nonzero(out) == 6  # one voxel per window, zeros elsewhere
    # every window without a strict maximum keeps its first voxel (all-zero windows)
    assert out[0, 0, 0, 0, 2] == 2.0 and out[0, 0, 0, 2, 0] == 4.0 and out[0, 0, 0, 0, 4] == 3.0


def test_anisotropic_unpooling_restores_odd_size() -> None:
    x = torch.randn(1, 2, 3, 9, 11, generator=torch.Generator().manual_seed(3))
    pooled, switches = F.max_pool3d(x, (1, 2, 2), (1, 2, 2), ceil_mode=True, return_indices=True)
    out = unpool(pooled, switches, (1, 2, 2), x.shape[-3:])
    assert out.shape == x.shape
    kept = out != 0
    assert torch.equal(out[kept], x[kept])  # values land exactly where the maxima were
    assert kept.sum() == pooled.numel()


def test_upsample_center_matches_full_upsampling_then_crop() -> None:
    gen = torch.Generator().manual_seed(4)
    for factor, size in [((1, 3, 3), ODD), ((2, 2, 2), (5, 6, 7)), ((3, 1, 2), (5, 4, 9))]:
        coarse = torch.randn(1, 2, *size, generator=gen)
        full = F.interpolate(coarse, scale_factor=tuple(map(float, factor)), mode="trilinear", align_corners=False)
        expected = crop_center(full, size, [(f * s) // 2 - s // 2 for f, s in zip(factor, size)])
        torch.testing.assert_close(upsample_center(coarse, factor, size), expected, atol=1e-5, rtol=1e-5)


def test_upsample_center_inverts_context_crop_on_a_linear_image() -> None:
    # Trilinear interpolation reproduces a linear image exactly, so upsampling the pooled context and
    # cropping must give back the local patch voxel for voxel -- only if both agree on the geometry.
    from deconvseg.pipeline.patches import context_crop, crop_patch

    z, y, x = np.meshgrid(np.arange(30.0), np.arange(40.0), np.arange(50.0), indexing="ij")
    image = (0.5 * z + 2.0 * y - 1.5 * x).astype(np.float32)
    for size, factor in [((5, 7, 6), (1, 3, 3)), ((3, 5, 4), (2, 2, 3)), ((4, 6, 5), (3, 1, 2))]:
        center = (15, 20, 25)
        local = crop_patch(image, center, size)
        context = torch.from_numpy(context_crop(image, center, size, factor))[None, None]
        up = upsample_center(context, factor, size)[0, 0].numpy()
        np.testing.assert_allclose(up, local, atol=1e-3)


def test_two_scale_uses_the_context_and_checks_its_shape() -> None:
    torch.manual_seed(0)
    net = TwoScaleNet(1, 2, context_factor=3, widths=(4, 8)).eval()
    assert net.context_factor == [3, 3, 3]
    local, context = _inputs(net, (3, 8, 8))
    with torch.no_grad():
        assert not torch.allclose(net(local, context), net(local, context + 1.0))
        with pytest.raises(ValueError, match="context must have"):
            net(local, context[..., :-1])


def test_skip_variants_differ_only_where_documented() -> None:
    none, concat = DeconvNet3d(1, 2, skip="none", **ANISO), DeconvNet3d(1, 2, skip="concat", **ANISO)
    assert sum(p.numel() for p in concat.parameters()) > sum(p.numel() for p in none.parameters())
    with pytest.raises(ValueError, match="skip"):
        DeconvNet3d(1, 2, skip="sum")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: triple((1, 2)), "three positive"),
        (lambda: per_level([2, 2], 3, 2, "pool_sizes"), "needs 3 entries"),
        (lambda: DeconvNet3d(widths=(8,)), "at least two"),
        (lambda: FCN3d(norm="group"), "norm must be"),
        (lambda: build_model("segnet"), "unknown architecture"),
    ],
)
def test_invalid_options_are_refused(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_bf16_autocast_and_channels_last_agree_with_fp32() -> None:
    torch.manual_seed(0)
    net = DeconvNet3d(1, 3, **ANISO).eval()
    (x,) = _inputs(net, (4, 12, 12))
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last_3d)
        out_cl = net_cl(x.to(memory_format=torch.channels_last_3d))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf = net(x)
    torch.testing.assert_close(out_cl, ref, atol=1e-4, rtol=1e-4)
    assert (out_bf.float().argmax(1) == ref.argmax(1)).float().mean() > 0.9


def test_fcn_upsampling_starts_as_nearest_neighbour() -> None:
    net = FCN3d(1, 3, widths=(4, 8), pool_sizes=[(1, 2, 2)])
    scores = torch.arange(6.0).reshape(1, 3, 1, 1, 2)
    with torch.no_grad():
        up = net.up[0](scores)
    expected = scores.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    assert torch.equal(up, expected)


def test_unpooling_keeps_dtype_and_memory_format_under_autocast() -> None:
    x = torch.randn(1, 4, 3, 8, 9).to(memory_format=torch.channels_last_3d)
    pooled, switches = F.max_pool3d(x, 2, 2, ceil_mode=True, return_indices=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unpool(pooled.bfloat16(), switches, (2, 2, 2), x.shape[-3:])
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out.float(), unpool(pooled, switches, (2, 2, 2), x.shape[-3:]), atol=0.02, rtol=0.01)
