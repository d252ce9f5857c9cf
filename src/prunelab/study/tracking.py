"""A sweep's summary for the experiment tracker: one extra run in the sweep's group.

It goes through the study's ``logger`` config like every job (``prunelab.loggers``): W&B offline
lands in ``<sweep dir>/wandb`` for ``wandb sync`` later; ``logger=none`` logs nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prunelab.config import build
from prunelab.naming import sweep_group
from prunelab.study.records import Sweep, headline_metrics, pivot

log = logging.getLogger(__name__)


def log_sweep_summary(sweep: Sweep, logger_cfg: Any, figures: dict[str, Path], group: str | None = None) -> None:
    """The results table, one pivot per headline metric and the figures, as a ``summary`` run."""
    logger = build(logger_cfg, "logger")
    group = group or sweep_group(sweep.directory)
    logger.start(sweep.directory, {"sweep_dir": str(sweep.directory), "jobs": len(sweep.results)},
                 name=f"summary {group}", group=group, job_type="summary")
    try:
        text = [c for c in ("error", "overrides", "reused_from") if c in sweep.results]
        logger.log_table("summary/results", sweep.results.astype({c: str for c in text}))
        for metric in headline_metrics(sweep):
            table = pivot(sweep, metric)
            if not table.empty:
                logger.log_table(f"summary/{metric.replace('/', '_')}", table)
        for name, path in figures.items():
            logger.log_image(f"figures/{name}", path)
        counts = sweep.results["status"].value_counts() if not sweep.results.empty else {}
        logger.log_metrics({"jobs": len(sweep.results), **{f"jobs_{k}": int(v) for k, v in counts.items()}})
    finally:
        logger.finish()
    log.info("summary run logged with %s (group %s)", type(logger).__name__, group)
