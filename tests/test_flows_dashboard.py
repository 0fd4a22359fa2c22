"""Dashboard rows, table and markdown of a batch (the artifacts themselves: test_flows_serve.py)."""

from __future__ import annotations

import json

from deconvseg.flows.dashboard import (case_row, counts, failed_row, row_from_bundle, state_message, summary_markdown,
                             table_rows)
from deconvseg.pipeline.files import write_json_atomic

STATS = [{"name": "liver", "value": 1, "volume_ml": 1234.5678, "mean_uncertainty": 0.1, "flags": []},
         {"name": "spleen", "value": 2, "volume_ml": 0.0, "mean_uncertainty": 0.4, "flags": ["missing"]}]


def _rows(tmp_path):
    return [case_row("b", "segmented", 2.345, tmp_path / "b", STATS),
            failed_row("a", "a.nii.gz: unreadable or truncated image file; re-copy the file"),
            case_row("c", "cached", 0.0, tmp_path / "c", STATS[:1])]


def test_rows_carry_volumes_worst_uncertainty_and_flags(tmp_path):
    row = _rows(tmp_path)[0]
    assert row["volumes_ml"] == {"liver": 1234.568, "spleen": 0.0}
    assert row["uncertainty"] == 0.4 and row["flags"] == ["spleen: missing"] and row["seconds"] == 2.35
    assert case_row("d", "segmented", 1.0, tmp_path, [], {1: 0.2, 2: 0.3})["uncertainty"] == 0.3


def test_table_has_one_column_per_structure_and_the_reason(tmp_path):
    table = table_rows(_rows(tmp_path))
    assert [r["case"] for r in table] == ["a", "b", "c"]
    assert list(table[0])[:3] == ["case", "status", "case_flags"]  # visible without scrolling
    assert set(table[0]) == {"case", "status", "case_flags", "seconds", "liver mL", "spleen mL", "uncertainty",
                             "qa_flags", "reason", "link"}
    assert table[0]["reason"].startswith("a.nii.gz: unreadable") and table[0]["liver mL"] is None
    assert table[2]["spleen mL"] is None and table[1]["qa_flags"] == "spleen: missing"


def test_summary_counts_failures_and_links_bundles(tmp_path):
    rows = _rows(tmp_path)
    tally = counts(rows)
    assert tally == {"cases": 3, "segmented": 1, "cached": 1, "failed": 1}
    assert state_message(tally) == "1 of 3 cases failed (1 segmented, 1 cached)"
    text = summary_markdown({"out": str(tmp_path), "seconds": 6.0, "cases_per_min": 30.0, "counts": tally,
                             "rows": rows})
    assert "30.0 cases/min" in text and "- `a`: a.nii.gz: unreadable" in text
    # no file:// links (browsers refuse them from the Prefect UI): the report's path as text
    assert f"report: `{tmp_path / 'b' / 'report.html'}`" in text and "file://" not in text
    assert "`b`: spleen: missing" in text


def test_cached_row_is_read_back_from_the_bundle(tmp_path):
    (tmp_path / "stats.json").write_text(json.dumps(STATS))
    row = row_from_bundle("x", tmp_path)
    assert row["status"] == "cached" and row["volumes_ml"]["liver"] == 1234.568 and row["seconds"] == 0.0


def test_a_map_the_shape_guard_flags_without_blaming_a_structure_is_flagged_as_a_whole(tmp_path):
    flagged = {"shape": {"score": 0.17, "flagged": True, "blamed": []}}
    assert case_row("x", "segmented", 1.0, tmp_path, STATS, qa=flagged)["flags"] == [
        "spleen: missing", "map: implausible_shape (score 0.17)"]
    blamed = {"shape": {"score": 0.1, "flagged": True, "blamed": ["liver"]}}
    assert case_row("x", "segmented", 1.0, tmp_path, STATS, qa=blamed)["flags"] == ["spleen: missing"]
    (tmp_path / "stats.json").write_text(json.dumps(STATS))
    (tmp_path / "qa.json").write_text(json.dumps(flagged))
    assert row_from_bundle("x", tmp_path)["flags"][-1] == "map: implausible_shape (score 0.17)"


def test_json_is_written_atomically(tmp_path):
    path = write_json_atomic(tmp_path / "batch.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["batch.json"]


OOD = {"case_flags": [{"flag": "out_of_distribution", "reason": "hu_p50 -25 (training 37..37)"},
                      {"flag": "missing_structure", "reason": "spleen is empty"}]}


def test_case_flags_fill_the_third_column_and_the_summary_counts_cases_to_review(tmp_path):
    rows = [case_row("ok", "segmented", 1.0, tmp_path / "ok", STATS[:1], qa={"case_flags": []}),
            case_row("ct", "segmented", 1.0, tmp_path / "ct", STATS, qa=OOD)]
    table = table_rows(rows)
    assert [r["case_flags"] for r in table] == ["out_of_distribution; missing_structure", ""]
    text = summary_markdown({"out": str(tmp_path), "seconds": 2.0, "cases_per_min": 60.0, "counts": counts(rows),
                             "rows": rows})
    assert "**1 need review**" in text
    assert "- `ct`: out_of_distribution (hu_p50 -25 (training 37..37)); missing_structure (spleen is empty)" in text
    (tmp_path / "stats.json").write_text(json.dumps(STATS))
    (tmp_path / "qa.json").write_text(json.dumps(OOD))
    assert row_from_bundle("x", tmp_path)["case_flags"] == OOD["case_flags"]
