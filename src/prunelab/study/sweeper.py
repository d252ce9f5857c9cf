"""The dense baseline joins every sweep: which jobs the ``hydra/sweeper=baseline`` sweeper adds.

The grid is Hydra's ``BasicSweeper`` as it is; at its end one more job per distinct setting that
matters to a dense model (the sweep's overrides less the method, its knobs, the sparsity, the
pattern, the calibration data and the target) runs with ``method=dense``, unless the sweep already
has that job. The baseline is then a row of every table and the 0% point of every curve, and like
any job it is skipped when a re-run finds it completed. The sweeper also publishes the number of
jobs (``PRUNELAB_SWEEP_JOBS``) for the progress line of :class:`prunelab.study.callbacks.SweepProgress`.
The sweeper class itself lives in ``hydra_plugins.prunelab_sweeper`` (Hydra loads sweepers only
from its plugin namespace).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
JOBS_VARIABLE = "PRUNELAB_SWEEP_JOBS"
# What a dense run ignores: overrides of these keys do not make another baseline.
DENSE_IGNORES = ("method", "sparsity", "pattern", "ria_alpha", "owl_lambda", "owl_m", "calib_data", "target",
                 "experiment")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _ignored(override: str) -> bool:
    key = _key(override)
    return any(key == k or key.startswith((f"{k}.", f"{k}@")) for k in DENSE_IGNORES)


def baseline_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """``method=dense`` jobs for every distinct setting of ``jobs`` a dense model would see."""
    have = {tuple(o for o in job if not _ignored(o)) for job in jobs if "method=dense" in job}
    wanted: dict[tuple[str, ...], None] = {}
    for job in jobs:
        setting = tuple(o for o in job if not _ignored(o))
        if setting not in have:
            wanted.setdefault(setting, None)
    return [["method=dense", *setting] for setting in wanted]
