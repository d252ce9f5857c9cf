"""The one interface every pruning method implements.

A method sees one linear layer at a time: its weight ``[out, in]``, the calibration statistics
of that layer's input, the sparsity for this layer and the pattern. Most methods only define a
*score* (higher = more important) and a comparison group; the pattern turns scores into a mask.
Methods that also change the surviving weights (SparseGPT) override :meth:`prune_layer`.
A method may also plan different sparsities per decoder block (OWL) before pruning starts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from prunelab.patterns import ComparisonGroup, Pattern

if TYPE_CHECKING:
    from prunelab.calibration import CalibrationContext


@dataclass
class LayerStats:
    """Statistics of one linear layer's calibration inputs ``X`` (``[tokens, in]``), in fp32."""

    tokens: int = 0
    sq_norm_sum: torch.Tensor | None = None  # sum_t X[t, j]^2, shape [in]
    hessian_sum: torch.Tensor | None = None  # X^T X, shape [in, in]

    @property
    def activation_norms(self) -> torch.Tensor:
        """``||X[:, j]||_2`` per input channel (the statistic of Wanda, RIA and OWL)."""
        if self.sq_norm_sum is None:
            raise RuntimeError("activation norms were not collected for this layer")
        return self.sq_norm_sum.sqrt()

    def update(self, inputs: torch.Tensor, norms: bool, hessian: bool) -> None:
        flat = inputs.reshape(-1, inputs.shape[-1]).float()
        self.tokens += flat.shape[0]
        if norms:
            sq = flat.pow(2).sum(dim=0)
            self.sq_norm_sum = sq if self.sq_norm_sum is None else self.sq_norm_sum + sq
        if hessian:
            gram = flat.T @ flat
            self.hessian_sum = gram if self.hessian_sum is None else self.hessian_sum + gram


@dataclass(frozen=True)
class StatsNeeds:
    norms: bool = False
    hessian: bool = False

    @property
    def any(self) -> bool:
        return self.norms or self.hessian


class PruningMethod(ABC):
    """Base class: prune one layer; optionally plan per-block sparsities first."""

    name: str = "base"
    needs: StatsNeeds = StatsNeeds()

    @abstractmethod
    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Return the new weight (same shape and dtype) with pruned entries set to zero."""

    def plan_block_sparsity(self, context: "CalibrationContext", sparsity: float, pattern: Pattern) -> list[float]:
        """Sparsity of each decoder block; uniform unless a method (OWL) says otherwise."""
        return [sparsity] * context.num_blocks

    @property
    def evidence(self) -> dict:
        """Method-specific facts recorded in the run's metrics (e.g. OWL's block sparsities)."""
        return {}


class ScoreMethod(PruningMethod):
    """A method defined by an importance score and the group in which scores are compared."""

    comparison: ComparisonGroup = "row"

    @abstractmethod
    def score(self, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """Importance of every weight, ``[out, in]``, fp32; higher means keep."""

    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        if sparsity <= 0:
            return weight
        keep = pattern.mask(self.score(weight, stats), sparsity, self.comparison)
        return weight * keep.to(weight.dtype)
