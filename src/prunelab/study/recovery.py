"""The recovery tables of a sweep with ``recover=lora`` jobs (``+experiment=recovery``).

``recovery``: one row per recovered job and evaluated set: the pruned, merged (zeros filled) and
final perplexity, the cost of re-masking, the fraction of the log-perplexity gap recovery closed
against the dense model and, beside it, against the dense model after the same fine-tune (the
dense+LoRA control of the same step budget: what the fine-tune does without any pruning).
``recovery_jobs``: one row per recovered job: the training budget (tokens, CPU minutes as on idle
cores) and the zero-shot mean accuracy before and after recovery where the sweep scored it."""

from __future__ import annotations

import math

import pandas as pd

from prunelab.study.records import Sweep, prunes_nothing, with_setting

STEPS = "recover/steps"
INDEX = ["method", "setting", "steps"]


def _sets(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix("recover/ppl_").removesuffix("_before") for c in frame.columns
            if c.startswith("recover/ppl_") and c.endswith("_before")]


def _log_gap_closed(pruned: float, recovered: float, dense: float) -> float:
    """``(log pruned - log recovered) / (log pruned - log dense)``, as ``prunelab.recover.recovered_fraction``."""
    values = (pruned, recovered, dense)
    if any(pd.isna(v) or v <= 0 for v in values) or pruned == dense:
        return math.nan
    return (math.log(pruned) - math.log(recovered)) / (math.log(pruned) - math.log(dense))


def _value(row: pd.Series, column: str) -> float:
    value = row.get(column, math.nan)
    return math.nan if value is None or pd.isna(value) else float(value)


def _recovered(sweep: Sweep) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    frame = with_setting(sweep.completed)
    return frame, prunes_nothing(frame), frame[STEPS].notna()


def recovery_table(sweep: Sweep) -> pd.DataFrame:
    """One row per recovered job and evaluated set (empty when the sweep recovered nothing)."""
    if sweep.completed.empty or STEPS not in sweep.completed.columns:
        return pd.DataFrame()
    frame, dense, recovered = _recovered(sweep)
    rows = []
    for index, row in frame[recovered].iterrows():
        for name in _sets(frame):
            ppl, before = f"eval/ppl_{name}", f"recover/ppl_{name}_before"
            plain_dense = frame.loc[dense & ~recovered, ppl].mean() if ppl in frame else math.nan
            if pd.isna(plain_dense):  # no dense job without recovery: the control's own starting point
                plain_dense = frame.loc[dense & recovered, before].mean()
            control = frame[dense & recovered & frame[STEPS].eq(row[STEPS])]
            control_ppl = control[ppl].mean() if not control.empty else math.nan
            is_dense = bool(dense.loc[index])
            rows.append({
                "method": row.get("method"), "setting": row["setting"], "steps": int(row[STEPS]), "set": name,
                "pruned": _value(row, before),
                "merged, zeros filled": _value(row, f"recover/ppl_{name}_merged_dense"),
                "recovered": _value(row, ppl),
                "re-mask cost (log)": _value(row, f"recover/remask_cost_{name}"),
                "dense": plain_dense,
                "gap closed vs dense": math.nan if is_dense else _log_gap_closed(_value(row, before), _value(row, ppl),
                                                                                 plain_dense),
                "dense+LoRA": control_ppl,
                "gap closed vs dense+LoRA": math.nan if is_dense else _log_gap_closed(_value(row, before), _value(row, ppl),
                                                                                      control_ppl),
            })
    return pd.DataFrame(rows).set_index([*INDEX, "set"])


def recovery_jobs_table(sweep: Sweep) -> pd.DataFrame:
    """One row per recovered job: its training budget and, when scored, zero-shot before and after."""
    if sweep.completed.empty or STEPS not in sweep.completed.columns:
        return pd.DataFrame()
    frame, _, recovered = _recovered(sweep)
    rows = []
    for _, row in frame[recovered].iterrows():
        out = {"method": row.get("method"), "setting": row["setting"], "steps": int(row[STEPS]),
               "training tokens": _value(row, "recover/train_tokens"),
               "training CPU min (idle cores)": _value(row, "recover/train_idle_s") / 60,
               "achieved sparsity": _value(row, "recover/achieved_sparsity")}
        before, after = _value(row, "recover/zeroshot_before/mean_acc"), _value(row, "zeroshot/mean_acc")
        if not math.isnan(before):
            tasks = sorted(c.split("/")[2] for c in frame.columns
                           if c.startswith("recover/zeroshot_before/") and c.endswith("/samples") and pd.notna(row.get(c)))
            out["zero-shot tasks"] = ", ".join(f"{t} ({int(row[f'recover/zeroshot_before/{t}/samples'])})" for t in tasks)
            out["zero-shot before (%)"] = 100 * before
            out["zero-shot after (%)"] = 100 * after
            out["change (points)"] = 100 * (after - before)
            out["± (points, 1 SE)"] = 100 * _value(row, "zeroshot/mean_acc_stderr")
        rows.append(out)
    return pd.DataFrame(rows).set_index(INDEX)
