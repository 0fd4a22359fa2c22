"""Names that become paths, and patient data that must not leave the hospital.

Two jobs at the boundary between data and the file system / the outside world:

- ``safe_component``: any text (a file name, a manifest's case id, a DICOM PatientID or
  SeriesDescription) -> one path component made of ``[A-Za-z0-9._-]``: accents are transliterated
  (NFKD, ``Müller`` -> ``Muller``), separators and ``..`` can never survive, a leading dot is
  dropped (no hidden or relative names), Windows device names are prefixed, and a name longer than
  ``max_length`` keeps its head plus a short hash of the whole, so two long names stay distinct.
  ``safe_join`` refuses a joined path that would leave its root.
- ``deidentify_dataset`` / ``deidentify_metadata``: copies without the patient's identity, a subset
  of the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile with the
  *Retain UIDs* and *Retain Longitudinal Temporal Information* options (study dates and UIDs stay,
  so a de-identified SEG still references its series). Names, IDs, birth date, addresses,
  institution and operator names are emptied (type 2 attributes) or removed; private tags are removed.
"""

from __future__ import annotations

import copy
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from deconvseg.pipeline.errors import InputError

MAX_COMPONENT = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}

# Emptied: type 2 attributes of the modules a SEG/RTSTRUCT copies (they must be present).
EMPTIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)
# Removed: further identifying attributes of PS3.15 Table E.1-1 that images commonly carry.
REMOVED = (
    "PatientBirthTime",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "PatientComments",
    "MilitaryRank",
    "BranchOfService",
    "CountryOfResidence",
    "RegionOfResidence",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "ScheduledPerformingPhysicianName",
    "DeviceSerialNumber",
    "RequestAttributesSequence",
    "ReferencedPatientSequence",
    "PatientInsurancePlanCodeSequence",
    "ResponsiblePerson",
)
METHOD = "deconvseg: PS3.15 E.1 basic subset, retain UIDs and dates"  # LO: at most 64 characters
# Keys of ``Volume.metadata`` that identify the patient (``patient_id`` from ``deconvseg.pipeline.io.dicom``).
METADATA_KEYS = ("patient_id", "patient_name", "patient_birth_date", "patient_sex", "accession_number")


def safe_component(name: str, max_length: int = MAX_COMPONENT, fallback: str = "case") -> str:
    """One file-system-safe path component for ``name`` (never empty, ``.``, ``..`` or hidden).

    Args:
        name: any text, e.g. ``"../../etc"``, ``"Müller^Jörg"`` or a 300-character description.
        max_length: longest result; longer names become ``head-<8 hex of sha256(name)>``.
        fallback: the result for an empty name; a name with nothing printable left becomes
            ``<fallback>-<8 hex of its sha256>``.

    Returns:
        A string of ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``, at most ``max_length`` long.
    """
    if max_length < 16:
        raise ValueError(f"max_length={max_length} is too short to keep names distinct; use 16 or more")
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", ascii_text)
    cleaned = re.sub(r"\.{2,}", "_", cleaned).strip("._-")
    tag = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if not cleaned:  # e.g. a name in CJK script: keep distinct names distinct
        cleaned = f"{fallback}-{tag}" if name else fallback
    if cleaned.split(".")[0].upper() in _WINDOWS_DEVICES:
        cleaned = f"_{cleaned}"
    if len(cleaned) > max_length:
        cleaned = f"{cleaned[: max_length - 9].rstrip('._-')}-{tag}"
    return cleaned


def safe_join(root: str | Path, *parts: str) -> Path:
    """``root / part / ...`` after checking that the result stays inside ``root``.

    Raises:
        InputError: when a part is absolute or climbs out of ``root`` (``..``, a symlink).
    """
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise InputError(
            base.joinpath(*parts),
            f"path leaves the output folder {base}",
            "use a plain name (see deconvseg.pipeline.sanitize.safe_component)",
        )
    return target


def deidentify_dataset(dataset: Dataset, pseudonym: str = "") -> Dataset:
    """A copy of ``dataset`` without the patient's identity (see the module docstring).

    Args:
        dataset: a DICOM dataset (not modified).
        pseudonym: the new PatientID (e.g. the case id); empty by default.

    Returns:
        The copy, with PatientIdentityRemoved ``YES`` and DeidentificationMethod set.
    """
    out = copy.deepcopy(dataset)  # Dataset.copy() shares the data elements with the original
    for keyword in EMPTIED:
        setattr(out, keyword, "")
    if pseudonym:
        out.PatientID = pseudonym
    for keyword in REMOVED:
        if keyword in out:
            delattr(out, keyword)
    out.remove_private_tags()
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = METHOD
    return out


def deidentify_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``Volume.metadata`` without the keys that identify the patient (``METADATA_KEYS``)."""
    return {key: value for key, value in metadata.items() if key not in METADATA_KEYS}


def identifying_values(dataset: Dataset) -> list[str]:
    """The non-empty identifying values of ``dataset`` (to check that none leaked into outputs).

    Person names are returned whole and as their ``^``-separated parts of 3 or more characters.
    """
    values: list[str] = []
    for keyword in (*EMPTIED, *REMOVED):
        value = dataset.get(keyword)
        if value is None or isinstance(value, Dataset) or keyword in ("PatientSex", "StudyID"):
            continue
        text = str(value).strip()
        if text and not text.startswith("["):  # sequences print as lists
            values.append(text)
            values += [part for part in text.split("^") if len(part) >= 3 and part != text]
    return sorted(set(values))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def terminal_text(text: str) -> str:
    """``text`` with control, bidirectional and line-breaking characters shown as escapes (``\\x1b``).

    Text from an input (a file name, a label name, a DICOM tag) can carry ANSI escape sequences
    or carriage returns that rewrite what a terminal shows; escaped, it stays one visible line.
    """
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV injection).

    Text starting with ``= + - @`` (or a tab or carriage return) gets a leading apostrophe;
    numbers and other text are returned unchanged.
    """
    if isinstance(value, str) and value.startswith(CSV_FORMULA_START):
        return "'" + value
    return value


def dicom_text(text: str, max_length: int = 64) -> str:
    """``text`` as a DICOM LO value: no control characters or backslashes (the value separator), at most
    ``max_length`` characters."""
    return _CONTROL.sub(" ", text).replace("\\", "/")[:max_length].strip()
