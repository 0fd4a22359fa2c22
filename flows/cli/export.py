"""``deconvseg export LABELS --image IMAGE --out DIR``: a review bundle from any label map."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from deconvseg.flows.cli.app import app, one_line_errors


@app.command("export")
@one_line_errors
def export(
    labels: Path = typer.Argument(..., help="Label map (NIfTI/NRRD/MHA/DICOM), e.g. nnU-Net/TotalSegmentator output."),
    image: Path = typer.Option(..., "--image", help="The image the labels belong to: a file or a DICOM series folder."),
    out: Path = typer.Option(
        ..., "--out", help="Bundle folder to write (a bundle written earlier is replaced atomically; nothing else is)."
    ),
    label_file: Path | None = typer.Option(None, "--labels", help="Names: labels.json, {value: name} or a class map."),
    labels_key: str | None = typer.Option(None, "--labels-key", help="Which map of a class-map JSON, e.g. 'total'."),
    uncertainty: Path | None = typer.Option(None, "--uncertainty", help="Voxel uncertainty (0..1) on the image grid."),
    stats_config: Path | None = typer.Option(None, "--config", help="YAML with QA thresholds (StatsConfig)."),
    dicom_series: bool = typer.Option(
        False, "--dicom-series", help="For non-DICOM images: also write a DICOM series, SEG and RTSTRUCT."
    ),
    modality: str | None = typer.Option(None, "--modality", help="CT or MR (default: DICOM tag, else detected)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    deidentify: bool = typer.Option(
        False,
        "--deidentify",
        help="SEG/RTSTRUCT without patient name, ID, birth "
        "date (PatientID = bundle name); manifest without input paths.",
    ),
) -> None:
    """Write labels.nii.gz, seg.dcm/rtstruct.dcm (DICOM images), labels.seg.nrrd, overlays, stats and report.html."""
    import numpy as np

    from deconvseg.pipeline.config import load_config
    from deconvseg.pipeline.errors import InputError
    from deconvseg.pipeline.export.bundle import write_bundle
    from deconvseg.pipeline.export.label_tables import complete_table, read_label_file, with_codes
    from deconvseg.pipeline.export.stats import StatsConfig
    from deconvseg.pipeline.io.volumes import read_volume
    from deconvseg.pipeline.labels import LabelTable
    from deconvseg.pipeline.normalize import with_modality
    from deconvseg.pipeline.outputs import check_bundle_target

    check_bundle_target(out)
    image_volume = read_volume(image)
    try:  # intensities are reported in HU only for CT
        image_volume = with_modality(image_volume, modality)
    except ValueError as err:
        raise InputError(image, str(err), "pass --modality CT or --modality MR") from err
    label_volume = read_volume(labels, kind="label")
    config = load_config(stats_config, StatsConfig) if stats_config else StatsConfig()
    if "expected" not in config.model_fields_set:  # a label file names structures; it does not expect them
        config = config.model_copy(update={"expected": []})
    present = np.unique(label_volume.array).tolist()
    named = read_label_file(label_file, labels_key) if label_file else LabelTable(())
    keep = set(present) | {label.value for label in named if label.name in set(config.expected or [])}
    table = with_codes(complete_table(LabelTable(tuple(label for label in named if label.value in keep)), present))
    summary = write_bundle(
        out,
        image_volume,
        label_volume,
        table,
        uncertainty=read_volume(uncertainty) if uncertainty else None,
        stats_config=config,
        dicom_series=dicom_series,
        deidentify=deidentify,
    )
    result = {
        "bundle": str(summary.path),
        "structures": len([row for row in summary.stats if row["voxels"]]),
        "flags": summary.flags,
        "files": sorted(str(p.relative_to(summary.path)) for p in summary.path.rglob("*") if p.is_file()),
    }
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"wrote {result['bundle']} ({result['structures']} structures, {len(summary.flags)} QA flags)")
        for flag in summary.flags:
            typer.echo(f"  {flag['name']}: {flag['flag']}")
