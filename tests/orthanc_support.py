"""A real Orthanc for the PACS tests: own temporary configuration, storage and port, stopped by PID.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (``.ci/run`` installs them); the tests
that need it skip where they are absent. Orthanc listens on every interface (no bind option in
1.10) but ``RemoteAccessAllowed: false`` refuses all but localhost; the tests talk to 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deconvseg.flows.prefect_env import free_port, stop_process

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "deconvseg", "s3cret-test-password"


@dataclass
class OrthancServer:
    """One Orthanc process: its folder, port and credentials."""

    folder: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return USER, PASSWORD

    def start(self, timeout_s: float = 30.0) -> None:
        """Start Orthanc (same storage and port as before) and wait until ``/system`` answers."""
        config = {
            "Name": "deconvseg-test", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"), "HttpPort": self.port,
            "DicomServerEnabled": False, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD}, "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1, "HttpTimeout": 30,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s")

    def stop(self) -> None:
        """Stop this Orthanc by its PID (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is not None:
            stop_process(self.process, grace_s=10)

    def upload(self, files: list[Path]) -> None:
        """``POST /instances`` one file per request."""
        for path in files:
            response = requests.post(f"{self.url}/instances", data=path.read_bytes(), auth=self.auth, timeout=30)
            response.raise_for_status()

    def find(self, level: str, query: dict) -> list[dict]:
        """``POST /tools/find`` with expanded answers."""
        response = requests.post(f"{self.url}/tools/find", auth=self.auth, timeout=30,
                                 json={"Level": level, "Query": query, "Expand": True})
        response.raise_for_status()
        return response.json()

    def instance_file(self, orthanc_id: str) -> bytes:
        response = requests.get(f"{self.url}/instances/{orthanc_id}/file", auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.content


def start_orthanc(folder: Path) -> OrthancServer:
    """A started Orthanc in ``folder``, or skip the test where Debian's packages are missing."""
    if not Path(ORTHANC).exists() or not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc (Debian packages orthanc, orthanc-dicomweb) is not installed; .ci/run installs it")
    server = OrthancServer(folder, free_port())
    server.start()
    return server


def write_ct_series(shared_ct: Path, folder: Path, study_date: str = "20260105") -> list[Path]:
    """The TotalSegmentator example CT series with deterministic UIDs (its own are blank) and a study date."""
    import pydicom

    from deconvseg.pipeline.export.dicom_series import assign_uids, write_series
    from deconvseg.pipeline.files import file_digest

    files = sorted(p for p in shared_ct.iterdir() if p.is_file())
    datasets = assign_uids([pydicom.dcmread(f) for f in files], [file_digest(f) for f in files])
    for ds in datasets:
        ds.StudyDate, ds.SeriesDescription, ds.SeriesNumber = study_date, "abdomen ct example", 2
        ds.PatientID = ds.get("PatientID") or "TS-EXAMPLE"
    return write_series(datasets, folder)


def write_mr_series(h5_path: Path, folder: Path, study_date: str = "20260106") -> list[Path]:
    """An MR series made from an ACDC HDF5 volume (1.5 x 1.5 x 8 mm, the files store no geometry)."""
    import h5py
    import numpy as np

    from deconvseg.pipeline.export.dicom_series import series_from_volume, write_series
    from deconvseg.pipeline.volume import Volume

    with h5py.File(h5_path) as handle:
        array = (np.asarray(handle["image"], dtype=np.float32) * 1000.0).round().astype(np.int16)
    volume = Volume(array, spacing=(1.5, 1.5, 8.0), kind="image", metadata={"modality": "MR", "source": str(h5_path)})
    datasets = series_from_volume(volume, series_description="cine sax acdc")
    for ds in datasets:
        ds.StudyDate, ds.PatientID = study_date, f"ACDC-{h5_path.stem}"
    return write_series(datasets, folder)
