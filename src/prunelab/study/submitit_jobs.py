"""Sweeps through submitit (``hydra/launcher=slurm`` on a cluster, ``hydra/launcher=submitit_local``
on this machine): the launcher of ``hydra-submitit-launcher`` with what the basic launcher gives a
sweep here.

The plugin submits every job of a batch at once and then waits for the results in job order; a job
whose process died (killed, out of memory, pre-empted, SIGTERM: the run records ``interrupted``),
or that could not even start, makes that wait raise, so the whole sweep stops with a traceback: no
later job, no dense baseline, no results table, no summary. :class:`SubmititJobs` submits the same
jobs the same way (the pickled callable is the plugin's launcher, so each job runs
``hydra.core.utils.run_job`` in its own process exactly as the plugin's does) but collects them as
they finish: one progress line each (``job k/N finished ...``, with an ETA), and a job that produced
no result is logged with its submitit log, left to the sweep's summary (its ``metrics.json`` says
``running``/``interrupted`` and its lock is free, or it is noted as unrecorded) and counted as not
completed in the exit status, while the sweep goes on. Re-running the command redoes only it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from prunelab.resume import note_unrecorded, read_record
from prunelab.study.callbacks import _clock, _running_elsewhere

log = logging.getLogger(__name__)
POLL_S = {"local": 1.0, "slurm": 15.0}  # how often finished jobs are looked for (SLURM: sacct, cached by submitit)


def is_submitit(launcher: Any) -> bool:
    """Whether ``launcher`` is one of hydra-submitit-launcher's (checked by name: the plugin is
    imported only when the sweep selects it)."""
    return any(cls.__module__.startswith("hydra_plugins.hydra_submitit_launcher") and cls.__name__ == "BaseSubmititLauncher"
               for cls in type(launcher).__mro__)


def executor(launcher: Any):
    """The ``submitit.AutoExecutor`` the plugin's ``launch`` builds from the launcher's parameters
    (``submitit_folder``, ``max_num_timeout``; the rest are resources: shared ones by their name,
    executor-specific ones prefixed ``slurm_``/``local_``)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    kind = launcher._EXECUTOR
    params = dict(launcher.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params.pop("max_num_timeout")
    made = submitit.AutoExecutor(cluster=kind, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    made.update_parameters(**{key if key in shared else f"{kind}_{key}": value for key, value in params.items()})
    return made


class SubmititJobs:
    """The plugin's launcher, jobs collected as they finish (see the module's docstring)."""

    def __init__(self, launcher: Any, sweep_dir: str) -> None:
        self.launcher = launcher
        self.sweep_dir = Path(str(sweep_dir))

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        from submitit.core.utils import UncompletedJobError
        from submitit.helpers import as_completed

        kind = self.launcher._EXECUTOR
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.launcher.config.hydra.sweep:  # as the plugin does
            os.chmod(self.sweep_dir, mode=int(str(self.launcher.config.hydra.sweep.mode), 8))
        numbers = [initial_job_idx + offset for offset in range(len(job_overrides))]
        params = [(list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
                  for number, overrides in zip(numbers, job_overrides)]
        start = time.time()
        jobs = executor(self.launcher).map_array(self.launcher, *zip(*params))
        total = os.environ.get("PRUNELAB_SWEEP_JOBS") or str(numbers[-1] + 1)
        log.info("submitit (%s): %d job(s) submitted (%s); their logs: %s", kind, len(jobs),
                 ", ".join(f"#{n} {j.job_id}" for n, j in zip(numbers, jobs)), jobs[0].paths.folder.parent)
        number_of = {id(job): (number, overrides) for job, number, overrides in zip(jobs, numbers, job_overrides)}
        returns: dict[int, JobReturn] = {}
        for done, job in enumerate(as_completed(jobs, poll_frequency=POLL_S.get(kind, 5.0)), start=1):
            number, overrides = number_of[id(job)]
            try:
                returns[number] = job.results()[0]
                outcome = self._status(number, since=start)
            except UncompletedJobError as error:
                returns[number] = self._lost(number, list(overrides), job, error)
                outcome = f"{self._status(number, since=start)}, no result from its process"
            elapsed = time.time() - start
            eta = elapsed / done * (len(jobs) - done)
            log.info("job %d/%s finished (%s): %s; %d of %d submitted done (elapsed %s%s)", number + 1, total, outcome,
                     " ".join(filter_overrides(overrides)), done, len(jobs), _clock(elapsed),
                     f", ETA {_clock(eta)}" if done < len(jobs) else "")
        return [returns[number] for number in numbers]

    def _status(self, number: int, since: float) -> str:
        """The job's recorded status; ``found completed`` when its record predates this launch
        (an earlier invocation of the sweep ran it: the job only found it), ``left to another
        process`` when another invocation of the sweep holds the job's lock."""
        path = self.sweep_dir / str(number) / "metrics.json"
        record = read_record(path)
        if record is None:
            return "no record"
        if record.get("status") == "completed" and path.stat().st_mtime < since:
            return "found completed"
        if record.get("status") == "running" and _running_elsewhere(path.parent):
            return "left to another process that runs it"
        return str(record.get("status"))

    def _lost(self, number: int, overrides: list[str], job: Any, error: Exception) -> JobReturn:
        """A job whose process ended without a result: logged with its log file; when it left no
        record either, noted for the sweep's summary. Reported to Hydra as NaN (not an exception),
        so the sweep goes on."""
        from submitit.core.utils import FailedJobError

        text = str(error)
        if isinstance(error, FailedJobError):  # an exception escaped the job (Hydra could not prepare it)
            parts = text.split("-" * 22)  # submitit quotes the job's traceback between two such rules
            trace = [line.strip() for line in (parts[1] if len(parts) >= 3 else text).splitlines() if line.strip()]
            said = f"the job could not run: {trace[-1] if trace else type(error).__name__}"
        else:  # no result at all: the process was killed or died
            said = f"its process ended without a result (killed? out of memory?; submitit: {type(error).__name__})"
        message = f"{said}; log: {job.paths.stdout}"
        log.error("job %d (%s): %s", number, " ".join(overrides), message)
        if read_record(self.sweep_dir / str(number) / "metrics.json") is None:
            note_unrecorded(self.sweep_dir / str(number), overrides, message)
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=math.nan)
