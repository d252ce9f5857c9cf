"""The dense baseline of a model and an evaluation is measured once and reused by every sweep.

Every sweep gets a ``method=dense`` job (:mod:`prunelab.study.sweeper`), and every sweep of a model
with the same evaluation would measure the same dense model again. A dense job therefore looks,
after its own sweep directory (:mod:`prunelab.resume`), in the model's shared store
``multirun/<model>/baselines/`` (:func:`store_dir`),
where every dense job that completed in a sweep leaves a copy of its record named by its
*baseline key*: the fingerprint of its resolved config less what a dense model ignores (sparsity,
pattern, the methods' study knobs, calibration data, target) plus the content of the model's
files and the code (:func:`prunelab.resume.fingerprint`). A later sweep's dense job with the same
key writes a ``status: skipped`` record naming that copy (``reused_from``) with its own config,
overrides and fingerprint, and the stored metrics; it loads no weights. ``force=true`` measures it
again (and replaces the copy).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from prunelab import resume
from prunelab.config import STUDY_KNOBS
from prunelab.evidence import write_json

log = logging.getLogger(__name__)
STORE = "baselines"  # beside the sweeps of a model: multirun/<model>/baselines/<key>.json
DENSE_IGNORES = ("sparsity", "pattern", *STUDY_KNOBS, "calib_data", "target")  # what no dense run reads
DENSE_TARGET = "prunelab.methods.dense.Dense"


def store_dir(sweep_dir: Path) -> Path:
    """Where the dense baselines of the model of ``sweep_dir`` are kept: ``multirun/<model>/baselines``
    for a sweep anywhere below ``multirun/<model>/`` (a preset may nest its directory:
    ``module_sensitivity/wanda``), else beside the sweep directory."""
    path = Path(sweep_dir).resolve()
    parts = path.parts
    if "multirun" in parts[:-2]:
        top = len(parts) - 1 - parts[::-1].index("multirun")
        if top + 2 < len(parts):
            return Path(*parts[:top + 2]) / STORE
    return path.parent / STORE


def is_dense(cfg: DictConfig | dict) -> bool:
    method = cfg.get("method") if hasattr(cfg, "get") else None
    return hasattr(method, "get") and method.get("_target_") == DENSE_TARGET


def baseline_key(resolved: dict[str, Any], identity: dict[str, str] | None) -> str:
    """The fingerprint of what a dense run's results depend on (``resolved``: its resolved config)."""
    return resume.fingerprint({k: v for k, v in resolved.items() if k not in DENSE_IGNORES}, identity)


def stored(sweep_dir: Path, key: str) -> Path:
    return store_dir(sweep_dir) / f"{key}.json"


def find(sweep_dir: Path, key: str) -> resume.PriorResult | None:
    """The stored completed dense record of ``key`` that can be reused, if any."""
    path = stored(sweep_dir, key)
    record = resume.read_record(path) if path.exists() else None
    if record is None or record.get("status") != "completed" or record.get("baseline_key") != key:
        return None
    problem = resume.record_problem(record)
    if problem is not None:
        log.warning("not reusing the dense baseline %s: %s; the job runs again", path, problem)
        return None
    return resume.PriorResult(path, record)


def reuse(output_dir: Path, sweep_dir: Path, key: str, mine: dict[str, Any]) -> dict[str, Any] | None:
    """Write this dense job's record from the stored baseline of ``key`` (``mine``: the job's own
    ``config``, ``overrides``, ``fingerprint`` and ``identity``); ``None`` when there is none."""
    prior = find(sweep_dir, key)
    if prior is None:
        return None
    resume.set_aside_foreign(output_dir, mine["fingerprint"])
    record = {**prior.record, **mine, "status": "skipped", "reused_from": str(prior.path)}
    record.pop("baseline_key", None)
    write_json(output_dir / "metrics.json", record)
    log.info("skipped: the dense baseline of this model and evaluation was measured by %s (kept in %s; "
             "force=true measures it again)", prior.record.get("source", "another sweep"), prior.path)
    return record


def publish(output_dir: Path, sweep_dir: Path, key: str) -> Path | None:
    """After a dense job completed in ``output_dir``: its record into the store, for other sweeps.
    A store that cannot be written costs the reuse, not the job (one warning)."""
    record = resume.read_record(output_dir / "metrics.json")
    if record is None or record.get("status") != "completed" or resume.record_problem(record) is not None:
        return None
    path = stored(sweep_dir, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**record, "baseline_key": key, "source": str((output_dir / "metrics.json").resolve())})
    except OSError as error:
        log.warning("could not keep the dense baseline in %s (%s); other sweeps will measure it again", path, error)
        return None
    return path
