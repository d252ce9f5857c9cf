"""Names: a tracker run is named by its overrides and grouped by its sweep; an ad-hoc sweep's
directory is named by its command line (``${prunelab.sweep_name:}`` in ``conf/config.yaml``), so
running the same command again resumes it."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

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


SWEEP_NAME_MAX = 120
UNNAMING_PREFIXES = ("hydra", "logger", "force", "group", "run_name")  # do not change what a sweep measures


def sweep_name(argv: list[str] | None = None) -> str:
    """The command line's overrides as a directory name: ``method=magnitude,wanda,ria__sparsity=0.3,0.5``.

    Swept keys first, then fixed ones, each sorted by key (the same command in another order gives
    the same name). Flags (``-m``), overrides that do not change results (``hydra.*``, ``logger``...)
    and a single ``model=`` (already the parent directory) are left out; path separators are
    replaced; a name over 120 characters is cut and given a hash.
    """
    def named(argument: str) -> bool:
        key = override_key(argument)
        return (not argument.startswith("-") and "=" in argument and not key.startswith(UNNAMING_PREFIXES)
                and not (key == "model" and "," not in argument))

    kept = sorted((a for a in (sys.argv[1:] if argv is None else argv) if named(a)),
                  key=lambda a: ("," not in a.split("=", 1)[1], override_key(a)))
    name = "__".join(a.lstrip("+~") for a in kept).replace(os.sep, "_").replace("\\", "_") or "default"
    if len(name) > SWEEP_NAME_MAX:
        name = f"{name[:SWEEP_NAME_MAX - 17]}__{hashlib.sha256(name.encode()).hexdigest()[:15]}"
    return name


# Cached: resolved once in the process that launches the sweep, and copied with the config to
# every job (as Hydra does for ${now:...}), so launchers that run jobs elsewhere agree on it.
OmegaConf.register_new_resolver("prunelab.sweep_name", lambda: sweep_name(), use_cache=True, replace=True)
