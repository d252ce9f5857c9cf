"""One experiment: validate -> load -> calibrate+prune -> evaluate -> (save) -> record.

Each stage is a function of the part of the config it needs. :func:`main` wraps them with the
evidence every run leaves in its output directory (``metrics.json``, the resolved config, the
overrides), the logger, and the rule that a failed job in a multirun is recorded and the sweep
goes on, while a single failed run still exits non-zero.
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

from prunelab import data, evidence, methods, models
from prunelab.evaluate import evaluate_perplexity
from prunelab.loggers import build_logger
from prunelab.prune import PruneReport, PruneTarget, prune_model
from prunelab.settings import RunSpec, validate
from prunelab.study import calib_cache, naming, skip
from prunelab.zeroshot import zeroshot_stage

log = logging.getLogger(__name__)


def load_stage(model_cfg: DictConfig):
    start = time.perf_counter()
    model, tokenizer = models.load_model(model_cfg)
    return model, tokenizer, {"time/load_s": time.perf_counter() - start}


def calibration_stage(calib_cfg: DictConfig, tokenizer, cache: bool = False) -> torch.Tensor:
    """Calibration token windows; ``cache`` reuses them across runs (they depend on no pruning)."""
    spec = data.CalibrationSpec(calib_cfg.dataset, int(calib_cfg.nsamples), int(calib_cfg.seqlen), int(calib_cfg.seed))
    return calib_cache.calibration_tokens(spec, tokenizer) if cache else data.calibration_tokens(spec, tokenizer)


def prune_stage(cfg: DictConfig, spec: RunSpec, model, tokenizer, device: torch.device) -> PruneReport:
    method = methods.build_method(cfg.method)
    cache = bool(cfg.get("cache_calibration", False))
    calibration_ids = calibration_stage(cfg.calib_data, tokenizer, cache) if spec.needs_calibration else None
    blocks = cfg.target.blocks
    target = PruneTarget(tuple(cfg.target.modules), tuple(blocks) if blocks is not None else None)
    return prune_model(model, method, spec.sparsity, spec.pattern, calibration_ids, device, target,
                       batch_size=int(cfg.calib_data.batch_size))


def eval_stage(eval_cfg: DictConfig, model, tokenizer, device: torch.device) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    for result in evaluate_perplexity(model, tokenizer, list(eval_cfg.ppl_datasets), int(eval_cfg.seqlen),
                                      eval_cfg.max_windows, int(eval_cfg.batch_size), device):
        metrics[f"eval/ppl_{result.dataset}"] = result.perplexity
        metrics[f"eval/ppl_{result.dataset}_tokens"] = result.tokens
        log.info("perplexity %s: %.3f (%d windows, %d tokens, %.1f s)",
                 result.dataset, result.perplexity, result.windows, result.tokens, result.seconds)
    metrics["time/eval_s"] = time.perf_counter() - start
    if eval_cfg.get("tasks"):  # zero-shot accuracy through lm-eval, on the model in memory
        metrics.update(zeroshot_stage(eval_cfg, model, tokenizer, device))
    return metrics


def save_stage(model, tokenizer, directory: Path) -> dict[str, Any]:
    """The pruned model as safetensors; ``from_pretrained`` gives back the same zeros."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return {"artifacts/model_dir": str(directory)}


def headline(metrics: dict[str, Any]) -> float:
    """The number sweepers optimise: the first perplexity measured (lower is better)."""
    for key, value in metrics.items():
        if key.startswith("eval/ppl_") and not key.endswith("_tokens"):
            return float(value)
    return math.nan


def run_experiment(cfg: DictConfig, output_dir: Path, metrics: dict[str, Any]) -> None:
    """All stages of one run; fills ``metrics`` as it goes so a failure keeps what was measured."""
    spec = validate(cfg)
    device = models.resolve_device(cfg.model.device)
    model, tokenizer, load_metrics = load_stage(cfg.model)
    metrics.update(load_metrics)
    report = prune_stage(cfg, spec, model, tokenizer, device)
    metrics.update(report.metrics())
    log.info("pruned with %s (%s): achieved sparsity %.4f (target %.4f); calibration %.1f s, pruning %.1f s",
             report.method, report.pattern, report.achieved_sparsity, report.target_sparsity,
             report.calibration_s, report.prune_s)
    metrics.update(eval_stage(cfg.eval, model, tokenizer, device))
    if cfg.save_model:
        metrics.update(save_stage(model, tokenizer, output_dir / "model"))
    if cfg.get("engine") is not None:  # after save: the benchmark casts the model and swaps its weights
        from prunelab.bench import bench_stage

        bench_stage(cfg.engine, model, tokenizer, device, output_dir, into=metrics)


def main(cfg: DictConfig, output_dir: Path, overrides: list[str], multirun: bool = False) -> float:
    """Run one experiment and leave its evidence in ``output_dir``; return the headline metric."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config_print = skip.fingerprint(resolved)
    if multirun:  # resume a sweep: a config that already completed in it is not redone
        prior = None if cfg.get("force", False) else skip.resume(output_dir, config_print, overrides)
        if prior is not None:
            return headline(prior["metrics"])
        skip.set_aside_foreign(output_dir, config_print)
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
        name, group = cfg.run_name, cfg.get("group")
        if multirun:  # W&B: a job is named by its overrides and grouped by its sweep directory
            name = naming.run_label(overrides, default=name)
            group = group or naming.sweep_group(skip.current_sweep_dir(output_dir))
        logger = build_logger(cfg.get("logger"), output_dir, resolved, name=name, group=group)
        with evidence.PeakMemory() as memory:
            run_experiment(cfg, output_dir, metrics)
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
