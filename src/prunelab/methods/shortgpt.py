"""``method=shortgpt``: remove whole decoder blocks by Block Influence (Men et al., 2024, ShortGPT).

On the dense model and the calibration tokens, ``BI_l = 1 - mean_t cos(x_in[t], x_out[t])`` of
block ``l`` (its input and output hidden states); the ``k`` blocks with the lowest influence (the
ones that change their input least) are deleted and the rest renumbered. All blocks hold the same
number of weights, so ``sparsity`` sets ``k = round(sparsity * blocks in scope)`` (``target.blocks``
limits which may go). One dense pass, cached like OWL's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunelab.checks import ConfigError
from prunelab.methods.base import StructuredMethod
from prunelab.stats import BlockIO, LayerStats, StatsNeeds
from prunelab.structure import BlockGeometry, Scope, lowest, nearest_count


class BlockRemoval(StructuredMethod):
    name = "shortgpt"
    rule = ("**shortgpt** (Men et al. 2024) — block removal: Block Influence `BI_l = 1 − mean_t cos(x_in, x_out)` "
            "of every block on the calibration tokens of the dense model; the `round(s · blocks)` blocks of "
            "lowest influence are deleted and the rest renumbered.")
    needs = StatsNeeds(dense_pass=True)
    removes_blocks = True

    def __init__(self) -> None:
        super().__init__()
        self.influence: list[float] = []

    @staticmethod
    def count(geometries: list[BlockGeometry], sparsity: float, scope: Scope) -> int:
        """Blocks to remove: the count whose weights come nearest to ``sparsity`` of the blocks in scope."""
        sizes = [geometries[i].params for i in scope.blocks]
        return nearest_count(sparsity * sum(sizes), max(sizes), len(sizes)) if sizes else 0

    def check_structure(self, geometries: list[BlockGeometry], sparsity: float, scope: Scope) -> None:
        if not (scope.attention and scope.mlp):
            raise ConfigError("target.modules must be all for method=shortgpt: it removes whole decoder blocks "
                              "(attention and MLP together); allowed: target.modules=all")
        blocks = len(scope.blocks)
        if blocks < 2 and sparsity > 0:  # one block: removing it empties the scope, keeping it removes nothing
            raise ConfigError(f"method={self.name} removes whole blocks, but target.blocks leaves {blocks} block in scope; "
                              "allowed: a target.blocks range of at least 2 blocks")
        removed = self.count(geometries, sparsity, scope)
        if removed >= blocks:
            raise ConfigError(
                f"sparsity={sparsity:g} with method={self.name} would remove all {blocks} decoder blocks in scope "
                f"({removed} of {blocks}); allowed: sparsity < {(blocks - 0.5) / blocks:.4f} (at most {blocks - 1} of {blocks} blocks)")
        if removed == 0 and sparsity > 0:
            raise ConfigError(
                f"sparsity={sparsity:g} with method={self.name} removes no block (one block is {1 / blocks:.4f} of the "
                f"{blocks} in scope); allowed: sparsity >= {0.5 / blocks:.4f}, or sparsity=0")

    def summarize_dense_block(self, linears: dict[str, nn.Linear], stats: dict[str, LayerStats],
                              io: BlockIO | None = None) -> float:
        if io is None:
            raise RuntimeError("Block Influence needs the block's inputs and outputs")
        return 1.0 - io.mean_cosine()

    def dense_pass_key(self) -> dict:
        return {"summary": "block_influence"}

    def plan_removals(self, summaries: list[Any] | None, geometries: list[BlockGeometry], sparsity: float,
                      scope: Scope) -> None:
        if summaries is None or len(summaries) != len(geometries):
            raise RuntimeError("block removal needs one Block Influence per block from the dense pass")
        self.influence = [float(v) for v in summaries]
        candidates = list(scope.blocks)
        scores = torch.tensor([self.influence[i] for i in candidates], dtype=torch.float64)
        self.removed_blocks = sorted(candidates[i] for i in lowest(scores, self.count(geometries, sparsity, scope)).tolist())

    @property
    def evidence(self) -> dict:
        return {"block_influence": self.influence, "removed_blocks": self.removed_blocks} if self.influence else {}
