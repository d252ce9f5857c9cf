"""A sweep directory -> its table, pivot tables, figures, report and tracker summary.

``python -m prunelab.study.aggregate <sweep_dir> [--no-figures] [--no-report] [--wandb MODE]``
writes, in the sweep directory, ``results.csv`` (one row per job), ``block_sparsity.csv`` (long
form, per job and block), ``tables/*.csv|md`` (the headline metrics), ``figures/*.png`` and
``report.md`` + ``report.pdf``. The Hydra callback runs the same when a multirun ends.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from prunelab.naming import sweep_group
from prunelab.study import compression
from prunelab.study.dashboard import push, write_spec
from prunelab.study.figures import draw_all
from prunelab.study.records import (
    Sweep,
    collect,
    headline_metrics,
    pivot,
    prunes_nothing,
    speed_table,
    summary_table,
    table_axes,
    with_baseline,
)
from prunelab.study.recovery import recovery_jobs_table, recovery_table
from prunelab.study.report import markdown_table, timing_table, write_report
from prunelab.study.tracking import log_sweep_summary

log = logging.getLogger(__name__)


def tables(sweep: Sweep) -> dict[str, pd.DataFrame]:
    """``summary`` (every headline metric per setting, with standard errors where lm-eval gives them)
    and, when the sweep has a second axis to spread across (sparsity, pattern...), one pivot per
    headline metric. With one varying knob a pivot would repeat a column of the summary: none."""
    if compression.is_compression(sweep.completed):  # jobs differ by weight format too: its own tables, by format
        found = {**compression.tables(sweep), "recovery": recovery_table(sweep)}
        return {name: table for name, table in found.items() if not table.empty}
    own = sweep.results[~prunes_nothing(sweep.results)]  # a dense baseline alone is no second axis
    pivots = table_axes(Sweep(sweep.directory, own, sweep.block_sparsity, sweep.records))[1] is not None
    found = {"summary": summary_table(sweep),
             **({metric: pivot(sweep, metric) for metric in headline_metrics(sweep)} if pivots else {}),
             "recovery": recovery_table(sweep),  # these two: empty unless jobs ran recover=lora
             "recovery_jobs": recovery_jobs_table(sweep)}
    return {name: table for name, table in found.items() if not table.empty}


def write_tables(sweep: Sweep, directory: Path) -> dict[str, pd.DataFrame]:
    """:func:`tables`, the speed table (accuracy beside measured and ideal speedups) and the timing
    table (stage times, peak memory), as CSV and Markdown in ``directory`` (replacing earlier ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.*"):  # tables of an earlier aggregation that may no longer apply
        stale.unlink()
    found = tables(sweep)
    extra = {"speed": pd.DataFrame() if compression.is_compression(sweep.completed) else speed_table(sweep),
             "timing": timing_table(sweep)}
    for name, table in {**found, **{k: v for k, v in extra.items() if not v.empty}}.items():
        stem = name.replace("/", "_")
        table.to_csv(directory / f"{stem}.csv")
        (directory / f"{stem}.md").write_text(markdown_table(table, name) + "\n")
    return found


def aggregate_sweep(sweep_dir: Path | str, figures: bool = True, report: bool = True, logger_cfg: Any = None,
                    group: str | None = None, baseline: Sweep | None = None) -> tuple[Sweep, dict, dict]:
    """Write everything one sweep yields; return the sweep, its tables and its figures.

    ``baseline`` (a sweep of dense jobs) joins the tables, figures and report when the sweep has no
    dense job of its own. ``logger_cfg`` (a ``logger`` config node, with ``_target_``) logs the
    summary run to the sweep's group (default: its directory under multirun/); ``None`` or
    ``logger=none`` logs nothing. The W&B dashboard spec (``dashboard.json``) is written always,
    and created on the server when the logger is online.
    """
    raw = collect(sweep_dir)
    raw.results.to_csv(raw.directory / "results.csv", index=False)
    if not raw.block_sparsity.empty:
        raw.block_sparsity.to_csv(raw.directory / "block_sparsity.csv", index=False)
    counts = raw.results["status"].value_counts().to_dict() if not raw.results.empty else {}
    log.info("%s: %d jobs %s -> results.csv", raw.directory, len(raw.results), counts)
    sweep = with_baseline(raw, baseline)
    found = write_tables(sweep, sweep.directory / "tables")
    made = draw_all(sweep, sweep.directory / "figures") if figures else {}
    if report:
        write_report(sweep, found, made)
    group = group or sweep_group(sweep.directory)
    project = (logger_cfg or {}).get("project") or "prunelab"
    entity = (logger_cfg or {}).get("entity")
    if not sweep.completed.empty:
        write_spec(sweep, list(made), group, project, entity)
    if logger_cfg is not None:
        log_sweep_summary(sweep, logger_cfg, made, group=group)
        if logger_cfg.get("mode") == "online":
            log.info("W&B workspace: %s", push(sweep, list(made), group, project, entity))
    return sweep, found, made


def aggregate(sweep_dir: Path | str, figures: bool = True, report: bool = True, logger_cfg: Any = None,
              group: str | None = None, baseline: Sweep | None = None) -> Sweep:
    """:func:`aggregate_sweep`, returning what was gathered."""
    return aggregate_sweep(sweep_dir, figures, report, logger_cfg, group, baseline)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory, e.g. multirun/sparsity_curve")
    parser.add_argument("--no-figures", action="store_true", help="only results.csv and the tables")
    parser.add_argument("--no-report", action="store_true", help="skip report.md / report.pdf")
    parser.add_argument("--wandb", choices=("offline", "online", "disabled"), default=None,
                        help="also log the summary table and figures to W&B in this mode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logger_cfg = ({"_target_": "prunelab.loggers.WandbLogger", "mode": args.wandb,
                   "project": os.environ.get("WANDB_PROJECT", "prunelab"), "entity": os.environ.get("WANDB_ENTITY")}
                  if args.wandb else None)
    sweep = aggregate(args.sweep_dir, figures=not args.no_figures, report=not args.no_report, logger_cfg=logger_cfg)
    print(f"{len(sweep.results)} jobs -> {sweep.directory / 'results.csv'}")


if __name__ == "__main__":
    main()
