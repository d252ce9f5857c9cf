"""What a report says about a sweep besides its numbers: title, setup, each method's rule (with
our deliberate deviations from the reference code) and the configs as a diff of what varies."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pandas as pd

from prunelab.study.findings import axis_of
from prunelab.study.records import Sweep, evaluation_size, headline_metrics, knob_label

# What a sweep studies, by the knob it is about (``findings.axis_of``); "sparsity" when it sweeps
# sparsity across methods. The order is the assignment's.
STUDY_TITLES = {
    "sparsity": "Sparsity curves",
    "pattern": "Unstructured vs N:M patterns",
    "method.alpha": "RIA's exponent α",
    "method.lambda_": "OWL's λ: layerwise sparsity vs uniform",
    "modules": "Attention vs MLP: which layers tolerate pruning",
    "calib_data": "Calibration data",
    "method": "Methods compared",
}


def study_kind(sweep: Sweep) -> str:
    """The key of :data:`STUDY_TITLES` this sweep is about."""
    axis, context = axis_of(sweep.completed)
    if axis == "method" and "sparsity" in context:
        return "sparsity"
    return axis or "method"


def title(sweep: Sweep) -> str:
    done = sweep.completed
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
EXACT_K = ("Deliberate deviation from the reference code: the reference keeps weights above a "
           "`sorted[int(n·s)]`-style threshold, pruning `int(n·s)+1` weights plus every weight tied at the "
           "threshold (on quantized checkpoints up to 61.8% instead of 50%); we prune exactly `⌊n·s⌋`, ties "
           "broken by index, so the achieved sparsity is the one asked for.")
METHOD_RULES = {
    "Dense": "**dense** — no weight is removed: the reference point of every table.",
    "Magnitude": ("**magnitude** — score `|W_ij|`; the lowest-scoring weights of each whole matrix are removed "
                  "(`method.comparison=row`: per output row). " + EXACT_K),
    "Wanda": ("**wanda** (Sun et al. 2023) — score `|W_ij| · ‖X_j‖₂`, the weight times the L2 norm of its input "
              "channel over all calibration tokens; each output row loses exactly `⌊in·s⌋` weights (per-row "
              "comparison, as the reference). Statistics follow the sequential protocol: block `l` is "
              "calibrated on the outputs of the already pruned blocks `< l`."),
    "RIA": ("**ria** (Zhang et al. 2024) — relative importance `|W_ij|/Σ_i'|W_i'j| + |W_ij|/Σ_j'|W_ij'|` "
            "times `‖X_j‖₂^α` (α = `ria_alpha`, default 0.5; α = 0 is relative importance alone), compared "
            "across the whole matrix as the reference's default; `method.permute_channels=true` adds the "
            "N:M channel permutation. " + EXACT_K),
    "SparseGPT": ("**sparsegpt** (Frantar & Alistarh 2023) — optimal brain surgeon: `H = 2/n·XᵀX` (damped by "
                  "`percdamp`·mean diag), columns in blocks of 128, mask by `w²/[H⁻¹]_jj²` over all rows of a "
                  "block, the error of each pruned weight propagated to the remaining columns. " + EXACT_K
                  + " With exact-k our weights match the reference to 1.6e-7."),
    "OWL": ("**owl_X** (Yin et al. 2024) — a per-block sparsity before pruning with base method X: on the dense "
            "model, `D_l` = the fraction of block `l`'s Wanda scores above `M` × their mean (M = `owl_m`, 5); "
            "`D` is mapped linearly to `[0, 2λ]`, shifted so the mean sparsity is `S`, and more outliers mean "
            "lower sparsity. Deliberate deviation, as the assignment asks: every block is bounded to "
            "`[S − λ, S + λ]` (values the linear map puts outside are clipped and the rest shifted back, mean "
            "kept exactly `S`); the reference formula, which can leave that band when outlier ratios are "
            "skewed, is one flag away: `method.bounded=false`."),
}


def _method_class(record: dict[str, Any]) -> str:
    target = ((record.get("config") or {}).get("method") or {}).get("_target_", "")
    return target.rsplit(".", 1)[-1]


def method_paragraphs(records: list[dict[str, Any]]) -> list[str]:
    """One paragraph per method class the records used (an OWL base's too), in a fixed order."""
    used: dict[str, dict] = {}
    for record in records:
        method = (record.get("config") or {}).get("method") or {}
        used.setdefault(_method_class(record), method)
        if isinstance(method.get("base"), dict):
            used.setdefault(method["base"].get("_target_", "").rsplit(".", 1)[-1], method["base"])
    paragraphs = []
    for name, rule in METHOD_RULES.items():
        if name in used:
            extra = ""
            if name == "OWL":
                bounded = {bool(((r.get("config") or {}).get("method") or {}).get("bounded", True))
                           for r in records if _method_class(r) == "OWL"}
                extra = f" This study ran with `bounded={'/'.join(str(b).lower() for b in sorted(bounded))}`."
            paragraphs.append(rule + extra)
    paragraphs += [f"**{name}** — `{used[name].get('_target_')}` (outside the package; see its docstring)."
                   for name in used if name and name not in METHOD_RULES]
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


# Keys left out of the diff: logging and resuming switches (they change nothing measured), the
# root knobs that only feed a method knob by interpolation (shown as that knob: method.alpha...),
# and class paths (the method's name says the same).
UNDIFFED = ("logger.", "run_name", "group", "force", "cache_calibration", "ria_alpha", "owl_lambda", "owl_m")


def config_diff(sweep: Sweep) -> tuple[pd.DataFrame, int]:
    """Job × every config key whose value is not the same in all jobs (blank: the job's config has
    no such key, e.g. another method's knob); and how many keys all jobs share."""
    flat = {job: _flatten(record.get("config") or {}) for job, record in sweep.records.items()}
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
    """``method.base.comparison`` -> ``base.comparison`` in a table header."""
    return knob_label(key) if key.startswith("method.") else key
