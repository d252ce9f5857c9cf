"""The sequential protocol: block l is calibrated on the outputs of blocks < l *after* pruning."""

from __future__ import annotations

import torch

from prunelab.calibration import capture_block_inputs, sequential
from prunelab.methods.wanda import Wanda
from prunelab.models import DecoderAdapter
from prunelab.patterns import Unstructured
from prunelab.prune import prune_model
from prunelab.stats import LayerStats, StatsNeeds

CPU = torch.device("cpu")


def calibration_ids(n: int = 6, seqlen: int = 16) -> torch.Tensor:
    return torch.randint(0, 1000, (n, seqlen), generator=torch.Generator().manual_seed(0))


class RecordingWanda(Wanda):
    """Wanda that remembers the statistics each layer was pruned with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[LayerStats] = []

    def prune_layer(self, weight, stats, sparsity, pattern):
        self.seen.append(stats)
        return super().prune_layer(weight, stats, sparsity, pattern)


def column_norms(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).float().pow(2).sum(0).sqrt()


@torch.no_grad()
def test_block_statistics_come_from_pruned_earlier_blocks(tiny_model):
    ids = calibration_ids()
    method = RecordingWanda()
    prune_model(tiny_model, method, 0.5, Unstructured(), ids, CPU, batch_size=4)
    # 7 linear layers per block; the first of block 1 is self_attn.q_proj.
    recorded = method.seen[7]
    # Recompute block 1's input on the final model: block 0 is pruned, block 1's own pruning does
    # not affect its input. q_proj sees the input after the block's input layernorm.
    hidden = tiny_model(input_ids=ids, output_hidden_states=True).hidden_states[1]
    expected = column_norms(tiny_model.model.layers[1].input_layernorm(hidden))
    torch.testing.assert_close(recorded.activation_norms, expected, rtol=1e-4, atol=1e-4)
    assert recorded.tokens == ids.numel()


@torch.no_grad()
def test_statistics_differ_from_a_dense_pass(tiny_model):
    """Guard against calibrating every block on the dense model (the non-sequential shortcut)."""
    import copy

    ids = calibration_ids()
    dense = copy.deepcopy(tiny_model)
    method = RecordingWanda()
    prune_model(tiny_model, method, 0.5, Unstructured(), ids, CPU, batch_size=4)
    hidden = dense(input_ids=ids, output_hidden_states=True).hidden_states[1]
    dense_norms = column_norms(dense.model.layers[1].input_layernorm(hidden))
    assert not torch.allclose(method.seen[7].activation_norms, dense_norms, rtol=1e-3)


@torch.no_grad()
def test_unpruned_sequential_pass_reproduces_the_model(tiny_model):
    """With nothing pruned, block-by-block statistics equal those of one full forward."""
    ids = calibration_ids()
    adapter = DecoderAdapter(tiny_model)
    context = capture_block_inputs(adapter, ids, CPU, batch_size=4)
    torch.testing.assert_close(torch.cat(context.hidden), tiny_model.model.embed_tokens(ids))

    sequential_norms = []

    def on_block(index, block, linears, stats, io):
        sequential_norms.append(stats["mlp.down_proj"].activation_norms)
        return False

    sequential(context, StatsNeeds(norms=True), on_block)

    full_forward_inputs = []
    handles = [block.mlp.down_proj.register_forward_hook(lambda m, i, o: full_forward_inputs.append(i[0]))
               for block in adapter.blocks]
    tiny_model(input_ids=ids)
    for handle in handles:
        handle.remove()
    assert len(sequential_norms) == adapter.num_blocks == len(full_forward_inputs)
    for got, inputs in zip(sequential_norms, full_forward_inputs):
        torch.testing.assert_close(got, column_norms(inputs), rtol=1e-4, atol=1e-4)
