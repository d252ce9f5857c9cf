"""``method=dense``: no pruning; the baseline every table compares against."""

from __future__ import annotations

import torch

from prunelab.methods.base import PruningMethod
from prunelab.patterns import Pattern
from prunelab.stats import LayerStats


class Dense(PruningMethod):
    name = "dense"
    rule = "**dense** — no weight is removed: the reference point of every table."
    prunes = False

    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        return weight
