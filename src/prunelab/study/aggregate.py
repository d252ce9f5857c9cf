"""A sweep directory -> one table: every job's status, knobs and scalar metrics in ``results.csv``.

``python -m prunelab.study.aggregate <sweep_dir> [--no-report]`` writes, in the sweep directory,
``results.csv`` (one row per job), ``block_sparsity.csv`` (long form, per job and block),
``tables/*.csv|md`` (pivot tables of the headline metrics), ``figures/*.png`` and, unless told
not to, ``report.md`` + ``report.pdf``. The Hydra callback runs the same when a multirun ends.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

# The study knobs, as (column, dotted config key); lists are joined with "+".
KNOBS: tuple[tuple[str, str], ...] = (
    ("model", "model.name"),
    ("method", "method.name"),
    ("sparsity", "sparsity"),
    ("pattern", "pattern"),
    ("ria_alpha", "ria_alpha"),
    ("owl_lambda", "owl_lambda"),
    ("modules", "target.modules"),
    ("blocks", "target.blocks"),
    ("calib_data", "calib_data.dataset"),
    ("calib_nsamples", "calib_data.nsamples"),
    ("calib_seqlen", "calib_data.seqlen"),
    ("seed", "seed"),
)
ID_COLUMNS = ("job", "status", "error", "overrides", "fingerprint", "reused_from")


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

    def metric_columns(self) -> list[str]:
        return [c for c in self.results.columns if "/" in c]

    def varying_knobs(self, frame: pd.DataFrame | None = None) -> list[str]:
        """Knob columns with more than one value among the completed jobs, in ``KNOBS`` order.

        A dense baseline in the sweep makes ``method`` vary, but not the knobs it ignores
        (sparsity, calibration...): those are judged on the pruned jobs alone.
        """
        frame = self.completed if frame is None else frame
        pruned = frame[frame["method"] != "dense"] if "method" in frame else frame
        judged = pruned if len(pruned) else frame
        varying = [name for name, _ in KNOBS
                   if name in judged.columns and judged[name].astype(str).nunique(dropna=False) > 1]
        if len(pruned) < len(frame) and len(pruned) and "method" not in varying:
            varying.insert(0, "method")
        return varying


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _row(job: str, record: dict[str, Any]) -> dict[str, Any]:
    config = record.get("config") or {}
    row: dict[str, Any] = {
        "job": job,
        "status": record.get("status", "unknown"),
        "error": record.get("error", ""),
        "overrides": " ".join(record.get("overrides") or []),
        "fingerprint": record.get("fingerprint", ""),
        "reused_from": record.get("reused_from", ""),
    }
    for name, dotted in KNOBS:
        row[name] = _cell(_get(config, dotted))
    if row["method"] == "dense":  # the baseline prunes nothing, whatever `sparsity` says
        row["sparsity"] = 0.0
    known = {dotted for _, dotted in KNOBS}
    for override in record.get("overrides") or []:  # any other swept key gets its own column
        key, _, text = override.lstrip("+~").partition("=")
        if key in known or key == "experiment" or key.startswith(("logger", "hydra")):
            continue
        if any(dotted.startswith(key + ".") for dotted in known):  # a group already shown (model=...)
            continue
        value = _get(config, key)
        row[f"cfg:{key}"] = text if value is None or isinstance(value, dict) else _cell(value)
    for key, value in (record.get("metrics") or {}).items():
        if isinstance(value, (int, float, str, bool)):
            row[key] = value
    return row


def _job_name(sweep_dir: Path, path: Path) -> str:
    return str(path.parent.relative_to(sweep_dir)) or "."


def _job_order(job: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(job).parts)


def collect(sweep_dir: Path | str) -> Sweep:
    """Read every ``metrics.json`` under ``sweep_dir``; a skipped job whose source is present is dropped."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    records: dict[str, dict[str, Any]] = {}
    for path in sweep_dir.rglob("metrics.json"):
        try:
            records[_job_name(sweep_dir, path)] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            log.warning("unreadable %s: %s", path, error)
    completed_prints = {r.get("fingerprint") for r in records.values() if r.get("status") == "completed"}
    records = {job: r for job, r in sorted(records.items(), key=lambda item: _job_order(item[0]))
               if not (r.get("status") == "skipped" and r.get("fingerprint") in completed_prints)}
    rows = [_row(job, record) for job, record in records.items()]
    results = pd.DataFrame(rows)
    if results.empty:
        results = pd.DataFrame(columns=[*ID_COLUMNS, *(name for name, _ in KNOBS)])
    blocks = [
        {"job": job, "method": _get(r.get("config") or {}, "method.name"), "sparsity": _get(r.get("config") or {}, "sparsity"),
         "owl_lambda": _get(r.get("config") or {}, "owl_lambda"), "block": index, "block_sparsity": value}
        for job, r in records.items() if r.get("status") in ("completed", "skipped")
        for index, value in enumerate((r.get("metrics") or {}).get("prune/block_sparsity") or [])
    ]
    return Sweep(sweep_dir, results, pd.DataFrame(blocks), records)


# ------------------------------------------------------------------------------------ pivot tables
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


def with_setting(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``setting``: "unstructured 70%", "2:4" or "dense", one axis for studies that mix them."""
    def label(row) -> str:
        if row.get("method") == "dense":
            return "dense"
        if row.get("pattern") not in (None, "unstructured") and isinstance(row.get("pattern"), str):
            return str(row["pattern"])
        return f"unstructured {float(row['sparsity']):.0%}" if pd.notna(row.get("sparsity")) else "dense"

    return frame.assign(setting=frame.apply(label, axis=1)) if not frame.empty else frame.assign(setting=[])


def table_axes(sweep: Sweep) -> tuple[list[str], str | None]:
    """Rows and column of the pivot tables: sparsity (or the pattern setting) across, other knobs down."""
    varying = sweep.varying_knobs()
    if len(varying) <= 1:
        return varying or ["method"], None
    if "sparsity" in varying and "pattern" in varying:
        varying = [k for k in varying if k not in ("sparsity", "pattern")] + ["setting"]
    across = "sparsity" if "sparsity" in varying else varying[-1]
    return [k for k in varying if k != across], across


def pivot(sweep: Sweep, metric: str) -> pd.DataFrame:
    """One metric by the varying knobs (mean over repeated configs, e.g. seeds)."""
    if metric not in sweep.results:
        return pd.DataFrame()
    frame = with_setting(sweep.completed.dropna(subset=[metric]))
    if frame.empty:
        return pd.DataFrame()
    rows, across = table_axes(sweep)
    frame = frame.assign(**{k: frame[k].astype(str) for k in rows})
    if across is None:
        return frame.groupby(rows, sort=False)[metric].mean().to_frame(metric)
    table = frame.pivot_table(index=rows, columns=across, values=metric, aggfunc="mean", sort=False)
    return table[sorted(table.columns, key=float)] if all(map(_is_number, table.columns)) else table


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def summary_table(sweep: Sweep) -> pd.DataFrame:
    """Every headline metric (columns) for every distinct setting of the varying knobs (rows)."""
    metrics = headline_metrics(sweep)
    frame = with_setting(sweep.completed)
    if frame.empty or not metrics:
        return pd.DataFrame()
    rows = sweep.varying_knobs() or ["method"]
    frame = frame.assign(**{k: frame[k].astype(str) for k in rows})
    return frame.groupby(rows, sort=False)[metrics].mean()


def write_tables(sweep: Sweep, directory: Path) -> dict[str, pd.DataFrame]:
    directory.mkdir(parents=True, exist_ok=True)
    tables = {}
    summary = summary_table(sweep)
    if not summary.empty:
        summary.to_csv(directory / "summary.csv")
        (directory / "summary.md").write_text(format_markdown(summary, "summary") + "\n")
        tables["summary"] = summary
    for metric in headline_metrics(sweep):
        table = pivot(sweep, metric)
        if table.empty:
            continue
        name = metric.replace("/", "_")
        table.to_csv(directory / f"{name}.csv")
        (directory / f"{name}.md").write_text(format_markdown(table, metric) + "\n")
        tables[metric] = table
    return tables


def format_markdown(table: pd.DataFrame, metric: str) -> str:
    """A pivot table as Markdown: index levels as named columns, 4 digits for accuracies, 2 otherwise."""
    shown = table.reset_index()
    across = table.columns.name
    shown.columns = [f"{across}={c}" if across and c in table.columns else str(c) for c in shown.columns]

    def fmt(value, column: str) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4f}" if "acc" in (metric + column) else f"{value:.2f}"
        return str(value)

    cells = [[fmt(v, c) for v, c in zip(row, shown.columns)] for row in shown.itertuples(index=False)]
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" if i < table.index.nlevels else "---:" for i in range(len(shown.columns))) + "|"
    return "\n".join([header, rule, *("| " + " | ".join(row) + " |" for row in cells)])


# ------------------------------------------------------------------------------------------- CLI
def aggregate(sweep_dir: Path | str, figures: bool = True, report: bool = True, logger_cfg=None,
              group: str | None = None) -> Sweep:
    """Write the table, pivot tables, figures and report of one sweep; return what was gathered.

    With a W&B ``logger_cfg``, also log a summary run to the sweep's group (default: its directory).
    """
    sweep = collect(sweep_dir)
    sweep.results.to_csv(sweep.directory / "results.csv", index=False)
    if not sweep.block_sparsity.empty:
        sweep.block_sparsity.to_csv(sweep.directory / "block_sparsity.csv", index=False)
    counts = sweep.results["status"].value_counts().to_dict() if not sweep.results.empty else {}
    log.info("%s: %d jobs %s -> results.csv", sweep.directory, len(sweep.results), counts)
    tables = write_tables(sweep, sweep.directory / "tables")
    made: dict[str, Path] = {}
    if figures:
        from prunelab.study.figures import draw_all

        made = draw_all(sweep, sweep.directory / "figures")
    if report:
        from prunelab.study.report import write_report

        write_report(sweep, tables, made)
    if logger_cfg is not None:
        from prunelab.study.tracking import log_sweep_summary

        log_sweep_summary(sweep, logger_cfg, made, group=group)
    return sweep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory, e.g. multirun/sparsity_curve")
    parser.add_argument("--no-figures", action="store_true", help="only results.csv and the tables")
    parser.add_argument("--no-report", action="store_true", help="skip report.md / report.pdf")
    parser.add_argument("--wandb", choices=("offline", "online", "disabled"), default=None,
                        help="also log the summary table and figures to W&B in this mode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logger_cfg = {"kind": "wandb", "mode": args.wandb, "project": "prunelab"} if args.wandb else None
    sweep = aggregate(args.sweep_dir, figures=not args.no_figures, report=not args.no_report, logger_cfg=logger_cfg)
    print(f"{len(sweep.results)} jobs -> {sweep.directory / 'results.csv'}")


if __name__ == "__main__":
    main()
