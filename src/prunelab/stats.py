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
    input_sum: torch.Tensor | None = None  # sum_t X[t, j] in fp64, shape [in] (with ``moments``)
    input_sq_sum: torch.Tensor | None = None  # sum_t X[t, j]^2 in fp64, shape [in] (with ``moments``)

    @property
    def activation_norms(self) -> torch.Tensor:
        """``||X[:, j]||_2`` per input channel (the statistic of Wanda, RIA and OWL)."""
        if self.sq_norm_sum is None:
            raise RuntimeError("activation norms were not collected for this layer")
        return self.sq_norm_sum.sqrt()

    @property
    def mean(self) -> torch.Tensor:
        """``mean_t X[t, j]`` per input channel (FLAP's bias compensation), fp32."""
        if self.input_sum is None or not self.tokens:
            raise RuntimeError("input moments were not collected for this layer")
        return (self.input_sum / self.tokens).float()

    @property
    def variance(self) -> torch.Tensor:
        """``Var_t X[t, j]`` per input channel over all calibration tokens (FLAP's fluctuation), fp32.

        The sample variance (divided by ``tokens - 1``), from fp64 sums."""
        if self.input_sum is None or self.input_sq_sum is None or self.tokens < 2:
            raise RuntimeError("input moments were not collected for this layer (or fewer than 2 tokens)")
        mean = self.input_sum / self.tokens
        return ((self.input_sq_sum - self.tokens * mean.pow(2)) / (self.tokens - 1)).clamp_min(0).float()

    def update(self, inputs: torch.Tensor, norms: bool, hessian: bool, moments: bool = False) -> None:
        flat = inputs.reshape(-1, inputs.shape[-1]).float()
        self.tokens += flat.shape[0]
        if moments:
            wide = flat.double()
            total, squares = wide.sum(dim=0), wide.pow(2).sum(dim=0)
            self.input_sum = total if self.input_sum is None else self.input_sum + total
            self.input_sq_sum = squares if self.input_sq_sum is None else self.input_sq_sum + squares
        if norms:
            sq = flat.pow(2).sum(dim=0)
            self.sq_norm_sum = sq if self.sq_norm_sum is None else self.sq_norm_sum + sq
        if hessian:
            gram = flat.T @ flat
            self.hessian_sum = gram if self.hessian_sum is None else self.hessian_sum + gram


@dataclass
class BlockIO:
    """A decoder block's calibration inputs and outputs (hidden states, one tensor per mini-batch)."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]

    def mean_cosine(self) -> float:
        """``mean_t cos(x_in[t], x_out[t])`` over every calibration token (ShortGPT's Block Influence
        is one minus this)."""
        total, count = 0.0, 0
        for before, after in zip(self.inputs, self.outputs):
            cosine = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1)
            total += float(cosine.double().sum())
            count += cosine.numel()
        return total / count if count else float("nan")


@dataclass(frozen=True)
class StatsNeeds:
    """What a method needs from calibration.

    ``norms`` / ``hessian``: per-layer statistics of each block's inputs under the sequential
    protocol (collected after the blocks before it were pruned). ``dense_pass``: one walk over the
    *dense* model before any pruning, in which the method summarises every block (OWL's outlier
    ratios, FLAP's fluctuations, ShortGPT's Block Influence) from its linear layers' statistics and
    its inputs and outputs (:class:`BlockIO`); that walk collects activation norms and input moments.
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
