"""report.html opens with the model, its training data, intended use and subject, a red box for case flags,
and says when the map is empty instead of showing shape scores."""

from __future__ import annotations

from deconvseg.pipeline.export.report import ReportHeader, render_report, subject_rows

SHAPE = {"guard": "shape-ae", "score": 0.0, "threshold": 0.5, "flagged": True, "blamed": [],
         "terms": {"dice": {"lv": 1.0}, "stray_ml": {}, "enclosed_background_ml": 0.0, "exposed_wall_ml": 0.0,
                   "concavity_ml": 0.0, "disagreement_ml": {}}}


def _row(voxels: int, flags: list[str] | None = None) -> dict:
    return {"value": 1, "name": "lv", "color": [1, 2, 3], "volume_ml": voxels * 0.01, "voxels": voxels,
            "mean_intensity": None, "intensity_unit": "a.u.", "mean_uncertainty": None, "touches_border": False,
            "flags": flags or []}


def test_header_names_model_training_data_use_and_subject():
    metadata = {"patient_name": "Doe^Jane", "patient_id": "MRN-1", "study_date": "20260102",
                "study_description": "CT abdomen", "series_description": "Body 3.0", "series_date": ""}
    header = ReportHeader(model="phantom-ct 1a2b", trained_on="CT, demo phantoms", subject=subject_rows(metadata))
    html = render_report([_row(10)], {}, header=header)
    assert html.index("id='about'") < html.index("<h2>Structures")
    for text in ("phantom-ct 1a2b", "CT, demo phantoms", "research use; validate locally before clinical use",
                 "MRN-1", "CT abdomen, 2026-01-02", "Body 3.0"):
        assert text in html, text
    assert "Doe" not in html  # names stay out of the bundle; the ID identifies the case


def test_deidentified_report_shows_no_subject():
    header = ReportHeader(subject=(("patient ID", "MRN-1"),), deidentified=True)
    html = render_report([_row(10)], {}, header=header)
    assert "MRN-1" not in html and "none (de-identified)" in html


def test_input_without_tags_says_none():
    assert subject_rows({"modality": "CT", "patient_id": ""}) == ()
    assert "none in the input" in render_report([_row(10)], {}, header=ReportHeader())


def test_case_flags_give_a_red_box_with_their_reasons():
    flags = [{"flag": "out_of_distribution", "reason": "hu_p50 -25 (training 37..37)"}]
    html = render_report([_row(10)], {}, case_flags=flags)
    assert "id='case-flags'" in html and "out_of_distribution" in html and "hu_p50 -25" in html
    assert "id='case-flags'" not in render_report([_row(10)], {}, case_flags=[])


def test_empty_map_says_so_instead_of_shape_scores():
    html = render_report([_row(0, ["missing_structure"])], {}, shape=SHAPE)
    assert "The label map is empty" in html and "id='shape'" not in html and "reconstruction Dice" not in html
    html = render_report([_row(10)], {}, shape=SHAPE)
    assert "The label map is empty" not in html and "id='shape'" in html
