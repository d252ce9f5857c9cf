"""Pruning restricted by config: ``target.modules`` (groups or module types) and ``target.blocks``."""

from __future__ import annotations

import pytest
import torch

from prunelab.checks import ConfigError
from prunelab.pipeline import prune_stage
from prunelab.plan import make_plan
from prunelab.prune import PruneTarget
from tests.conftest import compose_config

ATTENTION = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
MLP = {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}


def _zeros_by_layer(model) -> dict[tuple[int, str], float]:
    return {
        (index, name): float((module.weight == 0).float().mean())
        for index, block in enumerate(model.model.layers)
        for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)
    }


def _prune(model, tokenizer, *overrides: str):
    cfg = compose_config("model=tiny_random", "logger=none", "calib_data.nsamples=4", "sparsity=0.5", *overrides)
    report = prune_stage(make_plan(cfg), model, tokenizer)
    return report, _zeros_by_layer(model)


@pytest.mark.parametrize("modules,expected", [
    ("[attention]", ATTENTION),
    ("[mlp]", MLP),
    ("[q_proj,down_proj]", {"self_attn.q_proj", "mlp.down_proj"}),
    ("[all]", ATTENTION | MLP),
])
def test_target_modules_prune_exactly_the_named_layers(modules, expected, tiny_model, tokenizer):
    _, zeros = _prune(tiny_model, tokenizer, "method=wanda", f"target.modules={modules}")
    for (index, name), fraction in zeros.items():
        assert fraction == (0.5 if name in expected else 0.0), (index, name)


def test_target_blocks_is_a_half_open_range(tiny_model, tokenizer):
    report, zeros = _prune(tiny_model, tokenizer, "method=magnitude", "target.blocks=[1,2]")
    assert report.block_sparsity == [0.0, 0.5]
    assert all(f == 0.0 for (i, _), f in zeros.items() if i == 0)
    assert all(f == 0.5 for (i, _), f in zeros.items() if i == 1)


def test_modules_and_blocks_combine(tiny_model, tokenizer):
    _, zeros = _prune(tiny_model, tokenizer, "method=ria", "target.modules=[mlp]", "target.blocks=[0,1]")
    pruned = {key for key, fraction in zeros.items() if fraction > 0}
    assert pruned == {(0, name) for name in MLP}


def test_owl_plan_leaves_unselected_blocks_dense(tiny_model, tokenizer):
    report, zeros = _prune(tiny_model, tokenizer, "method=owl_wanda", "cache_calibration=false", "target.blocks=[0,1]")
    assert report.block_sparsity[1] == 0.0 and report.block_sparsity[0] > 0
    assert all(f == 0.0 for (i, _), f in zeros.items() if i == 1)


def test_selection_by_name():
    attention = PruneTarget(("attention",))
    assert attention.selects_layer("self_attn.k_proj") and not attention.selects_layer("mlp.up_proj")
    types = PruneTarget(("up_proj", "o_proj"), (2, 4))
    assert types.selects_layer("mlp.up_proj") and types.selects_layer("self_attn.o_proj")
    assert not types.selects_layer("mlp.gate_proj")
    assert [types.selects_block(i) for i in range(5)] == [False, False, True, True, False]


@pytest.mark.parametrize("overrides,message", [
    (("target.modules=[attn]",), "target.modules entry 'attn' is unknown; allowed: all, attention, mlp"),
    (("target.blocks=[1,5]",), r"target.blocks=\[1, 5\] must satisfy 0 <= start < stop <= 2"),
    (("target.blocks=[1,1]",), r"target.blocks=\[1, 1\] must be \[start, stop\)"),
])
def test_bad_targets_say_what_is_allowed(overrides, message, tiny_model, tokenizer):
    with pytest.raises(ConfigError, match=message):
        _prune(tiny_model, tokenizer, "method=magnitude", *overrides)
