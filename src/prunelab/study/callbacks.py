"""The Hydra callback that aggregates a sweep when a multirun ends (registered in ``conf/config.yaml``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class AggregateSweep(Callback):
    """``on_multirun_end``: results.csv, pivot tables, figures, report and the tracker's summary run.

    A failure here is logged, never raised: the jobs' own evidence is already on disk and
    ``python -m prunelab.study.aggregate <sweep_dir>`` redoes this step.
    """

    def __init__(self, figures: bool = True, report: bool = True) -> None:
        self.figures = figures
        self.report = report

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Imported here, not at the top: Hydra builds this callback for every run, single runs
        # included, and aggregation loads matplotlib, seaborn and PyMuPDF (~2 s) that they never use.
        from prunelab.study.aggregate import aggregate

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            log.warning("no sweep directory %s to aggregate", sweep_dir)
            return
        try:
            aggregate(sweep_dir, figures=self.figures, report=self.report, logger_cfg=config.get("logger"),
                      group=config.get("group"))
            log.info("aggregated %s: results.csv, tables/, figures/%s", sweep_dir, ", report.md/.pdf" if self.report else "")
        except Exception:  # noqa: BLE001 - the sweep itself succeeded; say how to redo this step
            log.exception("aggregating %s failed; redo with `python -m prunelab.study.aggregate %s`", sweep_dir, sweep_dir)
