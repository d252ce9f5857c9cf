"""The one interface every pruning method implements.

A method sees one linear layer at a time: its weight ``[out, in]``, the calibration statistics
of that layer's input, the sparsity for this layer and the pattern. Most methods only define a
*score* (higher = more important) and a comparison group; the pattern turns scores into a mask.
Methods that also change the surviving weights (SparseGPT) override :meth:`prune_layer`.
A method may also plan different sparsities per decoder block (OWL) from a pass over the dense
model: it declares ``needs.dense_pass``, summarises each dense block in
:meth:`summarize_dense_block` and turns the summaries into sparsities in :meth:`plan_block_sparsity`.

Methods are built by Hydra from ``conf/method/<name>.yaml`` (``_target_`` + the method's own
knobs); constructors check their arguments and raise :class:`~prunelab.checks.ConfigError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from prunelab import checks
from prunelab.patterns import COMPARISON_GROUPS, ComparisonGroup, Pattern
from prunelab.stats import LayerStats, StatsNeeds


class PruningMethod(ABC):
    """Base class: prune one layer; optionally plan per-block sparsities first."""

    name: str = "base"
    needs: StatsNeeds = StatsNeeds()
    prunes: bool = True  # False for the dense baseline: its runs remove nothing

    @abstractmethod
    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Return the new weight (same shape and dtype) with pruned entries set to zero."""

    def check_pattern(self, pattern: Pattern) -> None:
        """Raise :class:`~prunelab.checks.ConfigError` when this method cannot prune with ``pattern``
        (checked with the run plan, before any weights load)."""

    def check_sparsity(self, sparsity: float, pattern: Pattern) -> None:
        """Raise :class:`~prunelab.checks.ConfigError` when this method cannot reach ``sparsity``
        (checked with the run plan; OWL: every block's sparsity must stay in [0, 0.99])."""

    def summarize_dense_block(self, linears: dict[str, nn.Linear], stats: dict[str, LayerStats]) -> float:
        """One number per block of the dense model (``needs.dense_pass`` methods only)."""
        raise NotImplementedError(f"{type(self).__name__} declares no dense pass")

    def dense_pass_key(self) -> dict:
        """What the dense-pass summaries depend on besides the model and the calibration inputs
        (they are cached under this key)."""
        return {}

    def plan_block_sparsity(self, summaries: list[float] | None, block_sizes: list[int], sparsity: float,
                            pattern: Pattern) -> list[float]:
        """Sparsity of each decoder block; uniform unless a method (OWL) says otherwise.

        ``summaries``: :meth:`summarize_dense_block` of every block (``needs.dense_pass``), else None;
        ``block_sizes``: the prunable parameters of every block.
        """
        return [sparsity] * len(block_sizes)

    @property
    def evidence(self) -> dict:
        """Method-specific facts recorded in the run's metrics (e.g. OWL's block sparsities)."""
        return {}


class ScoreMethod(PruningMethod):
    """A method defined by an importance score and the group in which scores are compared."""

    comparison: ComparisonGroup = "row"

    def __init__(self, comparison: ComparisonGroup = "row") -> None:
        self.comparison = checks.choice(comparison, "comparison", COMPARISON_GROUPS)

    @abstractmethod
    def score(self, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """Importance of every weight, ``[out, in]``, fp32; higher means keep."""

    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        if sparsity <= 0:
            return weight
        keep = pattern.mask(self.score(weight, stats), sparsity, self.comparison)
        return weight * keep.to(weight.dtype)
