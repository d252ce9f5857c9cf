"""Quantize a pruned model in place, layer by layer, and measure what it cost and what it saved.

RTN quantizes every linear layer of every decoder block directly; GPTQ walks the blocks with the
calibration path of pruning (:func:`prunelab.calibration.sequential`): each block's layer inputs
are collected from the already-quantized blocks before it, its layers are quantized, and its
outputs are recomputed from the quantized weights before they feed the next block (the authors'
protocol). The embeddings, norms and ``lm_head`` stay in the model's dtype.

``method=sparsegpt quant=gptq`` prunes and quantizes in SparseGPT's column loop
(:class:`JointSparseGPTQ`, during the prune stage); the quantize stage then only measures those
layers and quantizes any the pruning did not touch.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.calibration import capture_block_inputs, sequential
from prunelab.methods.sparsegpt import SparseGPT
from prunelab.models import DecoderAdapter
from prunelab.patterns import NM, Pattern
from prunelab.quant import Quantization
from prunelab.quant.gptq import GPTQ, layer_hessian, obs_quantize
from prunelab.quant.quantizer import QuantizedWeight
from prunelab.stats import LayerStats, StatsNeeds

ERRORS_CSV = "quant_errors.csv"
DEPLOY_BYTES = 2  # unquantized tensors and scales counted as fp16, the dense baseline's storage


@dataclass
class LayerError:
    layer: str
    in_features: int
    out_features: int
    rel_weight_error: float  # ||W_q - W||_F / ||W||_F, W = the weight before this quantization
    rel_output_error: float | None  # sqrt(tr(dW H dW^T) / tr(W H W^T)) on the calibration inputs (GPTQ)
    zeros_before: float
    zeros_after: float
    pruned_lost: int  # pruned positions that are not 0 after quantization (must be 0)
    reference: str = "pruned"  # "dense" for the joint pass: its error includes the pruning


@dataclass
class QuantReport:
    quant: Quantization
    layers: dict[str, QuantizedWeight] = field(default_factory=dict)
    errors: dict[str, LayerError] = field(default_factory=dict)
    calibration_s: float = 0.0
    quant_s: float = 0.0
    joint: bool = False

    def metrics(self, model: nn.Module, dense_params: int = 0) -> dict[str, Any]:
        """``dense_params``: parameters of the model before pruning (0: as it is now), the fp16 baseline."""
        quantized = sum(q.packed_bytes(DEPLOY_BYTES) for q in self.layers.values())
        bitmask = sum(q.bitmask_bytes(DEPLOY_BYTES) for q in self.layers.values())
        linear_params = sum(q.codes.numel() for q in self.layers.values())
        model_params = sum(p.numel() for p in model.parameters())
        total_params = dense_params or model_params
        rest = (model_params - linear_params) * DEPLOY_BYTES
        errors = list(self.errors.values())
        outputs = [e.rel_output_error for e in errors if e.rel_output_error is not None]
        weights = sum(e.out_features * e.in_features for e in errors)
        metrics = {
            "quant/method": self.quant.name, "quant/bits": self.quant.bits, "quant/group_size": self.quant.group_size,
            "quant/sym": self.quant.sym, "quant/joint_with_pruning": self.joint,
            "quant/bytes": quantized + rest, "quant/bytes_quantized_layers": quantized, "quant/bytes_unquantized": rest,
            "quant/bytes_dense_fp16": total_params * DEPLOY_BYTES,
            "quant/compression_vs_fp16": total_params * DEPLOY_BYTES / (quantized + rest),
            "quant/bytes_if_zeros_sparse": bitmask + rest,  # an estimate: one bitmask bit per weight + non-zero codes
            "quant/compression_vs_fp16_if_zeros_sparse": total_params * DEPLOY_BYTES / (bitmask + rest),
            "quant/layers": len(self.layers),
            "quant/rel_weight_error_mean": sum(e.rel_weight_error for e in errors) / len(errors),
            "quant/rel_weight_error_max": max(e.rel_weight_error for e in errors),
            "quant/zeros_after": sum(e.zeros_after * e.out_features * e.in_features for e in errors) / weights,
            "quant/zeros_before": sum(e.zeros_before * e.out_features * e.in_features for e in errors) / weights,
            "time/quant_s": self.quant_s, "time/quant_calibration_s": self.calibration_s,
        }
        if outputs:
            metrics["quant/rel_output_error_mean"] = sum(outputs) / len(outputs)
            metrics["quant/rel_output_error_max"] = max(outputs)
        return metrics

    def write_csv(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["layer", "in_features", "out_features", "rel_weight_error", "rel_output_error",
                             "zeros_before", "zeros_after", "pruned_lost", "reference"])
            for e in self.errors.values():
                writer.writerow([e.layer, e.in_features, e.out_features, f"{e.rel_weight_error:.6g}",
                                 "" if e.rel_output_error is None else f"{e.rel_output_error:.6g}",
                                 f"{e.zeros_before:.6f}", f"{e.zeros_after:.6f}", e.pruned_lost, e.reference])
        return path


def measure(name: str, before: torch.Tensor, result: QuantizedWeight, pruned: torch.Tensor,
            hessian: torch.Tensor | None, reference: str = "pruned") -> LayerError:
    old, new = before.float(), result.weight.float()
    delta = new - old
    norm = float(old.norm())
    output = None
    if hessian is not None:
        h = hessian.float()
        base = float(((old @ h) * old).sum())
        output = (max(float(((delta @ h) * delta).sum()), 0.0) / base) ** 0.5 if base > 0 else 0.0
    return LayerError(name, old.shape[1], old.shape[0], float(delta.norm()) / norm if norm else 0.0, output,
                      float(pruned.float().mean()), float((new == 0).float().mean()), int((new[pruned] != 0).sum()),
                      reference)


class JointSparseGPTQ(SparseGPT):
    """``method=sparsegpt`` that quantizes in the same OBS pass (IST-DASLab/sparsegpt with ``--wbits``).

    Uses the method's ``blocksize`` and ``percdamp`` (one pass, one damping; the plan requires
    ``quant.percdamp`` to equal ``method.percdamp``). Results are kept in call order and matched
    to the layers afterwards (:meth:`assign`), checked weight for weight."""

    def __init__(self, base: SparseGPT, quant: GPTQ) -> None:
        super().__init__(blocksize=base.blocksize, percdamp=base.percdamp)
        self.quant = quant
        self.done: list[tuple[QuantizedWeight, LayerError]] = []

    @torch.no_grad()
    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        if stats.hessian_sum is None or stats.tokens == 0:
            raise RuntimeError("sparsegpt needs the layer's input Hessian; it was not collected")
        hessian = layer_hessian(stats.hessian_sum, stats.tokens)
        nm = pattern if isinstance(pattern, NM) else None
        q = self.quant
        result = obs_quantize(weight, hessian, q.bits, q.group_size, q.sym, self.percdamp, self.blocksize,
                              sparsity=0.0 if nm is not None else sparsity, nm=nm)
        self.done.append((result, measure("", weight, result, result.pruned, hessian, reference="dense")))
        return result.weight

    def assign(self, adapter: DecoderAdapter) -> dict[str, tuple[QuantizedWeight, LayerError]]:
        """The jointly quantized layers by name: the k-th call of :meth:`prune_layer` is the k-th layer
        whose weight equals its result (the prune stage visits blocks and layers in order)."""
        out, pending = {}, list(self.done)
        for index, block in enumerate(adapter.blocks):
            for name, layer in adapter.linear_layers(block).items():
                if pending and torch.equal(layer.weight.data, pending[0][0].weight.to(layer.weight.device)):
                    result, error = pending.pop(0)
                    error.layer = f"layers.{index}.{name}"
                    out[error.layer] = (result, error)
        if pending:
            raise RuntimeError(f"{len(pending)} jointly quantized layer(s) could not be matched to the model")
        return out


def mask_sparsity(report, joint: JointSparseGPTQ, adapter: DecoderAdapter) -> None:
    """A joint pass's prune report counted on the masks it chose, not on the zeros in the weights
    (rounding onto a 4-bit grid zeroes small surviving weights too: that is not pruning)."""
    for name, (result, _) in joint.assign(adapter).items():
        report.layer_sparsity[name] = float(result.pruned.float().mean())
    sizes = {f"layers.{i}.{n}": layer.weight.numel() for i, block in enumerate(adapter.blocks)
             for n, layer in adapter.linear_layers(block).items()}
    report.achieved_sparsity = sum(report.layer_sparsity[k] * sizes[k] for k in sizes) / sum(sizes.values())


def joint_method(method, quant: Quantization | None, recovering: bool):
    """The pruning method to run: SparseGPT that also quantizes when ``method=sparsegpt quant=gptq``
    and nothing changes the weights in between (no recovery), unless ``quant.joint=false`` (prune,
    then GPTQ on the pruned weights, as every other method); else ``method`` itself."""
    if isinstance(quant, GPTQ) and quant.joint and type(method) is SparseGPT and not recovering:
        return JointSparseGPTQ(method, quant)
    return method


@torch.no_grad()
def quantize_model(model: nn.Module, quant: Quantization, calibration_ids: torch.Tensor | None, device: torch.device,
                   batch_size: int = 8, joint: JointSparseGPTQ | None = None) -> QuantReport:
    """Quantize every decoder linear layer of ``model`` in place; pruned zeros stay zero."""
    adapter = DecoderAdapter(model)
    report = QuantReport(quant, joint=joint is not None)
    if joint is not None:
        for name, (result, error) in joint.assign(adapter).items():
            report.layers[name], report.errors[name] = result, error

    def quantize_block(index: int, linears: dict[str, nn.Linear], stats: dict[str, LayerStats]) -> bool:
        changed = False
        for name, layer in linears.items():
            key = f"layers.{index}.{name}"
            if key in report.layers:
                continue
            before = layer.weight.data
            pruned = before == 0
            layer_stats = stats.get(name)
            hessian = (layer_hessian(layer_stats.hessian_sum, layer_stats.tokens)
                       if quant.needs_hessian and layer_stats is not None and layer_stats.hessian_sum is not None else None)
            result = quant.quantize_layer(before, pruned, hessian)
            report.errors[key] = measure(key, before, result, pruned, hessian)
            layer.weight.data = result.weight
            report.layers[key] = result
            changed = True
        return changed

    start = time.perf_counter()
    todo = [i for i, block in enumerate(adapter.blocks)
            if any(f"layers.{i}.{name}" not in report.layers for name in adapter.linear_layers(block))]
    if todo and quant.needs_hessian:
        if calibration_ids is None:
            raise ValueError(f"quant={quant.name} needs calibration data")
        context = capture_block_inputs(adapter, calibration_ids, device, batch_size)
        sequential(context, StatsNeeds(hessian=True),
                   lambda index, block, linears, stats, io: quantize_block(index, linears, stats),
                   description=f"calibrate+quantize ({quant.name})")
        report.calibration_s = context.timings["calibration_s"]
    elif todo:
        for index in todo:
            block = adapter.blocks[index]
            home = next(block.parameters()).device
            block.to(device)
            quantize_block(index, adapter.linear_layers(block), {})
            block.to(home)
    report.quant_s = time.perf_counter() - start - report.calibration_s
    return report
