"""Inputs of ``deconvseg demo``: phantom CT volumes as NIfTI files and one as a DICOM series.

Phantoms are deterministic (``deconvseg.pipeline.phantoms.make_phantom`` with fixed seeds), so writing them
again gives the same bytes and a second demo run is served from the cache.
"""

from __future__ import annotations

from pathlib import Path

DEMO_SEED = 7000


def write_demo_inputs(
    folder: Path, cases: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> Path:
    """Write ``cases`` phantom CTs into ``folder``: ``phantom-01.nii.gz``, ... and, when there are
    two or more, the last one as the DICOM series folder ``phantom-NN-dicom/``.

    Args:
        folder: created when missing.
        cases: number of phantoms.
        shape: array shape ``(z, y, x)``.
        spacing: voxel size in mm ``(x, y, z)``.

    Returns:
        ``folder``.
    """
    from deconvseg.pipeline.export.dicom_series import series_from_volume, write_series
    from deconvseg.pipeline.files import atomic_folder
    from deconvseg.pipeline.io.volumes import write_volume
    from deconvseg.pipeline.phantoms import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(1, cases + 1):
        image, _ = make_phantom("CT", shape=shape, spacing=spacing, seed=DEMO_SEED + index)
        if index == cases and cases > 1:
            target = folder / f"phantom-{index:02d}-dicom"
            with atomic_folder(target) as staging:
                write_series(series_from_volume(image, series_description=f"deconvseg demo phantom {index}"), staging)
        else:
            write_volume(image, folder / f"phantom-{index:02d}.nii.gz")
    return folder
