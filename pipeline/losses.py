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


def lr_factor(step: int, total: int, warmup: int = 0, power: float = 0.9) -> float:
    """Linear warm-up over ``warmup`` steps, then nnU-Net's poly decay ``(1 - t / T) ** power``.

    Args:
        step: current step (0-based).
        total: total number of steps ``T``.
        warmup: warm-up steps (the factor rises linearly from ``1 / warmup`` to 1).
        power: exponent of the polynomial decay.

    Returns:
        The multiplier of the base learning rate, in ``(0, 1]``.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return max(math.pow(1.0 - progress, power), 1e-3)
