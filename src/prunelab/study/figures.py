"""Seaborn figures of a sweep; each is drawn only when the sweep varies what it shows.

=============================  ===============================================================
``ppl_vs_sparsity.png``        perplexity (log) vs sparsity per method, one panel per eval set
``zeroshot_vs_sparsity.png``   zero-shot mean accuracy vs sparsity per method
``patterns.png``               perplexity per method, unstructured vs N:M
``knob_method.<key>.png``      perplexity vs any numeric method knob the sweep varies (alpha, lambda_)
``owl_block_sparsity.png``     OWL's sparsity of every block (jobs whose method has ``lambda_``)
``module_sensitivity.png``     perplexity when pruning attention only, MLP only, or all
``calibration.png``            perplexity of each domain by calibration set (+ task accuracy)
``pareto.png``                 accuracy vs speedup (measured, else roofline-predicted) per setting
=============================  ===============================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from prunelab.study.records import (  # noqa: E402
    KNOB_FIGURE,
    METHOD_PREFIX,
    Sweep,
    headline_metrics,
    knob_label,
    pareto_points,
    prunes_nothing,
    with_setting,
)

log = logging.getLogger(__name__)
sns.set_theme(style="whitegrid", context="notebook")


def _ppl_metrics(sweep: Sweep) -> list[str]:
    return [m for m in headline_metrics(sweep) if m.startswith("eval/ppl_")]


def _label(metric: str) -> str:
    if metric.startswith("eval/ppl_"):
        return f"perplexity ({metric.removeprefix('eval/ppl_')})"
    return metric.replace("zeroshot/", "zero-shot ").replace("_", " ")


def _long(frame: pd.DataFrame, metrics: list[str], keep: list[str]) -> pd.DataFrame:
    """One row per (job, metric): seaborn's long form for faceting by metric."""
    keep = list(dict.fromkeys(k for k in keep if k in frame.columns))
    long = frame[keep + metrics].melt(id_vars=keep, value_vars=metrics, var_name="metric", value_name="value")
    long["metric"] = long["metric"].map(_label)
    return long.dropna(subset=["value"])


def _title(sweep: Sweep, text: str) -> str:
    models = sweep.completed["model"].dropna().astype(str).unique()
    return f"{text} — {', '.join(models)}" if len(models) else text


def _hue(frame: pd.DataFrame, candidates: list[str]) -> str | None:
    for name in candidates:
        if name in frame.columns and frame[name].astype(str).nunique() > 1:
            return name
    return None


def _save(grid_or_fig, path: Path) -> Path:
    figure = grid_or_fig.figure if hasattr(grid_or_fig, "figure") else grid_or_fig
    figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(figure)
    return path


def _lines(sweep: Sweep, frame: pd.DataFrame, x: str, metrics: list[str], hue_candidates: list[str],
           title: str, path: Path, log_y: bool, style_candidates: tuple[str, ...] = (),
           baseline: dict[str, float] | None = None, x_label: str | None = None) -> Path | None:
    if frame.empty or not metrics:
        return None
    hue = _hue(frame, hue_candidates)
    style = _hue(frame, [s for s in style_candidates if s != hue])
    long = _long(frame.assign(**{k: frame[k].astype(str) for k in (hue, style) if k}), metrics, [x, hue, style])
    if long.empty:
        return None
    grid = sns.relplot(data=long, x=x, y="value", hue=hue, style=style, col="metric", kind="line", marker="o",
                       dashes=bool(style), facet_kws={"sharey": False}, height=3.6, aspect=1.2,
                       col_wrap=min(3, long["metric"].nunique()))
    for axis, metric in zip(grid.axes.flat, long["metric"].unique()):
        if log_y:
            axis.set_yscale("log")
        axis.set_title(metric)
        axis.set_ylabel(metric.split(" (")[0])
        axis.set_xlabel(x_label or x)
        if baseline and metric in baseline:  # the dense model, for scale
            axis.axhline(baseline[metric], color="black", linestyle="--", linewidth=1)
            axis.annotate(f"dense {baseline[metric]:.3g}", (0.02, baseline[metric]), xycoords=("axes fraction", "data"),
                          textcoords="offset points", xytext=(0, 4), fontsize=8)
    grid.figure.suptitle(_title(sweep, title), y=1.03)
    return _save(grid, path)


def _bars(sweep: Sweep, frame: pd.DataFrame, x: str, hue: str | None, metrics: list[str], title: str,
          path: Path, log_y: bool = True, order: list[str] | None = None,
          hue_order: list[str] | None = None) -> Path | None:
    if frame.empty or not metrics:
        return None
    long = _long(frame.assign(**{k: frame[k].astype(str) for k in (x, hue) if k}), metrics, [x, hue])
    if long.empty:
        return None
    grid = sns.catplot(data=long, x=x, y="value", hue=hue, col="metric", kind="bar", order=order, hue_order=hue_order,
                       sharey=False, height=3.6, aspect=1.1, col_wrap=min(3, long["metric"].nunique()))
    for axis, metric in zip(grid.axes.flat, long["metric"].unique()):
        if log_y:
            axis.set_yscale("log")
        axis.set_title(metric)
        axis.set_ylabel(metric.split(" (")[0])
        for container in axis.containers:
            axis.bar_label(container, fmt="%.3g" if "acc" not in metric else "%.3f", fontsize=7, rotation=90, padding=2)
        axis.margins(y=0.18)  # room for the labels above the tallest bar
    grid.figure.suptitle(_title(sweep, title), y=1.03)
    return _save(grid, path)


# ----------------------------------------------------------------------------------- the figures
def ppl_vs_sparsity(sweep: Sweep, path: Path) -> Path | None:
    """One line per method; a dense run in the sweep (e.g. ``hydra.sweep.subdir=dense``) is a dashed line."""
    unpruned = prunes_nothing(sweep.completed)
    pruned = sweep.completed[~unpruned]
    if pruned["sparsity"].astype(str).nunique() < 2:
        return None
    frame = pruned.assign(sparsity=pruned["sparsity"].astype(float))
    metrics = _ppl_metrics(sweep)
    dense = sweep.completed[unpruned]
    baseline = {_label(m): float(dense[m].mean()) for m in metrics if m in dense and dense[m].notna().any()}
    return _lines(sweep, frame, "sparsity", metrics, ["method", "modules", "calib_data", "pattern"],
                  "Perplexity vs sparsity (log scale)", path, log_y=True, style_candidates=("pattern", "modules"),
                  baseline=baseline)


def zeroshot_vs_sparsity(sweep: Sweep, path: Path) -> Path | None:
    metrics = [m for m in headline_metrics(sweep) if m.endswith("mean_acc")]
    if "sparsity" not in sweep.varying_knobs() or not metrics:
        return None
    frame = sweep.completed.assign(sparsity=sweep.completed["sparsity"].astype(float))
    return _lines(sweep, frame, "sparsity", metrics, ["method", "pattern"], "Zero-shot mean accuracy vs sparsity",
                  path, log_y=False, style_candidates=("pattern",))


def patterns(sweep: Sweep, path: Path) -> Path | None:
    frame = sweep.completed
    if "pattern" not in sweep.varying_knobs() or "sparsity" in sweep.varying_knobs():
        return None
    order = sorted(frame["pattern"].astype(str).unique(), key=lambda p: (p != "unstructured", p[::-1]))
    return _bars(sweep, frame, "method", "pattern", _ppl_metrics(sweep), "Unstructured vs N:M at equal sparsity",
                 path, hue_order=order)


def numeric_method_knobs(sweep: Sweep) -> list[str]:
    """The method knobs this sweep varies that are numbers (each gets a figure)."""
    return [k for k in sweep.varying_knobs() if k.startswith(METHOD_PREFIX)
            and pd.to_numeric(sweep.completed[k].dropna(), errors="coerce").notna().all()]


def knob_curve(sweep: Sweep, knob: str, path: Path) -> Path | None:
    """Perplexity (and zero-shot mean) against one method knob, over the jobs whose method has it."""
    frame = sweep.completed.dropna(subset=[knob])
    if frame[knob].astype(str).nunique() < 2:
        return None
    frame = with_setting(frame.assign(**{knob: frame[knob].astype(float)}))
    metrics = _ppl_metrics(sweep) + [m for m in headline_metrics(sweep) if m.endswith("mean_acc")]
    methods = ", ".join(dict.fromkeys(frame["method"].astype(str)))
    name = knob_label(knob)
    return _lines(sweep, frame, knob, metrics, ["setting", "method", "pattern"], f"{methods}: perplexity vs {name}",
                  path, log_y=True, style_candidates=("method",), x_label=name)


OWL_LAMBDA = "method.lambda_"  # the knob of the methods that allot each block its own sparsity


def owl_block_sparsity(sweep: Sweep, path: Path) -> Path | None:
    blocks = sweep.block_sparsity
    if blocks.empty or OWL_LAMBDA not in blocks:
        return None
    blocks = blocks.dropna(subset=[OWL_LAMBDA])
    if blocks.empty:
        return None
    lambdas = blocks[OWL_LAMBDA].astype(float)
    blocks = blocks.assign(label=[f"{m} s={s:g} λ={lam:g}" for m, s, lam in
                                  zip(blocks["method"], blocks["sparsity"].astype(float), lambdas)])
    figure, axis = plt.subplots(figsize=(8, 4))
    sns.lineplot(data=blocks, x="block", y="block_sparsity", hue="label", marker="o", ax=axis)
    axis.set_xlabel("decoder block")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_ylabel("block sparsity")
    axis.legend(fontsize=7, title=None)
    axis.set_title(_title(sweep, "OWL per-block sparsity"))
    return _save(figure, path)


def module_sensitivity(sweep: Sweep, path: Path) -> Path | None:
    if "modules" not in sweep.varying_knobs():
        return None
    frame = with_setting(sweep.completed)
    order = [m for m in ("attention", "mlp", "all") if m in set(frame["modules"].astype(str))] or None
    hue = "setting" if frame["setting"].nunique() > 1 else _hue(frame, ["method", "calib_data"])
    return _bars(sweep, frame, "modules", hue, _ppl_metrics(sweep), "Module sensitivity: which layers were pruned",
                 path, order=order)


def calibration(sweep: Sweep, path: Path) -> Path | None:
    if "calib_data" not in sweep.varying_knobs():
        return None
    frame = sweep.completed
    metrics = _ppl_metrics(sweep)
    accuracy = [m for m in headline_metrics(sweep) if m not in metrics]
    hue = _hue(frame, ["method", "setting", "pattern"])
    return _bars(sweep, frame, "calib_data", hue, metrics + accuracy, "Calibration-data sensitivity", path,
                 log_y=False)


def pareto(sweep: Sweep, path: Path) -> Path | None:
    """Accuracy (perplexity, log; zero-shot mean) against speedup, one point per job, labelled by
    its setting; the dashed line joins the points no other point beats on both axes."""
    points = pareto_points(sweep)
    metrics = [m for m in headline_metrics(sweep) if m.startswith("eval/ppl_")][:1]
    metrics += [m for m in headline_metrics(sweep) if m.endswith("mean_acc")][:1]
    if points.empty or points["speedup"].nunique() < 2 or not metrics:
        return None
    figure, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.6), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        data = points.dropna(subset=[metric])
        lower_better = metric.startswith("eval/ppl_")
        sns.scatterplot(data=data, x="speedup", y=metric, hue="method", style="speed_source", s=70, ax=axis)
        for _, row in data.iterrows():
            axis.annotate(row["setting"].replace("unstructured ", "unstr. ").replace("structured ", ""),
                          (row["speedup"], row[metric]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        front, best = [], None
        for _, row in data.sort_values("speedup", ascending=False).iterrows():
            value = row[metric]
            if best is None or (value < best if lower_better else value > best):
                front.append((row["speedup"], value))
                best = value
        if len(front) > 1:
            axis.plot(*zip(*sorted(front)), linestyle="--", color="gray", linewidth=1)
        if lower_better:
            axis.set_yscale("log")
        axis.set_xlabel(f"speedup, prefill {points.attrs.get('tokens')} tokens (measured; 2:4: roofline prediction)")
        axis.set_ylabel(_label(metric))
        axis.legend(fontsize=7)
    figure.suptitle(_title(sweep, "Accuracy vs speedup by granularity"), y=1.02)
    return _save(figure, path)


FIGURES: dict[str, Callable[[Sweep, Path], Path | None]] = {
    "ppl_vs_sparsity": ppl_vs_sparsity,
    "zeroshot_vs_sparsity": zeroshot_vs_sparsity,
    "patterns": patterns,
    "owl_block_sparsity": owl_block_sparsity,
    "module_sensitivity": module_sensitivity,
    "calibration": calibration,
    "pareto": pareto,
}


def draw_all(sweep: Sweep, directory: Path) -> dict[str, Path]:
    """Every figure that applies to this sweep, as PNG in ``directory``; name -> path."""
    if sweep.completed.empty:
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    draws = dict(FIGURES)
    for knob in numeric_method_knobs(sweep):
        draws[f"{KNOB_FIGURE}{knob}"] = lambda sweep, path, knob=knob: knob_curve(sweep, knob, path)
    made = {}
    for name, draw in draws.items():
        try:
            path = draw(sweep, directory / f"{name}.png")
        except Exception:  # noqa: BLE001 - one bad figure must not cost the others
            log.exception("figure %s failed", name)
            continue
        if path is not None:
            made[name] = path
    return made
