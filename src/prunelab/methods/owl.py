"""OWL + X (Yin et al., ICML 2024): outlier-weighted sparsity per decoder block, then any base method.

Pass 1 on the dense model: for every block the Wanda scores ``|W_ij| * ||X_j||`` of all its linear
layers are pooled and ``D_l`` = fraction of scores strictly above ``m * mean``. ``D`` is normalised
to ``r in [0, 2*lambda]`` and block ``l`` gets sparsity ``S + mean_w(r) - r_l`` (more outliers, lower
sparsity; ``mean_w`` weighted by the block's parameter count, so ``sum_l s_l N_l = S sum_l N_l``).
Where that would leave ``[S - lambda, S + lambda]`` (skewed ``D``) the values are clipped and shifted
back to the weighted mean. Pass 2 prunes every block with the base method (``owl_wanda``,
``owl_magnitude``, ``owl_ria``, ``owl_sparsegpt``) at its sparsity.

For N:M the block keeps ``N + o_l`` of every ``M`` with ``o_l`` the offset ``M * (r_l - mean_w(r))``
(its density shift in units of ``1/M``) rounded so that the offsets sum to zero (reference's N:M
variant). With ``lambda = 0.08`` and ``M = 4`` the offsets are below 0.64 in size, so 2:4 mostly stays 2:4.

The outlier ratios depend only on the dense model, the calibration inputs and ``m`` (not on the
sparsity or lambda), so they are cached as JSON under ``<asset cache>/stats`` and a sweep over
sparsity or lambda runs the dense pass once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prunelab import assets
from prunelab.methods.base import LayerStats, PruningMethod, StatsNeeds
from prunelab.patterns import NM, Pattern

if TYPE_CHECKING:
    from prunelab.calibration import CalibrationContext

log = logging.getLogger(__name__)
_MAX_SPARSITY = 0.99


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Fraction of the pooled scores strictly greater than ``m`` times their mean."""
    pooled = torch.cat([s.reshape(-1).float() for s in scores])
    return float((pooled > m * pooled.mean()).double().mean())


def block_sparsities(ratios: list[float], sizes: list[int], sparsity: float, lambda_: float,
                     bounded: bool = True) -> list[float]:
    """OWL's map from outlier ratios to block sparsities with weighted mean exactly ``sparsity``.

    ``r = (D - min) / (max - min) * 2 lambda``; ``s_l = S + mean_w(r) - r_l``. Values outside
    ``[S - lambda, S + lambda]`` (``bounded``; always ``[0, 0.99]``) are clipped and all shifted by
    one constant (bisection) so that ``sum s_l N_l = S sum N_l`` still holds; the order of the
    blocks is kept. ``bounded=False`` is the reference's formula, which reaches ``S - 2 lambda``
    when one block has far more outliers than the rest.
    """
    ratio = torch.tensor(ratios, dtype=torch.float64)
    weight = torch.tensor(sizes, dtype=torch.float64)
    weight = weight / weight.sum()
    spread = float(ratio.max() - ratio.min()) if len(ratios) else 0.0
    if spread <= 0 or lambda_ <= 0:
        return [float(sparsity)] * len(ratios)
    normalised = (ratio - ratio.min()) / spread * (2 * lambda_)
    base = sparsity + float((weight * normalised).sum()) - normalised
    low, high = (sparsity - lambda_, sparsity + lambda_) if bounded else (0.0, 1.0)
    low, high = max(0.0, low), min(_MAX_SPARSITY, high)
    if low > sparsity or high < sparsity:
        raise ValueError(f"sparsity={sparsity} is outside [0, {_MAX_SPARSITY}]; OWL cannot plan it")

    def weighted_mean(shift: float) -> float:
        return float((weight * (base + shift).clamp(low, high)).sum())

    if low <= float(base.min()) and float(base.max()) <= high:
        return [float(v) for v in base]
    lo_shift, hi_shift = low - float(base.max()), high - float(base.min())
    for _ in range(200):
        mid = (lo_shift + hi_shift) / 2
        if weighted_mean(mid) < sparsity:
            lo_shift = mid
        else:
            hi_shift = mid
    return [float(v) for v in (base + (lo_shift + hi_shift) / 2).clamp(low, high)]


def block_nm_keep(ratios: list[float], sizes: list[int], pattern: NM, lambda_: float) -> list[int]:
    """Per-block ``N`` for OWL's N:M variant: ``N + round(M * (r_l - mean_w(r)))`` in ``[1, M-1]``.

    The rounding is by largest remainder so that the offsets sum to zero (exactly for equal-size
    blocks): the overall density stays ``N / M``.
    """
    ratio = torch.tensor(ratios, dtype=torch.float64)
    weight = torch.tensor(sizes, dtype=torch.float64)
    weight = weight / weight.sum()
    spread = float(ratio.max() - ratio.min()) if len(ratios) else 0.0
    if spread <= 0 or lambda_ <= 0:
        return [pattern.n] * len(ratios)
    normalised = (ratio - ratio.min()) / spread * (2 * lambda_)
    offset = (normalised - float((weight * normalised).sum())) * pattern.m  # more outliers -> keep more
    lower = torch.floor(offset)
    deficit = int(round(-float(lower.sum())))  # how many blocks round up
    order = torch.sort(offset - lower, descending=True, stable=True).indices
    rounded = lower.clone()
    rounded[order[:max(0, deficit)]] += 1
    keep = (pattern.n + rounded).clamp(1, pattern.m - 1)
    return [int(v) for v in keep]


class OWL(PruningMethod):
    """Plans block sparsities from the dense model's outliers, then delegates to ``base``."""

    def __init__(self, base: str, lambda_: float = 0.08, m: float = 5.0, cache: bool = True,
                 bounded: bool = True, base_options: dict | None = None) -> None:
        from prunelab.methods import build_method

        if base.startswith("owl_") or base == "dense":
            raise ValueError(f"OWL base method {base!r} is not valid; allowed: wanda, magnitude, ria, sparsegpt")
        if not 0 <= float(lambda_) < 1:
            raise ValueError(f"owl_lambda={lambda_!r} must be in [0, 1)")
        if not float(m) > 0:
            raise ValueError(f"method.m={m!r} (outlier threshold, times the mean score) must be > 0")
        self.base = build_method({"name": base, **dict(base_options or {})})
        self.name = f"owl_{base}"
        self.lambda_ = float(lambda_)
        self.m = float(m)
        self.cache = bool(cache)
        self.bounded = bool(bounded)
        self.needs = StatsNeeds(norms=self.base.needs.norms, hessian=self.base.needs.hessian)
        self.ratios: list[float] = []
        self.plan: list[float] = []
        self.keep_n: list[int] = []
        self.cache_hit = False
        self.plan_s = 0.0

    # -- pass 1 -----------------------------------------------------------------------------
    def plan_block_sparsity(self, context: "CalibrationContext", sparsity: float, pattern: Pattern) -> list[float]:
        start = time.perf_counter()
        sizes = [sum(layer.weight.numel() for layer in context.adapter.linear_layers(block).values())
                 for block in context.adapter.blocks]
        self.ratios = self._outlier_ratios(context)
        if isinstance(pattern, NM):
            self.keep_n = block_nm_keep(self.ratios, sizes, pattern, self.lambda_)
            self.plan = [1.0 - n / pattern.m for n in self.keep_n]
        else:
            self.plan = block_sparsities(self.ratios, sizes, sparsity, self.lambda_, self.bounded)
        self.plan_s = time.perf_counter() - start
        return list(self.plan)

    def _outlier_ratios(self, context: "CalibrationContext") -> list[float]:
        path = None
        if self.cache:
            path = assets.cache_dir() / "stats" / f"owl_outliers_{stats_key(context, self.m)}.json"
            if path.exists():
                cached = json.loads(path.read_text())
                ratios = cached.get("ratios", [])
                if len(ratios) == context.num_blocks and all(math.isfinite(r) and 0 <= r <= 1 for r in ratios):
                    self.cache_hit = True
                    log.info("OWL outlier ratios from cache %s", path)
                    return [float(r) for r in ratios]
        from prunelab.calibration import sequential

        ratios: list[float] = [0.0] * context.num_blocks

        def on_block(index: int, block, linears, stats: dict[str, LayerStats]) -> bool:
            scores = [layer.weight.abs().float() * stats[name].activation_norms.to(layer.weight.device).unsqueeze(0)
                      for name, layer in linears.items()]
            ratios[index] = outlier_ratio(scores, self.m)
            return False

        sequential(context, StatsNeeds(norms=True), on_block, description="OWL outliers (dense)")
        if path is not None:
            _write_atomic(path, {"m": self.m, "ratios": ratios})
        return ratios

    # -- pass 2 -----------------------------------------------------------------------------
    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        if isinstance(pattern, NM):
            keep = int(round((1.0 - sparsity) * pattern.m))
            if keep >= pattern.m:
                return weight
            return self.base.prune_layer(weight, stats, sparsity, NM(keep, pattern.m))
        return self.base.prune_layer(weight, stats, sparsity, pattern)

    @property
    def evidence(self) -> dict:
        facts = {
            "owl_outlier_ratio": self.ratios,
            "owl_block_sparsity": self.plan,
            "owl_m": self.m,
            "owl_lambda": self.lambda_,
            "owl_cache_hit": self.cache_hit,
            "owl_plan_s": self.plan_s,
        }
        if self.keep_n:
            facts["owl_block_keep_n"] = self.keep_n
        return {**self.base.evidence, **facts}


def stats_key(context: "CalibrationContext", m: float) -> str:
    """Content key of the dense pass: block-0 inputs (model embeddings + calibration tokens),
    every block's weights, the block count and ``m``."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({"m": m, "blocks": context.num_blocks}).encode())
    for states in context.hidden:
        digest.update(_tensor_bytes(states))
    for block in context.adapter.blocks:
        for name, tensor in block.state_dict().items():
            digest.update(name.encode())
            digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{id(payload)}")
    temporary.write_text(json.dumps(payload))
    temporary.replace(path)
