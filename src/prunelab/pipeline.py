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
import platform
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prunelab import baselines, caches, data, evidence, exports, identity, models, naming, offload, outcome, recover, resume
from prunelab.assets import AssetMissingError
from prunelab.checks import ConfigError
from prunelab.config import build
from prunelab.evaluate import evaluate_perplexity
from prunelab.models import ModelLoadError, SaveError
from prunelab.outcome import OutcomeError
from prunelab.plan import CalibrationPlan, EvalPlan, ModelPlan, RunPlan, make_plan
from prunelab.prune import PruneReport, prune_model
from prunelab.zeroshot import evaluate_zeroshot

log = logging.getLogger(__name__)


def load_stage(plan: ModelPlan, output_dir: Path | None = None):
    """The model on the CPU, or with ``model.device_map`` placed by accelerate (offloaded weights in
    a fresh folder under ``model.offload_folder``, default ``output_dir``, removed when the run ends)."""
    start = time.perf_counter()
    if plan.dispatch is None:
        model, tokenizer = plan.source.load(plan.dtype)
        return model, tokenizer, {"time/load_s": time.perf_counter() - start}
    model, tokenizer = plan.source.load_dispatched(plan.dtype, plan.dispatch, offload.offload_folder(plan.dispatch, output_dir))
    placed = {f"model/weights_{device}_mb": size / 2**20 for device, size in offload.placement(model).items()}
    return model, tokenizer, {"time/load_s": time.perf_counter() - start, **placed}


def calibration_stage(plan: CalibrationPlan, tokenizer) -> torch.Tensor:
    """Calibration token windows; cached across runs when ``plan.cache`` (they depend on no pruning)."""
    return caches.calibration_tokens(plan.spec, tokenizer) if plan.cache else data.calibration_tokens(plan.spec, tokenizer)


def prune_stage(plan: RunPlan, model, tokenizer, method=None) -> PruneReport:
    """``method``: what prunes instead of ``plan.method`` (SparseGPT that also quantizes, :mod:`prunelab.quant.stage`)."""
    calibration = plan.calibration
    calibration_ids = calibration_stage(calibration, tokenizer) if calibration is not None else None
    return prune_model(model, method or plan.method, plan.sparsity, plan.pattern, calibration_ids, plan.model.device,
                       plan.target, batch_size=calibration.batch_size if calibration else 8,
                       label=plan.method_label, cache=calibration.cache if calibration else False)


def eval_stage(plan: EvalPlan, model, tokenizer, device: torch.device, output_dir: Path | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    for result in evaluate_perplexity(model, tokenizer, plan.perplexity, device):
        metrics[f"eval/ppl_{result.dataset}"] = result.perplexity
        metrics[f"eval/ppl_{result.dataset}_tokens"] = result.tokens
        if len(result.window_nll) >= 2:  # the noise of this perplexity: per-window mean NLL and SE of log(ppl)
            metrics[f"noise/ppl_{result.dataset}_se_log"] = result.se_log
            metrics[f"noise/ppl_{result.dataset}_window_nll"] = result.window_nll
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
                                    output_dir / "recover", logger=plan.logger, zeroshot=plan.evaluation.zeroshot)
    metrics["time/recover_s"] = time.perf_counter() - start
    return metrics


def quant_stage(plan: RunPlan, model, tokenizer, output_dir: Path, joint=None, dense_params: int = 0):
    """Quantize the decoder's linear layers (``quant=rtn|gptq``; GPTQ calibrates on ``calib_data``
    block by block); per-layer errors to ``<run dir>/quant_errors.csv``. Returns the report (its
    codes, scales and zeros feed the export) and its metrics; ``dense_params``: the parameters of the model as
    loaded (the dense fp16 baseline of ``quant/compression_vs_fp16``; a structured method shrank it)."""
    from prunelab.quant.stage import ERRORS_CSV, quantize_model

    calibration = plan.calibration
    needs = plan.quant.needs_hessian and calibration is not None
    calibration_ids = calibration_stage(calibration, tokenizer) if needs else None
    report = quantize_model(model, plan.quant, calibration_ids, plan.model.device,
                            batch_size=calibration.batch_size if calibration else 8, joint=joint)
    report.write_csv(output_dir / ERRORS_CSV)
    metrics = report.metrics(model, dense_params)
    log.info("quantized %d layers (%s%s): %.4g MB vs %.4g MB dense fp16; mean relative weight error %.4f; %.1f s",
             len(report.layers), plan.quant.describe(), ", jointly with pruning" if report.joint else "",
             metrics["quant/bytes"] / 1e6, metrics["quant/bytes_dense_fp16"] / 1e6, metrics["quant/rel_weight_error_mean"],
             report.quant_s + report.calibration_s)
    return report, metrics


def export_stage(plan: RunPlan, model, tokenizer, quant_report, output_dir: Path) -> dict[str, Any]:
    """``export=<name>``: the deployable checkpoint in ``<run dir>/export/<name>`` (:mod:`prunelab.exports`)."""
    start = time.perf_counter()
    metrics = exports.writer(plan.export)(model, tokenizer, quant_report, output_dir / "export" / plan.export, plan)
    metrics["time/export_s"] = time.perf_counter() - start
    return metrics


def save_stage(model, tokenizer, run_dir: Path, note: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pruned model as safetensors in ``<run_dir>/model``: ``from_pretrained`` gives back the
    same zeros, or the same shrunk model (``model=local model.path=<dir>`` where a structured
    method left layers of different shapes); ``note`` is recorded in its config. Staged, read
    back and renamed into place (:func:`models.save_into_run`): whole or absent, never outside."""
    return models.save_into_run(model, tokenizer, run_dir, note)


def gguf_export_stage(plan: RunPlan, model, tokenizer, output_dir: Path, metrics: dict[str, Any]) -> None:
    """GGUF files in ``<run dir>/export/gguf`` and llama.cpp's perplexity on the run's own evaluation
    windows (the same token ids), beside the in-pipeline perplexities already in ``metrics``."""
    from prunelab import gguf_export
    from prunelab.data import evaluation_stream
    from prunelab.evaluate import windows_of

    spec = plan.evaluation.perplexity
    windows = {name: windows_of(evaluation_stream(name, tokenizer), spec.seqlen, spec.max_windows)
               for name in spec.datasets} if plan.export_settings.perplexity else {}
    ours = {name: metrics[f"eval/ppl_{name}"] for name in windows}
    gguf_export.export(plan.export_settings, model, tokenizer, windows, ours, output_dir / "export" / "gguf", metrics)


def saved_note(plan: RunPlan) -> dict[str, Any]:
    """What a saved model records about the run that measured it, so that ``model=local
    model.path=<dir>`` evaluates it the same way (``model.dtype``/``model.seqlen=auto``)."""
    perplexity = plan.evaluation.perplexity
    return {"method": plan.method_label, "sparsity": plan.sparsity,
            "dtype": str(plan.model.dtype).removeprefix("torch."),
            "eval": {"ppl_datasets": list(perplexity.datasets), "seqlen": perplexity.seqlen,
                     "max_windows": perplexity.max_windows, "batch_size": perplexity.batch_size}}


def headline(metrics: dict[str, Any]) -> float:
    """The number sweepers optimise, lower is better: the first perplexity measured, or in a
    zero-shot-only run the mean zero-shot error ``1 - zeroshot/mean_acc``."""
    for key, value in metrics.items():
        if key.startswith("eval/ppl_") and not key.endswith("_tokens"):
            return float(value)
    if "zeroshot/mean_acc" in metrics:
        return 1.0 - float(metrics["zeroshot/mean_acc"])
    return math.nan


def run_experiment(plan: RunPlan, output_dir: Path, metrics: dict[str, Any], memory: evidence.PeakMemory | None = None) -> None:
    """All stages of one run; fills ``metrics`` as it goes so a failure keeps what was measured
    (``memory``: the run's memory sampler, marked after each stage the memory plan estimates)."""
    mark = memory.mark if memory is not None else (lambda stage: None)
    model, tokenizer, load_metrics = load_stage(plan.model, output_dir)
    mark("load")
    try:
        _run_stages(plan, model, tokenizer, output_dir, metrics, load_metrics, mark)
    finally:
        offload.release(model)  # a dispatched model's offload store goes with the run


def _run_stages(plan: RunPlan, model, tokenizer, output_dir: Path, metrics: dict[str, Any], load_metrics: dict,
                mark) -> None:
    metrics.update(load_metrics)
    outcome.check_finite_weights(model, "after loading")
    dense_params = sum(p.numel() for p in model.parameters())  # the fp16 baseline of the quantize stage's bytes
    joint = None
    if plan.quant is not None:  # method=sparsegpt quant=gptq: pruned and quantized in one pass
        from prunelab.quant.stage import JointSparseGPTQ, joint_method, mask_sparsity

        joint = joint_method(plan.method, plan.quant, recovering=plan.recovery is not None)
        joint = joint if isinstance(joint, JointSparseGPTQ) else None
    report = prune_stage(plan, model, tokenizer, method=joint)
    if joint is not None:
        mask_sparsity(report, joint, models.DecoderAdapter(model))
    metrics.update(report.metrics())
    log.info("pruned with %s (%s): achieved sparsity %.4f (target %.4f); calibration %.1f s, pruning %.1f s",
             report.method, report.pattern, report.achieved_sparsity, report.target_sparsity,
             report.calibration_s, report.prune_s)
    outcome.check_finite_weights(model, "after pruning")
    mark("calibrate_prune")
    outcome.check_sparsity(report)
    if plan.recovery is not None:  # recover=none: nothing runs
        metrics.update(recover_stage(plan, model, tokenizer, report, output_dir))
        outcome.check_finite_weights(model, "after recovery")
    quant_report = None
    if plan.quant is not None:  # quant=none: nothing runs
        quant_report, quant_metrics = quant_stage(plan, model, tokenizer, output_dir, joint, dense_params)
        metrics.update(quant_metrics)
        outcome.check_finite_weights(model, "after quantization")
        outcome.check_quantized(quant_report.errors)
    metrics.update(eval_stage(plan.evaluation, model, tokenizer, plan.model.device, output_dir))
    mark("evaluate")
    if plan.recovery is not None:
        metrics.update(recover.summarize(metrics))
    outcome.check_finite_metrics(metrics)
    if plan.save_model:
        metrics.update(save_stage(model, tokenizer, output_dir, saved_note(plan)))
    if plan.export == "gguf":  # after evaluation: llama.cpp's perplexity is checked against ours
        gguf_export_stage(plan, model, tokenizer, output_dir, metrics)
        outcome.check_finite_metrics(metrics)
    elif plan.export != "none":
        metrics.update(export_stage(plan, model, tokenizer, quant_report, output_dir))
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


CLAIM = ".job.claim"  # written by the holder of the job's lock: the fingerprint and overrides it runs
CLAIM_WAIT_S = 5.0  # how long a process that found the lock held waits for the holder's claim to appear


@contextmanager
def job_claim(output_dir: Path, config_print: str = "", overrides: list[str] | None = None) -> Iterator[dict | None]:
    """Hold the job directory's lock for the whole job; yields ``None`` when this process holds
    it, else what the holder wrote in ``.job.claim`` (``{}`` when that cannot be read).

    Two invocations of the same sweep into the same directory then share its jobs: no job runs
    twice, and one that another process finished is found completed and skipped. The claim names
    the holder's fingerprint, so a process of a *different* sweep in the same directory is told
    apart from another invocation of the same one. The lock is the operating system's (``flock``
    through ``filelock``): it is released when the process dies.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output_dir / ".job.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield _holder(output_dir)
        return
    claim = output_dir / CLAIM
    try:
        evidence.write_json(claim, {"fingerprint": config_print, "overrides": list(overrides or []),
                                    "host": socket.gethostname(), "pid": os.getpid()})
        yield None
    finally:
        claim.unlink(missing_ok=True)
        lock.release()


def _holder(output_dir: Path) -> dict:
    """The claim of the process holding ``output_dir``'s lock; it writes it right after taking the
    lock, so a missing claim, or one left by a dead process of this host, is waited for a moment."""
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        claim = resume.read_record(output_dir / CLAIM)
        pid = claim.get("pid") if claim is not None else None
        dead = claim is not None and claim.get("host") == socket.gethostname() and not (
            isinstance(pid, int) and pid > 0 and psutil.pid_exists(pid))
        if claim is not None and not dead:
            return claim
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.1)


def main(cfg: DictConfig, output_dir: Path, overrides: list[str], sweep_dir: Path | None = None) -> float:
    """Run one experiment and leave its evidence in ``output_dir``; return the headline metric.

    ``sweep_dir`` is the multirun's directory when this is one job of a sweep (``None`` for a
    single run): a config that already completed in it with the same model files and code is
    not redone, another process running the same job is left to it (one running another config
    there is reported), and a failure, even to write the record, is logged without raising so
    the sweep goes on.
    """
    if sweep_dir is None:
        return _run(cfg, output_dir, overrides, multirun=False)
    try:
        return _sweep_job(cfg, output_dir, overrides, sweep_dir)
    except Exception as error:  # noqa: BLE001 - its bookkeeping failed (a full disk, a broken job directory): the sweep goes on
        _failed_outside_the_run(output_dir, overrides, error)
        return math.nan


def _sweep_job(cfg: DictConfig, output_dir: Path, overrides: list[str], sweep_dir: Path) -> float:
    inputs = job_identity(cfg)
    config_print = resume.fingerprint(_resolved(cfg), inputs)
    with job_claim(output_dir, config_print, overrides) as holder:
        if holder is not None:
            _left_to_another_process(output_dir, overrides, config_print, holder)
            return math.nan
        resume.clear_conflict(output_dir, config_print)
        force = bool(cfg.get("force", False))
        prior = None if force else resume.resume(output_dir, sweep_dir, config_print, overrides, inputs)
        if prior is not None:
            return headline(prior["metrics"])
        dense_key = baselines.baseline_key(_resolved(cfg), inputs) if baselines.is_dense(cfg) else None
        if dense_key is not None and not force:  # the model's dense baseline, measured once for every sweep
            mine = {"config": _resolved(cfg), "overrides": overrides, "fingerprint": config_print, "identity": inputs}
            stored = baselines.reuse(output_dir, sweep_dir, dense_key, mine)
            if stored is not None:
                return headline(stored["metrics"])
        resume.set_aside_foreign(output_dir, config_print)
        value = _run(cfg, output_dir, overrides, multirun=True, sweep_dir=sweep_dir, inputs=inputs)
        if dense_key is not None:
            baselines.publish(output_dir, sweep_dir, dense_key)
        return value


def _left_to_another_process(output_dir: Path, overrides: list[str], config_print: str, holder: dict) -> None:
    """Another process holds this job's directory: fine if it runs this job (another invocation of
    the same sweep); if it runs another configuration (another sweep in the same directory), this
    job does not run, which the log and the sweep's summary report (exit status 1)."""
    theirs = holder.get("fingerprint")
    if theirs == config_print:
        log.warning("job %s is being run by another process; left to it", output_dir)
        return
    if theirs is None:
        log.warning("job %s is being run by another process that does not say which configuration; left to it",
                    output_dir)
        return
    message = (f"another process (pid {holder.get('pid')} on {holder.get('host')}) runs a different configuration "
               f"in this job's directory ({' '.join(holder.get('overrides') or []) or 'no overrides'}; fingerprint "
               f"{theirs}, this job's {config_print}): two different sweeps share one directory, so this job did not run")
    log.error("job %s: %s", output_dir, message)
    resume.note_conflict(output_dir, config_print, overrides, message)


def job_identity(cfg: DictConfig) -> dict[str, str]:
    """What a job's result depends on besides its config (part of its fingerprint): the config's
    own fingerprint, the content of the model's files and the code (:mod:`prunelab.identity`).
    A model that cannot be had (a missing ``model.path``) is ``unavailable``: the run says why."""
    try:
        model = build(cfg.model.source, "model.source").identity()
    except Exception as error:  # noqa: BLE001 - the plan reports a bad source in the user's words
        model = f"unavailable ({type(error).__name__})"
    return {"config": resume.fingerprint(_resolved(cfg)), "model": model, "code": identity.code_identity()}


def _failed_outside_the_run(output_dir: Path, overrides: list[str], error: Exception) -> None:
    """A sweep job that failed where :func:`_run` cannot record it (its record could not be
    written): a ``failed`` record if one can be written (never over a completed one), else the
    sweep's summary still names the job (:func:`prunelab.resume.note_unrecorded`)."""
    message = f"{type(error).__name__}: {error}"
    log.error("job %s failed: %s; the sweep goes on", output_dir, message)
    path = output_dir / "metrics.json"
    lock = FileLock(output_dir / ".job.lock")
    try:
        lock.acquire(timeout=0)  # never write into a job directory another process holds
    except (Timeout, OSError):
        resume.note_unrecorded(output_dir, overrides, message)
        return
    try:
        current = resume.read_record(path)
        if current is None or current.get("status") != "completed":
            evidence.write_json(path, {"status": "failed", "overrides": overrides, "error": message,
                                       "traceback": traceback.format_exc()})
    except OSError as again:
        log.error("could not write %s either (%s)", path, again)
        resume.note_unrecorded(output_dir, overrides, message)
    finally:
        lock.release()


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config for the record; unresolved where a key is still ``???`` (the plan then
    says which key to set)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


def _run(cfg: DictConfig, output_dir: Path, overrides: list[str], multirun: bool, sweep_dir: Path | None = None,
         inputs: dict[str, str] | None = None) -> float:
    resolved = _resolved(cfg)
    inputs = inputs or job_identity(cfg)
    metrics: dict[str, Any] = {}
    record: dict[str, Any] = {
        "status": "running",
        "overrides": overrides,
        "fingerprint": resume.fingerprint(resolved, inputs),
        "identity": inputs,
        "config": resolved,
        "versions": evidence.versions(),
        "git_commit": evidence.git_commit(),
        "metrics": metrics,
    }
    metrics_path = output_dir / "metrics.json"
    try:
        previous = resume.keep_previous(metrics_path)  # a forced re-run never loses the completed record
        evidence.write_json(metrics_path, record)
    except OSError as error:
        raise RecordError(f"cannot write the run's record {metrics_path}: {error}") from error
    logger = None
    start = time.perf_counter()
    load_at_start = _load_average()
    try:
        with signals_as_interrupts():
            plan = make_plan(cfg)
            record["plan"] = plan.summary()
            evidence.write_json(metrics_path, record)  # a job that dies later still says what it planned
            log.info("plan: %s", ", ".join(f"{k}={v}" for k, v in record["plan"].items() if v not in (None, [])))
            if plan.memory is not None and plan.memory.needs:
                log.info("%s", plan.memory.report())
                metrics.update(plan.memory.metrics())  # the estimate, next to the measured memory/peak_rss_mb
            recovered = f"+{plan.recovery.name}" if plan.recovery else ""
            name, group = naming.tracker_names(
                cfg.get("run_name"), cfg.get("group"),
                default=f"{plan.method_label}-{plan.pattern.name}-s{plan.sparsity:g}{recovered}",
                overrides=overrides, sweep_dir=sweep_dir if multirun else None)
            plan.logger.start(output_dir, resolved, name=name, group=group)
            logger = plan.logger
            with evidence.PeakMemory() as memory:
                run_experiment(plan, output_dir, metrics, memory)
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
        metrics.update(machine_load(load_at_start))
        try:
            _write_record(metrics_path, record)
            if previous is not None and record["status"] == "completed":
                previous.unlink(missing_ok=True)
        finally:  # the logger is closed even when the record could not be written
            if logger is not None:
                logger.log_metrics({**metrics, "status": record["status"]})
                logger.finish(failed=record["status"] != "completed")
    return headline(metrics)


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return math.nan


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), so that timings say on what machine they were
    measured: the same code ran 1.5x slower on another 2-core machine (docs/headline_time.md)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_load(at_start: float) -> dict[str, Any]:
    """What the timings were measured under: the 1-minute load average when the job started and
    ended, the CPUs the machine has (a load above it means jobs queued for the cores) and their model."""
    return {"machine/load_1m_start": at_start, "machine/load_1m_end": _load_average(), "machine/cpus": os.cpu_count() or 0,
            "machine/cpu_model": cpu_model()}


class RecordError(OSError):
    """A run's ``metrics.json`` could not be written (a full disk, a directory in its place)."""


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """The final record; if even that fails (a full disk), the last one written stays and the log says why."""
    try:
        evidence.write_json(path, record)
        resume.note_recorded(path.parent)
    except OSError as error:
        scalars = {k: v for k, v in record["metrics"].items() if isinstance(v, (int, float))}
        log.error("could not write %s (%s): the job's status %s and metrics %s are not on disk; "
                  "the previous record stays", path, error, record["status"], scalars)
        record["status"] = "failed"
        raise RecordError(f"cannot write the run's record {path}: {error}") from error


@contextmanager
def user_errors() -> Iterator[None]:
    """For the command line: a mistake in the config or a failed outcome check prints one line
    (key, value, what is allowed) instead of a traceback; ``HYDRA_FULL_ERROR=1`` shows the trace."""
    try:
        yield
    except (ConfigError, OutcomeError, AssetMissingError, ModelLoadError, SaveError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {error}\n(recorded in the run's metrics.json; HYDRA_FULL_ERROR=1 shows the traceback)",
              file=sys.stderr)
        raise SystemExit(2) from None
    except RecordError as error:  # the run's evidence could not be written: there is no record to point to
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
