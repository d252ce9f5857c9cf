"""One logger interface for experiment trackers; W&B is imported only when a run starts.

``conf/logger/<name>.yaml`` names the class (``_target_``) and its settings: ``logger=wandb``
(default) with ``mode`` = ``offline`` (never touches the network, ``wandb sync`` later),
``online`` or ``disabled``; ``logger=none`` logs to disk only. A logger is built (and its settings
checked) with the run plan, and started when the run starts. Every run also writes
``metrics.json`` itself, whatever the logger.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prunelab import checks

log = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")


class Logger:
    """The interface, and the logger that logs nothing (``logger=none``)."""

    def start(self, run_dir: Path, config: dict, name: str | None = None, group: str | None = None,
              job_type: str = "run") -> None:
        """Open a run (one job, or a sweep's summary with ``job_type="summary"``)."""

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Scalars of the run (nested values stay in metrics.json)."""

    def log_table(self, key: str, frame) -> None:
        """A pandas DataFrame as a table."""

    def log_image(self, key: str, path: Path) -> None:
        """A figure file."""

    def finish(self, failed: bool = False) -> None:
        """Close the run."""


class NullLogger(Logger):
    """``logger=none``: evidence on disk only."""


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """W&B charts scalars; nested structures (per-layer sparsity) stay in metrics.json."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) and v is not None}


class WandbLogger(Logger):
    """Weights & Biases; ``mode=offline`` writes ``<run dir>/wandb/offline-run-*`` for ``wandb sync``."""

    def __init__(self, mode: str = "offline", project: str = "prunelab", entity: str | None = None,
                 tags: list[str] | None = None) -> None:
        self.mode = checks.choice(mode, "mode", WANDB_MODES)
        self.project = project
        self.entity = entity
        self.tags = list(tags or [])
        self.run = None

    def start(self, run_dir: Path, config: dict, name: str | None = None, group: str | None = None,
              job_type: str = "run") -> None:
        import wandb

        self._wandb = wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(run_dir),
                              config=config, name=name, group=group, tags=self.tags, job_type=job_type,
                              reinit="finish_previous")

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        scalars = _scalars(metrics)
        self.run.log(scalars)
        self.run.summary.update(scalars)

    def log_table(self, key: str, frame) -> None:
        shown = frame.reset_index() if frame.index.name or any(frame.index.names) else frame
        shown = shown.copy()
        shown.columns = [str(c) for c in shown.columns]
        for column in shown.columns:  # W&B tables want one type per column
            if shown[column].dtype == object:
                shown[column] = shown[column].astype(str)
        self.run.log({key: self._wandb.Table(dataframe=shown)})

    def log_image(self, key: str, path: Path) -> None:
        self.run.log({key: self._wandb.Image(str(path))})

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
