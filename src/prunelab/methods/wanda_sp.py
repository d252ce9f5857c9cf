"""``method=wanda_sp`` (structured Wanda, the FLAP paper's baseline; authors' ``prune_wanda_sp``).

Score of input channel ``j`` of an output projection: ``sum_i |W_ij| * ||X_j||_2`` (Wanda's score
summed over the column that reads channel ``j``; the authors average over ``i``, which ranks the
same). A head group scores the sum over its o_proj input channels, an MLP channel its down_proj
column. Every block loses the same fraction of its weights; statistics are collected block by
block on the outputs of the already-pruned blocks (the authors' sequential protocol). No bias
compensation.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.methods.base import COUNT_RULE, ChannelScoreMethod
from prunelab.methods.wanda import wanda_score
from prunelab.stats import LayerStats, StatsNeeds


class WandaSP(ChannelScoreMethod):
    name = "wanda_sp"
    rule = ("**wanda_sp** (FLAP's structured Wanda baseline) — input channel `j` of each output projection "
            "(`o_proj`, `down_proj`) scores `Σ_i |W_ij| · ‖X_j‖₂` (the authors average over `i`: same ranking); "
            "a KV head group sums its channels, an MLP channel is its `down_proj` column; the lowest-scoring "
            "groups and channels of every block are removed for real, the same fraction of each block, no bias. "
            "Sequential protocol, as the authors' `prune_wanda_sp`. " + COUNT_RULE)
    needs = StatsNeeds(norms=True)

    def channel_scores(self, layer: nn.Linear, stats: LayerStats) -> torch.Tensor:
        return wanda_score(layer.weight.data, stats).sum(dim=0)
