"""The prune stage: serve each method the statistics it declares, plan per-block sparsity, prune.

A method's :class:`~prunelab.stats.StatsNeeds` says what it needs: nothing (magnitude: blocks are
pruned directly), per-layer statistics collected block by block under the sequential protocol
(Wanda, RIA: norms; SparseGPT: Hessians), and/or a dense pass that summarises every block before
anything is pruned (OWL), served through the dense-pass cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab import caches
from prunelab.calibration import CalibrationContext, capture_block_inputs, dense_pass, sequential
from prunelab.checks import ConfigError
from prunelab.methods.base import PruningMethod
from prunelab.models import DecoderAdapter
from prunelab.patterns import Pattern
from prunelab.stats import LayerStats

MODULE_GROUPS = {"attention": "self_attn.", "mlp": "mlp."}


class TargetConfigError(ConfigError):
    """``target.modules`` or ``target.blocks`` names something the model does not have."""


@dataclass(frozen=True)
class PruneTarget:
    """Which linear layers are pruned: module names or groups, and a block range ``[start, stop)``."""

    modules: tuple[str, ...] = ("all",)
    blocks: tuple[int, int] | None = None

    def selects_block(self, index: int) -> bool:
        return self.blocks is None or self.blocks[0] <= index < self.blocks[1]

    def selects_layer(self, name: str) -> bool:
        for spec in self.modules:
            if spec == "all" or name.startswith(MODULE_GROUPS.get(spec, "\0")) or name.split(".")[-1] == spec:
                return True
        return False

    def validate(self, adapter: DecoderAdapter) -> None:
        names = list(adapter.linear_layers(adapter.blocks[0]))
        leaves = sorted({n.split(".")[-1] for n in names})
        for spec in self.modules:
            if spec != "all" and spec not in MODULE_GROUPS and spec not in leaves:
                raise TargetConfigError(
                    f"target.modules entry {spec!r} is unknown; allowed: all, {', '.join(MODULE_GROUPS)}, {', '.join(leaves)}"
                )
        if self.blocks is not None:
            start, stop = self.blocks
            if not 0 <= start < stop <= adapter.num_blocks:
                raise TargetConfigError(
                    f"target.blocks={list(self.blocks)} must satisfy 0 <= start < stop <= {adapter.num_blocks}"
                )


@dataclass
class PruneReport:
    method: str
    pattern: str
    target_sparsity: float
    block_sparsity: list[float]
    layer_sparsity: dict[str, float]
    achieved_sparsity: float
    calibration_s: float
    prune_s: float
    calibration_tokens: int
    method_evidence: dict = field(default_factory=dict)
    layer_plan: dict[str, float] = field(default_factory=dict)  # planned sparsity of every layer (0: untouched)
    layer_zeros_before: dict[str, float] = field(default_factory=dict)  # fraction of zeros before pruning
    layer_inputs: dict[str, int] = field(default_factory=dict)  # in_features (the rounding of a row)

    def metrics(self) -> dict:
        return {
            "prune/method": self.method,
            "prune/pattern": self.pattern,
            "prune/target_sparsity": self.target_sparsity,
            "prune/achieved_sparsity": self.achieved_sparsity,
            "prune/layer_sparsity": self.layer_sparsity,
            "prune/block_sparsity": self.block_sparsity,
            "prune/calibration_tokens": self.calibration_tokens,
            "time/calibration_s": self.calibration_s,
            "time/prune_s": self.prune_s,
            **{f"prune/{key}": value for key, value in self.method_evidence.items()},
        }


def _prune_linears(method: PruningMethod, linears: dict[str, nn.Linear], stats: dict[str, LayerStats],
                   sparsity: float, pattern: Pattern, target: PruneTarget) -> bool:
    changed = False
    for name, layer in linears.items():
        if not target.selects_layer(name) or sparsity <= 0:
            continue
        layer.weight.data = method.prune_layer(layer.weight.data, stats.get(name, LayerStats()), sparsity, pattern)
        changed = True
    return changed


def layer_plan(adapter: DecoderAdapter, plan: list[float], target: PruneTarget, prunes: bool) -> dict[str, float]:
    """The sparsity every layer should end with: its block's planned sparsity where targeted, else 0."""
    return {
        f"layers.{index}.{name}": plan[index] if prunes and target.selects_layer(name) else 0.0
        for index, block in enumerate(adapter.blocks)
        for name in adapter.linear_layers(block)
    }


def layer_sparsity(adapter: DecoderAdapter) -> dict[str, float]:
    """Fraction of exact zeros in every linear layer of every block."""
    return {
        f"layers.{index}.{name}": float((layer.weight == 0).float().mean())
        for index, block in enumerate(adapter.blocks)
        for name, layer in adapter.linear_layers(block).items()
    }


def overall_sparsity(adapter: DecoderAdapter) -> float:
    zeros = total = 0
    for block in adapter.blocks:
        for layer in adapter.linear_layers(block).values():
            zeros += int((layer.weight == 0).sum())
            total += layer.weight.numel()
    return zeros / total


def block_sizes(adapter: DecoderAdapter) -> list[int]:
    """Prunable (linear) parameters of every block."""
    return [sum(layer.weight.numel() for layer in adapter.linear_layers(block).values()) for block in adapter.blocks]


def _dense_summaries(method: PruningMethod, context: CalibrationContext, cache: bool) -> tuple[list[float], dict]:
    start = time.perf_counter()

    def compute() -> list[float]:
        return dense_pass(context, method.summarize_dense_block, description=f"dense pass ({type(method).__name__})")

    if cache:
        key = caches.content_key(context.hidden, context.adapter.blocks, method.dense_pass_key())
        summaries, hit = caches.dense_summaries(key, context.num_blocks, compute)
    else:
        summaries, hit = compute(), False
    return summaries, {"dense_pass_cached": hit, "dense_pass_s": time.perf_counter() - start}


@torch.no_grad()
def prune_model(
    model: nn.Module,
    method: PruningMethod,
    sparsity: float,
    pattern: Pattern,
    calibration_ids: torch.Tensor | None,
    device: torch.device,
    target: PruneTarget = PruneTarget(),
    batch_size: int = 8,
    label: str | None = None,
    cache: bool = True,
) -> PruneReport:
    """Prune ``model`` in place and report what was done and what it cost."""
    label = label or getattr(method, "name", type(method).__name__)
    adapter = DecoderAdapter(model)
    target.validate(adapter)
    zeros_before = layer_sparsity(adapter)
    needs = method.needs
    if needs.any:
        if calibration_ids is None:
            raise ValueError(f"method {label} needs calibration data")
        context = capture_block_inputs(adapter, calibration_ids, device, batch_size)
    else:
        context = CalibrationContext(adapter, device, [], [])
    summaries, dense_evidence = _dense_summaries(method, context, cache) if needs.dense_pass else (None, {})
    plan = method.plan_block_sparsity(summaries, block_sizes(adapter), sparsity, pattern)
    plan = [s if target.selects_block(i) else 0.0 for i, s in enumerate(plan)]

    def on_block(index: int, block: nn.Module, linears: dict[str, nn.Linear], stats: dict[str, LayerStats]) -> bool:
        return _prune_linears(method, linears, stats, plan[index], pattern, target)

    if needs.per_block:
        sequential(context, needs, on_block, description=f"calibrate+prune ({label})")
    else:  # magnitude and dense need no activations: prune every block directly
        for index in tqdm(range(adapter.num_blocks), desc=f"prune ({label})", unit="block", leave=False):
            start = time.perf_counter()
            block = adapter.blocks[index]
            on_block(index, block, adapter.linear_layers(block), {})
            context.timings["prune_s"] += time.perf_counter() - start
    per_layer = layer_sparsity(adapter)
    return PruneReport(
        method=label,
        pattern=pattern.name,
        target_sparsity=sparsity,
        block_sparsity=plan,
        layer_sparsity=per_layer,
        achieved_sparsity=overall_sparsity(adapter),
        calibration_s=context.timings["calibration_s"],
        prune_s=context.timings["prune_s"],
        calibration_tokens=context.tokens,
        method_evidence={**method.evidence, **dense_evidence},
        layer_plan=layer_plan(adapter, plan, target, method.prunes),
        layer_zeros_before=zeros_before,
        layer_inputs={f"layers.{index}.{name}": layer.in_features for index, block in enumerate(adapter.blocks)
                      for name, layer in adapter.linear_layers(block).items()},
    )
