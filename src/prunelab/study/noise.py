"""How much of a perplexity difference is noise: paired differences of per-window losses.

Every run records, next to ``eval/ppl_<set>``, the mean next-token NLL of each evaluation window
(``noise/ppl_<set>_window_nll``, :mod:`prunelab.evaluate`) and the standard error of log-perplexity
(``noise/ppl_<set>_se_log``). Windows all predict the same number of tokens, so
``log ppl = mean(window NLL)``. Two runs evaluated on the same windows are compared window by
window: ``d_i = nll_a,i - nll_b,i``, ``Δ = mean(d) = log(ppl_a / ppl_b)``, ``SE = sd(d) / sqrt(n)``.
The pairing removes what the windows share (some text is simply harder), so it is much tighter
than two independent errors. Where the windows differ (or one record predates them), the
unpaired ``SE = sqrt(se_a² + se_b²)`` is used. A difference is *beyond noise* when ``|Δ| > 2 SE``
(as for accuracies, :data:`NOISE_SE`), and with few paired windows when it exceeds Student's
two-sided 95% critical value for ``n - 1`` degrees of freedom (3.18 SE with 4 windows, 2.36 with 8,
2.04 with 32): a standard error estimated from a handful of windows is itself uncertain.
The noise here is the sampling of evaluation text; seeds
(calibration sampling) are a second source that only repeated seeds measure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from prunelab.study.records import NOISE_PREFIX

NOISE_SE = 2.0  # |difference| above 2 standard errors of the difference: beyond noise


def window_column(metric: str) -> str:
    """``eval/ppl_wiki`` -> ``noise/ppl_wiki_window_nll``."""
    return f"{NOISE_PREFIX}{metric.removeprefix('eval/')}_window_nll"


def se_column(metric: str) -> str:
    """``eval/ppl_wiki`` -> ``noise/ppl_wiki_se_log``."""
    return f"{NOISE_PREFIX}{metric.removeprefix('eval/')}_se_log"


def is_se_column(column: str) -> bool:
    return column.startswith(NOISE_PREFIX) and column.endswith("_se_log")


def _windows(rows: pd.DataFrame, metric: str) -> np.ndarray | None:
    """The rows' per-window NLL (averaged over rows, e.g. repeated configs); ``None`` when a row has
    none or the rows were evaluated on different numbers of windows."""
    column = window_column(metric)
    if column not in rows or rows.empty:
        return None
    lists = []
    for cell in rows[column]:
        if not isinstance(cell, str):
            return None
        lists.append(json.loads(cell))
    if len({len(v) for v in lists}) != 1:
        return None
    return np.mean(np.asarray(lists, dtype=float), axis=0)


def _se_log(rows: pd.DataFrame, metric: str) -> float | None:
    column = se_column(metric)
    if column not in rows:
        return None
    values = pd.to_numeric(rows[column], errors="coerce")
    if values.empty or values.isna().any():
        return None
    return float(math.sqrt((values ** 2).sum()) / len(values))


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` in log-perplexity: ``delta = log(ppl_a / ppl_b)`` and its standard error."""

    delta: float
    se: float
    windows: int     # how many windows were paired (0: unpaired, from the two standard errors)

    @property
    def z(self) -> float:
        return abs(self.delta) / self.se if self.se > 0 else math.inf

    @property
    def threshold(self) -> float:
        """How many standard errors a difference must exceed: 2, or Student's 95% value for few windows."""
        if self.windows < 2:
            return NOISE_SE
        return max(NOISE_SE, float(stats.t.ppf(0.975, self.windows - 1)))

    @property
    def beyond_noise(self) -> bool:
        return self.z > self.threshold

    @property
    def percent(self) -> float:
        """``ppl_a / ppl_b - 1`` in percent."""
        return 100 * math.expm1(self.delta)

    def text(self) -> str:
        """``+12.3% (paired over 8 windows: 5.1 SE, beyond noise)``."""
        how = f"paired over {self.windows} windows" if self.windows else "unpaired"
        z = f"{self.z:.1f}" if math.isfinite(self.z) else "∞"
        needs = f", needs {self.threshold:.1f}" if self.threshold > NOISE_SE else ""
        return f"{_percent(self.percent)} ({how}: {z} SE{needs}, {'beyond' if self.beyond_noise else 'within'} noise)"


def _percent(value: float) -> str:
    """``+12.3%``, ``-0.04%`` (two decimals below 1%), ``3.2×`` from +100% on."""
    if abs(value) >= 100:
        return f"{value / 100 + 1:.1f}×"
    return f"{value:+.2f}%" if abs(value) < 1 else f"{value:+.1f}%"


def compare(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> Comparison | None:
    """Perplexity of rows ``a`` against rows ``b`` (their means), with its noise; ``None`` when
    either has no perplexity, or neither per-window losses nor standard errors were recorded."""
    ppl_a = pd.to_numeric(a.get(metric, pd.Series(dtype=float)), errors="coerce").dropna()
    ppl_b = pd.to_numeric(b.get(metric, pd.Series(dtype=float)), errors="coerce").dropna()
    if ppl_a.empty or ppl_b.empty or (ppl_a <= 0).any() or (ppl_b <= 0).any():
        return None
    delta = math.log(float(ppl_a.mean())) - math.log(float(ppl_b.mean()))
    wa, wb = _windows(a, metric), _windows(b, metric)
    if wa is not None and wb is not None and len(wa) == len(wb) and len(wa) >= 2:
        d = wa - wb
        return Comparison(delta, float(np.std(d, ddof=1) / math.sqrt(len(d))), len(d))
    se_a, se_b = _se_log(a, metric), _se_log(b, metric)
    if se_a is None or se_b is None:
        return None
    return Comparison(delta, math.sqrt(se_a ** 2 + se_b ** 2), 0)


def share_of_value(se_log: float) -> float:
    """One standard error of log-perplexity as a share of the perplexity: ``exp(SE) - 1`` (0.1 nats:
    10.5% of its value; 1.2 nats: 232%, the perplexity is known to a factor of 3.3)."""
    return math.expm1(se_log)


def relative_se(rows: pd.DataFrame, metric: str) -> float | None:
    """The standard error of log-perplexity of the rows (≈ the relative standard error of perplexity)."""
    return _se_log(rows, metric)
