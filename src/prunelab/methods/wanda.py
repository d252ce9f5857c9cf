"""``method=wanda`` (Sun et al., 2023): score ``|W_ij| * ||X_j||_2``, compared per output row."""

from __future__ import annotations

import torch

from prunelab.methods.base import ScoreMethod
from prunelab.patterns import ComparisonGroup
from prunelab.stats import LayerStats, StatsNeeds


def wanda_score(weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2`` in fp32 (also OWL's outlier statistic)."""
    return weight.abs().float() * stats.activation_norms.to(weight.device).unsqueeze(0)


class Wanda(ScoreMethod):
    name = "wanda"
    rule = ("**wanda** (Sun et al. 2023) — score `|W_ij| · ‖X_j‖₂`, the weight times the L2 norm of its input "
            "channel over all calibration tokens; each output row loses exactly `⌊in·s⌋` weights (per-row "
            "comparison, as the reference). Statistics follow the sequential protocol: block `l` is "
            "calibrated on the outputs of the already pruned blocks `< l`.")
    needs = StatsNeeds(norms=True)

    def __init__(self, comparison: ComparisonGroup = "row") -> None:
        super().__init__(comparison)

    def score(self, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        return wanda_score(weight, stats)
