"""The PACS library without a server: queries, credentials, names, state."""

from __future__ import annotations

import datetime as dt

import pytest

from deconvseg.pipeline.errors import ConfigError
from deconvseg.pipeline.pacs.connection import Credentials, connect, public_url
from deconvseg.pipeline.pacs.errors import PacsError
from deconvseg.pipeline.pacs.naming import case_id, result_description
from deconvseg.pipeline.pacs.query import SeriesInfo, SeriesQuery
from deconvseg.pipeline.pacs.state import last_success, record_success, source_key


def test_query_filters_and_refusals():
    assert SeriesQuery(modality="ct", since="20260101").filters() == {"Modality": "CT", "StudyDate": "20260101-"}
    assert SeriesQuery(until="20260131").filters() == {"StudyDate": "-20260131"}
    with pytest.raises(ConfigError, match="--since '2026-01-01'"):
        SeriesQuery(since="2026-01-01")
    with pytest.raises(ConfigError, match="--series-description"):
        SeriesQuery(description="(")
    with pytest.raises(ConfigError, match="--limit 0"):
        SeriesQuery(limit=0)


def test_secrets_stay_out_of_reprs_urls_and_messages():
    credentials = Credentials(user="u", password="pw-secret")
    assert "pw-secret" not in repr(credentials) and "tok-secret" not in repr(Credentials(token="tok-secret"))
    assert "tok-secret" not in repr(Credentials(token="tok-secret").auth())
    assert public_url("https://u:pw@pacs.example.org:8443/dicom-web/") == "https://pacs.example.org:8443/dicom-web"
    with pytest.raises(PacsError, match="carries credentials") as err:
        connect("https://u:pw@pacs.example.org/dicom-web")
    assert "pw" not in str(err.value).replace("pacs", "")
    with pytest.raises(PacsError, match="not an http"):
        connect("ftp://pacs.example.org")
    assert connect("https://pacs.example.org/dicom-web", credentials)._session.verify is True


def test_case_names_and_result_description():
    series = SeriesInfo("1.2.3", "1.2.3.4", "CT", "20260105", "Abdomen / venous", "3", 120, "PAT-42")
    readable = case_id(series)
    assert readable.startswith("20260105_CT_s3_Abdomen") and "/" not in readable
    hidden = case_id(series, pseudonymous=True)
    assert hidden.startswith("pacs_CT_") and "20260105" not in hidden and "Abdomen" not in hidden
    assert case_id(SeriesInfo("1.2.3", "1.2.3.5", "CT", "20260105", "Abdomen / venous", "3")) != readable
    text = result_description("a-very-long-model-name-" * 4, "ab" * 32)
    assert len(text) <= 64 and text.startswith("deconvseg a-very") and text.endswith("abababababab")


def test_state_remembers_the_last_successful_day(tmp_path):
    key = source_key("http://pacs/dicom-web", {"modality": "CT", "description": None})
    assert last_success(tmp_path, key) is None
    record_success(tmp_path, key, "http://pacs/dicom-web", dt.datetime(2026, 3, 4, 23, 59))
    assert last_success(tmp_path, key) == "20260304"
    assert last_success(tmp_path, source_key("http://pacs/dicom-web", {"modality": "MR", "description": None})) is None


def test_result_files_get_our_description_or_lose_the_identity(tmp_path):
    import numpy as np
    import pydicom

    from deconvseg.pipeline.export.dicom_series import series_from_volume, write_series
    from deconvseg.pipeline.pacs.results import deidentify_files, set_series_description
    from deconvseg.pipeline.volume import Volume

    datasets = series_from_volume(Volume(np.zeros((1, 4, 4), dtype=np.int16), metadata={"modality": "CT"}))
    datasets[0].PatientName, datasets[0].PatientID = "Doe^Jane", "MRN-1234"
    [path] = write_series(datasets, tmp_path)
    set_series_description([path], "deconvseg acdc 0123456789ab")
    deidentify_files([path], "pacs_CT_00ff")
    ds = pydicom.dcmread(path)
    assert ds.SeriesDescription == "deconvseg acdc 0123456789ab"
    assert str(ds.PatientName) == "" and ds.PatientID == "pacs_CT_00ff" and ds.PatientIdentityRemoved == "YES"
    assert ds.SOPInstanceUID == datasets[0].SOPInstanceUID

