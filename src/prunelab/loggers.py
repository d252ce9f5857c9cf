"""One logger interface for experiment trackers; W&B is imported only when used.

``logger=wandb`` (default) with ``logger.mode`` = ``offline`` (default: never touches the network,
``wandb sync`` later), ``online`` or ``disabled``; ``logger=none`` logs to disk only. Every run
also writes ``metrics.json`` itself, whatever the logger.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")


class Logger(Protocol):
    def log_metrics(self, metrics: dict[str, Any]) -> None: ...
    def log_image(self, key: str, path: Path) -> None: ...
    def finish(self, failed: bool = False) -> None: ...


class NullLogger:
    def log_metrics(self, metrics: dict[str, Any]) -> None:
        pass

    def log_image(self, key: str, path: Path) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """W&B charts scalars; nested structures (per-layer sparsity) stay in metrics.json."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) and v is not None}


class WandbLogger:
    def __init__(self, mode: str, project: str, run_dir: Path, config: dict, name: str | None = None,
                 group: str | None = None, entity: str | None = None, tags: list[str] | None = None) -> None:
        import wandb

        if mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={mode!r} is not valid; allowed: {', '.join(WANDB_MODES)}")
        run_dir.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), config=config,
                              name=name, group=group, tags=tags, reinit="finish_previous")

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        scalars = _scalars(metrics)
        self.run.log(scalars)
        self.run.summary.update(scalars)

    def log_image(self, key: str, path: Path) -> None:
        self.run.log({key: self._wandb.Image(str(path))})

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def build_logger(cfg, run_dir: Path, config: dict, name: str | None, group: str | None) -> Logger:
    """The logger chosen by the ``logger`` config group (``None`` or ``kind: none`` = disk only)."""
    if cfg is None or cfg.get("kind", "none") == "none":
        return NullLogger()
    if cfg.kind != "wandb":
        raise ValueError(f"logger.kind={cfg.kind!r} is not valid; allowed: wandb, none")
    return WandbLogger(cfg.mode, cfg.project, run_dir, config, name=name, group=group,
                       entity=cfg.get("entity"), tags=list(cfg.get("tags") or []))
