"""The Hydra callback that aggregates a sweep when a multirun ends (registered in ``conf/config.yaml``),
and says which jobs did not complete: a one-screen summary, and a non-zero exit status for
``run.py`` (:func:`exit_status`) once every other job has finished."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
SUMMARY_LINES = 15
_unfinished: list[str] = []  # jobs of the sweeps this process ran that did not complete


def exit_status() -> int:
    """1 when a sweep of this process left a job failed or interrupted, else 0."""
    return 1 if _unfinished else 0


def _running_elsewhere(job_dir: Path) -> bool:
    lock = FileLock(job_dir / ".job.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def unfinished_jobs(sweep_dir: Path) -> list[str]:
    """One line per job of ``sweep_dir`` that is not completed (nor running in another process)."""
    lines = []
    for path in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            lines.append(f"job {path.parent.name}: unreadable record ({error})")
            continue
        status = record.get("status")
        if status in ("completed", "skipped") or (status == "running" and _running_elsewhere(path.parent)):
            continue
        overrides = " ".join(record.get("overrides") or [])
        error = str(record.get("error") or "no error recorded (the process died?)").splitlines()[0]
        lines.append(f"job {path.parent.name} [{status}] {overrides}: {error[:160]}")
    return lines


def report_unfinished(sweep_dir: Path) -> None:
    lines = unfinished_jobs(sweep_dir)
    _unfinished.extend(lines)
    if not lines:
        return
    shown = lines[:SUMMARY_LINES] + ([f"... and {len(lines) - SUMMARY_LINES} more (results.csv lists all)"]
                                     if len(lines) > SUMMARY_LINES else [])
    log.error("%d job(s) of %s did not complete:\n  %s\nRe-run the same command to redo only them "
              "(completed jobs are skipped); each job's metrics.json holds its traceback.",
              len(lines), sweep_dir, "\n  ".join(shown))


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
        report_unfinished(sweep_dir)
