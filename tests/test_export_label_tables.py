"""Label tables for label maps from other tools: labels.json, {value: name}, class maps, codes."""

from __future__ import annotations

import json

import pytest

from conftest import shared_path
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.export.label_tables import complete_table, read_label_file, snomed_code, with_codes
from deconvseg.pipeline.labels import ACDC, LabelTable


def test_three_file_forms(tmp_path):
    ACDC.write(tmp_path / "labels.json")
    assert read_label_file(tmp_path / "labels.json") == ACDC
    (tmp_path / "plain.json").write_text(json.dumps({"1": "spleen", "5": "liver"}))
    assert read_label_file(tmp_path / "plain.json").names == ["spleen", "liver"]
    class_map = shared_path("totalsegmentator_example", "class_map_total_and_total_mr.json")
    table = read_label_file(class_map, "total")
    assert len(table) == 117 and table[5].name == "liver"
    with pytest.raises(InputError, match="--labels-key"):
        read_label_file(class_map)
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="bad.json"):
        read_label_file(tmp_path / "bad.json")


def test_unknown_values_get_generic_names_and_known_names_get_codes():
    table = complete_table(LabelTable(()), [0, 1, 7])
    assert table.names == ["label_1", "label_7"] and table[7].color == table[7].color
    coded = with_codes(read_label_file_from({"1": "spleen", "2": "subclavian_artery_left", "3": "vertebrae_T12",
                                             "4": "kidney_left"}))
    assert coded[1].code.value == "78961009"
    assert coded[2].code.meaning == "Left Subclavian Artery"
    assert coded[3].code.value == "23215003"
    assert coded[4].code.meaning == "Kidney" and coded[4].modifier.meaning == "Left"  # no left-kidney concept
    assert coded[2].modifier is None  # "Left Subclavian Artery" says the side itself
    assert snomed_code("label_3") is None


def read_label_file_from(mapping: dict[str, str]) -> LabelTable:
    from deconvseg.pipeline.labels import Label, default_color

    return LabelTable(tuple(Label(int(v), n, default_color(int(v))) for v, n in mapping.items()))


def test_every_shipped_and_totalsegmentator_structure_is_coded_but_the_listed_ones():
    from deconvseg.models import WEIGHTS_ROOT
    from deconvseg.pipeline.export.label_tables import GENERIC

    table = with_codes(read_label_file(shared_path("totalsegmentator_example", "class_map_total_and_total_mr.json"),
                                       "total"))
    assert sorted(label.name for label in table if label.code is None) == sorted(GENERIC)
    assert all(label.code.scheme == "SCT" for label in table if label.code)
    for model_json in WEIGHTS_ROOT.glob("*/*/model.json"):
        labels = json.loads(model_json.read_text()).get("labels") or []
        assert all(with_codes(LabelTable.from_json(labels)).labels[i].code for i in range(len(labels))), model_json


def test_touching_totalsegmentator_structures_get_distinct_colours():
    """On TotalSegmentator's own prediction for its example CT, every pair of structures that
    touch (6-neighbourhood) differs by at least 15 CIE76 units; it used to repeat every 20 values
    (aorta and vertebra T12 the same yellow, spleen and two ribs the same red)."""
    import numpy as np

    from deconvseg.pipeline.io.volumes import read_volume
    from deconvseg.pipeline.labels import color_difference

    table = read_label_file(shared_path("totalsegmentator_example", "class_map_total_and_total_mr.json"), "total")
    labels = read_volume(shared_path("totalsegmentator_example", "example_seg.nii.gz"), kind="label").array
    pairs = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        left, right = a[:-1].ravel(), a[1:].ravel()
        touching = (left != right) & (left > 0) & (right > 0)
        pairs |= {tuple(sorted(p)) for p in np.unique(np.stack([left[touching], right[touching]], 1), axis=0).tolist()}
    assert len(pairs) > 20
    by_name = {label.name: label for label in table}
    for name_a, name_b in [("aorta", "vertebrae_T12"), ("spleen", "rib_left_9"), ("spleen", "rib_left_10")]:
        assert by_name[name_a].color != by_name[name_b].color
    close = [(table[a].name, table[b].name) for a, b in pairs if color_difference(table[a].color, table[b].color) < 15]
    assert not close
    assert len({label.color for label in table}) == len(table)
