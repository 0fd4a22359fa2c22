"""MNIST autoencoder comparison: one JSON line per model (conv, conv_upsample, fc).

    python benchmarks/autoencoder.py [--epochs 10] [--code-size 32] [--threads 1] [--out DIR]

Fair by construction: every model has the same code size, is trained for the same epochs with the
same optimiser (Adam, lr 2e-3, batch 128, MSE on sigmoid outputs, seed 0) on all 60,000 training
images, and is scored on the 10,000 test images. Keys: ``model``, ``code_size``, ``test_mse``
(pixels in [0, 1]), ``psnr`` (10 log10(1/test_mse), dB), ``params``, ``train_s`` (training wall
seconds), plus ``mse_ratio_vs_fc`` and ``params_ratio_vs_fc`` measured in the same run, ``epochs``
and ``threads``. ``conv`` unpools into the encoder's max-pool switches, side information the
32-d code does not hold (see ``models/autoencoders.py``); ``conv_upsample`` has the same weights
and no side channel. ``--out`` also writes the comparison table, grid and loss curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deconvseg.pipeline.autoencoding.report import write_comparison
from deconvseg.pipeline.autoencoding.fit import AutoencoderTrainConfig, fit_and_evaluate
from deconvseg.pipeline.autoencoding.mnist import read_mnist

REPO = Path(__file__).resolve().parents[1]
MODELS = ("conv", "conv_upsample", "fc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--code-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="first N training images only (smoke runs)")
    parser.add_argument("--out", type=Path, default=None, help="also write comparison.{json,md} and PNGs here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    train = torch.from_numpy(read_mnist(args.data, "train").as_float()[: args.limit])
    test = torch.from_numpy(read_mnist(args.data, "test").as_float())
    config = AutoencoderTrainConfig(epochs=args.epochs, threads=args.threads)
    results = [fit_and_evaluate(name, train, test, args.code_size, config) for name in MODELS]
    fc = results[MODELS.index("fc")].row
    for result in results:
        row = result.row
        line = {
            **{k: row[k] for k in ("model", "code_size", "test_mse", "psnr", "params", "train_s")},
            "mse_ratio_vs_fc": row["test_mse"] / fc["test_mse"],
            "params_ratio_vs_fc": row["params"] / fc["params"],
            "epochs": args.epochs,
            "threads": args.threads,
            "train_images": len(train),
        }
        print(json.dumps(line), flush=True)
    if args.out:
        write_comparison(
            args.out,
            [r.row for r in results],
            test[:10, 0].numpy(),
            {r.row["model"]: r.samples for r in results},
            {r.row["model"]: r.history.epoch_loss for r in results},
        )


if __name__ == "__main__":
    main()
