"""RT Structure Set (RTSTRUCT) from a label map, with pydicom and scikit-image contours.

Each structure becomes one ROI; each slice's mask becomes closed planar contours traced at the
0.5 iso-line (marching squares, ``skimage.measure.find_contours``), so a point-in-polygon fill of
the contours (even-odd rule for holes) gives the mask back. Contour points are placed in the
patient frame with each referenced slice's own Image Position/Orientation and Pixel Spacing
(PS3.3 C.7.6.2.1.1), never with a guessed affine: this is where rotated or mirrored RTSTRUCTs
come from in other tools.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage
from skimage.measure import approximate_polygon, find_contours

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.export.dicom_seg import present_labels
from deconvseg.pipeline.export.dicom_series import SeriesReference, deterministic_uid
from deconvseg.pipeline.files import array_digest, atomic_file
from deconvseg.pipeline.labels import LabelTable
from deconvseg.pipeline.sanitize import dicom_text
from deconvseg.pipeline.volume import Volume

logger = logging.getLogger(__name__)
CONTOUR_DATA = Tag(0x3006, 0x0050)
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (PS3.3 C.8.8.5)
_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D boolean mask as ``(n, 2)`` arrays of ``(row, col)`` pixel indices."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    r0, c0 = rows[0], cols[0]  # trace only the mask's bounding box, padded by one empty pixel
    padded = np.pad(mask[r0 : rows[-1] + 1, c0 : cols[-1] + 1].astype(np.float32), 1)
    offset = np.array([r0 - 1.0, c0 - 1.0])
    contours = []
    for contour in find_contours(padded, 0.5):
        contour = approximate_polygon(contour[:-1] + offset, tolerance=0.0)  # drop the repeated end point
        if len(contour) >= 3:
            contours.append(contour)
    return contours


def _contour_data(points: np.ndarray) -> RawDataElement | None:
    """Contour Data (3006,0050) encoded once as DS text: ``x\\y\\z\\...`` (``None`` above 64 kB).

    Building the element from raw bytes skips pydicom's per-number DS objects (10x faster for
    the tens of thousands of numbers of a CT structure set); readers parse the same text.
    """
    text = "\\".join(f"{v:.6g}" for v in points.ravel()).encode("ascii")
    if len(text) % 2:
        text += b" "
    return RawDataElement(CONTOUR_DATA, "DS", len(text), text, 0, False, True) if len(text) < 0xFFFF else None


def _encoded_contour(contour: np.ndarray, image: Dataset) -> tuple[int, RawDataElement]:
    """Points and Contour Data of one contour; simplified (Douglas-Peucker, growing tolerance in
    pixels) only when an explicit-VR DS element (max 64 kB) could not hold it."""
    for tolerance in (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0):
        points = approximate_polygon(contour, tolerance=tolerance) if tolerance else contour
        element = _contour_data(_pixel_to_patient(image, points))
        if element is not None:
            if tolerance:
                logger.warning(
                    "contour of %d points simplified with tolerance %.2f px to fit 64 kB", len(contour), tolerance
                )
            return len(points), element
    raise ValueError(f"a contour of {len(contour)} points does not fit a DICOM DS element even when simplified")


def _pixel_to_patient(ds: Dataset, rows_cols: np.ndarray) -> np.ndarray:
    """Patient (LPS, mm) points of ``(row, col)`` pixel positions on the slice ``ds`` (PS3.3 C.7.6.2.1.1)."""
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    along_row, along_col = orientation[:3], orientation[3:]
    return (
        np.asarray(ds.ImagePositionPatient, dtype=float)
        + np.outer(rows_cols[:, 1] * col_spacing, along_row)
        + np.outer(rows_cols[:, 0] * row_spacing, along_col)
    )


def _image_item(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def build_rtstruct(
    labels: Volume, table: LabelTable, reference: SeriesReference, series_description: str = "deconvseg contours"
) -> Dataset:
    """The RTSTRUCT dataset of ``labels`` (on the grid of ``reference``); ``series_description``
    (at most 64 characters) should name the model and its version."""
    present = present_labels(labels, table)
    first = reference.datasets[0]
    if labels.shape[0] != len(reference.datasets):
        raise InputError(
            "rtstruct",
            f"{labels.shape[0]} label slices for {len(reference.datasets)} images",
            "resample the labels onto the image grid",
        )
    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RTStructureSetStorage
    key = array_digest(labels.array)
    ds.SOPInstanceUID = deterministic_uid("rtstruct", reference.series_instance_uid, key)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in _COPIED:
        setattr(ds, keyword, first.get(keyword, "") or "")
    ds.Modality, ds.SeriesNumber, ds.OperatorsName = "RTSTRUCT", 902, ""
    ds.SeriesInstanceUID = deterministic_uid("rtstruct-series", reference.series_instance_uid, key)
    ds.SeriesDescription = series_description[:64]
    ds.Manufacturer, ds.ManufacturerModelName, ds.InstanceNumber = "deconvseg", "deconvseg", 1
    ds.StructureSetLabel, ds.StructureSetName = "deconvseg", "deconvseg"
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for_uid = str(first.FrameOfReferenceUID)
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, first.get("PositionReferenceIndicator", "")

    series_item = Dataset()
    series_item.SeriesInstanceUID = reference.series_instance_uid
    series_item.ContourImageSequence = Sequence([_image_item(d) for d in reference.datasets])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = STUDY_COMPONENT_CLASS
    study_item.ReferencedSOPInstanceUID = str(first.StudyInstanceUID)
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    for_item = Dataset()
    for_item.FrameOfReferenceUID = for_uid
    for_item.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([for_item])

    rois, roi_contours, observations = [], [], []
    for number, label in enumerate(present, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, for_uid
        roi.ROIName, roi.ROIGenerationAlgorithm = dicom_text(label.name) or f"label {label.value}", "AUTOMATIC"
        rois.append(roi)
        contours = []
        for k in np.flatnonzero((labels.array == label.value).any(axis=(1, 2))):
            image = reference.datasets[k]
            for contour in slice_contours(labels.array[k] == label.value):
                item = Dataset()
                item.ContourImageSequence = Sequence([_image_item(image)])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints, item[CONTOUR_DATA] = _encoded_contour(contour, image)
                item.set_original_encoding(False, True, item._character_set)  # write the raw element as is
                contours.append(item)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(label.color)
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = Sequence(contours)
        roi_contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        observations.append(observation)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(roi_contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    return ds


def write_rtstruct(
    path: str | Path,
    labels: Volume,
    table: LabelTable,
    reference: SeriesReference,
    series_description: str = "deconvseg contours",
) -> Path:
    """Write ``rtstruct.dcm`` for ``labels`` referencing ``reference`` (atomically)."""
    ds = build_rtstruct(labels, table, reference, series_description)
    with atomic_file(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)
