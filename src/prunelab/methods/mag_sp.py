"""``method=mag_sp`` (structured magnitude, the data-free baseline; authors' ``prune_magnitude_sp``).

Score of input channel ``j`` of an output projection: ``||W[:, j]||_2``, the L2 norm of the column
that reads it. A head group scores the sum over its o_proj input channels, an MLP channel its
down_proj column; every block loses the same fraction of its weights. No calibration data.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.methods.base import COUNT_RULE, ChannelScoreMethod
from prunelab.stats import LayerStats


class MagnitudeSP(ChannelScoreMethod):
    name = "mag_sp"
    rule = ("**mag_sp** (data-free structured baseline, the authors' `prune_magnitude_sp`) — input channel `j` "
            "of each output projection scores `‖W[:, j]‖₂`; a KV head group sums its channels; the lowest-scoring "
            "groups and MLP channels of every block are removed for real, the same fraction of each block. "
            + COUNT_RULE)

    def channel_scores(self, layer: nn.Linear, stats: LayerStats) -> torch.Tensor:
        return layer.weight.data.float().norm(dim=0)
