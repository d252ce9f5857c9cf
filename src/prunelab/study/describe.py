"""What a report says about a sweep besides its numbers: title, setup, each method's rule (with
our deliberate deviations from the reference code) and the configs as a diff of what varies."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from typing import Any

import pandas as pd

from prunelab.config import STUDY_KNOBS
from prunelab.methods.base import EXACT_K
from prunelab.study.compression import is_compression
from prunelab.study.findings import axis_of
from prunelab.study.records import Sweep, evaluation_size, headline_metrics, knob_label, prunes_nothing

# What a sweep studies, by the knob it is about (``findings.axis_of``); "sparsity" when it sweeps
# sparsity across methods. The order is the assignment's.
STUDY_TITLES = {
    "sparsity": "Sparsity curves",
    "pattern": "Unstructured vs N:M patterns",
    "method.alpha": "RIA's exponent α",
    "method.lambda_": "OWL's λ: layerwise sparsity vs uniform",
    "modules": "Attention vs MLP: which layers tolerate pruning",
    "calib_data": "Calibration data",
    "recovery": "Recovery fine-tuning",
    "compression": "Compression: pruning and quantization",
    "method": "Methods compared",
}


def study_kind(sweep: Sweep) -> str:
    """The key of :data:`STUDY_TITLES` this sweep is about."""
    done = sweep.completed
    if any(c.startswith("recover/") and done[c].notna().any() for c in done.columns):
        return "recovery"
    if is_compression(done):
        return "compression"
    axis, context = axis_of(done)
    if axis in ("method", None) and "sparsity" in context:  # one method at several sparsities is a curve too
        return "sparsity"
    return axis or "method"


def title(sweep: Sweep) -> str:
    done = sweep.completed
    if done.empty or bool(prunes_nothing(done).all()) and not bool(prunes_nothing(sweep.own_results).all()):
        counts = sweep.own_results["status"].value_counts().to_dict() if not sweep.own_results.empty else {}
        return (f"Sweep {sweep.directory.name}: no completed job that pruned anything "
                f"({', '.join(f'{v} {k}' for k, v in counts.items()) or 'no jobs'})")
    models = ", ".join(dict.fromkeys(done["model"].dropna().astype(str))) or "no completed job"
    methods = ", ".join(dict.fromkeys(done["method"].dropna().astype(str)))
    return f"{STUDY_TITLES[study_kind(sweep)]}: {methods} on {models}"


# ------------------------------------------------------------------------------------- setup
def _calibration(done: pd.DataFrame) -> str:
    rows = done.dropna(subset=["calib_data"]) if "calib_data" in done else done.iloc[0:0]
    if rows.empty:
        return "none (no method of this sweep calibrates)"
    found = rows[["calib_data", "calib_nsamples", "calib_seqlen", "seed"]].drop_duplicates()
    return "; ".join(f"{r.calib_data}, {int(r.calib_nsamples)} windows × {int(r.calib_seqlen)} tokens, seed {r.seed}"
                     for r in found.itertuples())


def setup_lines(sweep: Sweep) -> list[str]:
    frame, done = sweep.own_results, sweep.completed
    counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    first = next(iter(sweep.records.values()), {})
    config = first.get("config") or {}
    plan = first.get("plan") or {}
    metrics = headline_metrics(sweep)
    ppl = [m for m in metrics if m.startswith("eval/ppl_")]
    tasks = [m for m in metrics if m.startswith("zeroshot/") and m.endswith("/acc")]
    lines = [
        f"- **Model**: {', '.join(dict.fromkeys(done['model'].dropna().astype(str))) or '-'} "
        f"({plan.get('dtype', '?')} on {plan.get('device', '?')})",
        f"- **Methods**: {', '.join(dict.fromkeys(done['method'].dropna().astype(str)))}",
        f"- **Calibration**: {_calibration(done)}",
        f"- **Perplexity**: {'; '.join(evaluation_size(done, m) for m in ppl) or 'not measured (zero-shot only)'}",
    ]
    if tasks:
        shots = (config.get("eval") or {}).get("num_fewshot", 0)
        lines.append(f"- **Zero-shot** (lm-eval, {shots}-shot, ± = lm-eval's standard error): "
                     + "; ".join(evaluation_size(done, m) for m in tasks))
    lines.append(f"- **Jobs**: {len(frame)} ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    if "time/total_s" in frame and frame["time/total_s"].notna().any():
        lines.append(f"- **Compute**: {frame['time/total_s'].sum() / 60:.1f} min summed over jobs "
                     f"(median {frame['time/total_s'].median():.0f} s per job)")
    if first:
        versions = first.get("versions") or {}
        lines.append(f"- **Code**: `{first.get('git_commit', 'unknown')}`; "
                     + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append(f"- **Directory**: `{sweep.directory}`")
    return lines


# ------------------------------------------------------------------------------------ methods
def _method_class(target: str) -> type | None:
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def method_paragraphs(records: list[dict[str, Any]]) -> list[str]:
    """One paragraph per method class the records used (an OWL base's too), in the order of first use:
    the class's own description (``PruningMethod.describe``, its ``rule``)."""
    used: dict[str, list[dict]] = {}  # _target_ -> the method configs that named it
    for record in records:
        method = (record.get("config") or {}).get("method") or {}
        for node in (method, method.get("base")):
            if isinstance(node, dict) and node.get("_target_"):
                used.setdefault(node["_target_"], []).append(node)
    paragraphs = []
    first_said: str | None = None  # the method whose paragraph states the shared exact-count deviation
    for target, configs in used.items():
        cls = _method_class(target)
        text = cls.describe(configs) if cls is not None and hasattr(cls, "describe") else ""
        name = configs[0].get("name") or target.rsplit(".", 1)[-1]
        if EXACT_K in text:  # the same deviation for every whole-matrix method: said once
            if first_said is None:
                first_said = name
            else:
                text = text.replace(EXACT_K, f"The same exact-count deviation as **{first_said}** (above).")
        paragraphs.append(text or f"**{name}** — `{target}` (it describes itself nowhere: see its docstring).")
    paragraphs.append("N:M patterns (all methods): in every row, each group of M consecutive input columns keeps "
                      "its N highest scores; N:M fixes the sparsity at 1 − N/M.")
    return paragraphs


# --------------------------------------------------------------------------------- config diff
def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): json.dumps(node) if isinstance(node, list) else node}


def _planned(record: dict[str, Any]) -> dict[str, Any]:
    """A job's flat config, with the sparsity its plan ran at (a dense job's config may say 0.5;
    its plan says 0), and no calibration keys where its plan calibrates nothing (magnitude, dense)."""
    flat = _flatten(record.get("config") or {})
    plan = record.get("plan") or {}
    if "sparsity" in plan and "sparsity" in flat:
        flat["sparsity"] = plan["sparsity"]
    if "calibration" in plan and plan["calibration"] is None:
        flat = {k: v for k, v in flat.items() if not k.startswith("calib_data.")}
    return flat


# Keys left out of the diff: logging and resuming switches (they change nothing measured), the
# root knobs that only feed a method knob by interpolation (shown as that knob: method.alpha...),
# and class paths (the method's name says the same).
UNDIFFED = ("logger.", "run_name", "group", "force", "cache_calibration", *STUDY_KNOBS)


def config_diff(sweep: Sweep) -> tuple[pd.DataFrame, int]:
    """Job × every config key whose value is not the same in all jobs (blank: the job's config has
    no such key, e.g. another method's knob); and how many keys all jobs share."""
    flat = {job: _planned(record) for job, record in sweep.records.items()}
    if not flat:
        return pd.DataFrame(), 0
    keys = Counter(k for config in flat.values() for k in config)
    varying, shared = [], 0
    for key in keys:
        if key.startswith(UNDIFFED) or key.endswith("_target_"):
            continue
        values = {json.dumps(config.get(key), default=str) for config in flat.values()}
        if len(values) > 1:
            varying.append(key)
        else:
            shared += 1
    table = pd.DataFrame([{"job": job, "status": sweep.records[job].get("status"),
                           **{key: config.get(key, "") for key in varying}} for job, config in flat.items()])
    return table, shared


def short_key(key: str) -> str:
    """``method.base.comparison`` -> ``base.comparison`` in a table header; ``method.name`` -> ``method``."""
    if key == "method.name":
        return "method"
    return knob_label(key) if key.startswith("method.") else key
