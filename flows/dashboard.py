"""A batch run's dashboard: Prefect artifacts with stable keys, and ``<out>/batch.json``.

Keys (``<key>`` is ``BatchConfig.dashboard_key``, ``deconvseg-batch`` by default), so that the
Artifacts page shows one history per key across runs:

- ``<key>-cases``: a table, one row per case: case, status (segmented / cached / failed), case
  flags (``qa.json``'s ``case_flags``: the model may not apply; third column, visible without
  scrolling), seconds, volume in mL of every structure, the largest per-structure uncertainty,
  structure QA flags and, for a failed case, its one-line reason.
- ``<key>-summary``: markdown: throughput, how many cases need review (case flags) and why,
  failures with their reasons, links to the bundles.
- ``<key>-progress``: progress (percent of cases finished) while the run goes on.

Rows carry case ids only (never patient names or other tags).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from deconvseg.pipeline.export.shape_qa import FLAG as SHAPE_FLAG
from deconvseg.pipeline.files import write_json_atomic

if TYPE_CHECKING:
    from uuid import UUID

    from deconvseg.pipeline.case import CaseSummary


def _volumes(stats: list[dict[str, Any]]) -> dict[str, float]:
    return {s["name"]: round(float(s["volume_ml"]), 3) for s in stats if s.get("volume_ml") is not None}


def _flags(stats: list[dict[str, Any]], qa: dict[str, Any] | None) -> list[str]:
    """Per-structure flags, plus the shape guard's when it flags the map without blaming a structure."""
    flags = [f"{s['name']}: {flag}" for s in stats for flag in (s.get("flags") or [])]
    shape = (qa or {}).get("shape") or {}
    if shape.get("flagged") and not shape.get("blamed"):
        flags.append(f"map: {SHAPE_FLAG} (score {shape['score']:.2f})")
    return flags


def case_row(
    case_id: str,
    status: str,
    seconds: float,
    bundle: str | Path,
    stats: list[dict[str, Any]],
    structure_uncertainty: dict[Any, float] | None = None,
    qa: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The dashboard row of a finished case (``summary_row`` makes it from a ``CaseSummary``).

    Args:
        case_id: the case's id.
        status: ``segmented`` or ``cached``.
        seconds: wall time of the case (read, segment, write).
        bundle: its review bundle folder.
        stats: per-structure dicts as in ``stats.json`` (``name``, ``volume_ml``,
            ``mean_uncertainty``, ``flags``): the QA flags are theirs.
        structure_uncertainty: per-structure score of the ensemble, used when ``stats`` has none.
        qa: the bundle's ``qa.json`` (the shape guard's entry, ``case_flags``), when it has one.
    """
    scores = [float(s["mean_uncertainty"]) for s in stats if s.get("mean_uncertainty") is not None]
    if not scores and structure_uncertainty:
        scores = [float(v) for v in structure_uncertainty.values()]
    return {
        "case": case_id,
        "status": status,
        "seconds": round(seconds, 2),
        "volumes_ml": _volumes(stats),
        "uncertainty": round(max(scores), 4) if scores else None,
        "flags": _flags(stats, qa),
        "case_flags": list((qa or {}).get("case_flags") or []),
        "bundle": str(bundle),
        "reason": "",
    }


def summary_row(summary: CaseSummary, status: str = "segmented") -> dict[str, Any]:
    """The dashboard row of a case the case API (``deconvseg.pipeline.case.run_case``) just finished.

    A PACS case segmented with a viewer base carries ``link``: the study in OHIF with our SEG shown.
    """
    row = case_row(
        summary.case_id,
        status,
        summary.seconds,
        summary.bundle,
        summary.stats,
        summary.structure_uncertainty,
        qa=summary.qa,
    )
    if summary.viewer_url:
        row["link"] = summary.viewer_url
    return row


def failed_row(case_id: str, reason: str) -> dict[str, Any]:
    """The dashboard row of a case that failed, with its one-line reason."""
    return {
        "case": case_id,
        "status": "failed",
        "seconds": None,
        "volumes_ml": {},
        "uncertainty": None,
        "flags": [],
        "case_flags": [],
        "bundle": "",
        "reason": reason,
    }


def row_from_bundle(case_id: str, bundle: Path, status: str = "cached") -> dict[str, Any]:
    """The row of a case whose bundle is already on disk (read back from ``stats.json`` and ``qa.json``)."""
    stats = json.loads((bundle / "stats.json").read_text())
    qa = json.loads((bundle / "qa.json").read_text()) if (bundle / "qa.json").is_file() else None
    return case_row(case_id, status, 0.0, bundle, stats, qa=qa)


def _case_flag_names(row: dict[str, Any]) -> str:
    return "; ".join(dict.fromkeys(f["flag"] for f in row.get("case_flags") or []))


def needs_review(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with case flags: cases the model may not apply to."""
    return [r for r in rows if r.get("case_flags")]


def table_rows(rows: list[dict[str, Any]], report_base_url: str | None = None) -> list[dict[str, Any]]:
    """Flat rows for the table artifact: case flags third (visible without scrolling), then one
    ``<structure> mL`` column per structure seen, and ``link``: the study in the PACS UI, else the
    served report (``report_link``), else the report's path."""
    names = list(dict.fromkeys(name for row in rows for name in row["volumes_ml"]))
    return [
        {
            "case": r["case"],
            "status": r["status"],
            "case_flags": _case_flag_names(r),
            "seconds": r["seconds"],
            **{f"{name} mL": r["volumes_ml"].get(name) for name in names},
            "uncertainty": r["uncertainty"],
            "qa_flags": "; ".join(r["flags"]),
            "reason": r["reason"],
            "link": _row_link(r, report_base_url),
        }
        for r in sorted(rows, key=lambda row: row["case"])
    ]


def _row_link(row: dict[str, Any], base_url: str | None) -> str:
    if row.get("link"):
        return str(row["link"])
    if not row["bundle"]:
        return ""
    return report_link(row["bundle"], Path(row["bundle"]).parent, base_url) or str(Path(row["bundle"]) / "report.html")


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Number of cases per status, and the total."""
    statuses = [r["status"] for r in rows]
    return {"cases": len(rows), **{s: statuses.count(s) for s in ("segmented", "cached", "failed")}}


def state_message(tally: dict[str, int]) -> str:
    """The flow's final message, e.g. ``1 of 4 cases failed (3 segmented, 0 cached)``."""
    return (
        f"{tally['failed']} of {tally['cases']} cases failed ({tally['segmented']} segmented, {tally['cached']} cached)"
    )


def summary_markdown(summary: dict[str, Any]) -> str:
    """The markdown summary: throughput, failures with reasons, links to the review bundles."""
    tally, rows = summary["counts"], sorted(summary["rows"], key=lambda r: r["case"])
    review = needs_review(rows)
    lines = [
        f"# Batch {summary['out']}",
        "",
        f"**{tally['cases']} cases** in {summary['seconds']:.1f} s "
        f"({summary['cases_per_min']:.1f} cases/min): {tally['segmented']} segmented, "
        f"{tally['cached']} cached, {tally['failed']} failed; "
        f"**{len(review)} need review** (case flags: the model may not apply).",
        "",
    ]
    if review:
        lines += ["## Needs review (case flags)", ""]
        lines += [
            f"- `{r['case']}`: " + "; ".join(f"{f['flag']} ({f['reason']})" for f in r["case_flags"]) for r in review
        ]
        lines += [""]
    failures = [r for r in rows if r["status"] == "failed"]
    if failures:
        lines += ["## Failures", ""] + [f"- `{r['case']}`: {r['reason']}" for r in failures] + [""]
    flagged = [r for r in rows if r["flags"]]
    if flagged:
        lines += ["## Structure QA flags", ""]
        lines += [f"- `{r['case']}`: {'; '.join(r['flags'])}" for r in flagged] + [""]
    linked = [r for r in rows if r["bundle"] or r.get("link")]
    if linked:
        lines += ["## Review bundles", ""]
        lines += [_bundle_line(r, summary.get("report_base_url")) for r in linked]
    return "\n".join(lines) + "\n"


def report_link(bundle: str | Path, out: str | Path, base_url: str | None) -> str | None:
    """The URL of a bundle's ``report.html`` under ``base_url`` (the output folder served by any web
    server, e.g. ``python -m http.server -d OUT``), or ``None`` without a base URL.

    Browsers refuse ``file://`` links from the Prefect UI ("Not allowed to load local resource"),
    so without a base URL the dashboard shows the file path as text instead of a dead link.
    """
    if not base_url:
        return None
    relative = Path(bundle).relative_to(Path(out)).as_posix()
    return f"{base_url.rstrip('/')}/{quote(relative)}/report.html"


def _bundle_line(row: dict[str, Any], base_url: str | None) -> str:
    """One line per case: the study in the PACS UI (``link``), the served report, else the path."""
    parts = [f"[{row['case']}]({row['link']}) (study in the PACS)" if row.get("link") else f"`{row['case']}`"]
    if row["bundle"]:
        report = report_link(row["bundle"], Path(row["bundle"]).parent, base_url)
        parts.append(f"[report]({report})" if report else f"report: `{Path(row['bundle']) / 'report.html'}`")
    return "- " + " · ".join(parts)


class Progress:
    """A progress artifact (``<key>-progress``) advanced as cases finish."""

    def __init__(self, key: str, total: int) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total, self.done = max(total, 1), 0
        self.artifact_id = cast(
            "UUID",
            create_progress_artifact(  # sync context: not a coroutine
                0.0, key=f"{key}-progress", description=f"cases finished of {total}"
            ),
        )

    def advance(self) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done += 1
        update_progress_artifact(self.artifact_id, 100.0 * self.done / self.total)


def publish(
    rows: list[dict[str, Any]], out_dir: Path, seconds: float, key: str, report_base_url: str | None = None
) -> dict[str, Any]:
    """Publish the table and markdown artifacts and write ``<out>/batch.json``; return the summary.

    ``report_base_url``: where ``out_dir`` is served over HTTP, so the reports' links open
    (``report_link``); without it the markdown shows file paths.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    tally = counts(rows)
    summary = {
        "out": str(out_dir),
        "seconds": round(seconds, 2),
        "counts": tally,
        "cases_per_min": round(60.0 * tally["cases"] / max(seconds, 1e-9), 2),
        "needs_review": [r["case"] for r in needs_review(rows)],
        "rows": sorted(rows, key=lambda r: r["case"]),
        "report_base_url": report_base_url,
    }
    create_table_artifact(table_rows(rows, report_base_url), key=f"{key}-cases", description=state_message(tally))
    create_markdown_artifact(summary_markdown(summary), key=f"{key}-summary", description=state_message(tally))
    write_json_atomic(out_dir / "batch.json", summary)
    return summary


def ui_address(api_url: str | None) -> str:
    """The Prefect UI that shows the runs: beside the API in use (``http://host:port/api`` ->
    ``http://host:port``), else the default local server's, ``http://127.0.0.1:4200``.

    A server on another port serves a UI that only works when started with
    ``PREFECT_UI_API_URL=http://host:port/api`` (see docs/pacs.md, "Schedules").
    """
    if api_url:
        return api_url.rstrip("/").removesuffix("/api")
    return "http://127.0.0.1:4200"
