"""End-to-end mechanics on the tiny random LLaMA: evidence on disk, exact sparsity, save/reload."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab import pipeline
from prunelab.models import DecoderAdapter
from tests.conftest import ROOT, TINY, build_method, compose_config


def run_pipeline(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_config(*TINY, *overrides)
    pipeline.main(cfg, output_dir=tmp_path, overrides=list(overrides))
    return json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize("method,pattern,sparsity", [
    ("magnitude", "unstructured", 0.5), ("wanda", "unstructured", 0.3),
    ("wanda", "2:4", 0.5), ("magnitude", "4:8", 0.5), ("wanda", "unstructured", 0.9),
])
def test_run_leaves_evidence_with_exact_sparsity(tmp_path, method, pattern, sparsity):
    record = run_pipeline(tmp_path, f"method={method}", f"pattern={pattern}", f"sparsity={sparsity}")
    metrics = record["metrics"]
    assert record["status"] == "completed"
    assert record["config"]["method"]["name"] == method and record["overrides"]
    assert record["plan"]["method"] == method and record["plan"]["pattern"] == pattern
    assert record["versions"]["torch"] and record["git_commit"]
    assert record["plan"]["sparsity"] == sparsity  # once: the plan says what was asked, metrics what was measured
    assert not {"prune/method", "prune/pattern", "prune/target_sparsity"} & set(metrics)
    # Wanda prunes floor(in * s) weights of every row, magnitude floor(out * in * s) per matrix;
    # N:M exactly 1 - N/M. Tiny model: hidden 64, MLP 128 (down_proj has 128 inputs).
    shapes = {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64), "o_proj": (64, 64),
              "gate_proj": (128, 64), "up_proj": (128, 64), "down_proj": (64, 128)}
    expected_zeros = total = 0
    for name, value in metrics["prune/layer_sparsity"].items():
        out_f, in_f = shapes[name.split(".")[-1]]
        if pattern != "unstructured":
            zeros = out_f * in_f * sparsity
        elif method == "wanda":
            zeros = out_f * math.floor(in_f * sparsity)
        else:
            zeros = math.floor(out_f * in_f * sparsity)
        assert value == pytest.approx(zeros / (out_f * in_f), abs=1e-12), name
        expected_zeros += zeros
        total += out_f * in_f
    assert metrics["prune/achieved_sparsity"] == pytest.approx(expected_zeros / total, abs=1e-12)
    assert metrics["eval/ppl_wiki"] > 1
    for key in ("time/calibration_s", "time/prune_s", "time/eval_s", "memory/peak_rss_mb"):
        assert metrics[key] >= 0


def test_dense_run_prunes_nothing(tmp_path):
    record = run_pipeline(tmp_path, "method=dense")
    assert record["metrics"]["prune/achieved_sparsity"] == 0.0
    assert record["plan"]["sparsity"] == 0.0


def test_embeddings_and_lm_head_are_never_pruned(tmp_path, tiny_model):
    from prunelab.patterns import Unstructured
    from prunelab.prune import prune_model

    embed_before = tiny_model.model.embed_tokens.weight.clone()
    prune_model(tiny_model, build_method("method=magnitude"), 0.5, Unstructured(), None, torch.device("cpu"))
    assert torch.equal(tiny_model.model.embed_tokens.weight, embed_before)
    assert torch.equal(tiny_model.lm_head.weight, embed_before)  # tied
    for block in DecoderAdapter(tiny_model).blocks:
        assert torch.equal(block.input_layernorm.weight, torch.ones_like(block.input_layernorm.weight))


def test_saved_model_reloads_with_the_same_zeros(tmp_path):
    from transformers import AutoModelForCausalLM

    record = run_pipeline(tmp_path, "method=wanda", "pattern=2:4", "save_model=true")
    model_dir = Path(record["metrics"]["artifacts/model_dir"])
    assert (model_dir / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir)
    for block in DecoderAdapter(reloaded).blocks:
        for layer in DecoderAdapter.linear_layers(block).values():
            groups = (layer.weight != 0).reshape(layer.weight.shape[0], -1, 4).sum(-1)
            assert bool((groups <= 2).all())
    assert float((reloaded.model.layers[0].mlp.up_proj.weight == 0).float().mean()) == 0.5


def test_failed_run_records_status_and_error(tmp_path):
    cfg = compose_config(*TINY, "sparsity=1.5")
    with pytest.raises(ValueError):
        pipeline.main(cfg, output_dir=tmp_path, overrides=["sparsity=1.5"])
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed" and "sparsity=1.5" in record["error"]


def test_failed_job_in_a_multirun_does_not_raise(tmp_path):
    cfg = compose_config(*TINY, "sparsity=1.5")
    value = pipeline.main(cfg, output_dir=tmp_path, overrides=["sparsity=1.5"], sweep_dir=tmp_path)
    assert value != value  # NaN headline: the sweeper sees a failed job, the sweep goes on
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


def test_wandb_offline_logger_writes_a_run(tmp_path):
    record = run_pipeline(tmp_path, "logger=wandb", "logger.mode=offline")
    assert record["status"] == "completed"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_cli_entry_point_writes_metrics_in_hydra_run_dir(tmp_path):
    result = subprocess.run(
        [sys.executable, "run.py", *TINY, "method=magnitude", f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed" and "method=magnitude" in record["overrides"]
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()


def test_cli_bad_input_fails_fast_with_the_key_named(tmp_path):
    result = subprocess.run(
        [sys.executable, "run.py", "model=tiny_random", "logger=none", "pattern=2:4", "sparsity=0.6",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "pattern=2:4 implies sparsity=0.5" in result.stderr
