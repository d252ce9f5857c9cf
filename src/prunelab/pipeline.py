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
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prunelab import caches, data, evidence, models, naming, outcome, recover, resume
from prunelab.assets import AssetMissingError
from prunelab.checks import ConfigError
from prunelab.evaluate import evaluate_perplexity
from prunelab.models import ModelLoadError
from prunelab.outcome import OutcomeError
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


def recover_stage(plan: RunPlan, model, tokenizer, report: PruneReport, output_dir: Path) -> dict[str, Any]:
    """Fine-tune the pruned model (``recover=lora``) and merge it back with its sparsity kept;
    checkpoints and the adapter go to ``<run dir>/recover``."""
    start = time.perf_counter()
    metrics = plan.recovery.recover(model, tokenizer, report, plan.evaluation.perplexity, plan.model.device,
                                    output_dir / "recover", logger=plan.logger)
    metrics["time/recover_s"] = time.perf_counter() - start
    return metrics


def save_stage(model, tokenizer, directory: Path, note: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pruned model as safetensors: ``from_pretrained`` gives back the same zeros, or the same
    shrunk model (``model=local model.path=<dir>`` where a structured method left layers of
    different shapes); ``note`` (method, sparsity) is recorded in its config."""
    return models.save_pretrained(model, tokenizer, directory, note)


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
    outcome.check_finite_weights(model, "after loading")
    report = prune_stage(plan, model, tokenizer)
    metrics.update(report.metrics())
    log.info("pruned with %s (%s): achieved sparsity %.4f (target %.4f); calibration %.1f s, pruning %.1f s",
             report.method, report.pattern, report.achieved_sparsity, report.target_sparsity,
             report.calibration_s, report.prune_s)
    outcome.check_finite_weights(model, "after pruning")
    outcome.check_sparsity(report)
    if plan.recovery is not None:  # recover=none: nothing runs
        metrics.update(recover_stage(plan, model, tokenizer, report, output_dir))
        outcome.check_finite_weights(model, "after recovery")
    metrics.update(eval_stage(plan.evaluation, model, tokenizer, plan.model.device, output_dir))
    if plan.recovery is not None:
        metrics.update(recover.summarize(metrics))
    outcome.check_finite_metrics(metrics)
    if plan.save_model:
        metrics.update(save_stage(model, tokenizer, output_dir / "model",
                                  {"method": plan.method_label, "sparsity": plan.sparsity}))
    if plan.engine is not None:  # after save: the benchmark casts the model and swaps its weights
        from prunelab.bench.stage import bench_stage

        bench_stage(plan.engine, model, tokenizer, plan.model.device, output_dir, into=metrics,
                    dense=lambda: plan.model.source.load(plan.model.dtype)[0])  # reloaded, not copied: no second
        # model in memory while pruning; RandomSource is seeded, so it gives back the same weights


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGTERM is turned into this; Ctrl-C is SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal = signal.Signals(signum).name


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Inside the block SIGTERM raises :class:`Interrupted`, as Ctrl-C raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def job_claim(output_dir: Path) -> Iterator[bool]:
    """Hold the job directory's lock for the whole job (``False``: another process holds it).

    Two invocations of the same sweep into the same directory then share its jobs: no job runs
    twice, and one that another process finished is found completed and skipped. The lock is the
    operating system's (``flock`` through ``filelock``): it is released when the process dies.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output_dir / ".job.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def main(cfg: DictConfig, output_dir: Path, overrides: list[str], sweep_dir: Path | None = None) -> float:
    """Run one experiment and leave its evidence in ``output_dir``; return the headline metric.

    ``sweep_dir`` is the multirun's directory when this is one job of a sweep (``None`` for a
    single run): a config that already completed in it is not redone, another process running
    the same job is left to it, and a failure is recorded without raising so the sweep goes on.
    """
    if sweep_dir is None:
        return _run(cfg, output_dir, overrides, multirun=False)
    with job_claim(output_dir) as claimed:
        if not claimed:
            log.warning("job %s is being run by another process; left to it", output_dir)
            return math.nan
        config_print = resume.fingerprint(_resolved(cfg))
        prior = None if cfg.get("force", False) else resume.resume(output_dir, sweep_dir, config_print, overrides)
        if prior is not None:
            return headline(prior["metrics"])
        resume.set_aside_foreign(output_dir, config_print)
        return _run(cfg, output_dir, overrides, multirun=True, sweep_dir=sweep_dir)


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config for the record; unresolved where a key is still ``???`` (the plan then
    says which key to set)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


def _run(cfg: DictConfig, output_dir: Path, overrides: list[str], multirun: bool, sweep_dir: Path | None = None) -> float:
    resolved = _resolved(cfg)
    metrics: dict[str, Any] = {}
    record: dict[str, Any] = {
        "status": "running",
        "overrides": overrides,
        "fingerprint": resume.fingerprint(resolved),
        "config": resolved,
        "versions": evidence.versions(),
        "git_commit": evidence.git_commit(),
        "metrics": metrics,
    }
    metrics_path = output_dir / "metrics.json"
    previous = resume.keep_previous(metrics_path)  # a forced re-run never loses the completed record
    evidence.write_json(metrics_path, record)
    logger = None
    start = time.perf_counter()
    try:
        with signals_as_interrupts():
            plan = make_plan(cfg)
            record["plan"] = plan.summary()
            evidence.write_json(metrics_path, record)  # a job that dies later still says what it planned
            log.info("plan: %s", ", ".join(f"{k}={v}" for k, v in record["plan"].items() if v not in (None, [])))
            name, group = naming.tracker_names(
                cfg.get("run_name"), cfg.get("group"), default=f"{plan.method_label}-{plan.pattern.name}-s{plan.sparsity:g}{'+' + plan.recovery.name if plan.recovery else ''}",
                overrides=overrides, sweep_dir=sweep_dir if multirun else None)
            plan.logger.start(output_dir, resolved, name=name, group=group)
            logger = plan.logger
            with evidence.PeakMemory() as memory:
                run_experiment(plan, output_dir, metrics)
            metrics.update(memory.metrics())
            record["status"] = "completed"
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: recorded, then the sweep stops
        record["status"] = "interrupted"
        record["error"] = f"interrupted by {getattr(stop, 'signal', 'SIGINT')}"
        raise
    except Exception as error:  # recorded, then re-raised for a single run
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = traceback.format_exc()
        if multirun:
            log.error("job failed: %s", record["error"])
        else:
            raise
    finally:
        metrics["time/total_s"] = time.perf_counter() - start
        _write_record(metrics_path, record)
        if previous is not None and record["status"] == "completed":
            previous.unlink(missing_ok=True)
        if logger is not None:
            logger.log_metrics({**metrics, "status": record["status"]})
            logger.finish(failed=record["status"] != "completed")
    return headline(metrics)


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """The final record; if even that fails (a full disk), the last one written stays and the log says why."""
    try:
        evidence.write_json(path, record)
    except OSError as error:
        scalars = {k: v for k, v in record["metrics"].items() if isinstance(v, (int, float))}
        log.error("could not write %s (%s): the job's status %s and metrics %s are not on disk; "
                  "the previous record stays", path, error, record["status"], scalars)
        record["status"] = "failed"
        raise


@contextmanager
def user_errors() -> Iterator[None]:
    """For the command line: a mistake in the config or a failed outcome check prints one line
    (key, value, what is allowed) instead of a traceback; ``HYDRA_FULL_ERROR=1`` shows the trace."""
    try:
        yield
    except (ConfigError, OutcomeError, AssetMissingError, ModelLoadError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {error}\n(recorded in the run's metrics.json; HYDRA_FULL_ERROR=1 shows the traceback)",
              file=sys.stderr)
        raise SystemExit(2) from None
