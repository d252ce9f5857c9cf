"""Entry point: ``python run.py [overrides]`` runs one experiment, ``python run.py -m ...`` a study."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from prunelab import pipeline
from prunelab.study import callbacks


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()  # Hydra's state is read here and nowhere else
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        with pipeline.user_errors():
            return pipeline.main(cfg, output_dir=output_dir, overrides=list(hydra_cfg.overrides.task),
                                 sweep_dir=Path(hydra_cfg.sweep.dir) if multirun else None)
    finally:
        if not multirun:  # a sweep ends with its table and directory instead
            print(f"Run directory: {output_dir.resolve()} (metrics.json, .hydra/, run.log)", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the job's record says `interrupted`; keep what finished, say how to resume
        callbacks.interrupted()
        raise SystemExit(130) from None
    raise SystemExit(callbacks.exit_status())  # a sweep with failed jobs exits non-zero (single runs raise)
