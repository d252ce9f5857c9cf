"""Names: a tracker run is named by what varies across its sweep's jobs and grouped by its sweep's
stable name; an ad-hoc sweep's directory is named by its command line
(``${prunelab.sweep_name:}`` in ``conf/config.yaml``), so running the same command again resumes it."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

# Overrides shared by every job of a study or that only steer logging: left out of run names.
UNNAMED_KEYS = ("experiment", "logger", "force", "group", "run_name", "cache_calibration", "hydra")
WANDB_GROUP_MAX = 128
SWEEP_ROOT = "multirun"  # the sweeps' parent directory; the group starts below it


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys(sweep_dir: Path | str | None) -> set[str] | None:
    """The keys a sweep varies, read from the ``multirun.yaml`` Hydra writes in its directory
    before launching: sweeps on the command line (``sparsity=0.3,0.5``) and the sweeper's
    ``params`` (a preset's grid, Optuna's ranges) that the command line did not pin to one value.
    ``None`` when there is no such file (a sweep laid out by hand)."""
    if sweep_dir is None:
        return None
    try:
        config = yaml.safe_load((Path(sweep_dir) / "multirun.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = config.get("hydra") or {}
    command_line = list((hydra_cfg.get("overrides") or {}).get("task") or [])
    params = ((hydra_cfg.get("sweeper") or {}).get("params") or {})
    parser = OverridesParser.create()
    given = parser.parse_overrides(command_line)
    swept = {override_key(o.input_line) for o in given if o.is_sweep_override()}
    pinned = {override_key(o.input_line) for o in given}
    swept |= {override_key(str(key)) for key in params if override_key(str(key)) not in pinned}
    return swept


def _short(key: str) -> str:
    """``target.modules`` -> ``modules``, ``experiment/setting`` -> ``setting``."""
    return key.replace("/", ".").rsplit(".", 1)[-1]


def run_label(overrides: list[str], default: str, swept: set[str] | None = None) -> str:
    """``method=wanda,sparsity=0.5``: the job's overrides of the keys its sweep varies (``swept``;
    without it, every override but logging and preset selection); ``default`` when none is left."""
    kept = []
    for override in overrides:
        key = override_key(override)
        if swept is not None and key not in swept:
            continue
        if swept is None and key.split(".")[0].split("/")[0] in UNNAMED_KEYS:
            continue
        kept.append(f"{_short(key)}={override.split('=', 1)[1]}" if swept is not None else override.lstrip("+~"))
    return ",".join(kept) or default


def tracker_names(run_name: str | None, group: str | None, default: str, overrides: list[str],
                  sweep_dir: Path | None) -> tuple[str, str | None]:
    """The tracker's run name and group: the user's ``run_name``/``group`` when set; otherwise a
    sweep job (``sweep_dir`` given) is named by what its sweep varies and grouped by its sweep, and a
    single run is named ``default`` with no group."""
    if sweep_dir is None:
        return run_name or default, group
    return (run_name or run_label(overrides, default=default, swept=swept_keys(sweep_dir)),
            group or sweep_group(sweep_dir))


def sweep_group(sweep_dir: Path | str) -> str:
    """The W&B group of a sweep: its directory relative to the working directory's ``multirun/``
    (``smollm2_135m/sparsity_curve``) when inside it, else its path, so jobs, the Hydra callback
    and the CLI agree."""
    path = Path(sweep_dir).resolve()
    cwd = Path.cwd().resolve()
    text = os.path.relpath(path, cwd) if path.is_relative_to(cwd) else str(path)
    text = text.removeprefix(SWEEP_ROOT + os.sep) if text != SWEEP_ROOT else text
    return text if len(text) <= WANDB_GROUP_MAX else text[-WANDB_GROUP_MAX:]


SWEEP_NAME_MAX = 120  # bytes, not characters
UNNAMING_PREFIXES = ("hydra", "logger", "force", "group", "run_name")  # do not change what a sweep measures


def sweep_name(argv: list[str] | None = None) -> str:
    """The command line's overrides as a directory name: ``method=magnitude,wanda,ria__sparsity=0.3,0.5``.

    Swept keys first, then fixed ones, each sorted by key (the same command in another order gives
    the same name). Flags (``-m``), overrides that do not change results (``hydra.*``, ``logger``...)
    and a single ``model=`` (already the parent directory) are left out; path separators are
    replaced; a name over 120 bytes (UTF-8: file systems limit a name to 255 bytes, and a
    non-ASCII override takes up to 4 bytes a character) is cut at a character boundary and given
    a hash of the whole, so names stay unique.
    """
    def named(argument: str) -> bool:
        key = override_key(argument)
        return (not argument.startswith("-") and "=" in argument and not key.startswith(UNNAMING_PREFIXES)
                and not (key == "model" and "," not in argument))

    kept = sorted((a for a in (sys.argv[1:] if argv is None else argv) if named(a)),
                  key=lambda a: ("," not in a.split("=", 1)[1], override_key(a)))
    name = "__".join(a.lstrip("+~") for a in kept).replace(os.sep, "_").replace("\\", "_") or "default"
    encoded = name.encode("utf-8")
    if len(encoded) > SWEEP_NAME_MAX:
        kept = encoded[:SWEEP_NAME_MAX - 17].decode("utf-8", errors="ignore")  # a cut character is dropped
        name = f"{kept}__{hashlib.sha256(encoded).hexdigest()[:15]}"
    return name


# Cached: resolved once in the process that launches the sweep, and copied with the config to
# every job (as Hydra does for ${now:...}), so launchers that run jobs elsewhere agree on it.
OmegaConf.register_new_resolver("prunelab.sweep_name", lambda: sweep_name(), use_cache=True, replace=True)
OmegaConf.register_new_resolver("prunelab.pid", os.getpid, use_cache=True, replace=True)  # a single run's directory
