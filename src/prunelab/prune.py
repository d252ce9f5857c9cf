"""The prune stage: serve each method the statistics it declares, plan per-block sparsity, prune.

A method's :class:`~prunelab.stats.StatsNeeds` says what it needs: nothing (magnitude, mag_sp:
blocks are pruned directly), per-layer statistics collected block by block under the sequential
protocol (Wanda, RIA, wanda_sp: norms; SparseGPT: Hessians), and/or a dense pass that summarises
every block before anything is pruned (OWL, FLAP, ShortGPT), served through the dense-pass cache.
Structured methods (:class:`~prunelab.methods.base.StructuredMethod`) remove whole units, and the
model physically shrinks (:func:`prune_structured`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab import caches, structure
from prunelab.calibration import (
    CalibrationContext,
    capture_block_inputs,
    dense_pass,
    sequential,
)
from prunelab.checks import ConfigError
from prunelab.methods.base import PruningMethod, StructuredMethod
from prunelab.models import DecoderAdapter
from prunelab.offload import Holder, is_dispatched, weight_of
from prunelab.outcome import OutcomeError
from prunelab.patterns import Pattern
from prunelab.stats import BlockIO, LayerStats
from prunelab.structure import BlockGeometry, Removal, Scope

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

    def scope(self, num_blocks: int) -> Scope:
        """The units a structured method may remove: whole attention and/or MLP, in the target blocks."""
        leaves = [spec for spec in self.modules if spec not in ("all", *MODULE_GROUPS)]
        if leaves:
            raise TargetConfigError(
                f"target.modules entry {leaves[0]!r} names one linear layer, but structured methods remove units that "
                f"span several (a head group: q, k, v, o; an MLP channel: gate, up, down); allowed: all, "
                f"{', '.join(MODULE_GROUPS)}")
        every = "all" in self.modules
        blocks = tuple(i for i in range(num_blocks) if self.selects_block(i))
        return Scope(blocks, attention=every or "attention" in self.modules, mlp=every or "mlp" in self.modules)

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
        """What pruning measured; the method, pattern and target sparsity are the run plan's (its
        summary in metrics.json), written once, not repeated here."""
        return {
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


def _walk(context: CalibrationContext, needs, on_block, label: str) -> None:
    """Every block through ``on_block``: sequentially with statistics, or directly when none are needed."""
    if needs.per_block:
        sequential(context, needs, on_block, description=f"calibrate+prune ({label})")
        return
    adapter = context.adapter  # magnitude and dense need no activations: prune every block directly
    holder = Holder(adapter.model, context.device) if is_dispatched(adapter.model) else None  # offloaded blocks: one at a time
    for index in tqdm(range(adapter.num_blocks), desc=f"prune ({label})", unit="block", leave=False):
        start = time.perf_counter()
        block = adapter.blocks[index] if holder is None else holder.take(adapter.blocks[index])
        changed = on_block(index, block, adapter.linear_layers(block), {}, None)
        if holder is not None:
            holder.give(block, write_back=changed)
        context.timings["prune_s"] += time.perf_counter() - start


def layer_sparsity(adapter: DecoderAdapter) -> dict[str, float]:
    """Fraction of exact zeros in every linear layer of every block."""
    return {
        f"layers.{index}.{name}": float((weight_of(layer) == 0).float().mean())
        for index, block in enumerate(adapter.blocks)
        for name, layer in adapter.linear_layers(block).items()
    }


def overall_sparsity(adapter: DecoderAdapter) -> float:
    zeros = total = 0
    for block in adapter.blocks:
        for layer in adapter.linear_layers(block).values():
            zeros += int((weight_of(layer) == 0).sum())
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


def _prepare(adapter: DecoderAdapter, method: PruningMethod, calibration_ids: torch.Tensor | None,
             device: torch.device, batch_size: int, label: str, cache: bool) -> tuple[CalibrationContext, list | None, dict]:
    """Block 0's calibration inputs (when the method needs statistics) and the dense-pass summaries
    (when it declares a dense pass)."""
    if method.needs.any:
        if calibration_ids is None:
            raise ValueError(f"method {label} needs calibration data")
        context = capture_block_inputs(adapter, calibration_ids, device, batch_size)
    else:
        context = CalibrationContext(adapter, device, [], [])
    if not method.needs.dense_pass:
        return context, None, {}
    summaries, evidence = _dense_summaries(method, context, cache)
    return context, summaries, evidence


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
    if isinstance(method, StructuredMethod):
        return prune_structured(model, method, sparsity, calibration_ids, device, target, batch_size, label, cache)
    adapter = DecoderAdapter(model)
    target.validate(adapter)
    zeros_before = layer_sparsity(adapter)
    needs = method.needs
    context, summaries, dense_evidence = _prepare(adapter, method, calibration_ids, device, batch_size, label, cache)
    plan = method.plan_block_sparsity(summaries, block_sizes(adapter), sparsity, pattern)
    plan = [s if target.selects_block(i) else 0.0 for i, s in enumerate(plan)]

    def on_block(index: int, block: nn.Module, linears: dict[str, nn.Linear], stats: dict[str, LayerStats],
                 io: BlockIO | None) -> bool:
        return _prune_linears(method, linears, stats, plan[index], pattern, target)

    _walk(context, needs, on_block, label)
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


def _weights(adapter: DecoderAdapter) -> dict[str, int]:
    return {f"layers.{index}.{name}": layer.weight.numel()
            for index, block in enumerate(adapter.blocks) for name, layer in adapter.linear_layers(block).items()}


@torch.no_grad()
def prune_structured(model: nn.Module, method: StructuredMethod, sparsity: float, calibration_ids: torch.Tensor | None,
                     device: torch.device, target: PruneTarget = PruneTarget(), batch_size: int = 8,
                     label: str | None = None, cache: bool = True, shrink: bool = True) -> PruneReport:
    """Remove the units ``method`` chooses, for real (``shrink``) or by zeroing them (the masked twin
    of the same model, for checks). Achieved sparsity = 1 - remaining linear weights / original; in
    ``shrink`` mode it must equal what the method planned, or the run fails."""
    label = label or method.name
    adapter = DecoderAdapter(model)
    target.validate(adapter)
    scope = target.scope(adapter.num_blocks)
    geometries = [BlockGeometry.from_block(block) for block in adapter.blocks]
    method.check_structure(geometries, sparsity, scope)
    original = _weights(adapter)
    needs = method.needs
    context, summaries, dense_evidence = _prepare(adapter, method, calibration_ids, device, batch_size, label, cache)
    if needs.dense_pass:
        method.plan_removals(summaries, geometries, sparsity, scope)
    removals: dict[int, Removal] = {}

    def on_block(index: int, block: nn.Module, linears: dict[str, nn.Linear], stats: dict[str, LayerStats],
                 io: BlockIO | None) -> bool:
        if index not in scope.blocks or method.removes_blocks:
            return False
        removal = method.removal(index, geometries[index], linears, stats, sparsity, scope)
        removals[index] = removal
        if removal.empty and removal.attention_mean is None and removal.mlp_mean is None:
            return False
        structure.apply(block, removal, shrink=shrink)
        return True

    _walk(context, needs, on_block, label)
    planned_removed = sum(r.params(geometries[i]) for i, r in removals.items())
    planned_removed += sum(geometries[i].params for i in method.removed_blocks)
    for index in method.removed_blocks:
        if shrink:
            continue
        for layer in adapter.linear_layers(adapter.blocks[index]).values():  # a zeroed block adds nothing
            layer.weight.data.zero_()  # to the residual stream: the block is the identity
    current = _weights(adapter)
    if shrink:
        per_layer = {key: 1.0 - current[key] / size for key, size in original.items()}
        for index in method.removed_blocks:
            per_layer.update({key: 1.0 for key in original if key.startswith(f"layers.{index}.")})
        if method.removed_blocks:
            structure.remove_blocks(model, method.removed_blocks)
    else:
        per_layer = layer_sparsity(adapter)
    total = sum(original.values())
    kept = sum(layer.weight.numel() for block in adapter.blocks for layer in adapter.linear_layers(block).values())
    achieved = 1.0 - kept / total if shrink else overall_sparsity(adapter)
    planned = planned_removed / total
    if shrink and abs(achieved - planned) > 1e-12:
        raise OutcomeError(f"achieved sparsity does not match the plan: {label} planned to remove {planned:.6f} "
                           f"of the linear weights but {achieved:.6f} are gone")
    blocks = [_block_fraction(per_layer, original, i) for i in range(len(geometries))]
    evidence = {**method.evidence, **dense_evidence, "structured_planned_sparsity": planned,
                "structured_weights_before": total, "structured_weights_after": kept,
                "structured_blocks_after": len(adapter.blocks),
                "bias_compensated_layers": sum(int(r.attention_mean is not None and len(r.groups) > 0)
                                               + int(r.mlp_mean is not None and len(r.channels) > 0)
                                               for r in removals.values())}
    return PruneReport(method=label, pattern="structured", target_sparsity=sparsity, block_sparsity=blocks,
                       layer_sparsity=per_layer, achieved_sparsity=achieved, calibration_s=context.timings["calibration_s"],
                       prune_s=context.timings["prune_s"], calibration_tokens=context.tokens, method_evidence=evidence)


def _block_fraction(per_layer: dict[str, float], original: dict[str, int], index: int) -> float:
    keys = [key for key in original if key.startswith(f"layers.{index}.")]
    return sum(per_layer[key] * original[key] for key in keys) / sum(original[key] for key in keys)
