"""Label tables for label maps brought from elsewhere (nnU-Net, TotalSegmentator, ...).

A label file may be this project's ``labels.json`` (a list of ``{value, name, color, code}``), or
a plain mapping ``{"1": "spleen", ...}``, or a mapping of such mappings (TotalSegmentator's class
map, ``{"total": {...}, "total_mr": {...}}``) from which ``key`` picks one. Values the file does
not name get ``label_<v>`` names and the fixed palette (``deconvseg.pipeline.labels.generic_table``).
Structure names that match a SNOMED CT concept of pydicom's DICOM code dictionary (``spleen``,
``subclavian_artery_left`` -> "Left Subclavian Artery", ``vertebrae_T12`` -> "T12 vertebra") get
that code, so DICOM-SEG and labels.json carry it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from pydicom.sr.codedict import codes

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.labels import Code, Label, LabelTable, default_color, generic_table


def read_label_file(path: str | Path, key: str | None = None) -> LabelTable:
    """Read a label table from ``labels.json``, a value->name mapping, or a mapping of mappings.

    Raises:
        InputError: unreadable JSON, an unknown ``key``, or entries that are not value/name pairs.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(
            path, f"cannot read label JSON ({err.__class__.__name__})", "check the path and syntax"
        ) from err
    if isinstance(data, list):
        return LabelTable.from_json(data)
    if not isinstance(data, dict):
        raise InputError(path, "label JSON must be a list or a mapping", "see labels.json in a bundle for the format")
    if data and all(isinstance(v, dict) for v in data.values()):
        if key not in data:
            raise InputError(path, f"holds several label maps {sorted(data)}", "choose one with --labels-key")
        data = data[key]
    try:
        return LabelTable(tuple(Label(int(v), str(name), default_color(int(v))) for v, name in data.items()))
    except (TypeError, ValueError) as err:
        raise InputError(path, f"entries must map label values to names ({err})", "fix the file") from err


def complete_table(table: LabelTable, values: list[int]) -> LabelTable:
    """``table`` plus generic ``label_<v>`` entries for the ``values`` it does not name."""
    missing = sorted(set(int(v) for v in values) - set(table.values) - {0})
    return LabelTable(tuple(table.labels) + tuple(generic_table(missing).labels)) if missing else table


# Names pydicom's keyword rule does not find, mapped to a concept of its SNOMED CT dictionary (so
# every code is one the DICOM standard lists). Where the dictionary has no left/right concept,
# the structure's own concept is used and the side stays in the segment's name.
SNOMED_KEYWORDS = {
    "kidney_right": "Kidney",
    "kidney_left": "Kidney",
    "adrenal_gland_right": "AdrenalGland",
    "adrenal_gland_left": "AdrenalGland",
    "lung_upper_lobe_left": "StructureOfUpperLobeOfLeftLung",
    "lung_upper_lobe_right": "UpperLobeOfLung",
    "lung_middle_lobe_right": "MiddleLobeOfRightLung",
    "lung_lower_lobe_left": "LowerLobeOfLung",
    "lung_lower_lobe_right": "LowerLobeOfLung",
    "thyroid_gland": "Thyroid",
    "small_bowel": "SmallIntestine",
    "urinary_bladder": "UrinaryBladderStructure",
    "brachiocephalic_vein_left": "BrachiocephalicVein",
    "brachiocephalic_vein_right": "BrachiocephalicVein",
    "atrial_appendage_left": "LeftAuricularAppendage",
    "iliac_artery_left": "CommonIliacArtery",
    "iliac_artery_right": "CommonIliacArtery",
    "iliac_vena_left": "CommonIliacVein",
    "iliac_vena_right": "CommonIliacVein",
    "humerus_left": "Humerus",
    "humerus_right": "Humerus",
    "scapula_left": "Scapula",
    "scapula_right": "Scapula",
    "clavicula_left": "Clavicle",
    "clavicula_right": "Clavicle",
    "femur_left": "Femur",
    "femur_right": "Femur",
    "autochthon_left": "ErectorSpinaeMuscle",
    "autochthon_right": "ErectorSpinaeMuscle",
    "costal_cartilages": "CostalCartilage",
    **{f"rib_{side}_{n}": "BoneStructureOfRib" for side in ("left", "right") for n in range(1, 13)},
}
# Structures of the shipped models and TotalSegmentator's ``total`` map that stay generic
# ("Anatomical Structure" in DICOM-SEG): the dictionary holds no concept that says what they are.
GENERIC = (
    "kidney_cyst_left",
    "kidney_cyst_right",
    "vertebrae_S1",
    "portal_vein_and_splenic_vein",
    "hip_left",
    "hip_right",
    "gluteus_maximus_left",
    "gluteus_maximus_right",
    "gluteus_medius_left",
    "gluteus_medius_right",
    "gluteus_minimus_left",
    "gluteus_minimus_right",
    "iliopsoas_left",
    "iliopsoas_right",
)


def snomed_code(name: str) -> Code | None:
    """The SNOMED CT code of a structure name from pydicom's code dictionary, or ``None``.

    Tries ``SNOMED_KEYWORDS`` first, then the name as a keyword (``spleen`` -> ``Spleen``,
    ``subclavian_artery_left`` -> ``LeftSubclavianArtery``, ``vertebrae_T12`` -> ``T12Vertebra``).
    """
    parts = [p for p in name.lower().split("_") if p]
    candidates = [SNOMED_KEYWORDS[name]] if name in SNOMED_KEYWORDS else []
    candidates.append("".join(p.capitalize() for p in parts))
    if len(parts) > 1 and parts[-1] in ("left", "right"):
        candidates.append(parts[-1].capitalize() + "".join(p.capitalize() for p in parts[:-1]))
    if len(parts) == 2 and parts[0] in ("vertebra", "vertebrae"):
        candidates.append(f"{parts[1].upper()}Vertebra")
    for candidate in candidates:
        try:
            concept = getattr(codes.SCT, candidate)
        except AttributeError:
            continue
        return Code(concept.value, concept.meaning, concept.scheme_designator)
    return None


def laterality(name: str, code: Code | None) -> Code | None:
    """SNOMED CT ``Left``/``Right`` for a sided name whose ``code`` does not say the side, else ``None``
    (DICOM-SEG carries it as the property type modifier)."""
    parts = name.lower().split("_")
    for side in ("left", "right"):
        if side in parts and code is not None and side not in code.meaning.lower():
            concept = getattr(codes.SCT, side.capitalize())
            return Code(concept.value, concept.meaning, concept.scheme_designator)
    return None


def with_codes(table: LabelTable) -> LabelTable:
    """``table`` with SNOMED CT codes filled in where a label has none and its name matches one,
    and a laterality modifier where that code does not say the side."""
    out = []
    for label in table:
        code = label.code or snomed_code(label.name)
        out.append(replace(label, code=code, modifier=label.modifier or laterality(label.name, code)))
    return LabelTable(tuple(out))
