"""A sweep's summary for the experiment tracker: one run per sweep, in the sweep's group.

It goes through the study's ``logger`` config like every job (``prunelab.loggers``), with a run
id fixed by the group, so aggregating the sweep again updates the same run instead of adding one
(W&B offline keeps only the newest copy in ``<sweep dir>/wandb``). It holds the results (one row
per job, knob columns), the long table (one row per job and metric), the report's figures as
line charts W&B draws from those rows (:mod:`.dashboard`) and as images, and the job counts.
"""

from __future__ import annotations

import logging
from typing import Any

from prunelab.config import build
from prunelab.naming import sweep_group
from prunelab.study.dashboard import charts, long_table, summary_run_id
from prunelab.study.figures import Figure
from prunelab.study.records import Sweep, varying_knobs

log = logging.getLogger(__name__)


def log_sweep_summary(sweep: Sweep, logger_cfg: Any, figures: dict[str, Figure], group: str | None = None) -> None:
    logger = build(logger_cfg, "logger")
    group = group or sweep_group(sweep.directory)
    config = {"sweep_dir": str(sweep.directory), "jobs": len(sweep.results), "varying": varying_knobs(sweep.completed)}
    logger.start(sweep.directory, config, name=f"summary {group}", group=group, job_type="summary",
                 run_id=summary_run_id(group))
    try:
        text = [c for c in ("error", "overrides", "reused_from") if c in sweep.results]
        logger.log_table("summary/results", sweep.results.astype({c: str for c in text}))
        long = long_table(sweep)
        if not long.empty:
            logger.log_table("summary/long", long)
        for chart in charts(sweep, list(figures)):
            logger.log_line_chart(chart.key, chart.frame, chart.x, "value", chart.stroke, chart.title)
        for name, figure in figures.items():
            logger.log_image(f"figures/{name}", figure.path)
        counts = sweep.results["status"].value_counts() if not sweep.results.empty else {}
        logger.log_metrics({"jobs": len(sweep.results), **{f"jobs_{k}": int(v) for k, v in counts.items()}})
    finally:
        logger.finish()
    log.info("summary run logged with %s (group %s)", type(logger).__name__, group)
