"""``method=magnitude``: score ``|W_ij|``, compared across the whole matrix as in the reference."""

from __future__ import annotations

import torch

from prunelab.methods.base import LayerStats, ScoreMethod
from prunelab.patterns import ComparisonGroup


class Magnitude(ScoreMethod):
    name = "magnitude"

    def __init__(self, comparison: ComparisonGroup = "layer") -> None:
        self.comparison = comparison

    def score(self, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        return weight.abs().float()
