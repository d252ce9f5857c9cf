"""Sequential, block-by-block calibration.

The inputs of the first decoder block are captured once (the model runs up to block 0 and
stops). Then every block in turn is moved to the work device, forward hooks on its linear layers
accumulate input statistics over all calibration samples, a callback may prune the block, and the
block's outputs are recomputed *with its pruned weights* and become the next block's inputs.
Memory stays at one block plus two copies of the calibration activations.

:func:`dense_pass` is the same walk with nothing pruned: it summarises every block of the dense
model for methods that plan per-block sparsities from it (OWL).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab.models import DecoderAdapter
from prunelab.offload import Holder
from prunelab.stats import BlockIO, LayerStats, StatsNeeds


class _StopForward(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for block 0: records what the model passes to it, then stops the forward."""

    def __init__(self, block: nn.Module, sink: list) -> None:
        super().__init__()
        self.block = block
        self.sink = sink

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # e.g. ``attention_type`` read by the model's forward
            return getattr(self.block, name)

    def forward(self, hidden_states, *args, **kwargs):
        self.sink.append((hidden_states, args, kwargs))
        raise _StopForward


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


@dataclass
class CalibrationContext:
    """Captured inputs of block 0 (one entry per mini-batch) and the work device."""

    adapter: DecoderAdapter
    device: torch.device
    hidden: list[torch.Tensor]
    call_args: list[tuple[tuple, dict]]
    timings: dict[str, float] = field(default_factory=lambda: {"calibration_s": 0.0, "prune_s": 0.0})

    @property
    def num_blocks(self) -> int:
        return self.adapter.num_blocks

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def capture_block_inputs(adapter: DecoderAdapter, input_ids: torch.Tensor, device: torch.device, batch_size: int) -> CalibrationContext:
    """Run the model up to its first block for every mini-batch of ``input_ids``."""
    start = time.perf_counter()
    holder = Holder(adapter.model, device)
    entry = [holder.take(module) for module in adapter.entry_modules()]
    sink: list = []
    original = adapter.blocks[0]
    adapter.blocks[0] = _Catcher(original, sink)
    try:
        for batch in input_ids.split(batch_size):
            try:
                adapter.backbone(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        adapter.blocks[0] = original
        for module in entry:
            holder.give(module, write_back=False)
    hidden = [h for h, _, _ in sink]
    call_args = [(args, kwargs) for _, args, kwargs in sink]
    context = CalibrationContext(adapter, device, hidden, call_args)
    _sync(device)
    context.timings["calibration_s"] += time.perf_counter() - start
    return context


def _run_block(block: nn.Module, hidden: list[torch.Tensor], call_args: list[tuple[tuple, dict]]) -> list[torch.Tensor]:
    outputs = []
    for states, (args, kwargs) in zip(hidden, call_args):
        out = block(states, *args, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


BlockCallback = Callable[[int, nn.Module, dict[str, nn.Linear], dict[str, LayerStats], BlockIO], bool]


@torch.no_grad()
def sequential(context: CalibrationContext, needs: StatsNeeds, on_block: BlockCallback, description: str = "calibrate",
               moments: bool = False) -> None:
    """Walk the blocks in order, collecting ``needs`` statistics (and per-channel input moments with
    ``moments``) and calling ``on_block``.

    ``on_block(index, block, linears, stats, io)`` may change the block's weights (``io``: the
    block's inputs and its outputs before the change); it returns True when it did, and the block's
    outputs are then recomputed with the new weights before they feed the next block (the papers'
    sequential protocol). The block may also have been replaced by a smaller one (structured
    pruning): the walk continues with ``context.adapter.blocks[index]``.
    """
    hidden = list(context.hidden)
    device = context.device
    holder = Holder(context.adapter.model, device)  # one block on the device at a time (offloaded ones too)
    for index in tqdm(range(context.num_blocks), desc=description, unit="block", leave=False):
        block = holder.take(context.adapter.blocks[index])
        linears = context.adapter.linear_layers(block)
        stats = {name: LayerStats() for name in linears}
        handles = []
        if needs.per_block or moments:
            for name, layer in linears.items():
                def hook(_module, inputs, _output, layer_stats=stats[name]):
                    layer_stats.update(inputs[0], norms=needs.norms, hessian=needs.hessian, moments=moments)
                handles.append(layer.register_forward_hook(hook))
        start = time.perf_counter()
        try:
            outputs = _run_block(block, hidden, context.call_args)
        finally:
            for handle in handles:
                handle.remove()
        _sync(device)
        context.timings["calibration_s"] += time.perf_counter() - start

        start = time.perf_counter()
        changed = on_block(index, block, linears, stats, BlockIO(hidden, outputs))
        _sync(device)
        context.timings["prune_s"] += time.perf_counter() - start
        del stats
        block = context.adapter.blocks[index]

        if changed and index < context.num_blocks - 1:
            start = time.perf_counter()
            outputs = _run_block(block, hidden, context.call_args)
            _sync(device)
            context.timings["calibration_s"] += time.perf_counter() - start
        hidden = outputs
        context.adapter.blocks[index] = holder.give(block, write_back=changed)


BlockSummary = Callable[[dict[str, nn.Linear], dict[str, LayerStats], BlockIO], Any]


def dense_pass(context: CalibrationContext, summarize: BlockSummary, description: str = "dense pass") -> list[Any]:
    """``summarize(linears, stats, io)`` of every block of the model as it is (activation norms and
    input moments collected; ``io`` holds the block's inputs and outputs)."""
    summaries: list[Any] = []

    def on_block(index: int, block: nn.Module, linears: dict[str, nn.Linear], stats: dict[str, LayerStats],
                 io: BlockIO) -> bool:
        summaries.append(summarize(linears, stats, io))
        return False

    sequential(context, StatsNeeds(norms=True), on_block, description=description, moments=True)
    return summaries
