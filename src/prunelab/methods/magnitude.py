"""``method=magnitude``: score ``|W_ij|``, compared across the whole matrix as in the reference."""

from __future__ import annotations

import torch

from prunelab.methods.base import EXACT_K, ScoreMethod
from prunelab.patterns import ComparisonGroup
from prunelab.stats import LayerStats


class Magnitude(ScoreMethod):
    name = "magnitude"
    rule = ("**magnitude** — score `|W_ij|`; the lowest-scoring weights of each whole matrix are removed "
            "(`method.comparison=row`: per output row). " + EXACT_K)

    def __init__(self, comparison: ComparisonGroup = "layer") -> None:
        super().__init__(comparison)

    def score(self, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        return weight.abs().float()
