"""A sweep directory -> its table, pivot tables, figures, report and tracker summary.

``python -m prunelab.study.aggregate <sweep_dir> [--no-figures] [--no-report] [--wandb MODE]``
writes, in the sweep directory, ``results.csv`` (one row per job), ``block_sparsity.csv`` (long
form, per job and block), ``tables/*.csv|md`` (the headline metrics), ``figures/*.png`` and
``report.md`` + ``report.pdf``. The Hydra callback runs the same when a multirun ends.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from prunelab.study.figures import draw_all
from prunelab.study.records import Sweep, collect, headline_metrics, pivot, speed_table, summary_table
from prunelab.study.report import markdown_table, write_report
from prunelab.study.tracking import log_sweep_summary

log = logging.getLogger(__name__)


def write_tables(sweep: Sweep, directory: Path) -> dict[str, pd.DataFrame]:
    """``summary`` (every headline metric per setting) and one pivot per headline metric, CSV and Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    tables = {"summary": summary_table(sweep), "speed": speed_table(sweep),
              **{metric: pivot(sweep, metric) for metric in headline_metrics(sweep)}}
    tables = {name: table for name, table in tables.items() if not table.empty}
    for name, table in tables.items():
        stem = name.replace("/", "_")
        table.to_csv(directory / f"{stem}.csv")
        (directory / f"{stem}.md").write_text(markdown_table(table, name) + "\n")
    return tables


def aggregate(sweep_dir: Path | str, figures: bool = True, report: bool = True, logger_cfg: Any = None,
              group: str | None = None) -> Sweep:
    """Write everything one sweep yields; return what was gathered.

    ``logger_cfg`` (a ``logger`` config node, with ``_target_``) adds a summary run to the sweep's
    group (default: its directory); ``None`` or ``logger=none`` logs nothing.
    """
    sweep = collect(sweep_dir)
    sweep.results.to_csv(sweep.directory / "results.csv", index=False)
    if not sweep.block_sparsity.empty:
        sweep.block_sparsity.to_csv(sweep.directory / "block_sparsity.csv", index=False)
    counts = sweep.results["status"].value_counts().to_dict() if not sweep.results.empty else {}
    log.info("%s: %d jobs %s -> results.csv", sweep.directory, len(sweep.results), counts)
    tables = write_tables(sweep, sweep.directory / "tables")
    made = draw_all(sweep, sweep.directory / "figures") if figures else {}
    if report:
        write_report(sweep, tables, made)
    if logger_cfg is not None:
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
    logger_cfg = ({"_target_": "prunelab.loggers.WandbLogger", "mode": args.wandb, "project": "prunelab"}
                  if args.wandb else None)
    sweep = aggregate(args.sweep_dir, figures=not args.no_figures, report=not args.no_report, logger_cfg=logger_cfg)
    print(f"{len(sweep.results)} jobs -> {sweep.directory / 'results.csv'}")


if __name__ == "__main__":
    main()
