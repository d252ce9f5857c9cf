"""``method=ria`` (Zhang et al., ICLR 2024): relative importance times input-channel activations.

``RIA_ij = (|W_ij| / sum_i' |W_i'j| + |W_ij| / sum_j' |W_ij'|) * ||X_j||_2 ** alpha``: the first
term normalises within input column ``j``, the second within output row ``i``; ``||X_j||`` is the
same input-channel statistic as Wanda. Compared across the whole matrix by default (reference).
For N:M an optional channel permutation deals the input columns out so that every group of ``m``
mixes strong and weak channels; the mask is mapped back to the original column order.
"""

from __future__ import annotations

import torch

from prunelab import checks
from prunelab.checks import ConfigError
from prunelab.methods.base import EXACT_K, ScoreMethod
from prunelab.patterns import NM, ComparisonGroup, Pattern, PatternError, deal_channels, refine_channels
from prunelab.stats import LayerStats, StatsNeeds


def relative_importance(weight: torch.Tensor) -> torch.Tensor:
    """``|W| / column sums + |W| / row sums`` in fp32 (all-zero columns/rows score 0)."""
    magnitude = weight.abs().float()
    column_sum = magnitude.sum(dim=0, keepdim=True)
    row_sum = magnitude.sum(dim=1, keepdim=True)
    safe = torch.finfo(magnitude.dtype).tiny
    return magnitude / column_sum.clamp_min(safe) + magnitude / row_sum.clamp_min(safe)


# ||X_j||^alpha is computed in fp32 (max 3.4e38, smallest normal 1.2e-38): with alpha <= 4 every
# activation norm in [1e-9, 1e9] keeps a finite, non-zero score (1e9^4 = 1e36); the paper sweeps
# alpha in [0, 1] (best 0.5) and the Optuna preset searches [0, 1.5]. ria_alpha=1e308 made every
# score inf or 0, and the mask an arbitrary tie-break.
MAX_ALPHA = 4.0


class RIA(ScoreMethod):
    name = "ria"
    rule = ("**ria** (Zhang et al. 2024) — relative importance `|W_ij|/Σ_i'|W_i'j| + |W_ij|/Σ_j'|W_ij'|` "
            "times `‖X_j‖₂^α` (α = `ria_alpha`, default 0.5; α = 0 is relative importance alone), compared "
            "across the whole matrix as the reference's default; `method.permute_channels=true` adds the "
            "N:M channel permutation. " + EXACT_K)
    needs = StatsNeeds(norms=True)

    def __init__(self, alpha: float = 0.5, comparison: ComparisonGroup = "layer",
                 permute_channels: bool = False, refine_permutation: bool = True) -> None:
        super().__init__(comparison)
        self.alpha = checks.number(alpha, "alpha", low=0, what="ria_alpha, the exponent on the activation norm")
        if self.alpha > MAX_ALPHA:
            raise ConfigError(f"alpha={alpha!r} is outside [0, {MAX_ALPHA:g}] (ria_alpha, the exponent on the activation "
                              "norm; larger exponents overflow the fp32 scores to inf, or flush them to 0)")
        self.permute_channels = checks.boolean(permute_channels, "permute_channels")
        self.refine_permutation = checks.boolean(refine_permutation, "refine_permutation")
        self._kept_gain: list[float] = []
        self.last_order: torch.Tensor | None = None  # column order of the last permuted N:M layer

    def score(self, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        importance = relative_importance(weight)
        if self.alpha == 0:
            return importance
        norms = stats.activation_norms.to(weight.device)
        return importance * norms.pow(self.alpha).unsqueeze(0)

    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        if sparsity <= 0:
            return weight
        scores = self.score(weight, stats)
        if self.permute_channels and isinstance(pattern, NM):
            keep = self._permuted_nm_mask(scores, pattern)
        else:
            keep = pattern.mask(scores, sparsity, self.comparison)
        return weight.masked_fill(~keep, 0)

    def _permuted_nm_mask(self, scores: torch.Tensor, pattern: NM) -> torch.Tensor:
        if scores.shape[1] % pattern.m:
            raise PatternError(f"pattern {pattern.name} needs the input size ({scores.shape[1]}) to be a multiple of {pattern.m}")
        order = deal_channels(scores, pattern.m)
        if self.refine_permutation:
            order = refine_channels(scores, order, pattern)
        self.last_order = order
        keep_permuted = pattern.mask(scores[:, order])
        keep = torch.empty_like(keep_permuted)
        keep[:, order] = keep_permuted  # back to the original column order
        plain = pattern.mask(scores)
        kept_plain = float(scores[plain].sum())
        self._kept_gain.append(float(scores[keep].sum()) / kept_plain - 1.0 if kept_plain > 0 else 0.0)
        return keep

    @property
    def evidence(self) -> dict:
        if not self._kept_gain:
            return {}
        return {
            "ria_permuted_layers": len(self._kept_gain),
            "ria_permutation_mean_score_gain": sum(self._kept_gain) / len(self._kept_gain),
        }
