"""The memory plan from the config alone: formulas checked by hand on the tiny model's sizes,
the budget it refuses, and ``device_map=auto`` given the budget less the working set."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from prunelab import memory_plan
from prunelab.checks import ConfigError
from prunelab.config import build
from prunelab.plan import make_plan
from tests.conftest import ROOT, TINY, compose_config

# tiny_random: hidden 64, intermediate 128, 2 blocks, 4 heads of 16, 2 KV heads, vocab 49152, tied
TINY_SIZES = memory_plan.Sizes(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=49152, tied=True)


def test_sizes_count_the_weights_the_model_has(tiny_model):
    config = build(compose_config("model=tiny_random").model.source, "model.source").hf_config()
    config.vocab_size = 49152
    assert memory_plan.Sizes.from_config(config) == TINY_SIZES
    # q 64x64, k 32x64, v 32x64, o 64x64, gate/up 128x64, down 64x128, two norms of 64
    assert TINY_SIZES.block_params() == 4096 + 2048 + 2048 + 4096 + 3 * 8192 + 2 * 64 == 36992
    assert TINY_SIZES.params() == 2 * 36992 + 49152 * 64 + 64
    assert TINY_SIZES.params() == sum(p.numel() for p in tiny_model.parameters())  # tied lm_head counted once
    assert TINY_SIZES.block_params() == sum(p.numel() for p in tiny_model.model.layers[0].parameters())


def test_working_sets_by_hand():
    work = memory_plan.Workload(torch.float32, "cpu", calib=(4, 64, 8), hessian=True, norms=False, prunes=True,
                                evaluation=(64, 2))
    calibrate, evaluate = memory_plan.working_sets(TINY_SIZES, work)
    assert calibrate.parts == {
        "block inputs+outputs": 2 * 4 * 64 * 64 * 4,  # inputs and outputs of every sample, fp32
        "one mini-batch through the block": 4 * 64 * (4 * 64 + 3 * 128) * 4 + 4 * 64 * 128 * 4,  # batch 8 capped at 4
        "Hessians": (6 * 64 * 64 + 128 * 128) * 4,  # in x in fp32 for q, k, v, o, gate, up (in 64) and down (in 128)
        "pruning the largest layer": 64 * 128 * 4 + 3 * 128 * 128 * 4,  # down_proj: W and three in x in matrices
    }
    assert evaluate.parts == {"activations of one batch": 2 * 64 * (4 * 64 + 3 * 128) * 4,
                              "logits": 2 * 64 * 49152 * 4, "loss (fp32 logits, log-softmax)": 2 * 2 * 63 * 49152 * 4}


def test_the_plan_is_made_from_the_config_and_records_every_stage():
    plan = make_plan(compose_config(*TINY, "method=sparsegpt"))
    stages = {(need.stage, need.device): need for need in plan.memory.needs}
    assert set(stages) == {("load", "cpu"), ("calibrate+prune", "cpu"), ("evaluate", "cpu")}
    weights = TINY_SIZES.params() * 4
    assert stages["load", "cpu"].total == weights
    assert stages["calibrate+prune", "cpu"].parts["weights"] == weights
    assert "Hessians" in stages["calibrate+prune", "cpu"].parts
    assert "Hessians" not in {p for need in make_plan(compose_config(*TINY)).memory.needs for p in need.parts}  # wanda


def test_a_plan_beyond_the_budget_is_refused_with_the_key_and_what_fits():
    with pytest.raises(ConfigError, match=r"memory plan: load needs about 12 MiB on cpu \(weights 12 MiB\), more than "
                                          r"model.max_memory.cpu=1 MiB; allowed: .*model.device_map=auto"):
        make_plan(compose_config(*TINY, "model.max_memory={cpu: 1MiB}"))
    with pytest.raises(ConfigError, match=r"model.max_memory.cpu=1 MiB is less than the run's working set"):
        make_plan(compose_config(*TINY, "model.device_map=auto", "model.max_memory={cpu: 1MiB}"))


def test_device_map_auto_places_weights_within_the_budget_less_the_working_set():
    plan = make_plan(compose_config(*TINY, "model.device_map=auto", "model.max_memory={cpu: 100MiB}"))
    block = TINY_SIZES.block_params() * 4
    working = max(need.total - need.parts.get("weights placed on cpu", 0) - need.parts.get("one block held", 0)
                  - need.parts.get("one offloaded layer in flight", 0)
                  for need in plan.memory.needs if need.stage != "load")
    assert plan.model.dispatch.max_memory == {"cpu": 100 * 2**20 - working - block}
    for need in plan.memory.needs:
        assert need.total <= 100 * 2**20, need


def test_command_line_prints_the_plan_and_refuses_with_exit_2():
    command = [sys.executable, "-m", "prunelab.memory_plan_cli", *TINY]
    shown = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "calibrate+prune  cpu" in shown.stdout and "evaluate" in shown.stdout
    refused = subprocess.run([*command, "model.max_memory={cpu: 1MiB}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.startswith("Error: memory plan: load needs")
