"""``hydra/sweeper=baseline``: Hydra's grid sweeper plus the dense-baseline jobs of
:mod:`prunelab.study.sweeper` (conf/hydra/sweeper/baseline.yaml selects it)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus

from prunelab.resume import note_unrecorded
from prunelab.study import eta
from prunelab.study.submitit_jobs import SubmititJobs, is_submitit
from prunelab.study.sweeper import JOBS_VARIABLE, baseline_jobs, no_job, pinned

log = logging.getLogger(__name__)


class BaselineSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 dense_baseline: bool = True) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.dense_baseline = dense_baseline
        self._composed: dict[tuple[str, ...], object] = {}

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if isinstance(self.launcher, BasicLauncher):
            self.launcher = JobByJob(self.launcher, config.hydra.sweep.dir)
        elif is_submitit(self.launcher):  # SLURM or local processes: a job that dies does not end the sweep
            self.launcher = SubmititJobs(self.launcher, config.hydra.sweep.dir)

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        batches = BasicSweeper.split_arguments(overrides, max_batch_size)
        jobs = [job for batch in batches for job in batch]
        if not jobs:
            no_job(overrides)
        extra = baseline_jobs(jobs, is_dense=self._is_dense) if self.dense_baseline else []
        if extra:
            log.info("dense baseline: %d more job(s) (%s)", len(extra), "; ".join(" ".join(j) for j in extra))
            dense = [pinned(job, str(self.config.hydra.sweep.dir)) for job in extra]
            if max_batch_size is None or len(batches[-1]) + len(dense) <= max_batch_size:
                batches[-1].extend(dense)  # submitted with the grid: a launcher running jobs at once runs it alongside
            else:
                batches.append(dense)
        os.environ[JOBS_VARIABLE] = str(len(jobs) + len(extra))
        eta.publish([self._cost(job) for job in [*jobs, *extra]])  # what the progress line's ETA weighs
        return batches

    def _compose(self, job: list[str]):
        if tuple(job) not in self._composed:
            self._composed[tuple(job)] = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
        return self._composed[tuple(job)]

    def _is_dense(self, job: list[str]) -> bool:
        """Whether ``job`` composes to the dense method (a preset setting may select it)."""
        from prunelab.methods.dense import Dense  # here, not at plugin discovery (it imports torch)

        return self._compose(job).method.get("_target_") == f"{Dense.__module__}.{Dense.__qualname__}"

    def _cost(self, job: list[str]) -> eta.JobCost:
        try:
            return eta.job_cost(self._compose(job))
        except Exception:  # noqa: BLE001 - a job that does not compose fails as itself; the ETA only knows less
            return eta.JobCost("?", eta.FIXED_WORK)


class JobByJob:
    """Hydra's basic launcher given one job at a time: a job that cannot even start (its directory
    is a file, the disk is full when Hydra writes its ``.hydra/`` files) fails alone, with one log
    line and a line in the sweep's summary, and the sweep goes on to the next job."""

    def __init__(self, launcher: BasicLauncher, sweep_dir: str) -> None:
        self.launcher = launcher
        self.sweep_dir = Path(str(sweep_dir))

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        returns: list[JobReturn] = []
        for offset, overrides in enumerate(job_overrides):
            try:
                returns.extend(self.launcher.launch([overrides], initial_job_idx=initial_job_idx + offset))
            except Exception as error:  # noqa: BLE001 - Hydra's own preparation of the job failed
                number = initial_job_idx + offset
                message = f"the job could not start: {type(error).__name__}: {error}"
                log.error("job %d (%s): %s; the sweep goes on", number, " ".join(overrides), message)
                note_unrecorded(self.sweep_dir / str(number), list(overrides), message)
                returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=math.nan))
        return returns
