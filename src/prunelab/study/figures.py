"""Seaborn figures of a sweep; each is drawn only when the sweep varies what it shows.

=============================  ===============================================================
``ppl_vs_sparsity.png``        perplexity vs sparsity per method, one panel per eval set
``zeroshot_vs_sparsity.png``   zero-shot mean accuracy vs sparsity per method
``patterns.png``               perplexity per method, unstructured vs N:M
``knob_method.<key>.png``      perplexity vs any numeric method knob the sweep varies (alpha, lambda_)
``owl_block_sparsity.png``     OWL's sparsity of every block (jobs whose method has ``lambda_``)
``module_sensitivity.png``     perplexity when pruning attention only, MLP only, or all
``calibration.png``            perplexity of each domain by calibration set (+ task accuracy)
``pareto.png``                 accuracy vs speedup (measured, else roofline-predicted) per setting
``compression_bytes.png``      accuracy vs GGUF file size, method x weight format, Pareto front (:mod:`.compression`)
``compression_speed.png``      accuracy vs llama.cpp prefill speed over dense F16, Pareto front
``compression_decode.png``     accuracy vs llama.cpp decode speed over dense F16, Pareto front
=============================  ===============================================================

Each draw returns a :class:`Figure`: the file and its caption, which states the axis scale and
how much the numbers were measured on (windows x tokens, examples per task). The y axis is
logarithmic only when a panel's values span more than :data:`LOG_RANGE`; a dense run in the
sweep is a dashed line named in each panel's legend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.transforms  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from prunelab.study import compression  # noqa: E402
from prunelab.study.records import (  # noqa: E402
    KNOB_FIGURE,
    METHOD_PREFIX,
    Sweep,
    evaluation_size,
    headline_metrics,
    knob_label,
    pareto_points,
    prunes_nothing,
    with_setting,
)

log = logging.getLogger(__name__)
sns.set_theme(style="whitegrid", context="notebook")
LOG_RANGE = 5.0  # a panel whose largest value is more than 5x its smallest gets a log axis


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


def _ppl_metrics(sweep: Sweep) -> list[str]:
    return [m for m in headline_metrics(sweep) if m.startswith("eval/ppl_")]


def _is_accuracy(metric: str) -> bool:
    """An accuracy (plotted in percent, as the tables show it): lm-eval's ``acc``, ``mean_acc``, ``exact_match``."""
    return metric.startswith("zeroshot/") and ("acc" in metric.rsplit("/", 1)[-1] or "exact_match" in metric)


def _scale(metric: str) -> float:
    return 100.0 if _is_accuracy(metric) else 1.0


def _label(metric: str) -> str:
    if metric.startswith("eval/ppl_"):
        return f"perplexity ({metric.removeprefix('eval/ppl_')})"
    if metric.endswith("mean_acc"):
        return "zero-shot mean accuracy (%)"
    if _is_accuracy(metric):
        from prunelab.study.findings import TASK_NAMES

        task = metric.split("/")[1]
        return f"{TASK_NAMES.get(task, task)} {metric.rsplit('/', 1)[-1].replace('_', ' ')} (%)"
    return metric.replace("zeroshot/", "zero-shot ").replace("_", " ")


def lower_is_better(metric: str) -> bool:
    return metric.startswith("eval/ppl_")


def wide_range(values) -> bool:
    """Whether values span enough for a log axis (all positive, max > LOG_RANGE x min)."""
    numbers = pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna()
    return bool(len(numbers)) and numbers.min() > 0 and numbers.max() > LOG_RANGE * numbers.min()


def sizes(sweep: Sweep, metrics: list[str]) -> str:
    """"Evaluated on wiki: 32 windows x 256 tokens (...); piqa: 100 examples." for a caption."""
    found = [part for m in metrics for part in evaluation_size(sweep.completed, m).split("; ")]
    return f" Evaluated on {'; '.join(dict.fromkeys(found))}." if found else ""


def _long(frame: pd.DataFrame, metrics: list[str], keep: list[str]) -> pd.DataFrame:
    """One row per (job, metric): seaborn's long form for faceting by metric."""
    keep = list(dict.fromkeys(k for k in keep if k in frame.columns))
    long = frame[keep + metrics].melt(id_vars=keep, value_vars=metrics, var_name="metric", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce") * long["metric"].map(_scale)  # accuracies in percent
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


def _dense_line(axis, value: float) -> None:
    """The dense model as a dashed line, named in the panel's own legend (no label on the plot)."""
    axis.axhline(value, color="black", linestyle="--", linewidth=1)
    axis.legend(handles=[Line2D([], [], color="black", linestyle="--", linewidth=1, label=f"dense: {_short_number(value)}")],
                loc="best", fontsize=8, frameon=True)


def _mark_best(axis, rows: pd.DataFrame, x: str, metric: str, hue: str | None, zero_label: str | None,
               reference: float | None) -> list[str]:
    """A star on a line's best point only where it is best beyond noise, by the findings' rule
    (:func:`prunelab.study.findings.best_point`: against ``reference``, else the runner-up); and
    (``zero_label``) a ring on x = 0. Returns the caption's notes, one per line."""
    from prunelab.study.findings import best_point

    notes = []
    lines = rows.groupby(hue) if hue else [(None, rows)]
    for name, line in lines:
        line = line.dropna(subset=[metric])
        means = line.groupby(x)[metric].mean() * _scale(metric)  # as plotted
        if means.empty:
            continue
        where = f" ({name})" if name is not None else ""
        found = best_point(line, line[x], metric, reference)
        if found is not None and found.beyond_noise:
            best_x = found.value
            axis.plot([best_x], [means[best_x]], marker="*", markersize=15, color="gold", markeredgecolor="black", zorder=5)
            right_end = best_x == max(means.index)  # the label goes left there, off the legend beside the panel
            axis.annotate(f"best {best_x:g}", (best_x, means[best_x]), textcoords="offset points", fontsize=8,
                          xytext=(-6, 8) if right_end else (6, 8), ha="right" if right_end else "left")
            notes.append(f"best{where} at {best_x:g}: {_short_number(means[best_x])}, {found.text} against {found.against:g}")
        elif found is not None:
            word = "lowest" if lower_is_better(metric) else "highest"
            why = f"within noise of {found.against:g}: {found.text}" if found.beyond_noise is False else found.text
            notes.append(f"no best{where}: {word} at {found.value:g} ({_short_number(means[found.value])}), {why}")
        if zero_label and 0.0 in means.index:
            axis.plot([0.0], [means[0.0]], marker="o", markersize=13, markerfacecolor="none", markeredgecolor="red",
                      markeredgewidth=1.5, zorder=5)
            axis.annotate(zero_label, (0.0, means[0.0]), textcoords="offset points", xytext=(6, -14), fontsize=8,
                          color="red")
            notes.append(f"{zero_label}{where}: {_short_number(means[0.0])}")
    return notes


def _short_number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def _lines(sweep: Sweep, frame: pd.DataFrame, x: str, metrics: list[str], hue_candidates: list[str],
           title: str, path: Path, style_candidates: tuple[str, ...] = (),
           baseline: dict[str, float] | None = None, x_label: str | None = None,
           mark_best: bool = False, zero_label: str | None = None,
           reference: float | None = None) -> tuple[Path, str] | None:
    """Line panels, one per metric; returns the file and a note on axes and marks for the caption."""
    if frame.empty or not metrics:
        return None
    hue = _hue(frame, hue_candidates)
    style = _hue(frame, [s for s in style_candidates if s != hue])
    wide = frame.assign(**{k: frame[k].astype(str) for k in (hue, style) if k})
    long = _long(wide, metrics, [x, hue, style])
    if long.empty:
        return None
    grid = sns.relplot(data=long, x=x, y="value", hue=hue, style=style, col="metric", kind="line", marker="o",
                       dashes=bool(style), facet_kws={"sharey": False}, height=3.6, aspect=1.2,
                       col_wrap=min(3, long["metric"].nunique()))
    logged, notes = [], []
    for axis, metric in zip(grid.axes.flat, long["metric"].unique()):
        panel = long[long["metric"] == metric]
        raw = next(m for m in metrics if _label(m) == metric)
        values = list(panel["value"]) + ([baseline[metric]] if baseline and metric in baseline else [])
        if wide_range(values):
            axis.set_yscale("log")
            logged.append(metric)
        axis.set_title(metric)
        axis.set_ylabel(metric.split(" (")[0])
        axis.set_xlabel(x_label or x)
        if mark_best:
            notes += [f"{metric}: {n}" for n in _mark_best(axis, wide, x, raw, hue, zero_label, reference)]
        if baseline and metric in baseline:  # the dense model, for scale
            _dense_line(axis, baseline[metric])
    grid.figure.suptitle(_title(sweep, title), y=1.03)
    scale = (f" Log y axis for {', '.join(logged)} (values span more than {LOG_RANGE:g}x); linear elsewhere."
             if logged else " Linear y axes.")
    marks = (" A star marks a line's best value only where it is best beyond noise against "
             + (f"{x_label or x}={reference:g}, else the runner-up" if reference is not None else "the runner-up")
             + " (the findings' rule: paired per-window losses, 2 SE or Student's 95% value with few windows; "
               "accuracies 2 SE of the difference)" + (f"; red rings {zero_label}" if zero_label else "")
             + f" ({'; '.join(notes)}).") if notes else ""
    dense = " Dashed: the dense model." if baseline else ""
    return _save(grid, path), scale + dense + marks


def _bars(sweep: Sweep, frame: pd.DataFrame, x: str, hue: str | None, metrics: list[str], title: str,
          path: Path, order: list[str] | None = None, hue_order: list[str] | None = None) -> tuple[Path, str] | None:
    if frame.empty or not metrics:
        return None
    long = _long(frame.assign(**{k: frame[k].astype(str) for k in (x, hue) if k}), metrics, [x, hue])
    if long.empty:
        return None
    grid = sns.catplot(data=long, x=x, y="value", hue=hue, col="metric", kind="bar", order=order, hue_order=hue_order,
                       sharey=False, height=3.6, aspect=1.1, col_wrap=min(3, long["metric"].nunique()))
    logged = []
    for axis, metric in zip(grid.axes.flat, long["metric"].unique()):
        if wide_range(long.loc[long["metric"] == metric, "value"]):
            axis.set_yscale("log")
            logged.append(metric)
        axis.set_title(metric)
        axis.set_ylabel(metric.split(" (")[0])
        for container in axis.containers:
            axis.bar_label(container, fmt=(lambda v: f"{v:.1f}") if metric.endswith("(%)") else _short_number, fontsize=7,
                           rotation=90, padding=2)
        axis.margins(y=0.3)  # room for the labels above the tallest bar, below the panel's title
    grid.figure.suptitle(_title(sweep, title), y=1.03)
    scale = (f" Log y axis for {', '.join(logged)} (values span more than {LOG_RANGE:g}x); linear elsewhere."
             if logged else " Linear y axes.")
    return _save(grid, path), scale


def _figure(made: tuple[Path, str] | None, text: str, sweep: Sweep, metrics: list[str]) -> Figure | None:
    return None if made is None else Figure(made[0], text + made[1] + sizes(sweep, metrics))


# ----------------------------------------------------------------------------------- the figures
def ppl_vs_sparsity(sweep: Sweep, path: Path) -> Figure | None:
    """One line per method; a dense run in the sweep is a dashed line."""
    unpruned = prunes_nothing(sweep.completed)
    pruned = sweep.completed[~unpruned]
    if pruned["sparsity"].astype(str).nunique() < 2:
        return None
    frame = pruned.assign(sparsity=pruned["sparsity"].astype(float))
    metrics = _ppl_metrics(sweep)
    dense = sweep.completed[unpruned]
    baseline = {_label(m): float(dense[m].mean()) for m in metrics if m in dense and dense[m].notna().any()}
    made = _lines(sweep, frame, "sparsity", metrics, ["method", "modules", "calib_data", "pattern"],
                  "Perplexity vs sparsity", path, style_candidates=("pattern", "modules"), baseline=baseline)
    return _figure(made, "Perplexity against sparsity, one line per method.", sweep, metrics)


def zeroshot_vs_sparsity(sweep: Sweep, path: Path) -> Figure | None:
    metrics = [m for m in headline_metrics(sweep) if m.endswith("mean_acc")]
    if "sparsity" not in sweep.varying_knobs() or not metrics:
        return None
    unpruned = prunes_nothing(sweep.completed)
    pruned = sweep.completed[~unpruned]
    dense = sweep.completed[unpruned]
    baseline = {_label(m): float(dense[m].mean()) * _scale(m) for m in metrics if m in dense and dense[m].notna().any()}
    frame = pruned.assign(sparsity=pruned["sparsity"].astype(float))
    made = _lines(sweep, frame, "sparsity", metrics, ["method", "pattern"], "Zero-shot mean accuracy vs sparsity",
                  path, style_candidates=("pattern",), baseline=baseline)
    return _figure(made, "Zero-shot mean accuracy (unweighted over tasks) against sparsity.", sweep, metrics)


def patterns(sweep: Sweep, path: Path) -> Figure | None:
    frame = sweep.completed[~prunes_nothing(sweep.completed)]
    varying = sweep.varying_knobs()
    if "pattern" not in varying or [k for k in varying if k not in ("pattern", "method")]:
        return None  # with sparsity, the modules or a method knob varying too, one bar would average over them
    order = sorted(frame["pattern"].astype(str).unique(), key=lambda p: (p != "unstructured", p[::-1]))
    metrics = _ppl_metrics(sweep)
    made = _bars(sweep, frame, "method", "pattern", metrics, "Unstructured vs N:M at equal sparsity", path,
                 hue_order=order)
    return _figure(made, "Perplexity per method: unstructured vs N:M at the same sparsity.", sweep, metrics)


def numeric_method_knobs(sweep: Sweep) -> list[str]:
    """The method knobs this sweep varies that are numbers (each gets a figure)."""
    return [k for k in sweep.varying_knobs() if k.startswith(METHOD_PREFIX)
            and pd.to_numeric(sweep.completed[k].dropna(), errors="coerce").notna().all()]


ZERO_MEANS = {"lambda": "λ=0 = uniform", "alpha": "α=0 = RI alone"}  # what 0 of a knob is, where it means something


def knob_curve(sweep: Sweep, knob: str, path: Path) -> Figure | None:
    """Perplexity (and zero-shot mean) against one method knob, over the jobs whose method has it;
    each line's best value starred, and the knob's 0 ringed where it is a named baseline."""
    frame = sweep.completed.dropna(subset=[knob])
    if frame[knob].astype(str).nunique() < 2:
        return None
    frame = with_setting(frame.assign(**{knob: frame[knob].astype(float)}))
    metrics = _ppl_metrics(sweep) + [m for m in headline_metrics(sweep) if m.endswith("mean_acc")]
    methods = ", ".join(dict.fromkeys(frame["method"].astype(str)))
    name = knob_label(knob)
    made = _lines(sweep, frame, knob, metrics, ["setting", "method", "pattern"], f"{methods}: perplexity vs {name}",
                  path, style_candidates=("method",), x_label=name, mark_best=True, zero_label=ZERO_MEANS.get(name),
                  reference=0.0 if name in ZERO_MEANS else None)
    return _figure(made, f"{methods}: perplexity against {name} (`{knob}`), over the jobs whose method has this knob.",
                   sweep, metrics)


OWL_LAMBDA = "method.lambda_"  # the knob of the methods that allot each block its own sparsity


def owl_block_sparsity(sweep: Sweep, path: Path) -> Figure | None:
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
    return Figure(_save(figure, path), "OWL: sparsity assigned to each decoder block (from the dense model's "
                                       "outlier ratios), one line per job. Linear y axis.")


def module_sensitivity(sweep: Sweep, path: Path) -> Figure | None:
    if "modules" not in sweep.varying_knobs():
        return None
    frame = with_setting(sweep.completed[~prunes_nothing(sweep.completed)])
    order = [m for m in ("attention", "mlp", "all") if m in set(frame["modules"].astype(str))] or None
    hue = "setting" if frame["setting"].nunique() > 1 else _hue(frame, ["method", "calib_data"])
    metrics = _ppl_metrics(sweep)
    made = _bars(sweep, frame, "modules", hue, metrics, "Module sensitivity: which layers were pruned", path,
                 order=order)
    return _figure(made, "Perplexity when only attention, only the MLP, or every linear layer is pruned.", sweep, metrics)


def calibration(sweep: Sweep, path: Path) -> Figure | None:
    if "calib_data" not in sweep.varying_knobs():
        return None
    frame = sweep.completed.dropna(subset=["calib_data"])
    metrics = _ppl_metrics(sweep)
    accuracy = [m for m in headline_metrics(sweep) if m not in metrics]
    hue = _hue(frame, ["method", "setting", "pattern"])
    made = _bars(sweep, frame, "calib_data", hue, metrics + accuracy, "Calibration-data sensitivity", path)
    return _figure(made, "Perplexity of each domain, and task accuracy, by the calibration set used for pruning.",
                   sweep, metrics + accuracy)


def pareto(sweep: Sweep, path: Path) -> Figure | None:
    """Accuracy (perplexity, log; zero-shot mean) against speedup, one point per job, labelled by
    its setting; the dashed line joins the points no other point beats on both axes."""
    if compression.is_compression(sweep.completed):  # speedups against different dense formats: compression_speed instead
        return None
    points = pareto_points(sweep)
    metrics = [m for m in headline_metrics(sweep) if m.startswith("eval/ppl_")][:1]
    metrics += [m for m in headline_metrics(sweep) if m.endswith("mean_acc")][:1]
    if points.empty or points["speedup"].nunique() < 2 or not metrics:
        return None
    figure, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.6), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        data = points.dropna(subset=[metric])
        data = data.assign(**{metric: data[metric] * _scale(metric)})
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
        axis.set_xlabel(f"speedup, prefill {points.attrs.get('tokens')} tokens")
        axis.set_ylabel(_label(metric))
        if axis.get_legend() is not None:
            axis.get_legend().remove()
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if handles:  # one legend, outside the plots, so that it hides no point
        axes[0][-1].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.suptitle(_title(sweep, "Accuracy vs speedup by granularity"), y=1.02)
    return _figure((_save(figure, path), " Perplexity on a log axis."),
                   "Accuracy against speedup (prefill): measured dense vs pruned in one "
                   "process where a job measured it, the roofline prediction (engine.roofline_gpu) for 2:4; "
                   "the dashed line is the Pareto front.", sweep, metrics)


LABEL_OFFSET, LABEL_ABOVE, LABEL_BELOW = 6, 6, -12  # a front label's offset from its point, in points
LABEL_FURTHER = 10  # the next places tried: this much further up or down
RING = 220  # marker size (points²) of the ring around a front point


def keep_labels_inside(figure, axes, labels: list[list]) -> None:
    """Place every label of a Pareto front (``labels``: the annotations of each panel in ``axes``) at
    the first of its candidate places that lies inside its panel (clear of the legend beside the last
    one, and of the figure's edge) and overlaps no label already placed and no other ringed point:
    right of its point, above or below as first drawn, then the other way, then further up or down,
    then the same left of the point (right-aligned); when none is free, the one that overlaps least.
    Measured on the drawn figure (limits, log axes and legend final)."""
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    ring = (RING ** 0.5) / 2 * figure.dpi / 72  # the ring's radius in pixels
    for axis, panel in zip(axes, labels):
        box = axis.get_window_extent(renderer)
        points = [axis.transData.transform(label.xy) for label in panel]
        rings = [matplotlib.transforms.Bbox.from_extents(x - ring, y - ring, x + ring, y + ring) for x, y in points]
        placed = []
        for number, label in enumerate(panel):
            first = label.xyann[1]
            second = LABEL_BELOW if first == LABEL_ABOVE else LABEL_ABOVE
            heights = (first, second, first + LABEL_FURTHER * (1 if first > 0 else -1),
                       second + LABEL_FURTHER * (1 if second > 0 else -1))
            best = None
            for side in (1, -1):
                for dy in heights:
                    label.set_horizontalalignment("left" if side > 0 else "right")
                    label.xyann = (side * LABEL_OFFSET, dy)
                    extent = label.get_window_extent(renderer)
                    outside = extent.width * extent.height - _overlap(extent, box)
                    crowded = sum(_overlap(extent, other) for other in [*placed, *(r for i, r in enumerate(rings) if i != number)])
                    cost = (outside * 100 + crowded, side < 0)
                    if best is None or cost < best[0]:
                        best = (cost, side, dy)
                    if cost[0] == 0:
                        break
                if best[0][0] == 0:
                    break
            _, side, dy = best
            label.set_horizontalalignment("left" if side > 0 else "right")
            label.xyann = (side * LABEL_OFFSET, dy)
            placed.append(label.get_window_extent(renderer))


def _overlap(one, other) -> float:
    """The area two display boxes share (0 when apart)."""
    width = min(one.x1, other.x1) - max(one.x0, other.x0)
    height = min(one.y1, other.y1) - max(one.y0, other.y0)
    return max(width, 0.0) * max(height, 0.0)


COMPRESSION_PLOTS = {  # name -> x column (higher is better), x label, title, caption, claim line (x)
    "compression_bytes": (compression.RATIO, "GGUF file: times smaller than the dense F16 file", "Accuracy vs file size",
                          "Accuracy against the size of the GGUF file llama.cpp loads (dense F16 file bytes / this file's "
                          "bytes), one point per method and weight format; ringed and dashed: the Pareto front; dotted red: "
                          "8x, the low end of the seeds' \"50% pruning + 4-bit -> 8-10x\".", compression.CLAIM),
    "compression_speed": (compression.SPEEDUP_F16, "llama.cpp prefill speedup vs dense F16 ({tokens} tokens)",
                          "Accuracy vs llama.cpp speed", "Accuracy against llama.cpp's prefill speed (the speedup over the "
                          "dense model in the same GGUF type times that type's dense tokens/s over F16's; one thread, thread "
                          "CPU clock), one point per method and weight format; ringed and dashed: the Pareto front.", None),
    "compression_decode": (compression.DECODE_F16, "llama.cpp decode speedup vs dense F16 (batch 1)",
                           "Accuracy vs llama.cpp decode speed", "Accuracy against llama.cpp's decode speed at batch 1 (the "
                           "speedup over the dense model in the same GGUF type times that type's dense tokens/s over F16's; "
                           "one thread, thread CPU clock), one point per method and weight format; ringed and dashed: the "
                           "Pareto front.", None),
}


def compression_plot(sweep: Sweep, name: str) -> tuple[Any, str, list[str]] | None:
    """The unsaved figure ``name`` of :data:`COMPRESSION_PLOTS`: accuracy against its x of
    :func:`.compression.points`, one point per method x format, the Pareto front (no other point
    better on both axes) ringed, joined by a dashed line and labelled inside the panel; with what
    its caption says of the axes and the front, and the metrics drawn. None when nothing to draw."""
    x, x_label, title, _, claim = COMPRESSION_PLOTS[name]
    found = compression.points(sweep)
    metrics = [m for m in found.columns if m.startswith("eval/ppl_")][:1] + [m for m in found.columns if m.endswith("mean_acc")][:1]
    if found.empty or x not in found or found[x].notna().sum() < 2 or not metrics:
        return None
    x_label = x_label.format(tokens=compression.prefill_tokens(sweep.completed))
    found = found.assign(model=[f"{m}" if s == "dense" else f"{m} {s}" for m, s in zip(found["method"], found["setting"])])
    formats = sorted(set(found["format"]), key=compression.format_rank)  # one marker per format in every figure
    figure, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), 4.8), squeeze=False)
    notes, logged, labels = [], [], []
    for axis, metric in zip(axes[0], metrics):
        data = found.dropna(subset=[x, metric])
        lower = lower_is_better(metric)
        sns.scatterplot(data=data, x=x, y=metric, hue="model", style="format", s=70, ax=axis,
                        hue_order=list(dict.fromkeys(found["model"])), style_order=formats)
        front = data[compression.pareto_front(data[x], data[metric], False, lower)].sort_values(x)
        axis.plot(front[x], front[metric], linestyle="--", color="gray", linewidth=1, zorder=1)
        axis.scatter(front[x], front[metric], s=RING, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
        labels.append([axis.annotate(f"{row['model']} {row['format']}", (row[x], row[metric]), textcoords="offset points",
                                     xytext=(LABEL_OFFSET, LABEL_ABOVE if number % 2 == 0 else LABEL_BELOW), fontsize=7)
                       for number, (_, row) in enumerate(front.iterrows())])  # alternate above and below: neighbours do not overlap
        if claim is not None:
            axis.axvline(claim, color="red", linestyle=":", linewidth=1.2)
            axis.annotate(f"{claim:g}x (the seeds' claim)", (claim, 0.02), xycoords=("data", "axes fraction"),
                          color="red", fontsize=7, rotation=90, ha="right", va="bottom")
        axis.margins(x=0.25)  # room for the labels of the rightmost points
        if wide_range(data[metric]):
            axis.set_yscale("log")
            logged.append(_label(metric))
        axis.set_xlabel(x_label)
        axis.set_ylabel(_label(metric))
        if axis.get_legend() is not None:
            axis.get_legend().remove()
        notes.append(f"{_label(metric)}: " + ", ".join(f"{r['model']} {r['format']}" for _, r in front.iterrows()))
    handles, names = axes[0][-1].get_legend_handles_labels()
    if handles:  # one legend, outside the plots, so that it hides no point
        axes[0][-1].legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.suptitle(_title(sweep, title), y=1.02)
    keep_labels_inside(figure, axes[0], labels)
    scale = (f" Log y axis for {', '.join(logged)} (values span more than {LOG_RANGE:g}x)." if logged else " Linear y axes.")
    return figure, scale + f" Pareto front ({'; '.join(notes)}).", metrics


def _compression_pareto(sweep: Sweep, path: Path, name: str) -> Figure | None:
    plot = compression_plot(sweep, name)
    if plot is None:
        return None
    figure, caption, metrics = plot
    return _figure((_save(figure, path), caption), COMPRESSION_PLOTS[name][3], sweep, metrics)


def compression_bytes(sweep: Sweep, path: Path) -> Figure | None:
    return _compression_pareto(sweep, path, "compression_bytes")


def compression_speed(sweep: Sweep, path: Path) -> Figure | None:
    return _compression_pareto(sweep, path, "compression_speed")


def compression_decode(sweep: Sweep, path: Path) -> Figure | None:
    return _compression_pareto(sweep, path, "compression_decode")


FIGURES: dict[str, Callable[[Sweep, Path], Figure | None]] = {
    "ppl_vs_sparsity": ppl_vs_sparsity,
    "zeroshot_vs_sparsity": zeroshot_vs_sparsity,
    "patterns": patterns,
    "owl_block_sparsity": owl_block_sparsity,
    "module_sensitivity": module_sensitivity,
    "calibration": calibration,
    "pareto": pareto,
    "compression_bytes": compression_bytes,
    "compression_speed": compression_speed,
    "compression_decode": compression_decode,
}


def draw_all(sweep: Sweep, directory: Path) -> dict[str, Figure]:
    """Every figure that applies to this sweep, as PNG in ``directory``; name -> figure."""
    if sweep.completed.empty:
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    draws = dict(FIGURES)
    if compression.is_compression(sweep.completed):  # the other figures would average over the weight formats
        draws = {name: FIGURES[name] for name in ("compression_bytes", "compression_speed", "compression_decode")}
    for knob in numeric_method_knobs(sweep):
        draws[f"{KNOB_FIGURE}{knob}"] = lambda sweep, path, knob=knob: knob_curve(sweep, knob, path)
    made = {}
    for name, draw in draws.items():
        try:
            figure = draw(sweep, directory / f"{name}.png")
        except Exception:  # noqa: BLE001 - one bad figure must not cost the others
            log.exception("figure %s failed", name)
            continue
        if figure is not None:
            made[name] = figure
    return made
