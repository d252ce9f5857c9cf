"""Calibration statistics of a linear layer's inputs, and what a pruning method asks of them.

A leaf module: :mod:`prunelab.calibration` fills :class:`LayerStats` with forward hooks, the
methods read them, :mod:`prunelab.prune` serves each method the :class:`StatsNeeds` it declares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    """What a method needs from calibration.

    ``norms`` / ``hessian``: per-layer statistics of each block's inputs under the sequential
    protocol (collected after the blocks before it were pruned). ``dense_pass``: one walk over the
    *dense* model before any pruning, in which the method summarises every block (OWL's outlier
    ratios) to plan per-block sparsities; that walk collects activation norms.
    """

    norms: bool = False
    hessian: bool = False
    dense_pass: bool = False

    @property
    def per_block(self) -> bool:
        """Statistics collected block by block while pruning."""
        return self.norms or self.hessian

    @property
    def any(self) -> bool:
        """Whether calibration data is needed at all."""
        return self.per_block or self.dense_pass
