"""``method=flap`` (An et al., AAAI 2024, "Fluctuation-based Adaptive Structured Pruning"; authors'
``prune_flap``, CASIA-IVA-Lab/FLAP).

1. **One dense pass** (the authors' protocol: every block is calibrated on the *unpruned* model's
   hidden states, and nothing is removed until all blocks are scored). For the inputs ``X`` of each
   block's output projections (o_proj, down_proj) it keeps the per-channel mean and variance over
   all calibration tokens.
2. **Metric** per input channel ``j`` of an output projection ``W`` (``metric``):
   ``IFV = Var_t(X_tj)``; ``WIFV = Var_t(X_tj) * ||W[:, j]||^2`` (default); ``WIFN =
   mean_i |W_ij| * ||X_j||``. For o_proj the metric is squared, as in the authors' code.
3. **Structure** (``structure``): ``UL-UM`` uniform layers and modules (every block loses the same
   fraction; a head group scores the sum of its channels); ``UL-MM`` ``remove_heads // blocks``
   groups per block and MLP channels for the rest; ``AL-MM`` metrics standardised per block
   (``(m - mean) / std`` over the block's channels; a group scores the mean of its channels),
   ``remove_heads`` groups and the matching number of MLP channels removed where they score lowest
   over all blocks; ``AL-AM`` (default) the same standardised scores, heads and channels of all
   blocks in one ranking, lowest first, each unit weighted by the weights it owns, until the
   removed weights come nearest to ``sparsity`` of the in-scope weights.
4. **Bias compensation** (``bias``): the removed channels' mean contribution ``W[:, R] @ mean(X_R)``
   becomes the bias of o_proj / down_proj.

Where we differ, deliberately: the variance is the exact sample variance over all tokens (the
authors' running update keeps the first sequence out and, through an in-place alias, measures
around the running mean; both rank channels alike after standardisation); AL-AM picks the removal
count whose weights are nearest to the target instead of the authors' threshold at the nearest
cumulative sum (at most one unit apart); every block keeps at least one head group and one MLP
channel (the authors' code would build an empty projection); with grouped-query attention the
unit is a KV group (:mod:`prunelab.structure`). ``count_rule=authors`` takes the authors' counts where
a count is rounded (UL-UM: ``int(sparsity * groups)`` groups and ``int(sparsity * channels)`` channels
per block; UL-MM and AL-MM: the MLP channel count rounded down, their ``cal_remove_neuron``); AL-AM
has no count to round.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from prunelab import checks, structure
from prunelab.checks import ConfigError
from prunelab.methods.base import StructuredMethod, channel_multiple_value
from prunelab.stats import BlockIO, LayerStats, StatsNeeds
from prunelab.structure import (
    ATTENTION_OUTPUT,
    COUNT_RULES,
    MLP_OUTPUT,
    BlockGeometry,
    Removal,
    Scope,
)

METRICS = ("IFV", "WIFV", "WIFN")
STRUCTURES = ("UL-UM", "UL-MM", "AL-MM", "AL-AM")


def fluctuation_metric(metric: str, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """Importance of every input channel of an output projection ``weight`` (``[in]``, fp32)."""
    if metric == "IFV":
        return stats.variance
    if metric == "WIFV":
        return stats.variance * weight.float().pow(2).sum(dim=0)
    if metric == "WIFN":
        return (weight.float().abs() * stats.activation_norms.unsqueeze(0)).mean(dim=0)
    raise ValueError(f"metric={metric!r} is not valid; allowed: {', '.join(METRICS)}")


def standardize(values: torch.Tensor) -> torch.Tensor:
    """``(v - mean) / std`` over one block's channels (unbiased std, as ``torch.std``)."""
    values = values.double()
    spread = values.std()
    return ((values - values.mean()) / spread if spread > 0 else values - values.mean()).float()


class FLAP(StructuredMethod):
    name = "flap"
    rule = ("**flap** (An et al. 2024) — one dense pass: input channel `j` of `o_proj`/`down_proj` scores "
            "`Var_t(X_tj) · ‖W[:, j]‖²` (WIFV; `method.metric` IFV, WIFN), squared for `o_proj`; with "
            "`method.structure=AL-AM` (default) the scores are standardised per block and KV head groups and "
            "MLP channels of all blocks compete in one ranking, each weighted by the weights it owns, until the "
            "removed weights are nearest to `s` (UL-UM, UL-MM, AL-MM: the paper's other structures); the removed "
            "channels' mean contribution `W[:, R]·mean(X_R)` becomes the output projection's bias. Deliberate "
            "deviations from the authors' code: the exact sample variance instead of their running estimate "
            "(on the embedded model 97.5-98.9% of the removed units alike with AL-AM at 20-50%), the exact weight count of a head group "
            "instead of their integer 170, an fp32 bias mean instead of fp16, and every block keeps its best head "
            "group and MLP channel.")
    needs = StatsNeeds(dense_pass=True)

    def __init__(self, metric: str = "WIFV", structure: str = "AL-AM", bias: bool = True, remove_heads: int = 8,
                 count_rule: str = "exact", channel_multiple: int = 1) -> None:
        super().__init__()
        self.count_rule = checks.choice(count_rule, "count_rule", COUNT_RULES)
        self.channel_multiple = channel_multiple_value(channel_multiple)
        self.metric = checks.choice(metric, "metric", METRICS)
        self.structure = checks.choice(structure, "structure", STRUCTURES)
        self.bias = checks.boolean(bias, "bias")
        self.remove_heads = checks.integer(remove_heads, "remove_heads", low=0,
                                           what="head groups removed in all (AL-MM) or over the blocks (UL-MM)")
        self.kept_groups: list[int] = []
        self.kept_channels: list[int] = []

    # -- checks before any weights load ---------------------------------------------------------
    def check_structure(self, geometries: list[BlockGeometry], sparsity: float, scope: Scope) -> None:
        if self.structure == "UL-UM":
            structure.check_uniform(geometries, sparsity, scope, self.name, self.count_rule, self.channel_multiple)
            return
        if self.structure in ("UL-MM", "AL-MM"):
            blocks = [geometries[i] for i in scope.blocks]
            if not scope.attention:
                raise ConfigError(f"method.structure={self.structure} removes method.remove_heads head groups, but "
                                  "target.modules leaves attention out; allowed: method.structure=AL-AM or UL-UM")
            per_block = self.remove_heads // len(blocks)
            most = min(g.groups for g in blocks) - 1 if self.structure == "UL-MM" else sum(g.groups - 1 for g in blocks)
            asked = per_block if self.structure == "UL-MM" else self.remove_heads
            if asked > most:
                where = "of a block" if self.structure == "UL-MM" else "of the blocks in scope"
                raise ConfigError(
                    f"method.remove_heads={self.remove_heads} with method.structure={self.structure} would remove every "
                    f"attention head {where} ({asked} KV head groups asked, each block keeps at least one); "
                    f"allowed: method.remove_heads <= {most * (len(blocks) if self.structure == 'UL-MM' else 1)}")
            head_params = (per_block * len(blocks) if self.structure == "UL-MM" else self.remove_heads) * blocks[0].group_params
            if head_params > sparsity * sum(scope.params(g) for g in blocks):
                raise ConfigError(
                    f"method.remove_heads={self.remove_heads} removes more weights than sparsity={sparsity:g} allows "
                    f"({head_params} > {sparsity * sum(scope.params(g) for g in blocks):.0f}); allowed: fewer heads or a "
                    "higher sparsity")
        self._check_reachable(geometries, sparsity, scope)

    def _check_reachable(self, geometries: list[BlockGeometry], sparsity: float, scope: Scope) -> None:
        """The most FLAP can remove: every block keeps its best head group and MLP channel (AL-AM,
        AL-MM: any others; UL-MM: ``remove_heads // blocks`` groups per block). A higher target
        would end below it, so it is rejected rather than silently missed."""
        blocks = [geometries[i] for i in scope.blocks]
        total = sum(scope.params(g) for g in blocks)
        channels = sum((g.intermediate - 1) * g.channel_params for g in blocks) if scope.mlp else 0
        if self.structure == "AL-AM":
            heads = sum((g.groups - 1) * g.group_params for g in blocks) if scope.attention else 0
        elif self.structure == "AL-MM":
            heads = min(self.remove_heads, sum(g.groups - 1 for g in blocks)) * blocks[0].group_params
        else:  # UL-MM
            heads = sum(min(self.remove_heads // len(blocks), g.groups - 1) * g.group_params for g in blocks)
        most = (heads + channels) / total if total else 0.0
        if sparsity > most:
            keeps = ("every block keeps its best head group and its best MLP channel" if self.structure == "AL-AM" else
                     f"method.remove_heads={self.remove_heads} fixes the head groups and every block keeps its best MLP channel")
            raise ConfigError(
                f"sparsity={sparsity:g} with method={self.name} (method.structure={self.structure}) cannot be reached: "
                f"{keeps}; allowed: sparsity <= {math.floor(most * 10000) / 10000:.4f}")

    # -- the dense pass ----------------------------------------------------------------------------
    def summarize_dense_block(self, linears: dict[str, nn.Linear], stats: dict[str, LayerStats],
                              io: BlockIO | None = None) -> dict[str, torch.Tensor]:
        attention, mlp = linears[ATTENTION_OUTPUT], linears[MLP_OUTPUT]
        return {
            "attention": fluctuation_metric(self.metric, attention.weight.data, stats[ATTENTION_OUTPUT]).pow(2).cpu(),
            "mlp": fluctuation_metric(self.metric, mlp.weight.data, stats[MLP_OUTPUT]).cpu(),
            "attention_mean": stats[ATTENTION_OUTPUT].mean.cpu(),
            "mlp_mean": stats[MLP_OUTPUT].mean.cpu(),
        }

    def dense_pass_key(self) -> dict:
        return {"summary": "flap", "metric": self.metric}

    # -- the decision -----------------------------------------------------------------------------
    def plan_removals(self, summaries: list[Any] | None, geometries: list[BlockGeometry], sparsity: float,
                      scope: Scope) -> None:
        if summaries is None or len(summaries) != len(geometries):
            raise RuntimeError("FLAP needs one summary per block from the dense pass")
        counts = self._global_counts if self.structure.startswith("AL") else self._uniform_counts
        removed = counts(summaries, geometries, sparsity, scope)
        self.planned = {}
        for index, (groups, channels) in removed.items():
            summary = summaries[index]
            self.planned[index] = Removal(
                groups=groups, channels=channels,
                attention_mean=summary["attention_mean"] if self.bias and scope.attention else None,
                mlp_mean=summary["mlp_mean"] if self.bias and scope.mlp else None)
        self.kept_groups = [g.groups - len(self.planned[i].groups) if i in self.planned else g.groups
                            for i, g in enumerate(geometries)]
        self.kept_channels = [g.intermediate - len(self.planned[i].channels) if i in self.planned else g.intermediate
                              for i, g in enumerate(geometries)]

    def _uniform_counts(self, summaries, geometries, sparsity, scope) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """UL-UM and UL-MM: each block by itself, raw metrics (a group sums its channels)."""
        removed = {}
        for index in scope.blocks:
            geometry, summary = geometries[index], summaries[index]
            if self.structure == "UL-UM":
                groups, channels = structure.uniform_counts(geometry, sparsity, scope, self.count_rule,
                                                            self.channel_multiple)
            else:
                groups = self.remove_heads // len(scope.blocks)
                rest = sparsity * scope.params(geometry) - groups * geometry.group_params
                channels = structure.unit_count(rest, geometry.channel_params, geometry.intermediate - 1,
                                                self.count_rule) if scope.mlp else 0
                channels = structure.aligned_removal(channels, geometry.intermediate, self.channel_multiple)
            removed[index] = (structure.lowest(structure.group_scores(summary["attention"], geometry, "sum"), groups),
                              structure.lowest(summary["mlp"], channels))
        return removed

    def _global_counts(self, summaries, geometries, sparsity, scope) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """AL-MM and AL-AM: standardised scores of all blocks compete; every block keeps its best
        head group and its best MLP channel."""
        units = []  # (score, weights, block, kind, index)
        for index in scope.blocks:
            geometry, summary = geometries[index], summaries[index]
            if scope.attention:
                scores = structure.group_scores(standardize(summary["attention"]), geometry, "mean")
                best = int(torch.argmax(scores))
                units += [(float(v), geometry.group_params, index, "group", g) for g, v in enumerate(scores.tolist()) if g != best]
            if scope.mlp:
                scores = standardize(summary["mlp"])
                best = int(torch.argmax(scores))
                units += [(float(v), geometry.channel_params, index, "channel", c) for c, v in enumerate(scores.tolist()) if c != best]
        total = sum(scope.params(geometries[i]) for i in scope.blocks)
        if self.structure == "AL-AM":
            chosen = self._nearest_prefix(sorted(units, key=lambda u: u[0]), sparsity * total)
        else:  # AL-MM: remove_heads groups, then channels for the rest of the target
            groups = sorted((u for u in units if u[3] == "group"), key=lambda u: u[0])[:self.remove_heads]
            channels = sorted((u for u in units if u[3] == "channel"), key=lambda u: u[0])
            rest = sparsity * total - sum(u[1] for u in groups)
            count = structure.unit_count(rest, channels[0][1], len(channels), self.count_rule) if channels else 0
            chosen = groups + channels[:count]
        removed = {index: ([], []) for index in scope.blocks}
        for _, _, index, kind, unit in chosen:
            removed[index][0 if kind == "group" else 1].append(unit)
        if self.channel_multiple > 1 and scope.mlp:  # each block's kept width to the nearest multiple:
            for index, (_, channels) in removed.items():  # more or fewer of its own lowest-ranked channels
                count = structure.aligned_removal(len(channels), geometries[index].intermediate, self.channel_multiple)
                scores = standardize(summaries[index]["mlp"])
                order = [c for c in torch.sort(scores, stable=True).indices.tolist() if c != int(torch.argmax(scores))]
                channels[:] = order[:min(count, len(order))]
        return {index: (torch.tensor(sorted(g), dtype=torch.long), torch.tensor(sorted(c), dtype=torch.long))
                for index, (g, c) in removed.items()}

    @staticmethod
    def _nearest_prefix(ranked: list[tuple], target: float) -> list[tuple]:
        """The lowest-scoring units whose weights sum nearest to ``target`` (ties: fewer units).
        ``sorted`` is stable, so equal scores keep block order."""
        best_count, best_gap, removed = 0, target, 0.0
        for count, unit in enumerate(ranked, start=1):
            removed += unit[1]
            gap = abs(removed - target)
            if gap < best_gap:
                best_count, best_gap = count, gap
            if removed > target:
                break
        return ranked[:best_count]

    @property
    def evidence(self) -> dict:
        if not self.kept_groups:
            return {}
        return {"flap_kept_head_groups": self.kept_groups, "flap_kept_channels": self.kept_channels,
                "flap_structure": self.structure, "flap_metric": self.metric, "flap_bias": self.bias}
