"""DICOM Segmentation (SEG) from a label map, with highdicom.

One BINARY segment per structure present, with its name, fixed colour and code from the label
table; frames without any voxel of a segment are omitted. The label map must lie on the grid of
the referenced series: ``labels.array[k]`` belongs to ``reference.datasets[k]``.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.export.dense import dense_labels, index_of
from deconvseg.pipeline.export.dicom_series import SeriesReference, deterministic_uid
from deconvseg.pipeline.files import array_digest, atomic_file
from deconvseg.pipeline.labels import Label, LabelTable
from deconvseg.pipeline.sanitize import dicom_text
from deconvseg.pipeline.volume import Volume

ANATOMY_CATEGORY = codes.SCT.AnatomicalStructure


def coded(label: Label) -> hd.sr.CodedConcept:
    """The property type code of ``label`` (its own code, else 'Anatomical Structure')."""
    if label.code is None:
        return hd.sr.CodedConcept(ANATOMY_CATEGORY.value, ANATOMY_CATEGORY.scheme_designator, ANATOMY_CATEGORY.meaning)
    return hd.sr.CodedConcept(label.code.value, label.code.scheme, label.code.meaning)


def present_labels(labels: Volume, table: LabelTable) -> list[Label]:
    """Labels of ``table`` that occur in ``labels``, in table order.

    Raises:
        InputError: the map holds a value the table does not name.
    """
    values = set(np.unique(labels.array).tolist()) - {0}
    unknown = sorted(values - set(table.values))
    if unknown:
        raise InputError(
            labels.metadata.get("source", "label map"),
            f"label values {unknown} are not in the table",
            "pass a label table (--labels JSON) that names every value",
        )
    return [label for label in table if label.value in values]


def write_dicom_seg(
    path: str | Path,
    labels: Volume,
    table: LabelTable,
    reference: SeriesReference,
    *,
    software_version: str = "0.1.0",
    algorithm_type: str = "AUTOMATIC",
    series_description: str = "deconvseg segmentation",
) -> Path:
    """Write a DICOM-SEG of ``labels`` that references ``reference`` (atomically).

    Args:
        path: output file (``seg.dcm``).
        labels: integer label map on the grid of the referenced series.
        table: names, colours and codes of the values.
        reference: the image series, one dataset per z index.
        software_version: written into Software Versions and the algorithm identification.
        algorithm_type: ``AUTOMATIC`` for model output, ``SEMIAUTOMATIC``/``MANUAL`` otherwise.
        series_description: shown in PACS viewers; name the model and its version
            (``deconvseg.pipeline.pacs.naming.result_description``), at most 64 characters.

    Returns:
        The written path.

    Raises:
        InputError: the map is empty, holds unknown values, or does not match the series size.
    """
    path = Path(path)
    present = present_labels(labels, table)
    if not present:
        raise InputError(path, "the label map holds no structure", "a DICOM-SEG needs at least one labelled voxel")
    rows, cols = int(reference.datasets[0].Rows), int(reference.datasets[0].Columns)
    if labels.shape != (len(reference.datasets), rows, cols):
        raise InputError(
            path,
            f"label map shape {labels.shape} does not match the series ({len(reference.datasets)}, {rows}, {cols})",
            "resample the labels onto the image grid",
        )
    index, keys = dense_labels(labels.array)
    lut = np.zeros(len(keys), dtype=np.uint8 if len(present) < 256 else np.uint16)
    for number, label in enumerate(present, start=1):
        lut[index_of(keys, label.value)] = number
    segment_map = lut[index]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="deconvseg", family=codes.cid7162.ArtificialIntelligence, version=software_version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=dicom_text(label.name) or f"label {label.value}",
            segmented_property_category=ANATOMY_CATEGORY,
            segmented_property_type=coded(label),
            algorithm_type=algorithm_type,
            algorithm_identification=algorithm,
            tracking_uid=deterministic_uid("tracking", reference.series_instance_uid, label.name),
            tracking_id=dicom_text(f"{label.value}:{label.name}"),
            display_color=hd.color.CIELabColor.from_rgb(*label.color),
        )
        for number, label in enumerate(present, start=1)
    ]
    for description, label in zip(descriptions, present):
        if label.modifier is not None:  # e.g. Kidney + Left (highdicom has no argument for it)
            modifier = hd.sr.CodedConcept(label.modifier.value, label.modifier.scheme, label.modifier.meaning)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    content_key = array_digest(labels.array)
    seg = hd.seg.Segmentation(
        source_images=reference.datasets,
        pixel_array=segment_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=deterministic_uid("seg-series", reference.series_instance_uid, content_key),
        series_number=901,
        sop_instance_uid=deterministic_uid("seg", reference.series_instance_uid, content_key),
        instance_number=1,
        manufacturer="deconvseg",
        manufacturer_model_name="deconvseg",
        software_versions=software_version,
        device_serial_number="0",
        series_description=series_description[:64],
        content_label="SEGMENTATION",
        content_description="deconvseg label map",
        omit_empty_frames=True,
    )
    with atomic_file(path) as tmp:
        seg.save_as(tmp)
    return path
