"""Names for tracker runs of a sweep: a run is named by its overrides, grouped by its sweep."""

from __future__ import annotations

import os
from pathlib import Path

# Overrides shared by every job of a study or that only steer logging: left out of run names.
UNNAMED_KEYS = ("experiment", "logger", "force", "group", "run_name", "cache_calibration", "hydra")
WANDB_GROUP_MAX = 128


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_label(overrides: list[str], default: str) -> str:
    """``method=wanda,sparsity=0.5`` from a job's overrides; ``default`` when none is left."""
    kept = [o.lstrip("+~") for o in overrides if override_key(o).split(".")[0] not in UNNAMED_KEYS]
    return ",".join(kept) or default


def sweep_group(sweep_dir: Path | str) -> str:
    """The W&B group of a sweep: its directory relative to the working directory when inside it
    (``multirun/module_sensitivity``), so jobs, the Hydra callback and the CLI agree."""
    path = Path(sweep_dir).resolve()
    cwd = Path.cwd().resolve()
    text = os.path.relpath(path, cwd) if path.is_relative_to(cwd) else str(path)
    return text if len(text) <= WANDB_GROUP_MAX else text[-WANDB_GROUP_MAX:]
