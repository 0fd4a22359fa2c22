"""Normalisation: nnU-Net's CT scheme, MR invariance to a*x+b, Nyúl landmarks, modality detection, fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deconvseg.pipeline.io.datasets import Case
from deconvseg.pipeline.normalize import detect_modality, foreground_mask, fingerprint, fit_normalization, normalize
from deconvseg.pipeline.phantoms import make_phantom

SMALL = {"shape": (24, 48, 48), "spacing": (5.0, 5.0, 8.0)}


@pytest.fixture(scope="module")
def mr_images():
    return [make_phantom("MR", seed=seed, **SMALL)[0] for seed in range(3)]


@pytest.mark.parametrize("scheme", ["mr_zscore", "nyul"])
@pytest.mark.parametrize(("a", "b"), [(3.7, -250.0), (0.01, 1e4), (1.0, 1e3)])
def test_mr_output_is_invariant_to_affine_intensity_changes(mr_images, scheme, a, b):
    spec = fit_normalization(scheme, mr_images[1:])
    image = mr_images[0]
    changed = image.with_array(image.array.astype(np.float64) * a + b)
    np.testing.assert_allclose(normalize(changed, spec).array, normalize(image, spec).array, rtol=0, atol=1e-4)


def test_mr_zscore_gives_zero_mean_unit_std_on_the_foreground(mr_images):
    out = normalize(mr_images[0], {"scheme": "mr_zscore"})
    assert out.array.dtype == np.float32 and out.same_grid(mr_images[0])
    fg = foreground_mask(mr_images[0].array)
    assert 0.2 < fg.mean() < 0.8  # the body, not the air around it
    assert float(out.array[fg].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(out.array[fg].std()) == pytest.approx(1.0, abs=1e-5)
    assert float(np.median(out.array[~fg])) < -1.5  # air lies well below the tissue


def test_nyul_maps_each_image_onto_the_learned_landmarks(mr_images):
    spec = fit_normalization("nyul", mr_images)
    assert spec["landmarks"][0] == 0.0 and spec["landmarks"][-1] == pytest.approx(1.0)
    assert np.all(np.diff(spec["landmarks"]) > 0)
    json.dumps(spec)  # stored in model.json
    # A new image with a different bias/gain lands on the same scale as the training images.
    other = make_phantom("MR", seed=9, **SMALL)[0]
    scaled = normalize(other.with_array(other.array * 5.0 + 100.0), spec)
    reference = normalize(mr_images[0], spec)
    assert np.median(scaled.array) == pytest.approx(np.median(reference.array), abs=0.1)


def test_ct_scheme_uses_dataset_foreground_percentiles_and_moments():
    pairs = [make_phantom("CT", seed=seed, **SMALL) for seed in range(3)]
    spec = fit_normalization("ct", [p[0] for p in pairs], [p[1] for p in pairs])
    fg = np.concatenate([img.array[lab.array > 0] for img, lab in pairs]).astype(float)
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert spec["clip"] == pytest.approx([lo, hi], abs=1.0)
    assert spec["mean"] == pytest.approx(np.clip(fg, lo, hi).mean(), rel=0.02)
    image = pairs[0][0]
    before = image.array.copy()
    out = normalize(image, spec)
    np.testing.assert_array_equal(image.array, before)  # the caller's array is untouched
    assert out.array.min() == pytest.approx((lo - spec["mean"]) / spec["std"], abs=0.05)  # air is clipped
    assert abs(float(out.array[pairs[0][1].array > 0].mean())) < 0.3


def test_auto_scheme_and_modality_detection_with_override():
    ct, _ = make_phantom("CT", seed=0, **SMALL)
    mr, _ = make_phantom("MR", seed=0, **SMALL)
    untagged_ct, untagged_mr = ct.with_array(ct.array, modality=None), mr.with_array(mr.array, modality=None)
    assert detect_modality(untagged_ct) == "CT" and detect_modality(untagged_mr) == "MR"
    assert detect_modality(untagged_ct, override="mr") == "MR"
    assert detect_modality(mr.with_array(mr.array - 2000.0)) == "MR"  # the tag wins over statistics
    assert fit_normalization("auto", [untagged_ct])["scheme"] == "ct"
    assert fit_normalization("auto", [untagged_mr]) == {"scheme": "mr_zscore"}
    with pytest.raises(ValueError, match="override must be 'CT' or 'MR'"):
        detect_modality(ct, override="PET")
    with pytest.raises(ValueError, match="only images"):
        normalize(make_phantom("CT", seed=0, **SMALL)[1], {"scheme": "mr_zscore"})


def test_fingerprint_reports_spacing_intensities_and_class_frequencies():
    cases = []
    for seed, spacing in enumerate([(1.0, 1.0, 5.0), (1.2, 1.2, 6.0), (0.8, 0.8, 4.0)]):
        image, label = make_phantom("CT", shape=(16, 48, 48), spacing=spacing, seed=seed)
        cases.append(Case(f"c{seed}", image, label))
    fp = fingerprint(cases)
    json.dumps(fp)
    assert fp["n_cases"] == 3 and fp["modality"] == "CT"
    assert fp["median_spacing"] == [1.0, 1.0, 5.0] and fp["anisotropic"] is True
    assert fp["suggested_spacing"][2] == pytest.approx(np.percentile([5.0, 6.0, 4.0], 10))
    assert set(fp["class_frequencies"]) == {"0", "1", "2", "3", "4"}
    assert sum(fp["class_frequencies"].values()) == pytest.approx(1.0)
    assert fp["class_frequencies"]["1"] > fp["class_frequencies"]["2"]  # the liver is the largest organ
    assert 0 < fp["intensity"]["percentile_00_5"] < fp["intensity"]["median"] < fp["intensity"]["percentile_99_5"]


def test_with_modality_tags_a_ct_without_changing_voxels():
    from deconvseg.pipeline.normalize import with_modality
    from deconvseg.pipeline.phantoms import make_phantom

    image, _ = make_phantom("CT", shape=(16, 32, 32), spacing=(4.0, 4.0, 6.0), seed=3)
    untagged = image.with_array(image.array, modality=None)
    tagged = with_modality(untagged)
    assert tagged.modality == "CT" and untagged.modality is None
    assert tagged.array is untagged.array and tagged.same_grid(untagged)
    assert with_modality(untagged, "mr").modality == "MR"
