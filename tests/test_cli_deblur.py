"""``deconvseg deblur``: PNG/TIFF round trips, a volume slice by slice, one-line errors, the folder flow."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from deconvseg.flows.cli import app
from deconvseg.pipeline.io.volumes import read_volume, write_volume
from deconvseg.pipeline.deblur.psf import disk_psf
from deconvseg.pipeline.volume import Volume

runner = CliRunner()


def sharp(rng: np.random.Generator, shape: tuple[int, int] = (80, 96)) -> np.ndarray:
    image = np.full(shape, 0.3)
    image[20:60, 25:70] = 0.8
    image[35:45, 10:90] = 0.1
    return np.clip(image + 0.02 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.0), 0, 1)


def blurred(image: np.ndarray) -> np.ndarray:
    return ndimage.convolve(image, disk_psf(3), mode="reflect")


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("method", ["wiener", "svd"])
def test_png_round_trip(tmp_path, rng, method):
    truth = sharp(rng)
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(np.round(blurred(truth) * 255).astype(np.uint8)).save(src)
    result = runner.invoke(app, ["deblur", str(src), str(dst), "--psf", "disk:3", "--method", method, "--nsr", "0.003"])
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(dst))
    assert out.dtype == np.uint8 and out.shape == truth.shape
    assert rmse(out / 255.0, truth) < 0.8 * rmse(np.asarray(Image.open(src)) / 255.0, truth)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []  # no temp files left


def test_tiff_keeps_float_values_unclipped(tmp_path, rng):
    import tifffile

    step = np.zeros((48, 48), np.float32)
    step[:, 24:] = 1.0
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, blurred(step).astype(np.float32))
    result = runner.invoke(app, ["deblur", str(src), str(dst), "--psf", "disk:3", "--nsr", "0.0001"])
    assert result.exit_code == 0, result.output
    out = tifffile.imread(dst)
    assert out.dtype == np.float32 and out.shape == step.shape
    assert out.max() > 1.0 and out.min() < 0.0  # overshoot kept: no silent clipping


def test_volume_slice_wise_keeps_geometry(tmp_path, rng):
    truth = np.stack([sharp(rng, (40, 44)) for _ in range(3)]) * 400 - 100
    volume = Volume(np.stack([blurred(s) for s in truth]).astype(np.float32), spacing=(0.7, 0.7, 2.5),
                    origin=(-10.0, 5.0, 30.0), direction=np.diag([1.0, -1.0, 1.0]))
    src, dst = tmp_path / "in.nii.gz", tmp_path / "out.nii.gz"
    write_volume(volume, src)
    result = runner.invoke(app, ["deblur", str(src), str(dst), "--psf", "disk:3", "--method", "svd", "--nsr", "0.003"])
    assert result.exit_code == 0, result.output
    out = read_volume(dst)
    assert out.shape == volume.shape
    assert np.allclose(out.spacing, volume.spacing) and np.allclose(out.origin, volume.origin)
    assert np.allclose(out.direction, volume.direction)
    assert rmse(out.array, truth) < 0.8 * rmse(volume.array, truth)


def test_bad_inputs_give_one_line_errors(tmp_path, rng):
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(src)
    cases = [
        (["deblur", str(tmp_path / "missing.png"), str(tmp_path / "o.png")], "no such file"),
        (["deblur", str(src), str(tmp_path / "o.png"), "--psf", "box:3"], "unknown form"),
        (["deblur", str(src), str(tmp_path / "o.png"), "--method", "magic"], "method"),
        (["deblur", str(src), str(tmp_path / "o.jpg")], "unsupported output suffix"),
        (["deblur", str(src), str(tmp_path / "o.png"), "--psf", "disk:4", "--method", "dcnn"], "no weights"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "o.png").exists()


@pytest.mark.slow
def test_folder_runs_the_prefect_flow(tmp_path, rng, prefect_env):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.round(blurred(sharp(rng)) * 255).astype(np.uint8)).save(src / f"img{i}.png")
    env = {**os.environ, **prefect_env}
    done = subprocess.run([sys.executable, "-c", "from deconvseg.flows.cli import app; app()", "deblur", str(src), str(dst), "--psf", "disk:3"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in dst.iterdir()) == ["img0.png", "img1.png"]
