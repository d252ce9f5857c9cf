"""Conventions users of these tools expect: W&B's environment variables, result files readable by
the group, a single run that says where its results are."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab import files, pipeline
from prunelab.config import compose
from tests.conftest import ROOT, TINY, compose_config

TINY_WANDB = [o for o in TINY if not o.startswith("logger=")] + ["logger=wandb", "method=magnitude"]


def run_tiny(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_config(*TINY_WANDB, *overrides)
    pipeline.main(cfg, output_dir=tmp_path, overrides=list(overrides))
    return json.loads((tmp_path / "metrics.json").read_text())


def offline_runs(directory: Path) -> list[Path]:
    import wandb

    wandb.teardown()  # the W&B service writes the offline file asynchronously
    return list(directory.glob("wandb/offline-run-*/run-*.wandb"))


def test_wandb_mode_disabled_in_the_environment_writes_no_wandb_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    record = run_tiny(tmp_path)
    assert record["status"] == "completed" and record["config"]["logger"]["mode"] == "disabled"
    assert offline_runs(tmp_path) == [] and not (tmp_path / "wandb").exists()


def test_wandb_project_entity_and_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "prunelab-env-project")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    record = run_tiny(tmp_path / "run")
    assert record["config"]["logger"]["project"] == "prunelab-env-project"
    runs = offline_runs(tmp_path / "elsewhere")
    assert len(runs) == 1 and b"prunelab-env-project" in runs[0].read_bytes()
    assert not (tmp_path / "run" / "wandb").exists()


def test_a_command_line_override_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's old spelling of offline
    assert compose_config("logger=wandb").logger.project == "from-env"
    assert compose_config("logger=wandb", "logger.project=from-cli").logger.project == "from-cli"
    assert pipeline.make_plan(compose_config(*TINY_WANDB)).logger.mode == "offline"


def test_result_files_are_readable_by_the_group(tmp_path):
    previous = os.umask(0o022)
    try:
        files.atomic_write(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644


@pytest.mark.slow  # one Python start-up
@pytest.mark.parametrize("extra,code", [([], 0), (["sparsity=1.5"], 2)], ids=["completed", "failed"])
def test_a_single_run_ends_by_printing_its_run_directory(tmp_path, extra, code):
    result = subprocess.run([sys.executable, "run.py", *TINY, "method=magnitude", *extra, f"hydra.run.dir={tmp_path}/run"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == code, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith(f"Run directory: {tmp_path / 'run'}")
    assert stat.S_IMODE((tmp_path / "run" / "metrics.json").stat().st_mode) & 0o044 == 0o044


def test_a_sweep_names_the_hub_sets_it_needs():
    from prunelab.study.callbacks import hub_needs

    online = compose("+experiment=calibration_online", "model=tiny_random", hydra_config=True)
    assert hub_needs(online) == ["calib_data=c4", "calib_data=math", "eval.ppl_datasets=c4", "eval.ppl_datasets=math",
                                 "eval.ppl_datasets=wikitext2"]
    assert hub_needs(compose("+experiment=sparsity_curve", "model=tiny_random", hydra_config=True)) == []


@pytest.mark.slow  # one Python start-up
def test_a_preset_that_needs_the_hub_refuses_before_launching_any_job(tmp_path):
    result = subprocess.run([sys.executable, "run.py", "+experiment=calibration_online", "model=tiny_random", "logger=none",
                             f"hydra.sweep.dir={tmp_path}/sweep"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "needs the Hugging Face hub (calib_data=c4" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "sweep").exists()  # no job directory, no empty report
