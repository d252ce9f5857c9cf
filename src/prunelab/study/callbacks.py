"""The Hydra callback that aggregates a sweep when a multirun ends (registered in ``conf/config.yaml``),
and says which jobs did not complete: a one-screen summary, and a non-zero exit status for
``run.py`` (:func:`exit_status`) once every other job has finished."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prunelab.resume import conflicts, read_record, unrecorded
from prunelab.study import eta
from prunelab.study.sweeper import JOBS_VARIABLE

log = logging.getLogger(__name__)
SUMMARY_LINES = 15
_unfinished: list[str] = []  # jobs of the sweeps this process ran that did not complete
_active: dict[str, Any] = {}  # the sweep this process is running: its directory and logger config


def exit_status() -> int:
    """1 when a sweep of this process left a job failed or interrupted, else 0."""
    return 1 if _unfinished else 0


def _print_results(sweep, report: bool) -> None:
    """The sweep's first headline table and where its report is, at the end of the console output."""
    from prunelab.study.records import headline_metrics, pivot
    from prunelab.study.report import markdown_table

    metrics = headline_metrics(sweep)
    table = pivot(sweep, metrics[0]) if metrics else None
    lines = [f"Results of {sweep.directory.resolve()}"]
    if table is not None and not table.empty:
        lines += [f"{metrics[0]}:", markdown_table(table, metrics[0])]
    lines.append(f"all jobs: {(sweep.directory / 'results.csv').resolve()}")
    if report:
        lines.append(f"report: {(sweep.directory / 'report.pdf').resolve()}")
    print("\n".join(lines), flush=True)


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
    unwritten = unrecorded(sweep_dir)  # failed jobs of this process whose record could not be written
    for job_dir, (overrides, error) in sorted(unwritten.items()):
        lines.append(f"job {job_dir.name} [failed] {' '.join(overrides)}: {error[:160]} (not recorded on disk)")
    for job_dir, note in conflicts(sweep_dir):  # held by another sweep's process: never ran
        lines.append(f"job {job_dir.name} [not run] {' '.join(note.get('overrides') or [])}: "
                     f"{str(note.get('error'))[:300]}")
    for path in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        if path.parent.resolve() in unwritten:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            lines.append(f"job {path.parent.name}: unreadable record ({error})")
            continue
        if not isinstance(record, dict):
            lines.append(f"job {path.parent.name}: unreadable record (not a JSON object)")
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


def usable_directory(path: Path, key: str) -> None:
    """Create ``path`` and write a file in it, as a run will; if that fails, one line that names
    ``key`` (``hydra.run.dir``, ``hydra.sweep.dir``) and exit status 2, not Hydra's traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check."):
            pass
    except OSError as error:
        why = "it is a file" if path.is_file() else f"{error.strerror or error} ({error.filename or path})"
        print(f"Error: {key}={path} cannot hold the output: {why}; "
              f"choose another directory with {key}=...", file=sys.stderr)
        raise SystemExit(2) from None


def hub_needs(config: DictConfig) -> list[str]:
    """The online text sets a sweep names, in its base config or its grid (``calib_data=c4,math``):
    what makes every job of it fail offline, known before any job runs."""
    from prunelab.data import ONLINE_SETS

    named = {f"calib_data={config.calib_data.get('dataset')}"} if "calib_data" in config else set()
    named |= {f"eval.ppl_datasets={name}" for name in (config.get("eval") or {}).get("ppl_datasets") or []}
    for key, values in ((config.hydra.get("sweeper") or {}).get("params") or {}).items():
        if key in ("calib_data", "calib_data.dataset", "+calib_data"):
            named |= {f"calib_data={value.strip()}" for value in str(values).split(",")}
    return sorted(item for item in named if item.split("=", 1)[1] in ONLINE_SETS)


class CheckOutputDirectory(Callback):
    """Before anything runs: the run's (``hydra.run.dir``) or sweep's (``hydra.sweep.dir``)
    directory can be created and written, a sweep's ``model.name`` stays inside ``multirun/`` and
    a sweep that needs the hub finds it; else one line and exit status 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        usable_directory(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from prunelab.checks import ConfigError, file_name
        from prunelab.plan import MODEL_NAME_WHY

        try:  # the sweep directory is made from it before any job (and its plan) runs
            file_name(config.model.get("name"), "model.name", MODEL_NAME_WHY)
        except ConfigError as error:
            print(f"Error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        needs = hub_needs(config)
        if needs:
            from prunelab.models import hub_reachable

            if not hub_reachable():
                print(f"Error: this sweep needs the Hugging Face hub ({', '.join(needs)}), which is unreachable "
                      "here; no job was launched. Offline presets: sparsity_curve, patterns, ria_alpha, owl_lambda, "
                      "module_sensitivity, granularity, calibration_offline", file=sys.stderr)
                raise SystemExit(2)
        usable_directory(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


class SweepProgress(Callback):
    """One line per job: ``job k/N``, what it runs, the time so far, this job's estimate and the
    ETA of the sweep; one line when it ends, with what it took against the estimate.

    The estimates come from :mod:`prunelab.study.eta`: every job's work (token-forwards, from its
    config, published by the sweeper) times the seconds per unit of work of the finished jobs of
    its kind (method, recovery, engine); a kind not seen yet has its token work and its rest timed
    at the two rates the finished jobs' recorded stage times give; every rate favours the jobs that
    finished last (half-life :data:`eta.HALF_LIFE_JOBS` jobs), so it follows a change of load. A job
    found completed is not one that ran (it wrote no new record, or a ``skipped`` copy). Without
    the sweeper's costs (another sweeper, e.g. Optuna) the ETA is the mean job time. It also
    remembers the sweep for :func:`interrupted`.
    """

    def __init__(self) -> None:
        self.start = time.time()  # wall clock: a job run by submitit reads it in another process, maybe on another host
        self.durations: list[float] = []
        self.finished: list[tuple[eta.JobCost, float, float | None]] = []  # cost, seconds, of them calibrating and evaluating
        self.job_start = 0.0
        self.job_wall = 0.0
        self.estimate: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.time()
        _active.update(sweep_dir=Path(config.hydra.sweep.dir), logger=config.get("logger"), group=config.get("group"))

    @staticmethod
    def _costs(total: str | None) -> list[eta.JobCost] | None:
        costs = eta.published()
        return costs if costs is not None and total is not None and len(costs) == int(total) else None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode is None or str(config.hydra.mode) != "RunMode.MULTIRUN":
            return
        self.job_start = time.perf_counter()
        self.job_wall = time.time()
        done = int(config.hydra.job.num)
        total = os.environ.get(JOBS_VARIABLE)
        elapsed = time.time() - self.start
        costs = self._costs(total)
        timing = ""
        self.estimate = None
        if costs is not None and done < len(costs):
            self.estimate = eta.remaining_seconds(self.finished, costs[done:done + 1])
            left = eta.remaining_seconds(self.finished, costs[done:])
            if self.estimate is not None and left is not None:
                timing = f"; this job ~{_clock(self.estimate)}, ETA {_clock(left)}"
        elif total and self.durations:
            timing = f", ETA {_clock(sum(self.durations) / len(self.durations) * (int(total) - done))}"
        log.info("job %d%s: %s (elapsed %s%s)", done + 1, f"/{total}" if total else "",
                 " ".join(config.hydra.overrides.task), _clock(elapsed), timing)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if not self.job_start or not _ran(Path(config.hydra.runtime.output_dir) / "metrics.json", since=self.job_wall):
            return
        taken = time.perf_counter() - self.job_start
        self.durations.append(taken)
        done = int(config.hydra.job.num)
        total = os.environ.get(JOBS_VARIABLE)
        costs = self._costs(total)
        if costs is not None and done < len(costs):
            metrics = _record_metrics(Path(config.hydra.runtime.output_dir) / "metrics.json")
            self.finished.append((costs[done], taken, eta.token_seconds(metrics)))
        estimated = f" (estimated {_clock(self.estimate)})" if self.estimate is not None else ""
        log.info("job %d%s took %s%s", done + 1, f"/{total}" if total else "", _clock(taken), estimated)


def _ran(record_path: Path, since: float) -> bool:
    """Whether the job behind ``record_path`` ran rather than finding its result done: it wrote
    its record during the job, and not as a ``skipped`` copy of another job's."""
    try:
        if record_path.stat().st_mtime < since:
            return False
        return read_record(record_path).get("status") != "skipped"
    except (OSError, AttributeError):
        return False


def _record_metrics(record_path: Path) -> dict:
    """The metrics of a job's record (its stage times split the ETA's rates), ``{}`` if unreadable."""
    try:
        metrics = read_record(record_path).get("metrics")
    except (OSError, AttributeError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def interrupted() -> None:
    """After Ctrl-C in a sweep: aggregate what finished and say how to resume."""
    sweep_dir = _active.get("sweep_dir")
    command = "python " + " ".join(sys.argv)
    if sweep_dir is None or not Path(sweep_dir).is_dir():
        print(f"\nInterrupted. The run's metrics.json records it as interrupted; `{command}` runs it again.",
              file=sys.stderr)
        return
    finished = 0
    try:
        from prunelab.study.aggregate import aggregate

        sweep = aggregate(sweep_dir, logger_cfg=None)
        finished = int(sweep.results["status"].isin(["completed", "skipped"]).sum()) if not sweep.results.empty else 0
    except Exception:  # noqa: BLE001 - the jobs' records are on disk whatever happens here
        log.exception("aggregating %s after the interrupt failed", sweep_dir)
    print(f"\nInterrupted: {finished} job(s) of {sweep_dir} finished; their table and report are in "
          f"{Path(sweep_dir).resolve()}.\nRun the same command again to resume (finished jobs are skipped):\n  {command}",
          file=sys.stderr)


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
            sweep = aggregate(sweep_dir, figures=self.figures, report=self.report, logger_cfg=config.get("logger"),
                              group=config.get("group"))
            log.info("aggregated %s: results.csv, tables/, figures/%s", sweep_dir, ", report.md/.pdf" if self.report else "")
            _print_results(sweep, self.report)
        except Exception:  # noqa: BLE001 - the sweep itself succeeded; say how to redo this step
            log.exception("aggregating %s failed; redo with `python -m prunelab.study.aggregate %s`", sweep_dir, sweep_dir)
        report_unfinished(sweep_dir)
