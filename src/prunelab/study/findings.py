"""Findings in words, generated from a sweep's results table alone (``results.csv`` as a frame).

For the knob a study is about (``lambda``, ``alpha``, the calibration set, the modules pruned, the
pattern, the method) and every headline metric, within each setting of the other knobs: the
ordering, the best value against the study's reference (λ = 0 is uniform sparsity, the dense
model, wiki calibration, all modules, unstructured), and the effect size. Accuracies carry
lm-eval's standard errors; a difference is called beyond noise when it exceeds two standard
errors of the difference (``sqrt(se_a² + se_b²)``, conservative: both are scored on the same
questions). Perplexities are compared window by window (:mod:`.noise`: the paired standard error
of the difference in log-perplexity); "best" is said only of a difference beyond noise, else
"lowest ..., within noise of ...".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from prunelab.study import noise
from prunelab.study.records import (
    METHOD_PREFIX,
    STDERR,
    evaluation_size,
    knob_label,
    prunes_nothing,
    varying_knobs,
    with_setting,
)

# The knobs a study is about, most specific first; the others of the sweep set the context.
STUDY_AXES = ("method.lambda_", "method.alpha", "calib_data", "modules", "pattern", "method")
REFERENCES = {"method.lambda_": 0.0, "calib_data": "wiki", "modules": "all", "pattern": "unstructured"}
REFERENCE_NAMES = {"method.lambda_": "λ=0 (uniform sparsity)", "method.alpha": "α=0 (relative importance alone)"}
AXIS_NAMES = {"calib_data": "calibration set", "modules": "modules pruned"}  # a knob in a sentence
NOISE_SE = noise.NOISE_SE  # |difference| above 2 standard errors of the difference: beyond noise


def headline(frame: pd.DataFrame) -> list[str]:
    """Perplexities, then per-task and mean zero-shot accuracies (the metrics findings speak of)."""
    ppl = [c for c in frame.columns if c.startswith("eval/ppl_") and not c.endswith("_tokens")]
    accuracy = [c for c in frame.columns if c.startswith("zeroshot/") and c.endswith(("/acc", "mean_acc"))]
    return ppl + sorted(accuracy, key=lambda c: (c.endswith("mean_acc"), c))


def _number(value: float, metric: str) -> str:
    """The report's one number format: accuracies in percent with one decimal, other numbers with
    two decimals, none (with thousands separators) from 10,000 on (as :func:`.report.number`)."""
    if metric.startswith("zeroshot/"):
        return f"{100 * value:.1f}%"
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.2f}"


WIDE_SE_LOG = 0.25  # from here on ppl ± ppl × SE would misstate the spread (it would reach below 0 from 1 on)


def _with_se(value: float, se: float | None, metric: str) -> str:
    """An accuracy with lm-eval's standard error; a perplexity with ``ppl × SE(log ppl)``, or, where
    the standard error of log-perplexity exceeds :data:`WIDE_SE_LOG`, the factor ``exp(SE)`` that
    one standard error multiplies or divides it by (``72,916,071 ×/÷ 3.32``)."""
    if se is None or math.isnan(se):
        return _number(value, metric)
    if metric.startswith("zeroshot/"):
        return f"{100 * value:.1f} ± {100 * se:.1f}%"
    if se > WIDE_SE_LOG:
        return f"{_number(value, metric)} ×/÷ {math.exp(se):.2f}"
    spread = value * se
    return f"{_number(value, metric)} ± {f'{spread:,.0f}' if abs(value) >= 1e4 else f'{spread:.2f}'}"


TASK_NAMES = {"prunelab_basic_arithmetic": "basic-arithmetic", "prunelab_mmlu_math": "MMLU-math"}


def _metric_name(metric: str) -> str:
    if metric.startswith("eval/ppl_"):
        return f"{metric.removeprefix('eval/ppl_')} perplexity"
    task = metric.split("/")[1]
    return "zero-shot mean accuracy" if metric.endswith("mean_acc") else f"{TASK_NAMES.get(task, task)} accuracy"


def _value_text(axis: str, value) -> str:
    label = knob_label(axis) if axis.startswith(METHOD_PREFIX) else ""
    return f"{label}={value:g}" if label and isinstance(value, float) else str(value)


def _axis_values(frame: pd.DataFrame, axis: str) -> pd.Series:
    values = frame[axis]
    if axis.startswith(METHOD_PREFIX):
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all():
            return numeric.astype(float)
    return values.astype(str)


def difference(a: float, se_a: float | None, b: float, se_b: float | None) -> str:
    """``+3.2 ± 2.1 points (1.5 SE, within noise)`` for accuracies ``a - b``."""
    delta = 100 * (a - b)
    if se_a is None or se_b is None or math.isnan(se_a) or math.isnan(se_b):
        return f"{delta:+.1f} points (no standard error)"
    se = 100 * math.sqrt(se_a ** 2 + se_b ** 2)
    z = abs(delta) / se if se > 0 else math.inf
    verdict = "beyond noise" if z > NOISE_SE else "within noise"
    return f"{delta:+.1f} ± {se:.1f} points ({z:.1f} SE, {verdict})"


def _stderr(group: pd.DataFrame, metric: str) -> float | None:
    column = metric + STDERR
    if column not in group or group[column].isna().all():
        return None
    values = group[column].dropna()
    return float(math.sqrt((values ** 2).sum()) / len(values))  # se of the mean of repeated configs


def _context_text(context: dict) -> str:
    return ", ".join(f"{k if k != 'setting' else ''}{'=' if k != 'setting' else ''}{v}".strip()
                     for k, v in context.items()) or "all jobs"


def axis_of(frame: pd.DataFrame) -> tuple[str | None, list[str]]:
    """The knob the study is about, and the other varying knobs (its context)."""
    varying = varying_knobs(frame)
    axis = next((a for a in STUDY_AXES if a in varying), None)
    context = [k for k in varying if k != axis]
    if "sparsity" in context and "pattern" in context:
        context = [k for k in context if k not in ("sparsity", "pattern")] + ["setting"]
    return axis, context


def findings(results: pd.DataFrame, sizes: bool = True) -> list[str]:
    """Sentences on the numbers of a results table (completed and skipped jobs): the study's knob
    compared within each setting of the others; where that compares nothing (one method, e.g. a
    sparsity curve of magnitude alone), each method's curve over sparsity against the dense model
    (:func:`curve_findings`). Empty only when there is nothing to compare (one job). ``sizes=False``
    leaves the evaluation size (windows, examples) out of each sentence, for a report whose setup
    states it."""
    done = results[results["status"].isin(["completed", "skipped"])] if "status" in results else results
    if done.empty:
        return []
    axis, context = axis_of(done)
    sentences = _compared(done, axis, context, sizes) if axis is not None else []
    return sentences or curve_findings(done, sizes)


def _compared(done: pd.DataFrame, axis: str, context: list[str], sizes: bool) -> list[str]:
    unpruned = prunes_nothing(done)
    baseline = done[unpruned]
    pruned = with_setting(done[~unpruned] if (~unpruned).any() else done).dropna(subset=[axis])
    sentences = []
    for metric in headline(done):
        data = pruned.dropna(subset=[metric])
        if data.empty:
            continue
        size = evaluation_size(done, metric) if sizes else ""
        dense = baseline.dropna(subset=[metric]) if metric in baseline else baseline.iloc[0:0]
        groups = data.groupby([data[c].astype(str) for c in context], sort=False) if context else [((), data)]
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            where = _context_text(dict(zip(context, key)))
            sentences.append(_one(group, axis, metric, where, size, dense, _stderr(baseline, metric)))
    if axis == "calib_data":
        sentences.append(in_domain_verdict(pruned, context))
    return [s for s in sentences if s]


# ------------------------------------------------------------------------ one method over sparsity
def curve_findings(done: pd.DataFrame, sizes: bool = True) -> list[str]:
    """Per method (and pattern) and headline metric, the curve over sparsity: each point with its
    noise and its ratio to the dense model, where a perplexity first exceeds twice the dense one (an
    accuracy first falls below the dense one beyond noise), and every step up in sparsity with its
    noise (perplexity: paired over the same windows). What a sweep of one method can say."""
    unpruned = prunes_nothing(done)
    baseline, pruned = done[unpruned], done[~unpruned].copy()
    pruned["sparsity"] = pd.to_numeric(pruned["sparsity"], errors="coerce")
    pruned = pruned.dropna(subset=["sparsity"])
    keys = [c for c in ("method", "pattern") if c in pruned]
    sentences = []
    for metric in headline(done):
        data = pruned.dropna(subset=[metric])
        dense = baseline.dropna(subset=[metric]) if metric in baseline else baseline.iloc[0:0]
        for key, group in data.groupby([data[c].astype(str) for c in keys], sort=False):
            key = key if isinstance(key, tuple) else (key,)
            points = {float(v): rows for v, rows in group.groupby("sparsity", sort=True)}
            if len(points) + (1 if len(dense) else 0) < 2:
                continue
            where = ", ".join(v for c, v in zip(keys, key) if not (c == "pattern" and v == "unstructured"))
            size = evaluation_size(done, metric) if sizes else ""
            sentences.append(_curve(points, dense, metric, where, size))
    return sentences


def _sparsity_text(value: float) -> str:
    return f"{100 * value:.0f}%" if value > 0 else "dense"


def _curve(points: dict[float, pd.DataFrame], dense: pd.DataFrame, metric: str, where: str, size: str) -> str:
    ppl = metric.startswith("eval/ppl_")
    dense_value = float(dense[metric].mean()) if len(dense) else None
    chain = ([(0.0, dense)] if len(dense) else []) + list(points.items())

    def shown(rows: pd.DataFrame, value: float) -> str:
        return _with_se(value, noise.relative_se(rows, metric) if ppl else _stderr(rows, metric), metric)

    cells = []
    for sparsity, rows in chain:
        value = float(rows[metric].mean())
        cell = f"{_sparsity_text(sparsity)} {shown(rows, value)}"
        if ppl and dense_value and sparsity > 0:
            cell += f" ({value / dense_value:,.2f}× dense)" if value / dense_value < LARGE_RATIO else \
                f" ({value / dense_value:,.0f}× dense)"
        cells.append(cell)
    text = f"{_metric_name(metric)} of {where} against sparsity{f' ({size})' if size else ''}: {', '.join(cells)}."
    if dense_value is not None:
        text += " " + (_doubling(points, dense_value, metric) if ppl else _below_dense(points, dense, metric))
    steps = []
    for (low, rows_low), (high, rows_high) in zip(chain, chain[1:]):
        if ppl:
            found = noise.compare(rows_high, rows_low, metric)
            change = found.text() if found else _change_words(rows_high, rows_low, metric).removeprefix("perplexity ") \
                + " (no noise estimate)"
        else:
            change = difference(float(rows_high[metric].mean()), _stderr(rows_high, metric),
                                float(rows_low[metric].mean()), _stderr(rows_low, metric))
        steps.append(f"{_sparsity_text(low)} → {_sparsity_text(high)}: {change}")
    return text + f" Each step up in sparsity{' (paired over the same windows)' if ppl else ''}: {'; '.join(steps)}."


LARGE_RATIO = 100.0  # from here on a ratio to the dense model is shown without decimals


def _doubling(points: dict[float, pd.DataFrame], dense_value: float, metric: str) -> str:
    """Where a perplexity first exceeds twice the dense model's."""
    ratios = {s: float(rows[metric].mean()) / dense_value for s, rows in points.items()}
    above = [s for s, r in ratios.items() if r >= 2]
    if not above:
        highest = max(ratios)
        return f"It stays below twice the dense perplexity up to {_sparsity_text(highest)} ({ratios[highest]:.2f}×)."
    first = min(above)
    below = [s for s in ratios if s < first]
    before = f", {ratios[max(below)]:.2f}× at {_sparsity_text(max(below))}" if below else " (the lowest sparsity run)"
    return f"It first exceeds twice the dense perplexity at {_sparsity_text(first)}{before}."


def _below_dense(points: dict[float, pd.DataFrame], dense: pd.DataFrame, metric: str) -> str:
    """Where an accuracy first falls below the dense model's beyond noise (2 SE of the difference)."""
    dense_value, dense_se = float(dense[metric].mean()), _stderr(dense, metric)
    for sparsity, rows in points.items():
        value = float(rows[metric].mean())
        shown = difference(value, _stderr(rows, metric), dense_value, dense_se)
        if value < dense_value and "beyond noise" in shown:
            return f"It first falls below the dense model beyond noise at {_sparsity_text(sparsity)}: {shown}."
    if dense_se is None:
        return "The dense model recorded no standard error, so no point is judged against it."
    return "At no sparsity is it below the dense model beyond noise (2 SE of the difference)."


IN_DOMAIN = {"gsm8k": ("gsm8k", "prunelab_basic_arithmetic", "prunelab_mmlu_math"),
             "math": ("math", "prunelab_basic_arithmetic", "prunelab_mmlu_math")}  # calibration set -> its domain


def in_domain_verdict(frame: pd.DataFrame, context: list[str]) -> str:
    """Does calibrating on the evaluation's own domain (GSM8K for math) help beyond noise, against
    general text (wiki, or c4 online)? One sentence over the domain's perplexity and accuracies."""
    sets = set(frame["calib_data"].astype(str))
    domain = next((d for d in IN_DOMAIN if d in sets), None)
    general = next((g for g in ("wiki", "c4", "wikitext2") if g in sets), None)
    if domain is None or general is None:
        return ""
    parts, helps, hurts = [], [], []
    for metric in headline(frame):
        name = metric.removeprefix("eval/ppl_") if metric.startswith("eval/ppl_") else metric.split("/")[1]
        if name not in IN_DOMAIN[domain]:
            continue
        ours, theirs = frame[frame["calib_data"] == domain], frame[frame["calib_data"] == general]
        if ours[metric].isna().all() or theirs[metric].isna().all():
            continue
        a, b = float(ours[metric].mean()), float(theirs[metric].mean())
        if metric.startswith("eval/ppl_"):
            found = noise.compare(ours, theirs, metric)
            parts.append(f"{_metric_name(metric)} {found.text() if found else _change(a, b).removeprefix('perplexity ')}")
            if found is not None and found.beyond_noise:
                (helps if a < b else hurts).append(_metric_name(metric))
            continue
        shown = difference(a, _stderr(ours, metric), b, _stderr(theirs, metric))
        parts.append(f"{_metric_name(metric)} {shown}")
        if "beyond noise" in shown:
            (helps if a > b else hurts).append(_metric_name(metric))
    if not parts:
        return ""
    where = f" ({', '.join(context)} pooled)" if context else ""
    verdict = "; ".join([*([f"it helps beyond noise on {', '.join(helps)}"] if helps else []),
                         *([f"it hurts beyond noise on {', '.join(hurts)}"] if hurts else [])]) \
        or "no difference is beyond noise (2 SE of the difference)"
    return (f"In-domain calibration ({domain}) against general text ({general}){where}: {'; '.join(parts)}. "
            f"Verdict: {verdict}.")


@dataclass(frozen=True)
class Best:
    """The best value of an axis for one metric, checked against the value the findings compare it
    with (the reference, else the runner-up): ``beyond_noise`` is ``None`` without a noise estimate."""

    value: object
    against: object
    beyond_noise: bool | None
    text: str     # the difference with its noise, as the findings write it


def compared_with(ordered: pd.Index, reference) -> object:
    """What the best of ``ordered`` (best first) is compared with: the reference when it is there
    and not the best itself, else the runner-up."""
    return reference if reference is not None and reference in ordered and reference != ordered[0] else ordered[1]


def best_point(group: pd.DataFrame, values: pd.Series, metric: str, reference=None) -> Best | None:
    """The findings' rule for "best", for any caller (the figures' stars): the best mean of
    ``metric`` over ``values`` against :func:`compared_with`, beyond noise as the findings judge it
    (perplexity: paired per-window losses, :mod:`.noise`; accuracy: 2 SE of the difference)."""
    means = group.groupby(values, sort=False)[metric].mean().dropna()
    if len(means) < 2:
        return None
    ordered = means.sort_values(ascending=metric.startswith("eval/ppl_"))
    best = ordered.index[0]
    against = compared_with(ordered.index, reference)
    rows_best, rows_against = group[values == best], group[values == against]
    if metric.startswith("eval/ppl_"):
        found = noise.compare(rows_best, rows_against, metric)
        return Best(best, against, None if found is None else found.beyond_noise, found.text() if found else "no noise estimate")
    se_best, se_against = _stderr(rows_best, metric), _stderr(rows_against, metric)
    shown = difference(ordered.iloc[0], se_best, means[against], se_against)
    return Best(best, against, None if "no standard error" in shown else "beyond noise" in shown, shown)


def ppl_verdict(rows_a: pd.DataFrame, rows_b: pd.DataFrame, metric: str, a: str, b: str) -> str:
    """``a`` (the lower perplexity) against ``b``: "best" only beyond noise, else "lowest, within noise"."""
    found = noise.compare(rows_a, rows_b, metric)
    if found is None:
        return f"Lowest: {a} ({_change_words(rows_a, rows_b, metric)} than {b}; no per-window losses recorded, so no noise " \
               "estimate and no best)."
    if found.beyond_noise:
        return f"Best: {a}, {found.text()} against {b}."
    return f"Lowest: {a}, but within noise of {b}: {found.text()}; no best."


def _change_words(rows_a: pd.DataFrame, rows_b: pd.DataFrame, metric: str) -> str:
    return _change(float(rows_a[metric].mean()), float(rows_b[metric].mean()))


def _one(group: pd.DataFrame, axis: str, metric: str, where: str, size: str, dense: pd.DataFrame,
         dense_se: float | None) -> str:
    values = _axis_values(group, axis)
    means = group.groupby(values, sort=False)[metric].mean()
    if len(means) < 2:
        return ""
    if metric.startswith("eval/ppl_"):
        return _one_perplexity(group, values, means.sort_values(), axis, metric, where, size, dense)
    ordered = means.sort_values(ascending=False)
    errors = {v: _stderr(group[values == v], metric) for v in ordered.index}
    order = " > ".join(f"{_value_text(axis, v)} {_with_se(m, errors[v], metric)}" for v, m in ordered.items())
    best, best_value = ordered.index[0], ordered.iloc[0]
    text = f"{_metric_name(metric)} ({'; '.join(filter(None, (where, size)))}): {order}."
    reference = 0.0 if axis == "method.alpha" else REFERENCES.get(axis)
    if reference is not None and reference in means.index and reference != best:
        shown = difference(best_value, errors[best], means[reference], errors[reference])
        name = AXIS_NAMES.get(axis, knob_label(axis))
        word = f"Best {name}" if "beyond noise" in shown else f"Highest {name} (no best)"
        text += f" {word}: {_value_text(axis, best)}, {shown} against {REFERENCE_NAMES.get(axis, _value_text(axis, reference))}."
    elif reference is not None and reference == best:
        text += f" {REFERENCE_NAMES.get(axis, _value_text(axis, reference))} is highest; " + "; ".join(
            f"{_value_text(axis, v)} {difference(means[v], errors[v], means[reference], errors[reference])}"
            for v in ordered.index if v != reference) + "."
    else:
        runner = ordered.index[1]
        text += (f" {_value_text(axis, best)} vs {_value_text(axis, runner)}: "
                 f"{difference(best_value, errors[best], ordered.iloc[1], errors[runner])}.")
    if len(dense) and metric in dense and dense[metric].notna().any():
        value = float(dense[metric].mean())
        text += f" Dense: {_with_se(value, dense_se, metric)}; highest pruned {difference(best_value, errors[best], value, dense_se)}."
    return text


def _one_perplexity(group: pd.DataFrame, values: pd.Series, ordered: pd.Series, axis: str, metric: str, where: str,
                    size: str, dense: pd.DataFrame) -> str:
    """The ordering of a perplexity along ``axis`` with each value's noise, the lowest against the
    reference (or the runner-up) with the paired noise of the difference, and the dense model."""
    rows = {v: group[values == v] for v in ordered.index}
    order = " < ".join(f"{_value_text(axis, v)} {_with_se(m, noise.relative_se(rows[v], metric), metric)}"
                       for v, m in ordered.items())
    text = f"{_metric_name(metric)} ({'; '.join(filter(None, (where, size)))}): {order}."
    best = ordered.index[0]
    reference = 0.0 if axis == "method.alpha" else REFERENCES.get(axis)
    if reference is not None and reference in ordered.index and reference != best:
        name = REFERENCE_NAMES.get(axis, _value_text(axis, reference))
        text += " " + ppl_verdict(rows[best], rows[reference], metric, _value_text(axis, best), name)
    else:
        runner = ordered.index[1]
        verdict = ppl_verdict(rows[best], rows[runner], metric, _value_text(axis, best), _value_text(axis, runner))
        if reference is not None and reference == best and not verdict.startswith("Best"):
            verdict = f"{REFERENCE_NAMES.get(axis, _value_text(axis, reference))} (the reference) is lowest. " + verdict
        text += " " + verdict
    if len(dense) and metric in dense and dense[metric].notna().any():
        value = float(dense[metric].mean())
        text += f" Dense: {_number(value, metric)} (lowest pruned is {ordered.iloc[0] / value:.2f}× dense)."
    return text


def _change(value: float, reference: float) -> str:
    """``perplexity 23% lower (..)`` / ``perplexity 2.1× (..)``."""
    if reference <= 0:
        return f"{value:.4g} vs {reference:.4g}"
    ratio = value / reference
    both = f"({_number(value, 'ppl')} vs {_number(reference, 'ppl')})"
    if ratio >= 2:
        return f"perplexity {ratio:.1f}× {both}"
    percent = 100 * abs(1 - ratio)
    shown = f"{percent:.1f}%" if percent < 10 else f"{percent:.0f}%"
    return f"perplexity {shown} {'lower' if ratio < 1 else 'higher'} {both}"
