"""``method=sparsegpt`` (Frantar & Alistarh, 2023): prune with OBS updates of the surviving weights.

From ``H = 2/n X^T X`` (fp32; dead diagonals set to 1 and their weights zeroed; damping
``percdamp * mean(diag H)``) take ``U = cholesky_upper(H^-1)``. Walk the columns in blocks of
``blocksize``: the unstructured mask of a block is chosen jointly over all its rows with score
``w^2 / U_jj^2``; an N:M mask every ``m`` columns on the already-updated weights. Each pruned
weight's error ``w_j / U_jj`` is spread over the later columns of the block (``U[j, j:]``), and
the block's errors over the remaining columns at once (lazy batch update).
"""

from __future__ import annotations

import torch

from prunelab import checks
from prunelab.checks import ConfigError
from prunelab.methods.base import EXACT_K, PruningMethod
from prunelab.patterns import NM, Pattern, PatternError, prune_lowest
from prunelab.stats import LayerStats, StatsNeeds

_SUBGROUP = 16
# Damping lambda = percdamp * mean(diag H) is added to H's diagonal. At 1 it already equals the mean
# curvature (the update then tends to magnitude pruning); far above it lambda overflows fp32 and the
# Cholesky factorisation fails (percdamp=1e308), so larger values are rejected with the plan.
MAX_PERCDAMP = 1.0


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``U`` (upper Cholesky factor of the damped ``H^-1``) and the mask of dead input channels."""
    hessian = hessian.clone()
    diagonal = hessian.diagonal()
    dead = diagonal == 0
    diagonal[dead] = 1.0
    diagonal += percdamp * diagonal.mean()
    lower = torch.linalg.cholesky(hessian)
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True), dead


def obs_errors(values: torch.Tensor, pruned: torch.Tensor, factor: torch.Tensor, max_elements: int = 1 << 22) -> torch.Tensor:
    """OBS errors of pruning ``pruned`` entries column by column, as in the sequential algorithm.

    Processing column ``j`` in order, its current value is ``v_j = w_j - sum_{k<j} e_k U_kj`` and
    its error ``e_j = v_j / U_jj`` where pruned (else 0). Per row this is a lower-triangular
    system whose row ``j`` is row ``j`` of ``U^T`` where pruned and ``U_jj`` alone elsewhere,
    with right-hand side ``p * w``; it is solved for all rows at once.
    """
    errors = torch.empty_like(values)
    lower = factor.T
    diagonal_only = torch.diag(factor.diagonal())
    row_chunk = max(1, max_elements // factor.numel())
    for first in range(0, values.shape[0], row_chunk):
        rows = slice(first, first + row_chunk)
        mask = pruned[rows]
        system = torch.where(mask.unsqueeze(-1), lower, diagonal_only)
        rhs = values[rows].masked_fill(~mask, 0.0).unsqueeze(-1)
        errors[rows] = torch.linalg.solve_triangular(system, rhs, upper=False).squeeze(-1)
    return errors


class SparseGPT(PruningMethod):
    name = "sparsegpt"
    rule = ("**sparsegpt** (Frantar & Alistarh 2023) — optimal brain surgeon: `H = 2/n·XᵀX` (damped by "
            "`percdamp`·mean diag), columns in blocks of 128, mask by `w²/[H⁻¹]_jj²` over all rows of a "
            "block, the error of each pruned weight propagated to the remaining columns. " + EXACT_K
            + " With exact-k our weights match the reference to 1.6e-7.")
    needs = StatsNeeds(hessian=True)

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01) -> None:
        self.blocksize = checks.positive_int(blocksize, "blocksize")
        self.percdamp = checks.number(percdamp, "percdamp", low=0, low_open=True, what="damping, a fraction of mean diag H")
        if self.percdamp > MAX_PERCDAMP:
            raise ConfigError(f"percdamp={percdamp!r} is outside (0, {MAX_PERCDAMP:g}] (damping, a fraction of mean diag H: "
                              "at 1 it equals the mean curvature; the reference uses 0.01)")

    def check_pattern(self, pattern: Pattern) -> None:
        if isinstance(pattern, NM) and self.blocksize % pattern.m:
            raise PatternError(f"blocksize={self.blocksize} must be a multiple of M={pattern.m} for pattern {pattern.name}")

    @torch.no_grad()
    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        if sparsity <= 0:
            return weight
        if stats.hessian_sum is None or stats.tokens == 0:
            raise RuntimeError("sparsegpt needs the layer's input Hessian; it was not collected")
        rows, cols = weight.shape
        nm = pattern if isinstance(pattern, NM) else None
        if nm is not None and cols % nm.m:
            raise PatternError(f"pattern {nm.name} needs the input size ({cols}) to be a multiple of {nm.m}")
        if nm is not None and self.blocksize % nm.m:
            raise PatternError(f"method.blocksize={self.blocksize} must be a multiple of M={nm.m} for pattern {nm.name}")
        work = weight.float().clone()
        hessian = stats.hessian_sum.to(work.device, torch.float32) * (2.0 / stats.tokens)
        factor, dead = inverse_hessian_factor(hessian, self.percdamp)
        work[:, dead] = 0

        for start in range(0, cols, self.blocksize):
            stop = min(start + self.blocksize, cols)
            block = work[:, start:stop]  # a view: updates land in ``work``
            block_factor = factor[start:stop, start:stop]
            errors = torch.zeros_like(block)
            if nm is None:  # one joint choice over all rows and columns of the block
                saliency = block.pow(2) / block_factor.diagonal().pow(2).unsqueeze(0)
                count = int(saliency.numel() * sparsity)
                pruned = ~prune_lowest(saliency.reshape(1, -1), count).reshape(saliency.shape)
            else:
                pruned = torch.zeros_like(block, dtype=torch.bool)
            step = nm.m if nm is not None else _SUBGROUP  # sub-groups only batch the work
            for group in range(0, stop - start, step):
                cut = slice(group, group + step)
                group_factor = block_factor[cut, cut]
                if nm is not None:  # every M columns, on the already-updated weights
                    saliency = block[:, cut].pow(2) / group_factor.diagonal().pow(2).unsqueeze(0)
                    pruned[:, cut] = ~prune_lowest(saliency, nm.m - nm.n)
                errors[:, cut] = obs_errors(block[:, cut], pruned[:, cut], group_factor)
                block[:, group:] -= errors[:, cut] @ block_factor[cut, group:]
            block.masked_fill_(pruned, 0.0)
            work[:, stop:] -= errors @ factor[start:stop, stop:]  # lazy batch update
        return work.to(weight.dtype)
