"""A sweep's summary in W&B: one extra run in the sweep's group with the results table and figures.

Follows the ``logger`` config of the study (``mode`` offline, online or disabled; ``kind: none``
logs nothing); offline runs land in ``<sweep dir>/wandb`` for ``wandb sync`` later.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from prunelab.study.naming import sweep_group

if TYPE_CHECKING:
    from prunelab.study.aggregate import Sweep

log = logging.getLogger(__name__)


def log_sweep_summary(sweep: "Sweep", logger_cfg, figures: dict[str, Path], group: str | None = None) -> None:
    if logger_cfg is None or logger_cfg.get("kind", "none") == "none":
        return
    import wandb

    group = group or sweep_group(sweep.directory)
    run = wandb.init(project=logger_cfg.get("project", "prunelab"), entity=logger_cfg.get("entity"),
                     mode=logger_cfg.get("mode", "offline"), dir=str(sweep.directory), group=group,
                     job_type="summary", name=f"summary {group}", reinit="finish_previous",
                     config={"sweep_dir": str(sweep.directory), "jobs": len(sweep.results)})
    try:
        results = sweep.results.astype({c: str for c in ("error", "overrides", "reused_from") if c in sweep.results})
        payload = {"summary/results": wandb.Table(dataframe=results)}
        from prunelab.study.aggregate import headline_metrics, pivot

        for metric in headline_metrics(sweep):
            table = pivot(sweep, metric)
            if not table.empty:
                flat = table.reset_index()
                flat.columns = [str(c) for c in flat.columns]
                payload[f"summary/{metric.replace('/', '_')}"] = wandb.Table(dataframe=flat)
        for name, path in figures.items():
            payload[f"figures/{name}"] = wandb.Image(str(path))
        run.log(payload)
        run.summary.update({"jobs": len(sweep.results),
                            **{f"jobs_{k}": int(v) for k, v in sweep.results["status"].value_counts().items()}})
    finally:
        run.finish()
    log.info("W&B summary run logged (group %s, mode %s)", group, logger_cfg.get("mode"))
