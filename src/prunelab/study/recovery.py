"""The recovery table of a sweep with ``recover=lora`` jobs (``+experiment=recovery``): per job and
evaluated set, the pruned and recovered perplexity, the fraction of the log-perplexity gap to the
dense model that recovery closed, the cost of re-masking, and beside it the dense+LoRA control's
own gain at the same step budget (what the same fine-tune does without any pruning)."""

from __future__ import annotations

import math

import pandas as pd

from prunelab.study.records import Sweep, prunes_nothing, with_setting

STEPS = "recover/steps"


def _sets(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix("recover/ppl_").removesuffix("_before") for c in frame.columns
            if c.startswith("recover/ppl_") and c.endswith("_before")]


def _log_gap_closed(pruned: float, recovered: float, dense: float) -> float:
    """``(log pruned - log recovered) / (log pruned - log dense)``, as ``prunelab.recover.recovered_fraction``."""
    values = (pruned, recovered, dense)
    if any(pd.isna(v) or v <= 0 for v in values) or pruned == dense:
        return math.nan
    return (math.log(pruned) - math.log(recovered)) / (math.log(pruned) - math.log(dense))


def recovery_table(sweep: Sweep) -> pd.DataFrame:
    """One row per recovered job (empty when the sweep recovered nothing)."""
    frame = sweep.completed
    if frame.empty or STEPS not in frame.columns:
        return pd.DataFrame()
    frame = with_setting(frame)
    dense = prunes_nothing(frame)
    recovered = frame[STEPS].notna()
    rows = []
    for index, row in frame[recovered].iterrows():
        out = {"method": row.get("method"), "setting": row["setting"], "steps": int(row[STEPS])}
        for name in _sets(frame):
            ppl, before = f"eval/ppl_{name}", f"recover/ppl_{name}_before"
            plain_dense = frame.loc[dense & ~recovered, ppl].mean() if ppl in frame else math.nan
            if pd.isna(plain_dense):  # no dense job without recovery: the control's own starting point
                plain_dense = frame.loc[dense & recovered, before].mean()
            control = frame[dense & recovered & frame[STEPS].eq(row[STEPS])]
            out[f"{name} pruned"] = row[before]
            out[f"{name} recovered"] = row.get(ppl)
            out[f"{name} gap closed"] = math.nan if dense.loc[index] else _log_gap_closed(row[before], row.get(ppl), plain_dense)
            out[f"{name} re-mask cost (log)"] = row.get(f"recover/remask_cost_{name}", math.nan)
            out[f"{name} dense+LoRA gain (log)"] = (
                (control[before].map(math.log) - control[ppl].map(math.log)).mean() if not control.empty else math.nan)
        rows.append(out)
    return pd.DataFrame(rows).set_index(["method", "setting", "steps"])
