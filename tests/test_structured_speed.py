"""Speed of structured pruning: the interleaved dense-vs-pruned benchmark, the ideal ratios of the
roofline on per-block shapes, the prepared GPU check (dry run on the CPU, without the packages the
GPU machine lacks), and the granularity study's table and Pareto figure."""

from __future__ import annotations

import json
import math
import os
import site
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from prunelab.bench import e2e, roofline
from prunelab.bench.roofline import BlockDims, ModelShape, Phase
from prunelab.plan import make_plan
from prunelab.study import aggregate, records
from tests.conftest import CONF_DIR, ROOT, build_method, compose_config
from tests.test_study import compose_with_hydra, grid, run_hydra_job

SMALL_ENGINE = ["engine=structured", "engine.prefill_tokens=[16,32]", "engine.decode_batches=[1,2]",
                "engine.decode_steps=3", "engine.repeats=2", "engine.warmup=1", "engine.memory_tokens=32"]
SHAPE = ModelShape(hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, layers=2, vocab=1000)


# --- the ideal ratios ---------------------------------------------------------------------------
def test_shapes_of_a_shrunk_model_are_read_per_block(tiny_model):
    from prunelab.patterns import Unstructured
    from prunelab.prune import prune_model

    prune_model(tiny_model, build_method("model=tiny_random", "method=mag_sp"), 0.5, Unstructured(), None,
                torch.device("cpu"))
    shape = ModelShape.from_model(tiny_model)
    assert (shape.heads, shape.kv_heads, shape.intermediate, shape.blocks) == (2, 1, 64, None)  # uniform: 1 of 2 groups, 64 of 128 channels
    block = tiny_model.model.layers[1]
    block.mlp.gate_proj = torch.nn.Linear(64, 10)
    assert ModelShape.from_model(tiny_model).block_dims() == [BlockDims(2, 1, 64), BlockDims(2, 1, 10)]


def test_ideal_ratio_counts_what_the_pruned_layers_no_longer_do():
    n = 32
    pruned = ModelShape(**{**SHAPE.__dict__, "blocks": (BlockDims(4, 2, 128), BlockDims(4, 2, 64))})
    dense_ops, dense_bytes = roofline.totals(SHAPE, Phase.prefill(n), 4)
    pruned_ops, pruned_bytes = roofline.totals(pruned, Phase.prefill(n), 4)
    # one block lost 64 MLP channels: gate, up, down GEMMs (2 n * 3 * 64 * 64) and SiLU*up (5 n * 64)
    assert dense_ops - pruned_ops == pytest.approx(2 * n * 3 * 64 * 64 + 5 * n * 64)
    # fp32: their weights, and one 64-wide activation each (gate/up outputs, down input); SiLU*up is fused
    assert dense_bytes - pruned_bytes == pytest.approx(4 * (3 * 64 * 64 + 3 * n * 64))
    ideal = roofline.structured_ideal(SHAPE, pruned, Phase.prefill(n), 4)
    assert ideal["ideal"] == ideal["flop_ratio"] == pytest.approx(dense_ops / pruned_ops)
    assert roofline.structured_ideal(SHAPE, pruned, Phase.decode(1), 4)["ideal"] == pytest.approx(
        roofline.totals(SHAPE, Phase.decode(1), 4)[1] / roofline.totals(pruned, Phase.decode(1), 4)[1])
    assert roofline.structured_ideal(SHAPE, SHAPE, Phase.prefill(n))["ideal"] == 1.0


def test_lm_head_keeps_the_ideal_well_below_the_block_reduction():
    half = ModelShape(**{**SHAPE.__dict__, "intermediate": 64, "heads": 2, "kv_heads": 1})
    ideal = roofline.structured_ideal(SHAPE, half, Phase.prefill(64), 4)["ideal"]
    block_only = SHAPE.prunable_parameters() / half.prunable_parameters()
    assert 1.0 < ideal < block_only  # a 1000-token lm_head is not pruned and still costs the same


# --- the benchmark --------------------------------------------------------------------------------
def test_interleaved_measurement_times_every_model_alike(tiny_model):
    timings = e2e.measure_interleaved({"a": tiny_model, "b": tiny_model}, [8], [1, 2], 4, 2, 1000,
                                      torch.device("cpu"), warmup=1, repeats=3)
    for name in ("a", "b"):
        assert len(timings[name].prefill[8].samples) == 3 and timings[name].prefill[8].median_ms > 0
        assert timings[name].decode[2].tokens_per_s > 0 and timings[name].decode[2].steps == 2


def test_structured_engine_in_the_pipeline(tmp_path):
    from prunelab import pipeline

    overrides = ["method=flap", "sparsity=0.5", *SMALL_ENGINE]
    cfg = compose_config("model=tiny_random", "calib_data.nsamples=4", "eval.max_windows=2",
                         "eval.ppl_datasets=[wiki]", "logger=none", *overrides)
    pipeline.main(cfg, output_dir=tmp_path, overrides=overrides)
    record = json.loads((tmp_path / "metrics.json").read_text())
    metrics = record["metrics"]
    assert record["status"] == "completed" and record["plan"]["pattern"] == "structured"
    for key in ("prefill_speedup_32", "prefill_ideal_32", "prefill_efficiency_32", "decode_speedup_b1",
                "decode_ideal_b2", "decode_b1_dense", "param_bytes_ratio"):
        value = metrics[f"bench/{key}"]
        assert math.isfinite(value) and value > 0, key
    assert metrics["bench/param_bytes_pruned"] < metrics["bench/param_bytes_dense"]
    assert metrics["bench/prefill_ideal_32"] > 1.0  # FLAP removed heads and channels
    assert metrics["bench/prefill_efficiency_32"] == pytest.approx(
        metrics["bench/prefill_speedup_32"] / metrics["bench/prefill_ideal_32"])
    assert metrics["bench/peak_memory_mb_pruned"] > 0 and metrics["bench/threads"] >= 1
    assert "bench/roofline_prefill_bound_128" not in metrics  # no 2:4 prediction for this engine
    rows = pd.read_csv(tmp_path / "bench" / "structured.csv")
    assert list(rows["key"]) == ["prefill_16", "prefill_32", "decode_b1", "decode_b2"]


def test_roofline_engine_predicts_two_four_without_measuring(tmp_path):
    plan = make_plan(compose_config("model=tiny_random", "logger=none", "engine=roofline", "pattern=2:4"))
    assert plan.engine.name == "roofline" and not plan.engine.needs_dense


# --- the GPU check ----------------------------------------------------------------------------------
GPU_MACHINE_LACKS = ("hydra", "omegaconf", "datasets", "lm_eval", "wandb")


def site_without(tmp_path: Path, missing: tuple[str, ...]) -> Path:
    """This interpreter's site-packages as links, minus ``missing`` (and .pth files, so the editable
    install of the main checkout does not sneak in): what the GPU machine has."""
    target = tmp_path / "site"
    target.mkdir()
    for source in map(Path, site.getsitepackages()):
        for entry in source.iterdir():
            low = entry.name.lower().replace("-", "_")
            if entry.suffix == ".pth" or low.startswith((*missing, "__editable__", "prunelab")):
                continue
            if not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return target


def test_gpu_check_dry_runs_on_the_cpu_without_hydra_omegaconf_datasets_lm_eval_wandb(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site_without(tmp_path, GPU_MACHINE_LACKS)), str(ROOT / "src")])}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-S", "-m", "prunelab.bench.gpu_check", "--model", "tiny_random", "--device", "cpu",
         "--sparsities", "0.3", "--prefill", "16", "--batches", "1", "--steps", "2", "--repeats", "1", "--warmup", "1",
         "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "structured mag_sp 30%" in result.stdout and "2:4 torch_sparse skipped: no CUDA GPU" in result.stdout
    report_json = json.loads((out / "gpu_check.json").read_text())
    rows = report_json["structured"]["0.3"]["rows"]
    assert [r["key"] for r in rows] == ["prefill_16", "decode_b1"] and all(r["ideal"] > 1 for r in rows)
    aligned = report_json["structured"]["0.3@64"]  # the same sparsity with GPU-friendly MLP widths
    assert aligned["channel_multiple"] == 64 and all(w % 64 == 0 for w in aligned["mlp_widths"])
    assert report_json["two_four"]["bench/roofline_decode_bound"] > 1  # the prediction is there without a GPU


# --- the study ---------------------------------------------------------------------------------------
def test_granularity_preset_runs_every_granularity_and_validates():
    cfg = compose_with_hydra("+experiment=granularity", "model=tiny_random")
    jobs = grid(dict(cfg.hydra.sweeper.params))
    assert len(jobs) == 15 and cfg.eval.tasks  # the zero-shot subset
    engines = {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for job in jobs:
            job_cfg = compose(config_name="config", overrides=["+experiment=granularity", "model=tiny_random",
                                                                "model.source.architecture.num_hidden_layers=5",
                                                                # the engine's 512-token prefill must fit the context
                                                                "model.source.architecture.max_position_embeddings=512", *job])
            plan = make_plan(job_cfg)
            engines[(plan.method_label, plan.summary()["pattern"], plan.sparsity)] = getattr(plan.engine, "name", None)
    assert engines[("wanda", "2:4", 0.5)] == "roofline" and engines[("dense", "unstructured", 0.0)] is None
    assert {m for (m, p, _), e in engines.items() if p == "structured" and e == "structured"} == \
        {"wanda_sp", "flap", "mag_sp", "shortgpt"}


@pytest.fixture(scope="module")
def granularity_sweep(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("granularity")
    jobs = [("method=dense",), ("method=wanda", "sparsity=0.5", "engine=structured", *SMALL_ENGINE[1:]),
            ("method=wanda", "pattern=2:4", "engine=roofline"),
            ("method=wanda_sp", "sparsity=0.5", *SMALL_ENGINE), ("method=flap", "sparsity=0.5", *SMALL_ENGINE)]
    for index, overrides in enumerate(jobs):
        run_hydra_job(sweep / str(index), *overrides)
    return sweep


def test_granularity_study_has_a_speed_table_and_a_pareto_figure(granularity_sweep):
    aggregate.aggregate(granularity_sweep)
    sweep = records.collect(granularity_sweep)
    table = records.speed_table(sweep)
    assert {"structured 50%", "unstructured 50%", "2:4"} <= set(table.index.get_level_values("setting"))
    assert table.loc[("2:4", "wanda"), "bench/roofline_prefill_bound_512"] > 1
    assert table.loc[("structured 50%", "flap"), "bench/prefill_ideal_32"] > 1
    points = records.pareto_points(sweep).set_index(["setting", "method"])
    assert points.loc[("dense", "dense"), "speedup"] == 1.0
    assert points.loc[("2:4", "wanda"), "speed_source"] == "roofline prediction"
    assert points.loc[("structured 50%", "wanda_sp"), "speed_source"] == "measured"
    assert (granularity_sweep / "figures" / "pareto.png").exists()
    text = (granularity_sweep / "report.md").read_text()
    assert "## Speed and memory" in text and "Accuracy beside speed" in text and "pareto.png" in text
    assert (granularity_sweep / "tables" / "speed.csv").exists()
    assert "FLAP below Wanda-sp at structured 50% (structured 50%; wiki)" in text  # the FLAP paper's ordering, with noise
