"""One case from input to review bundle: the one API that ``deconvseg segment``, the batch flow's task and
the PACS flow call, so every bundle is made the same way and carries the same manifest.

    read (any format, ``deconvseg.pipeline.io``) -> does the model apply? (``deconvseg.pipeline.domain``)
    -> segment (``deconvseg.pipeline.segment``) -> review bundle (``deconvseg.pipeline.export.bundle``,
    written atomically, with the model's calibrated checks of the result)

A model with a training-domain record refuses an input of the other modality or channel count
before anything is written (``DomainMismatchError``, unless ``allow_domain_mismatch``), and flags
an input whose intensities or spacing lie far outside its training (``qa.json``'s ``case_flags``).

The caller loads the ensemble once (``deconvseg.pipeline.ensemble.load_ensemble``) and sets process-wide
settings such as torch threads; this module changes no global state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.domain import CaseFlag, check_applicability, domain_summary, input_flags
from deconvseg.pipeline.ensemble import Ensemble
from deconvseg.pipeline.export.bundle import write_bundle
from deconvseg.pipeline.export.report import ReportHeader
from deconvseg.pipeline.files import path_digest
from deconvseg.pipeline.guards import max_input_voxels, time_limit
from deconvseg.pipeline.io.checks import DEFAULT_MAX_VOXELS
from deconvseg.pipeline.io.volumes import read_volume
from deconvseg.pipeline.normalize import with_modality
from deconvseg.pipeline.outputs import check_bundle_target
from deconvseg.pipeline.segment import InferenceConfig, Progress, SegmentationResult, segment_case
from deconvseg.pipeline.viewer import check_viewer_base

MANIFEST_FORMAT = 2  # bump when the manifest's keys change meaning


@dataclass(frozen=True)
class CaseInput:
    """One input: its case id (a safe folder name), path (file or DICOM folder) and optional modality."""

    case_id: str
    path: Path
    modality: str | None = None

    def content_hash(self) -> str:
        """SHA-256 of the input's bytes (a folder: of its files' relative names and bytes)."""
        return path_digest(self.path)

    def to_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "path": str(self.path), "modality": self.modality}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseInput:
        return cls(data["case_id"], Path(data["path"]), data.get("modality"))


class CaseConfig(Settings):
    """Settings of one case.

    Attributes:
        inference: the segmentation settings.
        timeout_s: a case whose reading and segmentation take longer fails with that reason
            (``None``: no limit; ``deconvseg.pipeline.guards.time_limit``).
        allow_domain_mismatch: segment an input the model was not made for (other modality or
            channel count) and flag it ``domain_mismatch`` instead of refusing it.
        deidentify: SEG, RTSTRUCT and manifest without the patient's identity, as ``deconvseg export
            --deidentify`` writes them (``deconvseg.pipeline.export.bundle.write_bundle``).
        channel: which channel of a 4D or multi-component input to segment (``None``: the input
            must have one).
    """

    inference: InferenceConfig = InferenceConfig()
    timeout_s: float | None = None
    allow_domain_mismatch: bool = False
    deidentify: bool = False
    channel: int | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class CaseSummary:
    """What a finished case reports (the dashboard row and the CLI line are made from it).

    Attributes:
        case_id: the bundle folder name.
        bundle: the bundle folder.
        seconds: wall time of the case (read, segment, write).
        stats: per-structure rows of ``stats.json`` (volume in mL, flags, ...).
        qa: ``qa.json``'s entries (e.g. the shape guard's score).
        flags: ``{"name", "value", "flag"}`` for every QA flag raised (``BundleSummary.flags``).
        structure_uncertainty: label value -> mean uncertainty of the structure.
        viewer_url: the study in OHIF with our SEG shown (``run_case(viewer_base=...)``), else ``None``.
        case_flags: ``qa.json``'s ``case_flags`` (``{"flag", "reason"}``): the model may not apply.
    """

    case_id: str
    bundle: Path
    seconds: float
    stats: list[dict[str, Any]]
    qa: dict[str, Any]
    flags: list[dict[str, Any]]
    structure_uncertainty: dict[int, float]
    viewer_url: str | None = None
    case_flags: list[dict[str, str]] = field(default_factory=list)

    @property
    def non_empty(self) -> int:
        """Structures with at least one voxel."""
        return sum(1 for row in self.stats if row["voxels"])

    def line(self) -> str:
        """The CLI's summary of the case, e.g. ``3 structures, 0 non-empty; out_of_distribution``."""
        flags = "; ".join(dict.fromkeys(flag["flag"] for flag in self.case_flags))
        return f"{len(self.stats)} structures, {self.non_empty} non-empty" + (f"; {flags}" if flags else "")


def case_manifest(
    case: CaseInput,
    ensemble: Ensemble,
    config: CaseConfig,
    result: SegmentationResult,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance that ``manifest.json`` carries for a segmented case (one format for every caller).

    Args:
        case: the input.
        ensemble: the model that segmented it.
        config: the case's settings.
        result: the segmentation.
        record: the caller's additions (cache key, versions, PACS source), merged at the top level.
    """
    return {
        "manifest_format": MANIFEST_FORMAT,
        "case_id": case.case_id,
        "model": {
            "dir": str(ensemble.folder),
            "name": ensemble.name,
            "version": ensemble.version,
            "members": [member.name for member in ensemble.members],
        },
        "config": config.model_dump(mode="json"),
        "timings_s": result.timings,
        "structure_uncertainty": {str(value): score for value, score in result.structure_uncertainty.items()},
        **(record or {}),
    }


def run_case(
    case: CaseInput,
    ensemble: Ensemble,
    config: CaseConfig,
    out_dir: str | Path,
    *,
    record: Mapping[str, Any] | None = None,
    viewer_base: str | None = None,
    progress: Progress | None = None,
) -> CaseSummary:
    """Read ``case``, segment it with ``ensemble`` and write its review bundle to ``out_dir/<case_id>/``.

    Args:
        case: the input.
        ensemble: the loaded model.
        config: inference settings and time limit.
        out_dir: folder that receives the bundle (replaced atomically when it exists).
        record: extra manifest fields (e.g. ``cache_key``, ``versions``, the PACS series).
        viewer_base: where OHIF is served beside the PACS that holds the case's study (PACS cases):
            ``manifest.json`` and ``report.html`` then carry ``viewer_url``; folder bundles keep their file links.
        progress: told of each stage and member's windows (``deconvseg.pipeline.segment.Progress``).

    Returns:
        The case's summary.

    Raises:
        InputError: unreadable input, or a bundle folder that may not be written
            (``deconvseg.pipeline.outputs.check_bundle_target``). DomainMismatchError (an InputError):
            the model's modality or channel count is not the input's (unless
            ``config.allow_domain_mismatch``); nothing is written.
        ResourceError: over the memory budget or the time limit.
        ConfigError: the model cannot segment this input.
    """
    if viewer_base is not None:
        check_viewer_base(viewer_base)  # before minutes of segmentation, not after
    start = time.perf_counter()
    target = Path(out_dir) / case.case_id
    check_bundle_target(target)  # before the work: a user's file or folder there is refused, not replaced
    limit = f"{case.path}: case {case.case_id} (timeout_s={config.timeout_s:g})" if config.timeout_s else case.case_id
    with time_limit(config.timeout_s, limit):
        max_voxels = min(DEFAULT_MAX_VOXELS, max_input_voxels(config.inference.memory_budget_mib))
        image = with_modality(read_volume(case.path, channel=config.channel, max_voxels=max_voxels), case.modality)
        domain = ensemble.settings.domain
        flags: list[CaseFlag] = []
        if domain is not None:
            flags = check_applicability(
                image, domain, ensemble.name, modality=case.modality, allow_mismatch=config.allow_domain_mismatch
            ) + input_flags(image, domain)
        result = segment_case(image, ensemble, config.inference, progress=progress)
        header = ReportHeader(
            model=f"{ensemble.name} (version {ensemble.version[:12]})",
            trained_on=domain_summary(domain) if domain is not None else None,
        )
        bundle = write_bundle(
            target,
            image,
            result.labels,
            result.table,
            uncertainty=result.uncertainty,
            shape=result.shape,
            domain=domain,
            case_flags=flags,
            header=header,
            deidentify=config.deidentify,
            manifest=case_manifest(case, ensemble, config, result, record),
            viewer_base=viewer_base,
            threads=config.inference.threads,
        )
    return CaseSummary(
        case.case_id,
        bundle.path,
        time.perf_counter() - start,
        bundle.stats,
        bundle.qa,
        bundle.flags,
        result.structure_uncertainty,
        bundle.manifest.get("viewer_url"),
        bundle.qa["case_flags"],
    )
