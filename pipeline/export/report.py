"""``report.html``: one self-contained page (images inline as data URIs) for the clinician.

It opens with what the clinician must know before reading any figure: the model, what it was
trained on and its intended use, the patient, study and series with their dates when the input
carries them (none when the bundle is de-identified), and a red box when a case-level flag is set
(``qa.json``'s ``case_flags``: the model may not apply). Then the per-structure table (volume in
mL, intensity, uncertainty, border contact, QA flags), the shape plausibility when the model has a
shape guard (an empty map says it is empty instead), the overlay mosaics and the provenance lines
of the manifest. It needs no network and no files beside it, so it survives being mailed or
attached to a ticket.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deconvseg.pipeline.domain import INTENDED_USE
from deconvseg.pipeline.files import atomic_file

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:90%}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.name{text-align:left}.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.4em}
.flag{color:#b00;font-weight:600}#case-flags{border:3px solid #c00;background:#fee;padding:.5em 1em;margin:1em 0}
#about th{text-align:left}#about td{text-align:left}#empty{font-weight:600}
figure{display:inline-block;margin:.5em}img{max-width:100%;border:1px solid #999}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _cell(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.2f}"
    return html.escape(str(value))


@dataclass(frozen=True)
class ReportHeader:
    """What the report states before any figure.

    Attributes:
        model: the model's name (and version).
        trained_on: what it was trained on (``deconvseg.pipeline.domain.domain_summary``), or
            ``None`` for a model without a training-domain record.
        intended_use: the model's intended use.
        subject: ``(row name, value)`` pairs for patient ID, study and series (empty when the input
            carries none or the bundle is de-identified).
        deidentified: the bundle is de-identified.
    """

    model: str = "unknown"
    trained_on: str | None = None
    intended_use: str = INTENDED_USE
    subject: tuple[tuple[str, str], ...] = ()
    deidentified: bool = False


def _date(value: str) -> str:
    """A DICOM date ``YYYYMMDD`` as ``YYYY-MM-DD`` (other text unchanged)."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def subject_rows(metadata: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Patient ID, study and series lines of an input's metadata (``deconvseg.pipeline.io.dicom``), the empty
    ones left out. The patient's name is not shown: the ID identifies the case to the reader, and a bundle
    is copied and mailed more freely than the PACS record (the project's privacy rule: no names in outputs)."""

    def join(*keys: str) -> str:
        parts = [_date(str(metadata.get(k) or "")) if k.endswith("date") else str(metadata.get(k) or "") for k in keys]
        return ", ".join(p.replace("^", " ").strip() for p in parts if p.strip())

    rows = (
        ("patient ID", join("patient_id")),
        ("study", join("study_description", "study_date")),
        ("series", join("series_description", "series_date")),
    )
    return tuple((name, value) for name, value in rows if value)


def _header_html(header: ReportHeader) -> str:
    subject = list(header.subject) if not header.deidentified else [("patient ID", "none (de-identified)")]
    rows = [
        ("model", header.model),
        ("trained on", header.trained_on or "not recorded for this model"),
        ("intended use", header.intended_use),
        *(subject or [("patient ID", "none in the input")]),
    ]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table id='about'>{cells}</table>"


def _case_flags_html(case_flags: list[Mapping[str, str]]) -> str:
    if not case_flags:
        return ""
    items = "".join(f"<li><b>{html.escape(f['flag'])}</b>: {html.escape(f['reason'])}</li>" for f in case_flags)
    return (
        f"<div id='case-flags' role='alert'><p class='flag'>This case needs review: the model may not apply "
        f"to it. Do not use the figures below without checking the images.</p><ul>{items}</ul></div>"
    )


def render_report(
    stats: list[dict[str, Any]],
    overlays: dict[str, Path],
    *,
    title: str = "deconvseg review",
    notes: list[str] | None = None,
    shape: dict[str, Any] | None = None,
    viewer_url: str | None = None,
    header: ReportHeader | None = None,
    case_flags: list[Mapping[str, str]] | None = None,
) -> str:
    """The HTML text of the report.

    Args:
        stats: the ``stats.json`` rows.
        overlays: overlay name -> PNG path (inlined).
        title: the page's heading.
        notes: provenance lines.
        shape: the ``qa.json`` entry of ``deconvseg.pipeline.export.shape_qa``; not shown for an empty map.
        viewer_url: the study in OHIF with this segmentation shown (PACS cases), linked at the top.
        header: model, training data, intended use and subject lines (default: an unknown model).
        case_flags: ``qa.json``'s ``case_flags`` (``{"flag", "reason"}``): shown in a red box.
    """
    empty = not any(row["voxels"] for row in stats)
    shape = None if empty else shape
    rows = []
    for row in stats:
        colour = "#{:02x}{:02x}{:02x}".format(*row["color"])
        flags = " ".join(row["flags"])
        border = "yes" if row["touches_border"] else ""
        rows.append(
            f"<tr><td>{row['value']}</td><td class='name'><span class='swatch' style='background:{colour}'></span>"
            f"{html.escape(row['name'])}</td><td>{_cell(row['volume_ml'])}</td><td>{row['voxels']}</td>"
            f"<td>{_cell(row['mean_intensity'])} {html.escape(row['intensity_unit'])}</td>"
            f"<td>{_cell(row['mean_uncertainty'])}</td><td>{border}</td><td class='flag'>{html.escape(flags)}</td></tr>"
        )
    flagged = [f"{row['name']}: {', '.join(row['flags'])}" for row in stats if row["flags"]]
    if shape and shape["flagged"]:
        blame = f" (blamed: {', '.join(shape['blamed'])})" if shape["blamed"] else " (no single structure blamed)"
        flagged.insert(0, f"shape: implausible_shape, score {shape['score']:.2f} < {shape['threshold']:.2f}{blame}")
    figures = "".join(
        f"<figure><img alt='{html.escape(name)}' src='{_data_uri(path)}'>"
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, path in overlays.items()
    )
    notes_html = "".join(f"<li>{html.escape(note)}</li>" for note in notes or [])
    viewer_html = (
        f"<p id='viewer'><a href='{html.escape(viewer_url, quote=True)}'>Open the study in the viewer "
        "(OHIF) with this segmentation shown</a></p>"
        if viewer_url
        else ""
    )
    empty_html = (
        (
            f"<p id='empty' class='flag'>The label map is empty: none of the model's {len(stats)} structures "
            "was found. No shape or volume figures apply.</p>"
        )
        if empty
        else ""
    )
    flags_html = "".join(f"<li class='flag'>{html.escape(f)}</li>" for f in flagged) or "<li>none</li>"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{viewer_html}"
        f"{_header_html(header or ReportHeader())}{_case_flags_html(case_flags or [])}"
        f"{empty_html}<h2>QA flags</h2><ul id='flags'>{flags_html}</ul>{_shape_html(shape)}"
        "<h2>Structures</h2><table id='stats'><tr><th>value</th><th>structure</th><th>volume (mL)</th><th>voxels</th>"
        f"<th>mean intensity</th><th>mean uncertainty</th><th>cut by field of view</th><th>QA flags</th></tr>"
        f"{''.join(rows)}</table>"
        f"<h2>Overlays</h2><div id='overlays'>{figures}</div>"
        f"<h2>Provenance</h2><ul id='notes'>{notes_html}</ul></body></html>"
    )


def _shape_html(shape: dict[str, Any] | None) -> str:
    """The shape plausibility paragraph (score, threshold, terms), or nothing without a shape guard."""
    if not shape:
        return ""
    terms = shape["terms"]
    threshold = "none" if shape["threshold"] is None else f"{shape['threshold']:.2f}"
    cls = " class='flag'" if shape["flagged"] else ""
    details = (
        f"reconstruction Dice {', '.join(f'{k} {v:.2f}' for k, v in terms['dice'].items())}; "
        f"stray {sum(terms['stray_ml'].values()):.1f} mL, "
        f"enclosed background {terms['enclosed_background_ml']:.1f} mL, "
        f"exposed wall {terms['exposed_wall_ml']:.1f} mL, concavity {terms['concavity_ml']:.1f} mL, "
        f"largest disagreement {max(terms['disagreement_ml'].values(), default=0.0):.1f} mL"
    )
    return (
        f"<h2>Shape plausibility</h2><p id='shape'{cls}>score {shape['score']:.2f} (flagged below {threshold}, "
        f"guard {html.escape(shape['guard'])}): {'implausible' if shape['flagged'] else 'plausible'}</p>"
        f"<p>{html.escape(details)}</p>"
    )


def write_report(path: str | Path, stats: list[dict[str, Any]], overlays: dict[str, Path], **kwargs: Any) -> Path:
    """Write ``report.html`` atomically; ``kwargs`` go to ``render_report``."""
    with atomic_file(path) as tmp:
        tmp.write_text(render_report(stats, overlays, **kwargs), encoding="utf-8")
    return Path(path)
