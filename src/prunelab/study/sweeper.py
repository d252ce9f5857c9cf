"""The dense baseline joins every sweep: which jobs the ``hydra/sweeper=baseline`` sweeper adds.

The grid is Hydra's ``BasicSweeper`` as it is; at its end one more job per distinct setting that
matters to a dense model (the sweep's overrides less the method, its knobs, the sparsity, the
pattern, the calibration data, the target and a preset's settings ``+experiment/<group>=...``
other than a weight format, :data:`DENSE_KEEPS`; the preset itself, ``+experiment=<name>``, stays,
so its evaluation applies) runs with
``method=dense``, unless a job of the sweep with that setting already is dense (whether a job is
dense is decided on its composed config, so a preset setting that selects ``dense`` counts). The
job is pinned to the sweep's directory (a preset may name its directory after the method). The
baseline is then a row of every table and the 0% point of every curve, and like any job it is
skipped when a re-run finds it completed. The sweeper also publishes the number of jobs
(``PRUNELAB_SWEEP_JOBS``) for the progress line of :class:`prunelab.study.callbacks.SweepProgress`.
The sweeper class itself lives in ``hydra_plugins.prunelab_sweeper`` (Hydra loads sweepers only
from its plugin namespace).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from prunelab.config import STUDY_KNOBS

log = logging.getLogger(__name__)
JOBS_VARIABLE = "PRUNELAB_SWEEP_JOBS"
# What a dense run ignores: overrides of these keys do not make another baseline.
DENSE_IGNORES = ("method", "sparsity", "pattern", *STUDY_KNOBS, "calib_data", "target")
PRESET_SETTINGS = "experiment/"  # +experiment/setting=nm_2_4, +experiment/granularity=flap_30: method and pattern
# Preset settings that apply to a dense model as well: a weight format (+experiment/compression_bits=int8)
# gets a dense baseline of its own, the dense model in that format.
DENSE_KEEPS = ("experiment/compression_bits",)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _ignored(override: str) -> bool:
    key = _key(override)
    return (key.startswith(PRESET_SETTINGS) and key not in DENSE_KEEPS) or any(key == k or key.startswith((f"{k}.", f"{k}@"))
                                                  for k in DENSE_IGNORES)


def _names_dense(job: list[str]) -> bool:
    return "method=dense" in job


def baseline_jobs(jobs: list[list[str]], is_dense: Callable[[list[str]], bool] = _names_dense) -> list[list[str]]:
    """``method=dense`` jobs for every distinct setting of ``jobs`` a dense model would see that
    has no dense job yet (``is_dense(job)``: the sweeper composes the job's config to tell)."""
    have = {tuple(o for o in job if not _ignored(o)) for job in jobs if is_dense(job)}
    wanted: dict[tuple[str, ...], None] = {}
    for job in jobs:
        setting = tuple(o for o in job if not _ignored(o))
        if setting not in have:
            wanted.setdefault(setting, None)
    return [["method=dense", *setting] for setting in wanted]


def pinned(job: list[str], sweep_dir: str) -> list[str]:
    """``job`` written into ``sweep_dir`` whatever its own config would name (a preset's directory
    may interpolate ``${method.name}``), as a quoted override Hydra reads back verbatim."""
    quoted = sweep_dir.replace("'", "\\'")
    return [*job, f"hydra.sweep.dir='{quoted}'"]


def no_job(overrides: list) -> None:
    """A sweep that expands to no job (``sparsity=range(0,0)``): one line naming the empty sweep,
    exit status 2 (nothing ran, so nothing can be reported as done)."""
    empty = [o.input_line for o in overrides if o.is_sweep_override() and not list(o.sweep_string_iterator())]
    print(f"Error: the sweep has no job: {', '.join(empty) or ' '.join(o.input_line for o in overrides)} "
          "expands to no value", file=sys.stderr)
    raise SystemExit(2)
