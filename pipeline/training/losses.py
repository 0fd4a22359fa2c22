"""Training loss and learning-rate schedule.

Dice + cross-entropy as in nnU-Net (Isensee et al., Nature Methods 2021):

    L = CE(z, y) + (1 - mean_c D_c),   D_c = (2 sum_i p_ic g_ic + eps) / (sum_i p_ic + sum_i g_ic + eps),

with ``p = softmax(z)``, ``g`` the one-hot target, sums over every voxel of the whole batch
("batch Dice", steadier on small patches that miss a class) and ``c`` over foreground classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Cross-entropy plus (1 - mean foreground soft Dice), computed in float32.

    Args:
        logits: ``(B, C, z, y, x)`` raw network outputs (any float dtype).
        target: ``(B, z, y, x)`` integer labels in ``[0, C)``.
        eps: smoothing term of the Dice ratio.

    Returns:
        A scalar tensor.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3, 4)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + eps) / (denominator + eps)
    return ce + (1 - dice.mean())


def lr_factor(step: int, progress: float, warmup: int = 0, power: float = 0.9) -> float:
    """Linear warm-up over ``warmup`` steps times nnU-Net's poly decay ``(1 - progress) ** power``.

    Args:
        step: current step (0-based), for the warm-up.
        progress: fraction of the run done, in ``[0, 1]`` (``step / steps``, or the elapsed fraction
            of a time budget).
        warmup: warm-up steps (the factor rises linearly from ``1 / warmup`` to 1).
        power: exponent of the polynomial decay.

    Returns:
        The multiplier of the base learning rate, in ``(0, 1]``.
    """
    ramp = min((step + 1) / warmup, 1.0) if warmup > 0 else 1.0
    return ramp * max(math.pow(1.0 - min(max(progress, 0.0), 1.0), power), 1e-3)
