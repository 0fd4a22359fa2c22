"""Dashboard links that open: the study in the PACS UI, a served report, else a plain path."""

from __future__ import annotations

from deconvseg.flows.dashboard import case_row, report_link, summary_markdown, table_rows, ui_address
from deconvseg.flows.pacs import orthanc_study_id, viewer_link
from deconvseg.pipeline.pacs.query import SeriesInfo


def _summary(rows, base_url=None):
    return {"out": "/data/seg", "seconds": 1.0, "cases_per_min": 60.0, "report_base_url": base_url,
            "counts": {"cases": len(rows), "segmented": len(rows), "cached": 0, "failed": 0}, "rows": rows}


def test_folder_outputs_link_to_the_served_report_or_show_the_path(tmp_path):
    row = case_row("case 1", "segmented", 1.0, tmp_path / "case 1", [])
    assert report_link(tmp_path / "case 1", tmp_path, "http://127.0.0.1:8000/") == \
        "http://127.0.0.1:8000/case%201/report.html"
    served = summary_markdown(_summary([row], "http://127.0.0.1:8000"))
    assert "[report](http://127.0.0.1:8000/case%201/report.html)" in served
    plain = summary_markdown(_summary([row]))
    assert "file://" not in plain and f"`{tmp_path / 'case 1' / 'report.html'}`" in plain
    assert table_rows([row], "http://h/x")[0]["link"] == "http://h/x/case%201/report.html"


def test_pacs_rows_link_to_the_study_in_the_viewer():
    series = SeriesInfo("1.2.3", "1.2.3.4", "CT", patient_id="P1")
    link = viewer_link(None, "http://127.0.0.1:8042/dicom-web", series)
    assert link == f"http://127.0.0.1:8042/app/explorer.html#study?uuid={orthanc_study_id('P1', '1.2.3')}"
    assert viewer_link("https://pacs/ohif/viewer?StudyInstanceUIDs={study}", "x", series).endswith("=1.2.3")
    row = {**case_row("c", "segmented", 1.0, "/data/seg/c", []), "link": link}
    assert f"[c]({link}) (study in the PACS)" in summary_markdown(_summary([row]))
    assert table_rows([row])[0]["link"] == link


def test_ui_address_follows_the_api_in_use():
    assert ui_address("http://127.0.0.1:4299/api") == "http://127.0.0.1:4299"
    assert ui_address(None) == "http://127.0.0.1:4200"
