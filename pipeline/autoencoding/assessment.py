"""The shape guard's verdict on one label map, as the segmentation returns it and the bundle records it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the score's module imports scikit-image: models without a guard skip it
    from deconvseg.pipeline.autoencoding.score import Plausibility, PlausibilityConfig


@dataclass(frozen=True)
class ShapeAssessment:
    """One map's plausibility with the settings that scored it.

    Attributes:
        plausibility: ``ShapeGuard.assess`` of the final label map.
        config: the guard's ``PlausibilityConfig`` (weights and QA threshold).
        guard: the guard's name (its folder), for the record.
    """

    plausibility: Plausibility
    config: PlausibilityConfig
    guard: str
