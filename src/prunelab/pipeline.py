"""One experiment: plan -> load -> calibrate+prune -> evaluate -> (save) -> (benchmark) -> record.

:func:`prunelab.plan.make_plan` checks the whole config once, before any weights load; each stage
below takes only the part of the plan it needs. :func:`main` wraps them with the evidence every
run leaves in its output directory (``metrics.json``: status, plan, resolved config, overrides,
versions, metrics), the logger, and the rule that a failed job in a multirun is recorded and the
sweep goes on, while a single failed run still exits non-zero.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from prunelab import caches, data, evidence, naming, resume
from prunelab.evaluate import evaluate_perplexity
from prunelab.plan import CalibrationPlan, EvalPlan, ModelPlan, RunPlan, make_plan
from prunelab.prune import PruneReport, prune_model
from prunelab.zeroshot import evaluate_zeroshot

log = logging.getLogger(__name__)


def load_stage(plan: ModelPlan):
    start = time.perf_counter()
    model, tokenizer = plan.source.load(plan.dtype)
    return model, tokenizer, {"time/load_s": time.perf_counter() - start}


def calibration_stage(plan: CalibrationPlan, tokenizer) -> torch.Tensor:
    """Calibration token windows; cached across runs when ``plan.cache`` (they depend on no pruning)."""
    return caches.calibration_tokens(plan.spec, tokenizer) if plan.cache else data.calibration_tokens(plan.spec, tokenizer)


def prune_stage(plan: RunPlan, model, tokenizer) -> PruneReport:
    calibration = plan.calibration
    calibration_ids = calibration_stage(calibration, tokenizer) if calibration is not None else None
    return prune_model(model, plan.method, plan.sparsity, plan.pattern, calibration_ids, plan.model.device,
                       plan.target, batch_size=calibration.batch_size if calibration else 8,
                       label=plan.method_label, cache=calibration.cache if calibration else False)


def eval_stage(plan: EvalPlan, model, tokenizer, device: torch.device, output_dir: Path | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    for result in evaluate_perplexity(model, tokenizer, plan.perplexity, device):
        metrics[f"eval/ppl_{result.dataset}"] = result.perplexity
        metrics[f"eval/ppl_{result.dataset}_tokens"] = result.tokens
        log.info("perplexity %s: %.3f (%d windows, %d tokens, %.1f s)",
                 result.dataset, result.perplexity, result.windows, result.tokens, result.seconds)
    metrics["time/eval_s"] = time.perf_counter() - start
    if plan.zeroshot.tasks:  # zero-shot accuracy through lm-eval, on the model in memory
        metrics.update(evaluate_zeroshot(model, tokenizer, plan.zeroshot, device,
                                         output_dir=output_dir / "lm_eval" if output_dir else None))
    return metrics


def save_stage(model, tokenizer, directory: Path) -> dict[str, Any]:
    """The pruned model as safetensors; ``from_pretrained`` gives back the same zeros."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return {"artifacts/model_dir": str(directory)}


def headline(metrics: dict[str, Any]) -> float:
    """The number sweepers optimise, lower is better: the first perplexity measured, or in a
    zero-shot-only run the mean zero-shot error ``1 - zeroshot/mean_acc``."""
    for key, value in metrics.items():
        if key.startswith("eval/ppl_") and not key.endswith("_tokens"):
            return float(value)
    if "zeroshot/mean_acc" in metrics:
        return 1.0 - float(metrics["zeroshot/mean_acc"])
    return math.nan


def run_experiment(plan: RunPlan, output_dir: Path, metrics: dict[str, Any]) -> None:
    """All stages of one run; fills ``metrics`` as it goes so a failure keeps what was measured."""
    model, tokenizer, load_metrics = load_stage(plan.model)
    metrics.update(load_metrics)
    report = prune_stage(plan, model, tokenizer)
    metrics.update(report.metrics())
    log.info("pruned with %s (%s): achieved sparsity %.4f (target %.4f); calibration %.1f s, pruning %.1f s",
             report.method, report.pattern, report.achieved_sparsity, report.target_sparsity,
             report.calibration_s, report.prune_s)
    metrics.update(eval_stage(plan.evaluation, model, tokenizer, plan.model.device, output_dir))
    if plan.save_model:
        metrics.update(save_stage(model, tokenizer, output_dir / "model"))
    if plan.engine is not None:  # after save: the benchmark casts the model and swaps its weights
        from prunelab.bench.stage import bench_stage

        bench_stage(plan.engine, model, tokenizer, plan.model.device, output_dir, into=metrics)


def main(cfg: DictConfig, output_dir: Path, overrides: list[str], sweep_dir: Path | None = None) -> float:
    """Run one experiment and leave its evidence in ``output_dir``; return the headline metric.

    ``sweep_dir`` is the multirun's directory when this is one job of a sweep (``None`` for a
    single run): a config that already completed in it is not redone, and a failure is recorded
    without raising so the sweep goes on.
    """
    multirun = sweep_dir is not None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config_print = resume.fingerprint(resolved)
    if multirun:
        prior = None if cfg.get("force", False) else resume.resume(output_dir, sweep_dir, config_print, overrides)
        if prior is not None:
            return headline(prior["metrics"])
        resume.set_aside_foreign(output_dir, config_print)
    metrics: dict[str, Any] = {}
    record: dict[str, Any] = {
        "status": "running",
        "overrides": overrides,
        "fingerprint": config_print,
        "config": resolved,
        "versions": evidence.versions(),
        "git_commit": evidence.git_commit(),
        "metrics": metrics,
    }
    metrics_path = output_dir / "metrics.json"
    evidence.write_json(metrics_path, record)
    logger = None
    failed = False
    start = time.perf_counter()
    try:
        plan = make_plan(cfg)
        record["plan"] = plan.summary()
        log.info("plan: %s", ", ".join(f"{k}={v}" for k, v in record["plan"].items() if v not in (None, [])))
        name = cfg.get("run_name") or f"{plan.method_label}-{plan.pattern.name}-s{plan.sparsity:g}"
        group = cfg.get("group")
        if multirun:  # W&B: a job is named by what its sweep varies and grouped by its sweep
            name = naming.run_label(overrides, default=name, swept=naming.swept_keys(sweep_dir))
            group = group or naming.sweep_group(sweep_dir)
        plan.logger.start(output_dir, resolved, name=name, group=group)
        logger = plan.logger
        with evidence.PeakMemory() as memory:
            run_experiment(plan, output_dir, metrics)
        metrics.update(memory.metrics())
        record["status"] = "completed"
    except Exception as error:  # recorded, then re-raised for a single run
        failed = True
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = traceback.format_exc()
        log.error("run failed: %s", record["error"])
        if not multirun:
            raise
    finally:
        metrics["time/total_s"] = time.perf_counter() - start
        evidence.write_json(metrics_path, record)
        if logger is not None:
            logger.log_metrics({**metrics, "status": record["status"]})
            logger.finish(failed=failed)
    return headline(metrics)
