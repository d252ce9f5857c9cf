"""The sweep data model: every ``metrics.json`` of a sweep directory as one table of knobs and metrics.

A row holds the job's status, the generic knobs (:data:`GENERIC_KNOBS`), every scalar knob of
*its own* method config as ``method.<key>`` (a nested base as ``method.base.<key>``), any other
swept key as ``cfg:<key>`` and every scalar metric. Nothing here knows a method by name, so a new
method needs no change in this package. The rest of :mod:`prunelab.study` builds on this module.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# (column, dotted config key, key of the record's "plan"): the plan is read first (it says what
# the run did, e.g. sparsity 0 for a method that prunes nothing); a job that failed before
# planning has only its config. Lists are joined with "+".
GENERIC_KNOBS: tuple[tuple[str, str, str | None], ...] = (
    ("model", "model.name", "model"),
    ("method", "method.name", "method"),
    ("sparsity", "sparsity", "sparsity"),
    ("pattern", "pattern", "pattern"),
    ("modules", "target.modules", "target_modules"),
    ("blocks", "target.blocks", "target_blocks"),
    ("calib_data", "calib_data.dataset", None),
    ("calib_nsamples", "calib_data.nsamples", None),
    ("calib_seqlen", "calib_data.seqlen", None),
    ("seed", "seed", None),
)
GENERIC = tuple(name for name, _, _ in GENERIC_KNOBS)
METHOD_PREFIX = "method."
UNSHOWN_METHOD_KEYS = ("_target_", "name")  # the class and the display label (the `method` column)
ID_COLUMNS = ("job", "status", "error", "overrides", "fingerprint", "reused_from")
INFO_COLUMNS = ("eval_seqlen",)  # not knobs: what the evaluation sizes are stated in (tokens per window)
# Metrics that repeat a knob column (the plan's method, pattern and sparsity): not columns of their own.
# Runs no longer write them (the plan summary holds them); records written before still have them.
REPEATED_METRICS = ("prune/method", "prune/pattern", "prune/target_sparsity")
CALIBRATION_KNOBS = ("calib_data", "calib_nsamples", "calib_seqlen")  # blank where the method calibrates nothing
UNSWEPT_PREFIXES = ("logger", "hydra")  # overrides that never get a column (nor does `+experiment=`)
NOISE_PREFIX = "noise/"  # per-window losses of a perplexity and the standard error of its log (prunelab.study.noise)
MISSING = "-"  # a knob the row's method does not have, in table labels
KNOB_FIGURE = "knob_"  # figure of a numeric method knob: knob_method.alpha (figures draws it, report captions it)
_INTERPOLATION = re.compile(r"\$\{([^.:}][^:}]*)\}")  # ${ria_alpha}; not ${.base.name}, not ${oc.env:X}


@dataclass
class Sweep:
    """Everything gathered from one sweep directory."""

    directory: Path
    results: pd.DataFrame
    block_sparsity: pd.DataFrame
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # job -> metrics.json

    @property
    def completed(self) -> pd.DataFrame:
        return self.results[self.results["status"].isin(["completed", "skipped"])]

    @property
    def own_results(self) -> pd.DataFrame:
        """The sweep's own jobs: ``results`` may also hold a baseline's dense jobs joined for
        comparison (:func:`with_baseline`), which are not counted as jobs of this sweep."""
        if "job" not in self.results.columns:
            return self.results
        return self.results[self.results["job"].isin(self.records)]

    def metric_columns(self) -> list[str]:
        return [c for c in self.results.columns if "/" in c]

    def varying_knobs(self, frame: pd.DataFrame | None = None) -> list[str]:
        return varying_knobs(self.completed if frame is None else frame)


# ------------------------------------------------------------------------------------ the knobs
def knob_columns(frame: pd.DataFrame) -> list[str]:
    """The generic knobs, then the method knobs, as far as ``frame`` has them."""
    return [c for c in GENERIC if c in frame.columns] + [c for c in frame.columns if c.startswith(METHOD_PREFIX)]


def knob_label(column: str) -> str:
    """``method.lambda_`` -> ``lambda``, ``method.base.alpha`` -> ``base.alpha``: the knob as a reader says it."""
    return column.removeprefix(METHOD_PREFIX).rstrip("_")


def prunes_nothing(frame: pd.DataFrame) -> pd.Series:
    """Rows of baseline runs: sparsity 0 (the plan records 0 for a method that prunes nothing)."""
    return pd.to_numeric(frame["sparsity"], errors="coerce").eq(0)


def _varies_within_a_method(frame: pd.DataFrame, column: str) -> bool:
    """A method knob varies when one method runs with several values (not when methods differ)."""
    rows = frame.dropna(subset=[column])
    return bool(len(rows)) and bool((rows[column].astype(str).groupby(rows["method"].astype(str)).nunique() > 1).any())


def varying_knobs(frame: pd.DataFrame) -> list[str]:
    """Knob columns with more than one value, generic knobs first, then method knobs.

    A baseline in the sweep (a dense run) makes ``method`` vary, but not the knobs it ignores
    (sparsity, calibration...): those are judged on the pruned jobs alone.
    """
    if frame.empty:
        return []
    baseline = prunes_nothing(frame)
    judged = frame[~baseline] if (~baseline).any() else frame
    # A calibration knob is blank where a method calibrates nothing: that is not a second value.
    varying = [c for c in GENERIC if c in judged.columns
               and (judged[c].dropna() if c in CALIBRATION_KNOBS else judged[c]).astype(str).nunique(dropna=False) > 1]
    varying += [c for c in knob_columns(judged) if c.startswith(METHOD_PREFIX) and _varies_within_a_method(judged, c)]
    if "method" not in varying and frame["method"].astype(str).nunique() > 1:
        varying.insert(0, "method")
    return varying


# ----------------------------------------------------------------------------------- reading
def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _select(config: Any, key: str) -> Any:
    value = OmegaConf.select(config, key, default=None)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def method_knobs(method: Any, prefix: str = METHOD_PREFIX) -> dict[str, Any]:
    """Every scalar knob of a method config, as ``method.<key>``; nested methods flattened."""
    knobs: dict[str, Any] = {}
    if not isinstance(method, dict):
        return knobs
    for key, value in method.items():
        if key in UNSHOWN_METHOD_KEYS:
            continue
        if isinstance(value, dict):
            knobs.update(method_knobs(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            knobs[f"{prefix}{key}"] = value
    return knobs


def interpolated_into_method(job_dir: Path) -> set[str]:
    """Config keys that the job's method config takes by interpolation (``alpha: ${ria_alpha}``).

    Read from the unresolved config Hydra saves in ``<job>/.hydra/config.yaml``; a record written
    without Hydra has none, and its overrides of such keys keep their ``cfg:`` column.
    """
    path = job_dir / ".hydra" / "config.yaml"
    try:
        method = (yaml.safe_load(path.read_text()) or {}).get("method")
    except (OSError, yaml.YAMLError, AttributeError):
        return set()
    found: set[str] = set()
    stack = [method]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            found.update(_INTERPOLATION.findall(node))
    return found


def _override_columns(overrides: list[str], config: Any, hidden: set[str]) -> dict[str, Any]:
    """``cfg:<key>`` for every swept key that no knob column shows already."""
    known = {dotted for _, dotted, _ in GENERIC_KNOBS}
    columns = {}
    for override in overrides:
        key, _, text = override.lstrip("+~").partition("=")
        group, _, package = key.partition("@")
        where = package or group
        if (where in known or where in hidden or where in ("experiment", "method")
                or where.startswith((*UNSWEPT_PREFIXES, METHOD_PREFIX))  # method knobs have their own columns
                or any(dotted.startswith(where + ".") for dotted in known)):  # a group already shown (model=...)
            continue
        value = _select(config, where)
        columns[f"cfg:{where}"] = text if value is None or isinstance(value, dict) else _cell(value)
    return columns


def _row(job: str, record: dict[str, Any], hidden: set[str]) -> dict[str, Any]:
    config = OmegaConf.create(record.get("config") or {})
    plan = record.get("plan") or {}
    row: dict[str, Any] = {
        "job": job,
        "status": record.get("status", "unknown"),
        "error": record.get("error", ""),
        "overrides": " ".join(record.get("overrides") or []),
        "fingerprint": record.get("fingerprint", ""),
        "reused_from": record.get("reused_from", ""),
    }
    for name, dotted, plan_key in GENERIC_KNOBS:
        row[name] = _cell(plan[plan_key] if plan_key in plan else _select(config, dotted))
    if "calibration" in plan and plan["calibration"] is None:  # magnitude, dense: no calibration data
        row.update(dict.fromkeys(CALIBRATION_KNOBS))
    if plan.get("sparsity") == 0:  # nothing pruned: no pattern either
        row["pattern"] = None
    row.update(method_knobs((record.get("config") or {}).get("method")))
    row.update(_override_columns(record.get("overrides") or [], config, hidden))
    row["eval_seqlen"] = _select(config, "eval.seqlen")
    for key, value in (record.get("metrics") or {}).items():
        if isinstance(value, (int, float, str, bool)) and key not in REPEATED_METRICS:
            row[key] = value
        elif key.startswith(NOISE_PREFIX) and isinstance(value, list):  # per-window losses: one cell, as JSON
            row[key] = json.dumps(value)
    return row


def _job_name(sweep_dir: Path, path: Path) -> str:
    return str(path.parent.relative_to(sweep_dir)) or "."


def _job_order(job: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(job).parts)


def _ordered(results: pd.DataFrame) -> pd.DataFrame:
    """Ids, generic knobs, method knobs, other swept keys, metrics (rows add columns as they come)."""
    first = [*ID_COLUMNS, *knob_columns(results), *(c for c in results.columns if c.startswith("cfg:")), *INFO_COLUMNS]
    first = [c for c in first if c in results.columns]
    return results[first + [c for c in results.columns if c not in first]]


def read_records(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """job -> record for every ``metrics.json`` under ``sweep_dir``, in job order; a skipped job
    whose source is also present is dropped (the source is the row)."""
    records: dict[str, dict[str, Any]] = {}
    for path in sweep_dir.rglob("metrics.json"):
        try:
            records[_job_name(sweep_dir, path)] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            log.warning("unreadable %s: %s", path, error)
    completed_prints = {r.get("fingerprint") for r in records.values() if r.get("status") == "completed"}
    return {job: r for job, r in sorted(records.items(), key=lambda item: _job_order(item[0]))
            if not (r.get("status") == "skipped" and r.get("fingerprint") in completed_prints)}


def collect(sweep_dir: Path | str) -> Sweep:
    """Read a sweep directory into a :class:`Sweep`: one row per job, and per-block sparsity."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    records = read_records(sweep_dir)
    hidden = set().union(*(interpolated_into_method(sweep_dir / job) for job in records))
    rows = [_row(job, record, hidden) for job, record in records.items()]
    results = _ordered(pd.DataFrame(rows)) if rows else pd.DataFrame(columns=[*ID_COLUMNS, *GENERIC])
    blocks = pd.DataFrame([
        {**row, "block": index, "block_sparsity": value}
        for row, record in zip(rows, records.values()) if record.get("status") in ("completed", "skipped")
        for index, value in enumerate((record.get("metrics") or {}).get("prune/block_sparsity") or [])
    ])
    if not blocks.empty:  # per job and block: the job's knobs, then the block's sparsity
        blocks = blocks[["job", *knob_columns(blocks), "block", "block_sparsity"]]
    return Sweep(sweep_dir, results, blocks, records)


# ------------------------------------------------------------------------------------ tables
def headline_metrics(sweep: Sweep) -> list[str]:
    """Metrics worth a table: perplexities, zero-shot and task accuracies (in that order)."""
    columns = sweep.metric_columns()
    ppl = [c for c in columns if c.startswith("eval/ppl_") and not c.endswith("_tokens")]
    zeroshot = sorted(c for c in columns if c.startswith("zeroshot/") and not c.endswith("_stderr")
                      and (c.endswith(("mean_acc", "/acc")) or "/exact_match" in c))
    mean_first = sorted(zeroshot, key=lambda c: (not c.endswith("mean_acc"), c))
    tasks = sorted(c for c in columns if c.startswith("eval/") and c not in ppl and not c.endswith(("_tokens", "_s"))
                   and not c.startswith("eval/ppl_"))
    return ppl + mean_first + tasks


SPEED_PREFIXES = ("bench/", "time/", "memory/")


def speed_metrics(frame: pd.DataFrame) -> list[str]:
    """Scalar timing, memory and benchmark columns: ``bench/*`` first (what the engines measured),
    then the stage times and peak memory of the pipeline itself."""
    numeric = [c for c in frame.columns if c.startswith(SPEED_PREFIXES)
               and pd.to_numeric(frame[c], errors="coerce").notna().any()]
    per_task = [c for c in numeric if c.startswith("time/zeroshot_") and c != "time/zeroshot_s"]
    return sorted((c for c in numeric if c not in per_task), key=lambda c: (not c.startswith("bench/"), c))


def evaluation_size(frame: pd.DataFrame, metric: str) -> str:
    """How much a metric was measured on, in words, from the table alone.

    ``eval/ppl_wiki`` -> "wiki: 32 windows x 256 tokens (8,160 predicted tokens)";
    ``zeroshot/piqa/acc`` -> "piqa: 100 examples". Several sizes in one sweep are all listed.
    """
    if metric.startswith("eval/ppl_"):
        name = metric.removeprefix("eval/ppl_")
        tokens_column = f"{metric}_tokens"
        if tokens_column not in frame:
            return name
        sizes = []
        for tokens, seqlen in _size_pairs(frame, tokens_column):
            if seqlen and seqlen > 1:
                sizes.append(f"{round(tokens / (seqlen - 1)):,} windows × {int(seqlen):,} tokens ({int(tokens):,} predicted tokens)")
            else:
                sizes.append(f"{int(tokens):,} predicted tokens")
        return f"{name}: {' / '.join(sizes)}" if sizes else name
    if metric.startswith("zeroshot/"):
        parts = metric.split("/")
        if metric.endswith("mean_acc"):
            tasks = [c.split("/")[1] for c in frame.columns if c.startswith("zeroshot/") and c.endswith("/samples")]
            return "; ".join(evaluation_size(frame, f"zeroshot/{task}/acc") for task in tasks)
        samples = f"zeroshot/{parts[1]}/samples"
        counts = sorted({int(v) for v in pd.to_numeric(frame.get(samples, pd.Series(dtype=float)), errors="coerce").dropna()})
        return f"{parts[1]}: {' / '.join(f'{c:,}' for c in counts)} examples" if counts else parts[1]
    return metric


def _size_pairs(frame: pd.DataFrame, tokens_column: str) -> list[tuple[float, float | None]]:
    seqlen = frame["eval_seqlen"] if "eval_seqlen" in frame else pd.Series(None, index=frame.index)
    pairs = pd.DataFrame({"tokens": pd.to_numeric(frame[tokens_column], errors="coerce"),
                          "seqlen": pd.to_numeric(seqlen, errors="coerce")}).dropna(subset=["tokens"])
    return [(float(t), None if pd.isna(s) else float(s)) for t, s in pairs.drop_duplicates().itertuples(index=False)]


def with_setting(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``setting``: "unstructured 70%", "structured 30%", "2:4" or "dense", one axis for studies
    that mix them (a structured method's plan records its pattern as ``structured``)."""
    if frame.empty:
        return frame.assign(setting=pd.Series(dtype=str))
    baseline = prunes_nothing(frame)

    def label(row, dense: bool) -> str:
        if dense:
            return "dense"
        if row.get("pattern") == "structured" and pd.notna(row.get("sparsity")):
            return f"structured {float(row['sparsity']):.0%}"
        if isinstance(row.get("pattern"), str) and row["pattern"] != "unstructured":
            return row["pattern"]
        return f"unstructured {float(row['sparsity']):.0%}" if pd.notna(row.get("sparsity")) else "dense"

    return frame.assign(setting=[label(row, dense) for (_, row), dense in zip(frame.iterrows(), baseline)])


def table_axes(sweep: Sweep) -> tuple[list[str], str | None]:
    """Rows and column of the pivot tables: sparsity (or the pattern setting) across, other knobs down."""
    varying = sweep.varying_knobs()
    if len(varying) <= 1:
        return varying or ["method"], None
    if "sparsity" in varying and "pattern" in varying:
        varying = [k for k in varying if k not in ("sparsity", "pattern")] + ["setting"]
    across = "sparsity" if "sparsity" in varying else varying[-1]
    return [k for k in varying if k != across], across


def labels(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Knob columns as table labels: text, with :data:`MISSING` where the row's method lacks the knob."""
    return frame.assign(**{c: [MISSING if pd.isna(v) else _label_text(v) for v in frame[c]] for c in columns})


def _label_text(value: Any) -> str:
    """``4.0`` (a count read back as float next to blanks) -> ``4``; an Optuna sample
    ``0.8232202558909871`` -> ``0.8232``; everything else as it is."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def pivot(sweep: Sweep, metric: str) -> pd.DataFrame:
    """One metric by the varying knobs (mean over repeated configs, e.g. seeds)."""
    if metric not in sweep.results:
        return pd.DataFrame()
    frame = with_setting(sweep.completed.dropna(subset=[metric]))
    if frame.empty:
        return pd.DataFrame()
    rows, across = table_axes(sweep)
    frame = labels(frame, rows)
    if across is None:
        return frame.groupby(rows, sort=False)[metric].mean().to_frame(metric)
    if frame[across].isna().any():
        frame = labels(frame, [across])
    table = frame.pivot_table(index=rows, columns=across, values=metric, aggfunc="mean", sort=False)
    numbers = sorted((c for c in table.columns if _is_number(c)), key=float)
    return table[numbers + [c for c in table.columns if not _is_number(c)]]


STDERR = "_stderr"  # lm-eval's standard error of a metric: <metric>_stderr


def summary_table(sweep: Sweep, metrics: list[str] | None = None) -> pd.DataFrame:
    """Every headline metric (columns) for every distinct setting of the varying knobs (rows); a
    metric's standard error follows it as ``<metric>_stderr`` where the sweep has one."""
    metrics = headline_metrics(sweep) if metrics is None else metrics
    frame = with_setting(sweep.completed)
    if frame.empty or not metrics:
        return pd.DataFrame()
    columns = [c for m in metrics for c in (m, m + STDERR) if c in frame.columns]
    rows = sweep.varying_knobs() or ["method"]
    return labels(frame, rows).groupby(rows, sort=False)[columns].mean()


# --------------------------------------------------------------------------- a shared baseline
def is_baseline(sweep: Sweep) -> bool:
    """A sweep of dense jobs only (``multirun/<model>/dense``): the 0% point of other studies."""
    done = sweep.completed
    return not done.empty and bool(prunes_nothing(done).all())


def comparable(baseline: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The baseline's rows keeping only the metrics measured as ``frame`` measured them: a
    perplexity on the same number of predicted tokens, a task on the same number of examples."""
    rows = baseline.copy()
    for column in [c for c in rows.columns if c.startswith(("eval/", "zeroshot/"))]:
        if column.startswith("eval/ppl_"):
            size = column if column.endswith("_tokens") else f"{column}_tokens"
        elif column.startswith("zeroshot/mean_acc"):
            size = "zeroshot/mean_acc_tasks"
        elif column.startswith("zeroshot/"):
            size = f"zeroshot/{column.split('/')[1]}/samples"
        else:
            size = column
        theirs = set(pd.to_numeric(frame.get(size, pd.Series(dtype=float)), errors="coerce").dropna())
        ours = set(pd.to_numeric(rows[size], errors="coerce").dropna()) if size in rows else set()
        if column not in frame or not theirs or ours != theirs:
            rows[column] = float("nan")
            if column.startswith("eval/ppl_") and not column.endswith("_tokens"):  # its noise goes with it
                noise = [c for c in rows.columns if c.startswith(f"{NOISE_PREFIX}{column.removeprefix('eval/')}_")]
                rows[noise] = float("nan")
    return _mean_over_their_tasks(rows, frame)


def _mean_over_their_tasks(rows: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The baseline's zero-shot mean over ``frame``'s tasks (as :func:`prunelab.zeroshot.mean_accuracy`
    computes it), where the baseline answered more tasks but each of these on the same examples."""
    tasks = [c for c in frame.columns if c.startswith("zeroshot/") and c.endswith("/acc") and frame[c].notna().any()]
    if "zeroshot/mean_acc" not in frame or not tasks or any(c not in rows for c in tasks):
        return rows
    accs = rows[tasks].apply(pd.to_numeric, errors="coerce")
    found = accs.notna().all(axis=1) & rows.get("zeroshot/mean_acc", pd.Series(float("nan"), index=rows.index)).isna()
    if not found.any():
        return rows
    rows = rows.copy()
    rows.loc[found, "zeroshot/mean_acc"] = accs[found].mean(axis=1)
    rows.loc[found, "zeroshot/mean_acc_tasks"] = float(len(tasks))
    errors = [f"{c}{STDERR}" for c in tasks]
    if all(c in rows for c in errors):
        se = rows.loc[found, errors].apply(pd.to_numeric, errors="coerce")
        rows.loc[found, f"zeroshot/mean_acc{STDERR}"] = (se ** 2).sum(axis=1, min_count=len(errors)) ** 0.5 / len(tasks)
    return rows


def with_baseline(sweep: Sweep, baseline: Sweep | None) -> Sweep:
    """The sweep plus the baseline's dense jobs (comparable metrics only), when it has none itself."""
    if baseline is None or sweep.completed.empty or prunes_nothing(sweep.completed).any():
        return sweep
    dense = comparable(baseline.completed, sweep.completed)
    dense = dense.assign(job=[f"{baseline.directory.name}/{job}" for job in dense["job"]])
    dense = dense[[c for c in dense.columns if c in sweep.results.columns or not c.startswith(("eval/", "zeroshot/"))]]
    return Sweep(sweep.directory, pd.concat([sweep.results, dense], ignore_index=True), sweep.block_sparsity,
                 sweep.records)  # the records (configs) stay the sweep's own


# ------------------------------------------------------------------------------------ speed
SPEED_COLUMN = re.compile(r"^bench/((prefill|decode)_(speedup|ideal|efficiency)_\w+|roofline_prefill_bound_\d+|"
                          r"roofline_decode_bound|param_bytes_ratio)$")
MEASURED_SPEEDUP = re.compile(r"^bench/prefill_speedup_(\d+)$")  # the Pareto figure's x: measured where a
PREDICTED_SPEEDUP = re.compile(r"^bench/roofline_prefill_bound_(\d+)$")  # job measured, else the roofline


def speed_table(sweep: Sweep) -> pd.DataFrame:
    """Accuracy beside speed, one row per setting and method: the first perplexity, the zero-shot
    mean, and every measured speedup, ideal ratio, efficiency and roofline bound the sweep recorded."""
    frame = with_setting(sweep.completed)
    speed = [c for c in frame.columns if SPEED_COLUMN.match(c)]
    if frame.empty or not speed:
        return pd.DataFrame()
    accuracy = [m for m in headline_metrics(sweep) if m.startswith("eval/ppl_")][:1]
    accuracy += [m for m in headline_metrics(sweep) if m.endswith("mean_acc")][:1]
    kinds = {"speedup": 0, "ideal": 1, "efficiency": 2}

    def position(column: str) -> tuple:  # prefill before decode, each length: speedup, ideal, efficiency
        phase, _, rest = column.removeprefix("bench/").partition("_")
        kind, _, size = rest.partition("_")
        return ("roofline" in column or phase not in ("prefill", "decode"), phase != "prefill",
                int("".join(filter(str.isdigit, size)) or 0), kinds.get(kind, 3), column)

    order = sorted(speed, key=position)
    return frame.groupby(["setting", "method"], sort=False)[accuracy + order].mean()


def _by_tokens(frame: pd.DataFrame, pattern: re.Pattern) -> dict[int, str]:
    return {int(m.group(1)): c for c in frame.columns if (m := pattern.match(c)) and frame[c].notna().any()}


def pareto_points(sweep: Sweep) -> pd.DataFrame:
    """``setting``, ``method``, ``speedup`` of the longest prefill measured (measured, else the
    roofline prediction; 1 for an unpruned run), ``speed_source`` and the accuracy metrics, per
    completed job; ``attrs["tokens"]`` says which prefill length."""
    frame = with_setting(sweep.completed)
    measured, predicted = _by_tokens(frame, MEASURED_SPEEDUP), _by_tokens(frame, PREDICTED_SPEEDUP)
    if frame.empty or not (measured or predicted):
        return pd.DataFrame()
    tokens = max(measured) if measured else max(predicted)
    nothing = pd.Series(float("nan"), index=frame.index)
    measured_x = frame[measured[tokens]] if tokens in measured else nothing
    predicted_x = frame[predicted.get(tokens, predicted[max(predicted)])] if predicted else nothing
    baseline = prunes_nothing(frame)
    speedup = measured_x.where(measured_x.notna(), predicted_x).where(~baseline, 1.0)
    source = ["dense" if b else "measured" if m == m else "roofline prediction" if p == p else ""
              for m, p, b in zip(measured_x, predicted_x, baseline)]
    points = frame.assign(speedup=speedup, speed_source=source).dropna(subset=["speedup"])
    points.attrs["tokens"] = tokens
    return points
