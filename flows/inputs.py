"""What a batch is made of: the cases of a folder or manifest, and the versions that key the cache.

A case is a path (a volume file or a DICOM series folder) with an id; the cache key of a case is
``sha256`` over the content hash of its input, the model's version (its checkpoint files) and the
configuration's version, so renaming or touching a file changes nothing, and any change of
bytes, weights or settings recomputes the case.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from deconvseg.models import WEIGHTS_ROOT
from deconvseg.pipeline.case import CaseInput
from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.checks import IMAGE_SUFFIXES, strip_suffix
from deconvseg.pipeline.io.datasets import read_manifest_rows
from deconvseg.pipeline.sanitize import safe_component

CACHE_FORMAT = "1"  # bump when the bundle layout changes, so old bundles are recomputed
DEFAULT_MODEL = WEIGHTS_ROOT / "phantom-ct"


class BatchConfig(Settings):
    """Settings of a batch run (``configs/batch.yaml`` overrides these).

    Attributes:
        threads: torch threads per case (set where the case starts).
        max_workers: cases run at once by the default (thread) task runner. Two cases of one
            thread each beat one case of two threads on 2 cores (71 vs 57 cases/min, 16 small
            phantoms, 2026-11-25): the non-torch parts of a case (I/O, export) overlap.
        retries: retries of a case after a transient error.
        retry_delay_s: first retry delay; it doubles with each retry.
        case_timeout_s: a case running longer fails with that reason (``None``: no limit); the
            running case's thread is interrupted between Python steps.
        dashboard_key: prefix of the artifact keys (``<key>-cases``, ``-summary``, ``-progress``).
        memory_budget_mib: peak memory of the cases running at once on this machine, together
            (``None``: ``deconvseg.pipeline.guards.DEFAULT_BUDGET_FRACTION`` of its memory). Each case gets an
            even share, unless ``inference`` sets its own ``memory_budget_mib``.
        inference: overrides of ``deconvseg.pipeline.segment.InferenceConfig``.
        report_base_url: where the output folder is served over HTTP (any web server, e.g.
            ``python -m http.server -d OUT``), so the dashboard's report links open; ``None``: the
            dashboard shows the reports' paths (browsers refuse ``file://`` links from the Prefect UI).
        allow_domain_mismatch: segment inputs the model was not made for (other modality or channel
            count), flagged ``domain_mismatch``, instead of failing them with the reason.
        deidentify: bundles without the patient's identity (``deconvseg.pipeline.case.CaseConfig``).
        channel: which channel of 4D/multi-component inputs to segment.
    """

    threads: int = 1
    max_workers: int = 2
    retries: int = 2
    retry_delay_s: float = 2.0
    case_timeout_s: float | None = None
    dashboard_key: str = "deconvseg-batch"
    memory_budget_mib: float | None = None
    inference: dict[str, Any] = {}
    report_base_url: str | None = None
    allow_domain_mismatch: bool = False
    deidentify: bool = False
    channel: int | None = Field(default=None, ge=0)

    @field_validator("inference")
    @classmethod
    def _inference_is_complete(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Validate ``inference`` against ``InferenceConfig`` now, before any flow, server or child starts."""
        from deconvseg.pipeline.segment import InferenceConfig

        InferenceConfig.model_validate(value)  # an unknown or invalid key fails here, named by pydantic
        return value

    def case_settings(self) -> dict[str, Any]:
        """What changes a bundle besides input and model: the part of the config that keys the cache."""
        return {
            "inference": self.inference,
            "deidentify": self.deidentify,
            "channel": self.channel,
            "allow_domain_mismatch": self.allow_domain_mismatch,
        }  # a mismatch bundle is never served to a refusing run

    def case_inference(self, cases_at_once: int) -> dict[str, Any]:
        """``inference`` with each case's share of the memory budget when ``cases_at_once`` run together."""
        if "memory_budget_mib" in self.inference:
            return dict(self.inference)
        from deconvseg.pipeline.guards import MIB, default_budget_bytes

        total = self.memory_budget_mib or default_budget_bytes() / MIB
        return {**self.inference, "memory_budget_mib": total / max(cases_at_once, 1)}


def case_id_of(path: Path) -> str:
    """The bundle folder name of an input: its name without the volume suffix, made of ``[A-Za-z0-9._-]``
    (no ``..``, no separators, accents transliterated), at most 100 chars, long names kept distinct by a
    hash (``deconvseg.pipeline.sanitize.safe_component``)."""
    return safe_component(strip_suffix(path.name))


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES) and not path.name.startswith(".")


def _is_dicom_folder(path: Path) -> bool:
    """A folder holding at least one file with the DICOM preamble magic (``DICM`` at byte 128)."""
    for child in sorted(path.iterdir()):
        if child.is_file():
            with child.open("rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    return True
    return False


def discover_cases(source: Path) -> list[CaseInput]:
    """The cases of a folder (volume files and DICOM series sub-folders) or a manifest CSV.

    Raises:
        InputError: the source is missing, holds no case, or two cases get the same id.
    """
    if source.is_file() and source.suffix.lower() == ".csv":
        cases = _read_manifest(source)
    elif source.is_dir():
        cases = [
            CaseInput(case_id_of(p), p.resolve())
            for p in sorted(source.iterdir())
            if _is_volume_file(p) or (p.is_dir() and not p.name.startswith(".") and _is_dicom_folder(p))
        ]
    else:
        raise InputError(source, "no such folder or manifest CSV", "pass a folder of scans or a .csv manifest")
    if not cases:
        raise InputError(
            source,
            "no NIfTI/NRRD/MHA file or DICOM series folder found",
            f"put scans ({', '.join(IMAGE_SUFFIXES)}) or DICOM folders there",
        )
    seen: dict[str, Path] = {}
    for case in cases:
        if case.case_id in seen:
            raise InputError(
                case.path, f"case id '{case.case_id}' is also used by {seen[case.case_id]}", "rename one of the inputs"
            )
        seen[case.case_id] = case.path
    return cases


def _read_manifest(path: Path) -> list[CaseInput]:
    """Rows ``case_id,image[,label][,modality]`` (``deconvseg.pipeline.io.datasets.read_manifest_rows``) as inputs."""
    return [
        CaseInput(safe_component(row["case_id"]), Path(row["image"]), (row.get("modality") or "").upper() or None)
        for row in read_manifest_rows(path)
    ]


def config_version(settings: dict[str, Any]) -> str:
    """sha256 of the inference settings (sorted JSON) and the cache format."""
    text = json.dumps({"format": CACHE_FORMAT, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(versions: dict[str, str]) -> str:
    """The case's cache key from its ``input``, ``model`` and ``config`` versions."""
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()
