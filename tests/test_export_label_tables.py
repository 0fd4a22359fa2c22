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
    assert coded[4].code is None  # no side-specific concept in the dictionary: no code rather than a wrong one
    assert snomed_code("label_3") is None


def read_label_file_from(mapping: dict[str, str]) -> LabelTable:
    from deconvseg.pipeline.labels import Label, default_color

    return LabelTable(tuple(Label(int(v), n, default_color(int(v))) for v, n in mapping.items()))
