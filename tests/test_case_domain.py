"""The case API checks whether the model applies: refusal before anything is written, flags in qa.json,
the report and the CLI line; the shipped ACDC model refuses a CT."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deconvseg.pipeline.case import CaseConfig, CaseInput, run_case
from deconvseg.pipeline.domain import DomainMismatchError, fit_domain
from deconvseg.pipeline.ensemble import Ensemble
from deconvseg.pipeline.io.volumes import write_volume
from deconvseg.pipeline.labels import Label, LabelTable
from deconvseg.pipeline.phantoms import make_phantom
from deconvseg.pipeline.segment import InferenceConfig
from tests.conftest import shared_path

SHAPE, SPACING = (24, 48, 48), (4.0, 4.0, 6.0)
TABLE = LabelTable((Label(1, "liver", (221, 130, 101)),))
CONFIG = CaseConfig(inference=InferenceConfig(threads=1))


class Window(nn.Module):
    """An oracle 'network': liver where the normalised intensity is near 0.6 (60 HU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 40 * (0.08 - (x - 0.6).abs())], dim=1)


def _ensemble(with_domain: bool = True) -> Ensemble:
    pairs = [make_phantom("CT", shape=SHAPE, spacing=SPACING, seed=s) for s in range(3)]
    domain = fit_domain([p[0] for p in pairs], [p[1] for p in pairs], {1: "liver"}, modality="CT",
                        task="liver (test)", body_region="phantom", dataset="test phantoms", spacing=(4.0, 4.0, 6.0))
    spec = {"labels": TABLE.to_json(), "out_channels": 2, "spacing": [4.0, 4.0, 6.0], "patch_size": [8, 16, 16],
            "normalization": {"scheme": "ct", "clip": [-200.0, 300.0], "mean": 0.0, "std": 100.0}}
    settings = {"name": "liver-test"}
    if with_domain:
        settings["domain"] = domain.model_dump(mode="json")
    return Ensemble.from_networks([(Window(), spec)], settings)


@pytest.fixture(scope="module")
def ensemble() -> Ensemble:
    return _ensemble()


def _input(tmp_path, modality: str, seed: int = 7) -> CaseInput:
    image, _ = make_phantom(modality, shape=SHAPE, spacing=SPACING, seed=seed)
    path = write_volume(image, tmp_path / f"{modality.lower()}.nii.gz")
    return CaseInput(modality.lower(), path)


def test_mr_input_to_a_ct_model_is_refused_before_anything_is_written(tmp_path, ensemble):
    out = tmp_path / "out"
    with pytest.raises(DomainMismatchError, match="modality MR but model 'liver-test' was trained on CT"):
        run_case(_input(tmp_path, "MR"), ensemble, CONFIG, out)
    assert not out.exists() or not any(out.iterdir())


def test_allowed_mismatch_is_segmented_and_flagged_everywhere(tmp_path, ensemble):
    config = CONFIG.model_copy(update={"allow_domain_mismatch": True})
    summary = run_case(_input(tmp_path, "MR"), ensemble, config, tmp_path / "out")
    qa = json.loads((summary.bundle / "qa.json").read_text())
    assert qa["case_flags"][0]["flag"] == "domain_mismatch" and "modality MR" in qa["case_flags"][0]["reason"]
    assert summary.case_flags == qa["case_flags"] and "domain_mismatch" in summary.line()
    report = (summary.bundle / "report.html").read_text()
    assert "id='case-flags'" in report and "modality MR" in report


def test_input_that_fits_has_no_domain_flags_and_a_report_naming_the_training_data(tmp_path, ensemble):
    summary = run_case(_input(tmp_path, "CT"), ensemble, CONFIG, tmp_path / "out")
    qa = json.loads((summary.bundle / "qa.json").read_text())
    assert not {"domain_mismatch", "out_of_distribution"} & {f["flag"] for f in qa["case_flags"]}
    assert summary.line().startswith("1 structures, 1 non-empty")
    report = (summary.bundle / "report.html").read_text()
    assert "CT, liver (test) (phantom); test phantoms, 3 training cases" in report
    assert "research use; validate locally before clinical use" in report


def test_model_without_a_record_still_writes_empty_case_flags(tmp_path):
    summary = run_case(_input(tmp_path, "MR"), _ensemble(with_domain=False), CONFIG, tmp_path / "out")
    assert json.loads((summary.bundle / "qa.json").read_text())["case_flags"] == []
    assert "not recorded for this model" in (summary.bundle / "report.html").read_text()


def test_shipped_cardiac_mr_model_refuses_the_totalsegmentator_ct(tmp_path):
    from deconvseg.flows.cli import app

    ct = shared_path("totalsegmentator_example", "example_ct_sm.nii.gz")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["segment", str(ct), "--out", str(out), "--model", "acdc", "--threads", "1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {ct}: modality CT but model 'acdc'")
    assert "--allow-domain-mismatch" in lines[0]
    assert not out.exists()


def test_batch_fails_a_mismatched_case_with_its_reason_unless_allowed(tmp_path, prefect_env):
    from flows_support import TINY_SHAPE, TINY_SPACING, run, write_phantom, write_tiny_model

    model = write_tiny_model(tmp_path / "model", members=1)
    pairs = [make_phantom("CT", shape=TINY_SHAPE, spacing=TINY_SPACING, seed=s) for s in range(2)]
    domain = fit_domain([p[0] for p in pairs], [p[1] for p in pairs], {1: "liver"}, modality="CT", task="test",
                        body_region="phantom", dataset="tiny phantoms", spacing=TINY_SPACING)
    (model / "ensemble.json").write_text(json.dumps({"name": "tiny-ct", "domain": domain.model_dump(mode="json")}))
    source = tmp_path / "in"
    write_phantom(source / "ct.nii.gz", seed=3)
    mr, _ = make_phantom("MR", shape=TINY_SHAPE, spacing=TINY_SPACING, seed=3)
    write_volume(mr, source / "mr.nii.gz")
    cli = ["-c", "from deconvseg.flows.cli import app; app()", "batch", str(source), "--model", str(model), "--json"]

    refused = run([*cli, "--out", str(tmp_path / "out")], prefect_env)
    assert refused.returncode == 1, refused.stderr[-2000:]
    rows = {r["case"]: r for r in json.loads((tmp_path / "out" / "batch.json").read_text())["rows"]}
    assert rows["mr"]["status"] == "failed" and "modality MR but model 'tiny-ct'" in rows["mr"]["reason"]
    assert rows["ct"]["status"] == "segmented" and not (tmp_path / "out" / "mr").exists()

    allowed = run([*cli, "--out", str(tmp_path / "allowed"), "--allow-domain-mismatch"], prefect_env)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    summary = json.loads((tmp_path / "allowed" / "batch.json").read_text())
    rows = {r["case"]: r for r in summary["rows"]}
    assert rows["mr"]["case_flags"][0]["flag"] == "domain_mismatch" and "mr" in summary["needs_review"]
