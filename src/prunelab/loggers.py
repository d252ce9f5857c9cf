"""One logger interface for experiment trackers; W&B is imported only when a run starts.

``conf/logger/<name>.yaml`` names the class (``_target_``) and its settings: ``logger=wandb``
(default) with ``mode`` = ``offline`` (never touches the network, ``wandb sync`` later),
``online`` or ``disabled``; ``logger=none`` logs to disk only. W&B's environment variables
(``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_DIR``) fill the defaults of
``conf/logger/wandb.yaml``, so they win over the config's defaults but not over an override. A logger is built (and its settings
checked) with the run plan, and started when the run starts. Every run also writes
``metrics.json`` itself, whatever the logger.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from prunelab import checks
from prunelab.checks import ConfigError

log = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")
MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # older spellings W&B still accepts in WANDB_MODE


class Logger:
    """The interface, and the logger that logs nothing (``logger=none``)."""

    def start(self, run_dir: Path, config: dict, name: str | None = None, group: str | None = None,
              job_type: str = "prune", run_id: str | None = None) -> None:
        """Open a run: one job (``job_type="prune"``) or a sweep's summary (``"summary"``).

        ``run_id``: a stable id; starting a run with the same id again updates that run in place.
        """

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Scalars of the run, as run-level values (nested values stay in metrics.json)."""

    def log_table(self, key: str, frame) -> None:
        """A pandas DataFrame as a table."""

    def log_line_chart(self, key: str, frame, x: str, y: str, stroke: str | None, title: str) -> None:
        """A line chart of ``y`` against ``x``, one line per value of ``stroke``, from a long-format frame."""

    def log_image(self, key: str, path: Path) -> None:
        """A figure file."""

    def finish(self, failed: bool = False) -> None:
        """Close the run."""


class NullLogger(Logger):
    """``logger=none``: evidence on disk only."""


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """W&B charts scalars; nested structures (per-layer sparsity) stay in metrics.json."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) and v is not None}


def _plain_columns(frame):
    """A frame W&B's Table takes: the index as columns, string column names, one type per column."""
    shown = frame.reset_index() if frame.index.name or any(frame.index.names) else frame
    shown = shown.copy()
    shown.columns = [str(c) for c in shown.columns]
    for column in shown.columns:
        if shown[column].dtype == object:
            shown[column] = shown[column].astype(str)
    return shown


CONSOLE_MODES = ("quiet", "full")


WANDB_FORBIDDEN = "/\\#?%:"  # what W&B rejects in project names (wandb.Settings.validate_project)
WANDB_NAME_MAX = 128
WANDB_TAG_MAX = 64


def wandb_name(value: Any, key: str) -> str:
    """A W&B project or entity name, checked as W&B will check it when the run starts."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r} must be a non-empty name")
    bad = sorted({c for c in value if c in WANDB_FORBIDDEN})
    if bad:
        raise ConfigError(f"{key}={value!r} contains {' '.join(bad)}, which W&B does not allow in names; "
                          f"allowed: any characters but {' '.join(WANDB_FORBIDDEN)}")
    if len(value) > WANDB_NAME_MAX:
        raise ConfigError(f"{key}={value[:20]!r}... has {len(value)} characters; allowed: at most {WANDB_NAME_MAX}")
    return value


def _tag(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value or len(value) > WANDB_TAG_MAX:
        raise ConfigError(f"{key}={value!r} must be a string of 1 to {WANDB_TAG_MAX} characters (a W&B tag)")
    return value


class WandbLogger(Logger):
    """Weights & Biases; ``mode=offline`` writes ``<run dir>/wandb/offline-run-*`` for ``wandb sync``.

    ``console=quiet`` (default) silences W&B's own console output (its banner and the per-metric
    run summary at the end) and logs one line per run instead; ``console=full`` restores it.
    ``capture_logs`` also sends the process's console to the run (its Logs tab); the job's log file
    is on disk either way. Metrics are run-level values (``run.summary``), not a one-step history.
    """

    def __init__(self, mode: str = "offline", project: str = "prunelab", entity: str | None = None,
                 tags: list[str] | None = None, console: str = "quiet", capture_logs: bool = False,
                 dir: str | None = None) -> None:  # noqa: A002 - W&B's own name for it (WANDB_DIR)
        self.mode = checks.choice(MODE_ALIASES.get(mode, mode), "mode", WANDB_MODES)
        self.dir = Path(dir).expanduser() if dir else None
        self.console = checks.choice(console, "console", CONSOLE_MODES)
        self.capture_logs = bool(capture_logs)
        self.project = wandb_name(project, "project")
        self.entity = None if entity is None else wandb_name(entity, "entity")
        if tags is not None and not isinstance(tags, (list, tuple)):
            raise ConfigError(f"tags={tags!r} must be a list of strings, e.g. tags=[ablation]")
        self.tags = [_tag(tag, f"tags[{i}]") for i, tag in enumerate(tags or [])]
        self.run = None

    def start(self, run_dir: Path, config: dict, name: str | None = None, group: str | None = None,
              job_type: str = "prune", run_id: str | None = None) -> None:
        import wandb

        self._wandb = wandb
        run_dir = self.dir or run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if run_id and self.mode == "offline":  # the new copy holds everything: keep one per id
            for superseded in (run_dir / "wandb").glob(f"offline-run-*-{run_id}"):
                shutil.rmtree(superseded, ignore_errors=True)
        settings = wandb.Settings(silent=self.console == "quiet", console="auto" if self.capture_logs else "off")
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(run_dir),
                              config=config, name=name, group=group, tags=self.tags, job_type=job_type,
                              id=run_id, resume="allow" if run_id else None, reinit="finish_previous",
                              settings=settings)

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        self.run.summary.update(_scalars(metrics))

    def log_table(self, key: str, frame) -> None:
        self.run.log({key: self._wandb.Table(dataframe=_plain_columns(frame))})

    def log_line_chart(self, key: str, frame, x: str, y: str, stroke: str | None, title: str) -> None:
        table = self._wandb.Table(dataframe=_plain_columns(frame))
        self.run.log({key: self._wandb.plot.line(table, x, y, stroke=stroke, title=title)})

    def log_image(self, key: str, path: Path) -> None:
        self.run.log({key: self._wandb.Image(str(path))})

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        run.finish(exit_code=1 if failed else 0)
        if self.mode == "offline":
            log.info("W&B offline run %r (group %s): wandb sync %s", run.name, run.group, Path(run.dir).parent)
        elif self.mode == "online":
            log.info("W&B run %r: %s", run.name, run.url)
