"""``method=wanda`` (Sun et al., 2023): score ``|W_ij| * ||X_j||_2``, compared per output row."""

from __future__ import annotations

import torch

from prunelab.methods.base import LayerStats, ScoreMethod, StatsNeeds
from prunelab.patterns import ComparisonGroup


class Wanda(ScoreMethod):
    name = "wanda"
    needs = StatsNeeds(norms=True)

    def __init__(self, comparison: ComparisonGroup = "row") -> None:
        self.comparison = comparison

    def score(self, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        return weight.abs().float() * stats.activation_norms.to(weight.device).unsqueeze(0)
