"""The papers' orderings, checked on our numbers with their noise: reproduced or not.

Each :class:`Ordering` names a claim of a paper (``/work/shared/REFERENCE.md``) as "``better``
has lower perplexity than ``worse`` at ``setting``", with the published numbers behind it. On a
sweep's completed jobs, within each setting of the other knobs (calibration set, modules...),
the two are compared window by window (:func:`prunelab.study.noise.compare`) and the claim is

- **reproduced** when ``better`` is lower beyond noise (2 SE of the paired difference),
- **not reproduced (opposite)** when ``better`` is *higher* beyond noise,
- **inconclusive** when the difference is within noise,

and where no per-window losses were recorded the line says only which is lower.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from prunelab.study import noise
from prunelab.study.records import GENERIC, with_setting


@dataclass(frozen=True)
class Ordering:
    claim: str        # what the paper shows, in words
    better: str       # method (or "method@setting") with the lower perplexity in the paper
    worse: str
    settings: tuple[str, ...]  # ``with_setting`` labels it is checked at ("*": every setting both ran)
    evidence: str     # the published numbers


def _at(spec: str, setting: str) -> tuple[str, str]:
    """``wanda@2:4`` -> (wanda, 2:4); ``wanda`` -> (wanda, setting)."""
    method, _, where = spec.partition("@")
    return method, where or setting


ORDERINGS: tuple[Ordering, ...] = (
    Ordering("RIA below Wanda", "ria", "wanda", ("*",),
             "RIA README, LLaMA-3-8B 50%: RIA 9.34 vs Wanda 10.82"),
    Ordering("OWL-Wanda below uniform Wanda", "owl_wanda", "wanda", ("*",),
             "OWL README, LLaMA-7B 70%: 24.55 vs 85.77"),
    Ordering("SparseGPT below Wanda at 2:4", "sparsegpt", "wanda", ("2:4",),
             "Wanda README, LLaMA-2-7B 2:4: SparseGPT 10.17 vs Wanda 11.02 (at 50% unstructured they are "
             "within 1.5%: 6.51 vs 6.42)"),
    Ordering("SparseGPT below magnitude at 50%", "sparsegpt", "magnitude", ("unstructured 50%",),
             "Wanda README, LLaMA-2-7B: 6.51 vs 14.89"),
    Ordering("Wanda below magnitude at 50%", "wanda", "magnitude", ("unstructured 50%",),
             "Wanda README, LLaMA-2-7B: 6.42 vs 14.89"),
    Ordering("RIA below magnitude at 50%", "ria", "magnitude", ("unstructured 50%",),
             "RIA paper: RIA far below magnitude at 50%"),
    *(Ordering(f"{m}: 4:8 below 2:4", f"{m}@4:8", f"{m}@2:4", ("",), "Wanda README, every method: e.g. Wanda 7.97 vs 11.02")
      for m in ("magnitude", "wanda", "sparsegpt", "ria")),
    *(Ordering(f"{m}: unstructured 50% below 4:8", f"{m}@unstructured 50%", f"{m}@4:8", ("",),
               "Wanda README, every method: e.g. Wanda 6.42 vs 7.97") for m in ("magnitude", "wanda", "sparsegpt", "ria")),
    *(Ordering(f"FLAP below Wanda-sp at {s}", "flap", "wanda_sp", (s,), "FLAP paper: FLAP below Wanda-sp at every ratio")
      for s in ("structured 20%", "structured 30%", "structured 50%")),
)


@dataclass(frozen=True)
class Verdict:
    ordering: Ordering
    setting: str
    where: str        # the other knobs' setting, "" when none vary
    metric: str
    better_ppl: float
    worse_ppl: float
    comparison: noise.Comparison | None

    @property
    def outcome(self) -> str:
        c = self.comparison
        if c is None:
            return "lower (no noise estimate)" if self.better_ppl < self.worse_ppl else "higher (no noise estimate)"
        if not c.beyond_noise:
            return "inconclusive"
        return "reproduced" if c.delta < 0 else "not reproduced (opposite)"

    def text(self) -> str:
        where = ", ".join(x for x in (self.setting, self.where) if x)
        shown = self.comparison.text() if self.comparison else "no per-window losses recorded"
        name = self.metric.removeprefix("eval/ppl_")
        return (f"**{self.outcome}**: {self.ordering.claim} ({where}; {name}): {_ppl(self.better_ppl)} vs "
                f"{_ppl(self.worse_ppl)}, {shown}. Paper: {self.ordering.evidence}.")


def _ppl(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.2f}"


def _context(frame: pd.DataFrame) -> list[str]:
    """Generic knobs other than method, sparsity and pattern that vary (blank: the knob unused)."""
    return [c for c in GENERIC if c in frame.columns and c not in ("method", "sparsity", "pattern")
            and frame[c].dropna().astype(str).nunique() > 1]


def verdicts(completed: pd.DataFrame, metrics: list[str]) -> list[Verdict]:
    """Every ordering of :data:`ORDERINGS` that the completed jobs can test, on each perplexity."""
    frame = with_setting(completed)
    found: list[Verdict] = []
    if frame.empty:
        return found
    context = _context(frame)
    frame = frame.assign(**{c: frame[c].astype(str) for c in context})
    for metric in metrics:
        data = frame.dropna(subset=[metric])
        for key, group in data.groupby(context, sort=False) if context else [((), data)]:
            key = key if isinstance(key, tuple) else (key,)
            where = ", ".join(f"{c}={v}" for c, v in zip(context, key))
            for label, rows in _lambda_views(group):
                found += _check(rows, metric, ", ".join(x for x in (where, label) if x))
    return found


LAMBDA = "method.lambda_"


def _lambda_views(group: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """OWL at λ = 0 is uniform sparsity: in a λ sweep each λ > 0 is set against it, its rows
    relabelled ``wanda`` (uniform Wanda), one view per λ."""
    if LAMBDA not in group or "owl_wanda" not in set(group["method"]):
        return [("", group)]
    lam = pd.to_numeric(group[LAMBDA], errors="coerce")
    owl = group["method"] == "owl_wanda"
    uniform = owl & lam.eq(0)
    if not uniform.any():
        return [("", group)]
    others = group[~owl]
    views = []
    for value in sorted(set(lam[owl & ~uniform].dropna())):
        rows = pd.concat([others, group[uniform].assign(method="wanda"), group[owl & lam.eq(value)]])
        views.append((f"λ={value:g} vs λ=0", rows))
    return views or [("", group)]


def _check(group: pd.DataFrame, metric: str, where: str) -> list[Verdict]:
    found = []
    settings = list(dict.fromkeys(group["setting"]))
    for ordering in ORDERINGS:
        places = settings if ordering.settings == ("*",) else list(ordering.settings)
        for setting in places:
            (m_better, s_better), (m_worse, s_worse) = _at(ordering.better, setting), _at(ordering.worse, setting)
            better = group[(group["method"] == m_better) & (group["setting"] == s_better)]
            worse = group[(group["method"] == m_worse) & (group["setting"] == s_worse)]
            if better.empty or worse.empty:
                continue
            found.append(Verdict(ordering, setting or f"{s_better} vs {s_worse}", where, metric,
                                 float(better[metric].mean()), float(worse[metric].mean()),
                                 noise.compare(better, worse, metric)))
    return found
