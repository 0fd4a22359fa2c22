"""Write an autoencoder comparison: table (JSON + Markdown), reconstruction grid and loss curves (PNG).

Every file is written to a temporary name in the destination folder and renamed into place, so a
failure never leaves a half-written file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deconvseg.pipeline.files import atomic_file, write_text_atomic

COLUMNS = ("model", "code_size", "params", "epochs", "train_s", "test_mse", "psnr")


def comparison_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the rows (MSE 5 significant digits, PSNR in dB with 2 decimals)."""
    fmt = {"test_mse": "{:.5f}", "psnr": "{:.2f}", "train_s": "{:.0f}"}
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.get(c, "{}").format(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_reconstruction_grid(path: Path, originals: np.ndarray, reconstructions: Mapping[str, np.ndarray]) -> Path:
    """PNG with one row of originals and one row per model; images ``(n, 28, 28)`` in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [("original", originals), *reconstructions.items()]
    n = len(originals)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.8 + 1.2, len(rows) * 0.85), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(images[i], cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.14, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def save_loss_curves(path: Path, histories: Mapping[str, Sequence[float]]) -> Path:
    """PNG of the mean training loss per epoch (epoch 0 = before training), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, losses in histories.items():
        ax.plot(range(len(losses)), losses, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def write_comparison(
    out_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    originals: np.ndarray,
    reconstructions: Mapping[str, np.ndarray],
    histories: Mapping[str, Sequence[float]],
) -> dict[str, Path]:
    """Write ``comparison.json``, ``comparison.md``, ``reconstructions.png`` and ``loss_curves.png``.

    Returns:
        File role -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"rows": list(rows), "loss_per_epoch": dict(histories)}, indent=2) + "\n"
    markdown = comparison_markdown(rows)
    return {
        "json": write_text_atomic(out / "comparison.json", payload),
        "markdown": write_text_atomic(out / "comparison.md", markdown),
        "grid": save_reconstruction_grid(out / "reconstructions.png", originals, reconstructions),
        "loss": save_loss_curves(out / "loss_curves.png", histories),
    }
