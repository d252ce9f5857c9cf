"""Resuming a sweep: a job whose config already completed in the same sweep directory is not redone.

A run is identified by a *fingerprint*: the hash of its resolved config without the keys that
do not change its results (logger, W&B naming, ``force``). Re-running a study into the same
``hydra.sweep.dir`` (the presets fix theirs) therefore skips completed jobs, redoes failed or
interrupted ones, and runs new grid points; ``force=true`` redoes everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelab.evidence import write_json

log = logging.getLogger(__name__)

# Top-level keys that never change what a run measures.
IGNORED_KEYS = ("logger", "force", "group", "run_name", "cache_calibration", "hydra")
RECORD_GLOB = "metrics*.json"  # metrics.json, and records set aside by `set_aside_foreign`


def fingerprint(resolved_config: dict[str, Any], identity: dict[str, str] | None = None) -> str:
    """A stable hash (16 hex digits) of the result-relevant part of a resolved config and, for a
    job, of ``identity``: ``{"model": ..., "code": ...}``, the content of the model's files
    (``ModelSource.identity``) and the code (:func:`prunelab.identity.code_identity`). Equal
    inputs give equal hashes in any process; a replaced checkpoint or changed code, another."""
    relevant = {k: v for k, v in resolved_config.items() if k not in IGNORED_KEYS}
    if identity is not None:
        relevant = {**relevant, "__identity__": {k: identity[k] for k in ("model", "code")}}
    canonical = json.dumps(relevant, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when it is unreadable, not JSON or not an object."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: bad JSON, or bytes that are not UTF-8
        return None
    return record if isinstance(record, dict) else None


NOT_FINITE = ("nan", "inf", "-inf", "infinity", "-infinity")  # how a record spells a non-finite float


def _finite(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return value.strip().lower() not in NOT_FINITE
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def expected_metrics(record: dict[str, Any]) -> list[str]:
    """The headline metrics a completed run of ``record``'s config must hold: a perplexity per
    ``eval.ppl_datasets`` entry, or the mean zero-shot accuracy of a zero-shot-only run."""
    config = record.get("config")
    evaluation = config.get("eval") if isinstance(config, dict) else None
    if not isinstance(evaluation, dict):
        return []
    if evaluation.get("ppl_datasets"):
        return [f"eval/ppl_{name}" for name in evaluation["ppl_datasets"]]
    return ["zeroshot/mean_acc"] if evaluation.get("tasks") else []


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a ``completed`` record cannot be reused (``None``: it can): no metrics, a headline
    metric missing, or a metric that is not finite (NaN is stored as the string ``"nan"``)."""
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return "it has no metrics"
    missing = [key for key in expected_metrics(record) if key not in metrics]
    if missing:
        return f"it lacks {', '.join(missing)}"
    bad = [key for key, value in metrics.items() if not _finite(value)]
    if bad:
        return f"its metrics are not finite: {', '.join(f'{k}={metrics[k]}' for k in bad[:5])}"
    return None


@dataclass(frozen=True)
class PriorResult:
    """A completed record with the same fingerprint found in the sweep."""

    path: Path
    record: dict[str, Any]


def find_completed(sweep_dir: Path, config_print: str, prefer_dir: Path | None = None) -> PriorResult | None:
    """The completed record of ``config_print`` in ``sweep_dir`` (the job's own directory first)."""
    candidates = sorted(sweep_dir.rglob(RECORD_GLOB)) if sweep_dir.is_dir() else []
    if prefer_dir is not None:
        own = prefer_dir / "metrics.json"
        candidates = [own] + [c for c in candidates if c != own] if own.exists() else candidates
    for path in candidates:
        record = read_record(path)
        if record and record.get("status") == "completed" and record.get("fingerprint") == config_print:
            problem = record_problem(record)
            if problem is None:
                return PriorResult(path, record)
            log.warning("not reusing %s, a completed record of this config: %s; the job runs again", path, problem)
    return None


def set_aside_foreign(output_dir: Path, config_print: str) -> Path | None:
    """Keep a record of *another* config that sits in this job's directory (the grid changed).

    It is renamed ``metrics.<its fingerprint>.json`` so it is neither overwritten nor counted in
    the sweep's table, yet still found by :func:`find_completed` if its config comes back.
    """
    path = output_dir / "metrics.json"
    record = read_record(path) if path.exists() else None
    if record is None or record.get("fingerprint") in (None, config_print) or record.get("status") != "completed":
        return None
    kept = str(record["fingerprint"])
    if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", kept):  # a hand-edited fingerprint never names a path
        kept = hashlib.sha256(kept.encode()).hexdigest()[:16]
    target = output_dir / f"metrics.{kept}.json"
    path.replace(target)
    log.warning("%s held a completed run of another config; kept as %s", path, target.name)
    return target


def reused_record(prior: PriorResult, sweep_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """The record a job writes when its result already exists elsewhere in the sweep."""
    record = dict(prior.record)
    record["status"] = "skipped"
    record["overrides"] = overrides
    try:
        record["reused_from"] = str(prior.path.relative_to(sweep_dir))
    except ValueError:
        record["reused_from"] = str(prior.path)
    return record


def changed_inputs(sweep_dir: Path, identity: dict[str, str]) -> str | None:
    """Why a completed run of this config (``identity["config"]``, the config's own fingerprint)
    does not count: the model's files or the code changed since, or it predates identities."""
    for path in sorted(sweep_dir.rglob(RECORD_GLOB)) if sweep_dir.is_dir() else []:
        record = read_record(path)
        if not record or record.get("status") != "completed":
            continue
        old = record.get("identity")
        if isinstance(old, dict) and old.get("config") == identity["config"]:
            changed = [f"{what} {old.get(key)} -> {identity[key]}" for key, what in
                       (("model", "the model's files"), ("code", "the code")) if old.get(key) != identity[key]]
            if changed:
                return f"{path} was run with other inputs: {'; '.join(changed)}"
        elif record.get("fingerprint") == identity["config"]:
            return f"{path} was recorded before the model's files and the code were part of the fingerprint"
    return None


def resume(output_dir: Path, sweep_dir: Path, config_print: str, overrides: list[str],
           identity: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The record to report instead of running, when this config already completed in the sweep.

    In the job's own directory (the same study re-run): nothing is touched. Elsewhere in the
    sweep (the grid was reordered): a ``status: skipped`` copy naming its source is written here.
    When none counts because the model's files or the code changed (``identity``), the log says so.
    """
    prior = find_completed(sweep_dir, config_print, prefer_dir=output_dir)
    if prior is None:
        why = changed_inputs(sweep_dir, identity) if identity is not None else None
        if why:
            log.warning("running again: a completed run of this config in %s", why)
        return None
    if prior.path == output_dir / "metrics.json":
        log.info("skipped: a completed run of this config is in %s (force=true redoes it)", output_dir)
        return prior.record
    set_aside_foreign(output_dir, config_print)
    record = reused_record(prior, sweep_dir, overrides)
    write_json(output_dir / "metrics.json", record)
    log.info("skipped: a completed run of this config is in %s (force=true redoes it)", prior.path.parent)
    return record


_unrecorded: dict[Path, tuple[list[str], str]] = {}  # job directory -> (overrides, error) of jobs with no record


def note_unrecorded(job_dir: Path, overrides: list[str], error: str) -> None:
    """A job that failed and could not even write a ``failed`` record (a full disk): kept in
    memory so that the sweep's summary (same process) still names it."""
    _unrecorded[Path(job_dir).resolve()] = (list(overrides), error)


def note_recorded(job_dir: Path) -> None:
    """``job_dir`` wrote its record after all: forget a note of :func:`note_unrecorded`."""
    _unrecorded.pop(Path(job_dir).resolve(), None)


def unrecorded(sweep_dir: Path) -> dict[Path, tuple[list[str], str]]:
    """The jobs of ``sweep_dir`` noted by :func:`note_unrecorded` in this process."""
    root = Path(sweep_dir).resolve()
    return {job: note for job, note in _unrecorded.items() if job.is_relative_to(root)}


CONFLICT_GLOB = ".conflict.*.json"  # a job that did not run: its directory was held by another sweep


def note_conflict(job_dir: Path, config_print: str, overrides: list[str], error: str) -> None:
    """Record in ``job_dir`` that the job of ``config_print`` did not run because another sweep's
    process held the directory; :func:`conflicts` reports it until that job completes."""
    write_json(Path(job_dir) / f".conflict.{config_print}.json",
               {"status": "not run", "fingerprint": config_print, "overrides": overrides, "error": error})


def clear_conflict(job_dir: Path, config_print: str) -> None:
    (Path(job_dir) / f".conflict.{config_print}.json").unlink(missing_ok=True)


def conflicts(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(job directory, note) of every job of ``sweep_dir`` that a conflict kept from running and
    that has not completed since (anywhere in the sweep)."""
    found = []
    for path in sorted(Path(sweep_dir).glob(f"*/{CONFLICT_GLOB}")):
        note = read_record(path)
        if note is not None and find_completed(Path(sweep_dir), str(note.get("fingerprint"))) is None:
            found.append((path.parent, note))
    return found


def keep_previous(metrics_path: Path) -> Path | None:
    """Before a job re-runs over a *completed* record (``force=true``), keep a copy of it as
    ``metrics.previous.json``: if the new run fails, the good result is still there (and still
    found by :func:`find_completed`). The caller deletes the copy once the new run completed."""
    record = read_record(metrics_path) if metrics_path.exists() else None
    if record is None or record.get("status") != "completed":
        return None
    copy = metrics_path.with_name("metrics.previous.json")
    write_json(copy, record)
    return copy
