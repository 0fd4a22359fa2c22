"""QIDO-RS: the image series to segment, by modality, study date range, description and a limit."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from typing import Any

from dicomweb_client.api import DICOMwebClient

from deconvseg.pipeline.errors import ConfigError
from deconvseg.pipeline.pacs.connection import translated

# Derived objects (ours and others') are never inputs.
NOT_IMAGES = frozenset({"SEG", "RTSTRUCT", "SR", "PR", "KO", "RTPLAN", "RTDOSE", "DOC", "REG"})
_FIELDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "StudyDate",
    "SeriesDescription",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PatientID",
    "StudyID",
)
_PAGE = 100


@dataclass(frozen=True)
class SeriesQuery:
    """Which series to fetch.

    Attributes:
        modality: ``CT``, ``MR``, ... (``None``: any image modality).
        since: first study date ``YYYYMMDD`` (inclusive), or ``None``.
        until: last study date ``YYYYMMDD`` (inclusive), or ``None``.
        description: regular expression searched in the series description (``None``: any).
        limit: at most this many series (``None``: all).
    """

    modality: str | None = None
    since: str | None = None
    until: str | None = None
    description: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                try:
                    dt.datetime.strptime(value, "%Y%m%d")
                except ValueError as err:
                    raise ConfigError(f"--{name} {value!r}: not a date YYYYMMDD, e.g. 20260131") from err
        if self.description is not None:
            try:
                re.compile(self.description)
            except re.error as err:
                raise ConfigError(
                    f"--series-description {self.description!r}: not a regular expression ({err})"
                ) from err
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: must be at least 1")

    def filters(self) -> dict[str, str]:
        """The QIDO-RS search filters (modality, ``StudyDate`` range)."""
        filters = {"Modality": self.modality.upper()} if self.modality else {}
        if self.since or self.until:
            filters["StudyDate"] = f"{self.since or ''}-{self.until or ''}"
        return filters


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in the PACS (the attributes QIDO-RS returned)."""

    study_uid: str
    series_uid: str
    modality: str
    study_date: str = ""
    description: str = ""
    series_number: str = ""
    instances: int | None = None
    patient_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesInfo:
        return cls(**data)


def _value(item: dict[str, Any], keyword: str) -> Any:
    from pydicom.datadict import tag_for_keyword

    entry = item.get(f"{tag_for_keyword(keyword):08X}") or {}
    values = entry.get("Value") or [None]
    return values[0]


def _from_qido(item: dict[str, Any]) -> SeriesInfo:
    count = _value(item, "NumberOfSeriesRelatedInstances")
    return SeriesInfo(
        study_uid=str(_value(item, "StudyInstanceUID") or ""),
        series_uid=str(_value(item, "SeriesInstanceUID") or ""),
        modality=str(_value(item, "Modality") or ""),
        study_date=str(_value(item, "StudyDate") or ""),
        description=str(_value(item, "SeriesDescription") or ""),
        series_number=str(_value(item, "SeriesNumber") or ""),
        instances=int(count) if count is not None else None,
        patient_id=str(_value(item, "PatientID") or ""),
    )


def find_series(client: DICOMwebClient, query: SeriesQuery) -> list[SeriesInfo]:
    """The image series matching ``query``, oldest study first, then by series UID.

    QIDO-RS filters by modality and date; the description pattern and the limit apply here
    (QIDO knows wildcards, not regular expressions), paging through the results.

    Raises:
        PacsError: the PACS refused or could not be reached.
    """
    pattern = re.compile(query.description) if query.description else None
    found: list[SeriesInfo] = []
    offset = 0
    while True:
        with translated(client.base_url, "QIDO-RS series query"):
            page = client.search_for_series(
                search_filters=query.filters(), fields=list(_FIELDS), limit=_PAGE, offset=offset
            )
        for item in page:
            series = _from_qido(item)
            if series.modality.upper() in NOT_IMAGES or not series.series_uid:
                continue
            if pattern is None or pattern.search(series.description):
                found.append(series)
        if len(page) < _PAGE:
            break
        offset += len(page)
    found.sort(key=lambda s: (s.study_date, s.study_uid, s.series_uid))
    return found[: query.limit] if query.limit else found
