"""Back-fill the training-domain record of the shipped models (``ensemble.json``, key ``domain``).

Models trained from now on get the record from training (``deconvseg.pipeline.domain_fit``); the
shipped ones were trained before it existed. For each model this recomputes it from the model's own
training data and validation predictions, writes it into ``ensemble.json`` (weights untouched),
replaces the "Training domain" section of its MODEL_CARD.md, and prints one JSON line: modality,
per-structure thresholds with the measured flag rates and the Dice of flagged and unflagged
validation predictions.

- ``acdc``, ``acdc-baselines``: ACDC ``splits/train.list`` (fingerprint, volumes) and
  ``splits/val.list`` (calibration; the split the models were selected on).
- ``phantom-ct``: its training phantoms (seeds 100-111) and, for calibration, its 3 validation
  phantoms (112-114) plus 17 more never trained on (115-131): 3 cases cannot place a quantile.

    .venv/bin/python benchmarks/domain_backfill.py [--model acdc phantom-ct ...] [--data ../shared/data/acdc]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "models" / "weights"
CARD_START, CARD_END = "<!-- domain:start -->", "<!-- domain:end -->"


def cases_for(model: str, data: Path) -> tuple[list, list, str]:
    """Training and calibration cases of a shipped model, and its dataset description."""
    from deconvseg.pipeline.io.datasets import Case, read_acdc
    from deconvseg.pipeline.phantoms import make_phantom

    if model.startswith("acdc"):
        train = read_acdc(data, data / "splits" / "train.list")
        val = read_acdc(data, data / "splits" / "val.list")
        return train, val, "ACDC (SSL4MIS HDF5) splits/train.list (calibrated on splits/val.list)"

    def phantoms(seeds: range) -> list:
        pairs = [(s, make_phantom("CT", shape=(64, 128, 128), spacing=(2.0, 2.0, 3.0), seed=s)) for s in seeds]
        return [Case(f"phantom_ct_{s:03d}", image, label) for s, (image, label) in pairs]

    return (phantoms(range(100, 112)), phantoms(range(112, 132)),
            "deconvseg.pipeline.phantoms CT, seeds 100-111 (calibrated on seeds 112-131)")


def card_section(domain: dict) -> str:
    """The MODEL_CARD.md section: what the model is for, the thresholds and their measured flag rates."""
    from deconvseg.pipeline.domain import INTENDED_USE, TrainingDomain, domain_summary

    record = TrainingDomain.model_validate(domain)
    t = record.thresholds
    unit = "HU" if record.modality == "CT" else "SD after z-score"
    checks = (
        "Before inference a CT model refuses MR input and the reverse, and any input with another number of "
        "channels (exit 2; `--allow-domain-mismatch` turns the refusal into a `domain_mismatch` flag). "
        f"`out_of_distribution`: a fingerprint feature beyond its training range widened by {t.feature_margin:g} x "
        f"the range + {t.feature_floor:g} ({unit}), or a spacing axis more than {t.spacing_factor:g}x outside the "
        f"training range. `implausible_volume`: outside the training range by a factor {1 + t.volume_margin:g}. "
        f"`missing_structure`: empty where at least {t.presence_for_missing:.0%} of training labels had it. "
        f"`high_uncertainty` (a structure flag): above the {t.uncertainty_quantile:g} quantile of the structure's "
        "mean uncertainty on the validation predictions.")
    lines = [CARD_START, "## Training domain and QA thresholds (`ensemble.json` key `domain`)", "",
             f"**Made for:** {domain_summary(record)}. **Intended use:** {INTENDED_USE}.", "", checks, "",
             "| structure | training volume (mL) | presence | high_uncertainty above | val flag rate "
             "| Dice flagged / unflagged |",
             "|---|---|---|---|---|---|"]
    for name, s in record.structures.items():
        c = s.calibration
        if c is None:
            threshold = rate = dice = "n/a"
        else:
            threshold, rate = f"{c.high_uncertainty:.3f}", f"{c.flag_rate:.0%}"
            dice = f"{c.dice_flagged if c.dice_flagged is not None else 'n/a'} / {c.dice_unflagged}"
        lines.append(f"| {name} | {s.volume_ml.low:.1f}-{s.volume_ml.high:.1f} | {s.presence:.0%} | "
                     f"{threshold} | {rate} | {dice} |")
    rates = ", ".join(f"{flag} {rate:.0%}" for flag, rate in record.flag_rates.items())
    lines += ["", f"Case flags on the {record.val_cases} validation cases: {rates}. The thresholds were set on these "
              "same cases, so the rates are in-sample. Recompute: `.venv/bin/python benchmarks/domain_backfill.py`.",
              CARD_END]
    return "\n".join(lines)


def write_card(folder: Path, domain: dict) -> None:
    card = folder / "MODEL_CARD.md"
    text = card.read_text() if card.is_file() else ""
    section = card_section(domain)
    if CARD_START in text:
        text = re.sub(re.escape(CARD_START) + ".*?" + re.escape(CARD_END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    card.write_text(text)


def backfill(model: str, data: Path, cases_out: Path | None = None) -> dict:
    from deconvseg.pipeline.domain_fit import fit_model_domain
    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.files import write_json_atomic
    from deconvseg.pipeline.segment import InferenceConfig

    folder = WEIGHTS / model
    settings = json.loads((folder / "ensemble.json").read_text())
    settings.pop("domain", None)
    ensemble = load_ensemble(folder)
    train, val, dataset = cases_for(model, data)
    start = time.perf_counter()
    measures = []
    domain = fit_model_domain(train, val, ensemble, dataset=dataset,
                              config=InferenceConfig(threads=torch.get_num_threads()), on_case=measures.append)
    if cases_out is not None:
        cases_out.mkdir(parents=True, exist_ok=True)
        (cases_out / f"{model}.json").write_text(json.dumps([
            {"case": m.case_id, "dice": m.dice, "structure_uncertainty": m.structure_uncertainty,
             "mean_uncertainty": {r["name"]: r["mean_uncertainty"] for r in m.rows}, "shape_score": m.shape_score,
             "flags": [f.model_dump() for f in m.flags]} for m in measures], indent=1))
    record = domain.model_dump(mode="json")
    write_json_atomic(folder / "ensemble.json", {**settings, "domain": record})
    write_card(folder, record)
    per_structure = {name: None if s.calibration is None else {
        "threshold": s.calibration.high_uncertainty, "flag_rate": s.calibration.flag_rate,
        "dice_flagged": s.calibration.dice_flagged, "dice_unflagged": s.calibration.dice_unflagged}
        for name, s in domain.structures.items()}
    return {"model": model, "modality": domain.modality, "val_cases": domain.val_cases,
            "case_flag_rates": domain.flag_rates,
            "high_uncertainty": per_structure, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["phantom-ct", "acdc", "acdc-baselines"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "acdc")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases-out", type=Path, help="write each validation case's figures to DIR/<model>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model in args.model:
        print(json.dumps(backfill(model, args.data, args.cases_out)), flush=True)


if __name__ == "__main__":
    main()
