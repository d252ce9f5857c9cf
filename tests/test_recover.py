"""The recover stage (``recover=lora``) on the tiny random LLaMA: it trains (the loss goes down),
keeps the pruning mask exactly, resumes from a checkpoint to the same weights bitwise, trains on
text disjoint from evaluation, and rejects bad input before any weights load; one real short
recovery of the embedded model is in the slow tier."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from prunelab import assets, data, pipeline, recover
from prunelab.checks import ConfigError
from prunelab.loggers import Logger
from prunelab.models import DecoderAdapter
from prunelab.outcome import OutcomeError
from prunelab.plan import make_plan
from tests.conftest import TINY, compose_config, requires_embedded

# A few fast steps: a high learning rate so that a random model's loss visibly moves.
FAST = ["recover=lora", "recover.steps=6", "recover.lr=1e-2", "recover.warmup_steps=1", "recover.batch_size=2",
        "recover.checkpoint_every=2"]


def _pruned(tokenizer, *overrides: str):
    """The plan, the pruned tiny model and its prune report."""
    plan = make_plan(compose_config(*TINY, *FAST, *overrides))
    model, _, _ = pipeline.load_stage(plan.model)
    report = pipeline.prune_stage(plan, model, tokenizer)
    return plan, model, report


def _recover(plan, model, tokenizer, report, work_dir: Path, logger=None) -> dict:
    return plan.recovery.recover(model, tokenizer, report, plan.evaluation.perplexity, plan.model.device, work_dir,
                                 logger=logger)


class ChartLogger(Logger):
    """Keeps the line charts it is given."""

    def __init__(self) -> None:
        self.charts = {}

    def log_line_chart(self, key, frame, x, y, stroke, title) -> None:
        self.charts[key] = frame


def test_default_run_has_no_recover_stage():
    cfg = compose_config(*TINY)
    assert "recover" not in cfg  # recover=none adds no key: fingerprints and numbers of default runs unchanged
    assert make_plan(cfg).recovery is None


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_lora_trains_and_keeps_the_mask_exactly(tmp_path, tokenizer, pattern):
    plan, model, report = _pruned(tokenizer, "method=wanda", f"pattern={pattern}")
    adapter = DecoderAdapter(model)
    zeros_before = {f"{i}.{n}": (layer.weight == 0).clone() for i, block in enumerate(adapter.blocks)
                    for n, layer in adapter.linear_layers(block).items()}
    weights_before = {k: layer.weight.detach().clone() for k, layer in
                      ((f"{i}.{n}", layer) for i, block in enumerate(adapter.blocks)
                       for n, layer in adapter.linear_layers(block).items())}
    logger = ChartLogger()
    metrics = _recover(plan, model, tokenizer, report, tmp_path, logger)
    assert metrics["recover/loss_last"] < metrics["recover/loss_first"]
    assert len(metrics["recover/loss_curve"]) == 6
    assert list(logger.charts["recover/loss_curve"]["loss"]) == metrics["recover/loss_curve"]
    for key, layer in ((f"{i}.{n}", layer) for i, block in enumerate(adapter.blocks)
                       for n, layer in adapter.linear_layers(block).items()):
        assert torch.equal(layer.weight == 0, zeros_before[key]), key  # the same zeros, no more, no fewer
        assert not torch.equal(layer.weight, weights_before[key]), key  # and the kept weights were tuned
        if pattern == "2:4":
            assert bool(((layer.weight != 0).reshape(layer.weight.shape[0], -1, 4).sum(-1) <= 2).all())
    assert metrics["recover/achieved_sparsity"] == pytest.approx(report.achieved_sparsity, abs=0)
    assert metrics["recover/remasked_layers"] == 14
    assert not (tmp_path / recover.CHECKPOINT).exists() and (tmp_path / "adapter").is_dir()


def test_resume_from_a_checkpoint_gives_the_same_weights_bitwise(tmp_path, tokenizer, monkeypatch):
    plan, model, report = _pruned(tokenizer, "method=wanda")
    _recover(plan, model, tokenizer, report, tmp_path / "straight")
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    written = recover._write_checkpoint

    def write_then_stop(path, key, step, *args):
        written(path, key, step, *args)
        if step == 4:
            raise KeyboardInterrupt  # the run is killed after the checkpoint at step 4

    plan, model, report = _pruned(tokenizer, "method=wanda")
    monkeypatch.setattr(recover, "_write_checkpoint", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _recover(plan, model, tokenizer, report, tmp_path / "interrupted")
    monkeypatch.setattr(recover, "_write_checkpoint", written)
    plan, model, report = _pruned(tokenizer, "method=wanda")  # a fresh process: prune again, then resume
    metrics = _recover(plan, model, tokenizer, report, tmp_path / "interrupted")
    assert metrics["recover/resumed_from_step"] == 4
    assert len(metrics["recover/loss_curve"]) == 6
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, straight[name]), name


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path, tokenizer, monkeypatch):
    plan, model, report = _pruned(tokenizer, "method=wanda", "recover.steps=4")
    written = recover._write_checkpoint

    def write_then_stop(path, key, step, *args):
        written(path, key, step, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(recover, "_write_checkpoint", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _recover(plan, model, tokenizer, report, tmp_path)
    monkeypatch.setattr(recover, "_write_checkpoint", written)
    plan, model, report = _pruned(tokenizer, "method=wanda", "recover.steps=4", "recover.lr=5e-3")
    assert _recover(plan, model, tokenizer, report, tmp_path)["recover/resumed_from_step"] == 0


def test_structured_model_merges_exactly(tmp_path, tokenizer):
    plan, model, report = _pruned(tokenizer, "method=flap", "sparsity=0.3")
    kept = sum(p.numel() for p in model.parameters())
    metrics = _recover(plan, model, tokenizer, report, tmp_path)
    assert sum(p.numel() for p in model.parameters()) == kept  # no adapter left behind, shapes unchanged
    assert metrics["recover/remasked_layers"] == 0 and "recover/ppl_wiki_merged_dense" not in metrics
    merged = pipeline.eval_stage(plan.evaluation, model, tokenizer, plan.model.device)["eval/ppl_wiki"]
    assert merged == pytest.approx(metrics["recover/ppl_wiki_adapter"], rel=1e-4)


def test_dense_control_through_the_pipeline(tmp_path):
    cfg = compose_config(*TINY, *FAST, "method=dense")
    pipeline.main(cfg, output_dir=tmp_path, overrides=["method=dense", "recover=lora"])
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert metrics["recover/ppl_wiki_merged"] == metrics["eval/ppl_wiki"]
    assert math.isfinite(metrics["recover/log_gain_wiki"]) and metrics["recover/remasked_layers"] == 0
    assert record["plan"]["recover"].startswith("LoraRecovery(")


def test_training_windows_are_disjoint_from_evaluation(tokenizer):
    windows = recover.training_windows("wiki", 8, 64, 0, tokenizer, ["wiki", "austen"])
    assert windows.shape == (8, 64)
    forbidden = recover.evaluation_hashes(["wiki", "austen"], tokenizer)
    recover.check_disjoint(windows, forbidden, recover.SHINGLE, ["wiki", "austen"])  # passes
    leaked = torch.cat([windows, data.evaluation_stream("austen", tokenizer)[:, 1000:1064]])
    with pytest.raises(OutcomeError, match="share a 32-token span"):
        recover.check_disjoint(leaked, forbidden, recover.SHINGLE, ["wiki", "austen"])


@pytest.mark.parametrize("override,message", [
    ("recover.rank=0", "recover.rank=0 must be a positive integer"),
    ("recover.rank=33", "recover.rank=33 exceeds the width of layers.0.self_attn.k_proj (32)"),
    ("recover.lr=0", "recover.lr=0"),
    ("recover.lr=-1e-3", "recover.lr=-0.001"),
    ("recover.steps=0", "recover.steps=0 must be a positive integer"),
    ("recover.target_modules=[qkv_proj]", "recover.target_modules entry 'qkv_proj' is not a layer"),
    ("recover.schedule=step", "recover.schedule='step' is not valid"),
    ("recover.warmup_steps=6", "recover.warmup_steps=6 is outside"),
    ("recover.dataset=pile", "recover.dataset='pile' is not valid"),
    ("recover.seqlen=512", "recover.seqlen=512 exceeds the model's context of 256"),
    ("recover.dropout=1.0", "recover.dropout=1"),
])
def test_bad_input_is_rejected_before_the_weights_load(override, message, monkeypatch):
    from prunelab import models

    monkeypatch.setattr(models.RandomSource, "load", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError, match=_literal(message)):
        make_plan(compose_config(*TINY, *FAST, override))


def test_online_training_data_needs_the_hub(monkeypatch):
    from prunelab import models

    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    with pytest.raises(ConfigError, match="recover.dataset=c4 needs the Hugging Face hub"):
        make_plan(compose_config(*TINY, *FAST, "recover.dataset=c4"))


def _literal(text: str) -> str:
    import re

    return re.escape(text)


@requires_embedded
def test_real_short_recovery_of_the_embedded_model(tmp_path):
    """wanda 2:4 on SmolLM2-135M, 8 short LoRA steps (minutes on a busy CPU): the perplexity improves
    on the training domain, the 2:4 zeros are kept, and the run completes its outcome checks."""
    overrides = ["method=wanda", "pattern=2:4", "calib_data.nsamples=16", "eval.max_windows=2", "eval.ppl_datasets=[wiki]",
                 "logger=none", "recover=lora", "recover.steps=8", "recover.seqlen=64", "recover.batch_size=2",
                 "recover.warmup_steps=1", "recover.lr=3e-3"]
    pipeline.main(compose_config(*overrides), output_dir=tmp_path, overrides=overrides)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert metrics["recover/ppl_wiki_remasked"] < metrics["recover/ppl_wiki_before"]
    assert metrics["recover/ppl_wiki_adapter"] < metrics["recover/ppl_wiki_before"]
    assert metrics["recover/achieved_sparsity"] >= 0.5 and metrics["recover/remasked_layers"] == 210


def test_saved_recovered_model_reloads_with_the_same_perplexity(tmp_path):
    from transformers import AutoModelForCausalLM

    from prunelab.evaluate import evaluate_perplexity

    cfg = compose_config(*TINY, *FAST, "method=wanda", "pattern=2:4", "save_model=true")
    pipeline.main(cfg, output_dir=tmp_path, overrides=[])
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "completed", record.get("error")
    reloaded = AutoModelForCausalLM.from_pretrained(record["metrics"]["artifacts/model_dir"])
    assert not hasattr(reloaded, "peft_config")
    plan = make_plan(cfg)
    _, tokenizer, _ = pipeline.load_stage(plan.model)
    again = evaluate_perplexity(reloaded, tokenizer, plan.evaluation.perplexity, plan.model.device)[0].perplexity
    assert again == pytest.approx(record["metrics"]["eval/ppl_wiki"], rel=1e-6)
    for block in DecoderAdapter(reloaded).blocks:
        for layer in DecoderAdapter.linear_layers(block).values():
            assert bool(((layer.weight != 0).reshape(layer.weight.shape[0], -1, 4).sum(-1) <= 2).all())


def test_recovered_fraction_of_the_log_perplexity_gap():
    assert recover.recovered_fraction(100.0, 10.0, 10.0) == pytest.approx(1.0)
    assert recover.recovered_fraction(100.0, 100.0, 10.0) == pytest.approx(0.0)
    assert recover.recovered_fraction(100.0, math.sqrt(1000.0), 10.0) == pytest.approx(0.5)
    assert math.isnan(recover.recovered_fraction(10.0, 9.0, 10.0))


def test_recovery_table_gives_the_gap_closed_beside_the_dense_control(tmp_path):
    import pandas as pd

    from prunelab.study.aggregate import tables
    from prunelab.study.records import Sweep
    from prunelab.study.report import markdown_table

    rows = [  # dense 10; wanda 2:4 pruned 100 -> recovered sqrt(1000) (half the log gap); dense+LoRA 10 -> 9
        {"job": "0", "status": "completed", "method": "dense", "sparsity": 0.0, "pattern": None, "eval/ppl_wiki": 10.0},
        {"job": "1", "status": "completed", "method": "wanda", "sparsity": 0.5, "pattern": "2:4", "recover/steps": 20,
         "recover/ppl_wiki_before": 100.0, "eval/ppl_wiki": math.sqrt(1000.0), "recover/remask_cost_wiki": 0.1,
         "recover/ppl_wiki_merged_dense": math.sqrt(1000.0) / math.exp(0.1), "recover/train_tokens": 2048,
         "recover/train_idle_s": 90.0, "recover/achieved_sparsity": 0.5,
         "recover/zeroshot_before/mean_acc": 0.40, "zeroshot/mean_acc": 0.45, "zeroshot/mean_acc_stderr": 0.02,
         "recover/zeroshot_before/piqa/samples": 100.0},
        {"job": "2", "status": "completed", "method": "dense", "sparsity": 0.0, "pattern": None, "recover/steps": 20,
         "recover/ppl_wiki_before": 10.0, "eval/ppl_wiki": 9.0},
    ]
    sweep = Sweep(tmp_path, pd.DataFrame(rows), pd.DataFrame(), {r["job"]: {} for r in rows})
    found = tables(sweep)
    wanda = found["recovery"].loc[("wanda", "2:4", 20, "wiki")]
    assert wanda["gap closed vs dense"] == pytest.approx(0.5)
    assert wanda["gap closed vs dense+LoRA"] == pytest.approx(recover.recovered_fraction(100.0, math.sqrt(1000.0), 9.0))
    assert wanda["dense"] == 10.0 and wanda["dense+LoRA"] == 9.0
    assert wanda["re-mask cost (log)"] == pytest.approx(0.1)
    assert wanda["merged, zeros filled"] == pytest.approx(math.sqrt(1000.0) / math.exp(0.1))
    assert math.isnan(found["recovery"].loc[("dense", "dense", 20, "wiki")]["gap closed vs dense"])
    assert "gap closed vs dense+LoRA" in markdown_table(found["recovery"], "recovery")
    jobs = found["recovery_jobs"].loc[("wanda", "2:4", 20)]
    assert jobs["training CPU min (idle cores)"] == pytest.approx(1.5) and jobs["training tokens"] == 2048
    assert jobs["zero-shot before (%)"] == pytest.approx(40.0) and jobs["change (points)"] == pytest.approx(5.0)
    assert jobs["zero-shot tasks"] == "piqa (100)"
    rows = [{k: v for k, v in r.items() if not k.startswith("recover/")} for r in rows]
    assert not {"recovery", "recovery_jobs"} & set(tables(Sweep(tmp_path, pd.DataFrame(rows), pd.DataFrame(), {})))


def _scores(samples: Path) -> list:
    """lm-eval's per-example log-likelihoods of one task's samples file."""
    return [json.loads(line)["resps"] for line in samples.read_text().splitlines()]


@pytest.mark.skipif(not (assets.paths().hf_datasets_dir / "piqa").exists(), reason="benchmark data not prepared")
def test_zeroshot_is_scored_before_and_after_recovery(tmp_path):
    overrides = ["method=wanda", "eval.tasks=[piqa]", "eval.limit=4"]
    pipeline.main(compose_config(*TINY, *FAST, *overrides), output_dir=tmp_path, overrides=overrides)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert metrics["recover/zeroshot_before/piqa/samples"] == metrics["zeroshot/piqa/samples"] == 4
    assert metrics["recover/zeroshot_gain"] == metrics["zeroshot/mean_acc"] - metrics["recover/zeroshot_before/mean_acc"]
    # the before was scored on the pruned model before training: the same questions, other log-likelihoods
    before = _scores(tmp_path / "recover" / "lm_eval_before" / "samples_piqa.jsonl")
    after = _scores(tmp_path / "lm_eval" / "samples_piqa.jsonl")
    assert len(before) == len(after) == 4 and before != after


def test_interrupted_run_resumes_through_the_pipeline_to_the_same_perplexity(tmp_path, monkeypatch):
    """A run stopped after its step-4 checkpoint (of 6), re-run into the same directory, prunes
    again, resumes at step 4 and ends with the uninterrupted run's loss curve and perplexity."""
    overrides = ["method=wanda", "pattern=2:4"]
    cfg = compose_config(*TINY, *FAST, *overrides)
    pipeline.main(cfg, output_dir=tmp_path / "straight", overrides=overrides)
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())["metrics"]

    written = recover._write_checkpoint

    def write_then_stop(path, key, step, *args):
        written(path, key, step, *args)
        if step == 4:
            raise pipeline.Interrupted(15)  # SIGTERM after the checkpoint at step 4

    monkeypatch.setattr(recover, "_write_checkpoint", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pipeline.main(cfg, output_dir=tmp_path / "run", overrides=overrides)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"
    assert (tmp_path / "run" / "recover" / recover.CHECKPOINT).exists()
    monkeypatch.setattr(recover, "_write_checkpoint", written)
    pipeline.main(cfg, output_dir=tmp_path / "run", overrides=overrides)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed", record.get("error")
    resumed = record["metrics"]
    assert resumed["recover/resumed_from_step"] == 4 and straight["recover/resumed_from_step"] == 0
    assert resumed["recover/loss_curve"] == straight["recover/loss_curve"]
    assert resumed["eval/ppl_wiki"] == straight["eval/ppl_wiki"]  # bit for bit
    assert resumed["recover/achieved_sparsity"] == straight["recover/achieved_sparsity"] == 0.5
