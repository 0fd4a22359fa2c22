"""Names: a PACS series' case (bundle folder) and the series description of our results."""

from __future__ import annotations

import hashlib

from deconvseg.pipeline.pacs.query import SeriesInfo
from deconvseg.pipeline.sanitize import safe_component

DESCRIPTION_PREFIX = "deconvseg"
_MAX_LO = 64  # SeriesDescription is LO: at most 64 characters


def case_id(series: SeriesInfo, *, pseudonymous: bool = False) -> str:
    """The bundle folder name of a PACS series, from its study and series.

    Readable: ``<study date>_<modality>_s<series number>_<description>_<uid digest>``; the digest
    of the study and series UIDs keeps two series with equal attributes apart.
    Pseudonymous (when de-identifying): ``pacs_<modality>_<uid digest>``, no date or description.
    """
    digest = hashlib.sha256(f"{series.study_uid}|{series.series_uid}".encode()).hexdigest()
    if pseudonymous:
        return safe_component(f"pacs_{series.modality or 'XX'}_{digest[:16]}")
    parts = [series.study_date or "nodate", series.modality or "XX", f"s{series.series_number or 0}"]
    if series.description:
        parts.append(series.description[:40])
    return safe_component("_".join([*parts, digest[:8]]).replace(" ", "-"))


def result_description(model_name: str, model_version: str) -> str:
    """Series description of our SEG and RTSTRUCT: ``deconvseg <model> <version digest>`` (<= 64 chars).

    The rerun check looks for exactly this text, so a new model version segments again.
    """
    version = model_version[:12]
    room = _MAX_LO - len(DESCRIPTION_PREFIX) - len(version) - 2
    return f"{DESCRIPTION_PREFIX} {model_name[:room]} {version}"
