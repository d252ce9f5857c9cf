"""Real Hydra multiruns of `run.py` on the tiny model: a failed job does not stop the sweep, a re-run
redoes only it, the callback aggregates, and the joblib launcher, W&B offline and Optuna work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ["calib_data.nsamples=4", "eval.max_windows=2", "eval.ppl_datasets=[wiki]"]


def multirun(*overrides: str, timeout: int = 600, returncode: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "run.py", "-m", *overrides], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def records(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_model_and_tokenizer) -> Path:
    """Two saved copies of the tiny model, ``a`` and ``c``; ``b`` is not there (yet)."""
    root = tmp_path_factory.mktemp("checkpoints")
    model, tokenizer = tiny_model_and_tokenizer
    for name in ("a", "c"):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.mark.slow  # a few Python start-ups of run.py (20-60 s; minutes on a loaded machine)
def test_failed_job_is_recorded_the_sweep_goes_on_and_a_rerun_redoes_only_it(tmp_path, checkpoints):
    sweep = tmp_path / "sweep"
    paths = ",".join(str(checkpoints / n) for n in ("a", "b", "c"))
    command = ["model=local", f"model.path={paths}", "model.dtype=float32", "model.seqlen=64", "model.device=cpu",
               *TINY, "logger=none", "hydra.sweeper.dense_baseline=false", f"hydra.sweep.dir={sweep}"]
    failing = multirun(*command, returncode=1)  # every job ran; the sweep's exit status says one failed
    first = records(sweep)
    assert [r["status"] for r in first.values()] == ["completed", "failed", "completed"]
    said = failing.stdout + failing.stderr  # Hydra's log goes to stdout
    assert "1 job(s) of" in said and "job 1 [failed]" in said and "Re-run the same command" in said
    assert "model.path=" in first["1"]["error"] and first["1"]["traceback"]
    table = pd.read_csv(sweep / "results.csv")  # written by the callback at the end of the multirun
    assert table["status"].tolist() == ["completed", "failed", "completed"]
    assert (sweep / "report.md").exists() and (sweep / "report.pdf").exists()
    stamps = {job: (sweep / job / "metrics.json").stat().st_mtime_ns for job in first}

    shutil.copytree(checkpoints / "a", checkpoints / "b")  # the missing checkpoint appears
    rerun = multirun(*command)
    second = records(sweep)
    assert [r["status"] for r in second.values()] == ["completed", "completed", "completed"]
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamps["0"]
    assert (sweep / "2" / "metrics.json").stat().st_mtime_ns == stamps["2"]
    assert (sweep / "1" / "metrics.json").stat().st_mtime_ns != stamps["1"]
    assert rerun.stdout.count("skipped: a completed run") + rerun.stderr.count("skipped: a completed run") == 2
    assert pd.read_csv(sweep / "results.csv")["status"].tolist() == ["completed"] * 3


@pytest.mark.slow  # a few Python start-ups of run.py (20-60 s; minutes on a loaded machine)
def test_joblib_launcher_and_wandb_offline_group_and_names(tmp_path):
    sweep = tmp_path / "sweep"
    multirun("model=tiny_random", *TINY, "sparsity=0.3,0.6", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
             "logger=wandb", "logger.mode=offline", "hydra.callbacks.aggregate.report=false",
             "hydra.sweeper.dense_baseline=false", f"hydra.sweep.dir={sweep}")
    done = records(sweep)
    assert [r["config"]["sparsity"] for r in done.values()] == [0.3, 0.6]
    assert all(r["status"] == "completed" for r in done.values())
    assert len(pd.read_csv(sweep / "results.csv")) == 2
    group = str(sweep).encode()  # outside the working directory the group is the absolute sweep path
    for job, name in (("0", b"sparsity=0.3"), ("1", b"sparsity=0.6")):
        run_file = next((sweep / job / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        assert group in run_file and name in run_file
    summary = list((sweep / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(summary) == 1 and b"summary" in summary[0].read_bytes()


@pytest.mark.slow  # a few Python start-ups of run.py (20-60 s; minutes on a loaded machine)
def test_optuna_sweeper_searches_ria_alpha(tmp_path):
    sweep = tmp_path / "sweep"
    multirun("+experiment=ria_alpha_optuna", "model=tiny_random", *TINY, "logger=none", "hydra.sweeper.n_trials=2",
             "hydra.callbacks.aggregate.report=false", f"hydra.sweep.dir={sweep}")
    trials = records(sweep)
    assert len(trials) == 2 and all(r["status"] == "completed" for r in trials.values())
    alphas = [r["config"]["ria_alpha"] for r in trials.values()]
    assert all(0.0 <= a <= 1.5 for a in alphas) and alphas[0] != alphas[1]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    ppl = {r["config"]["ria_alpha"]: r["metrics"]["eval/ppl_wiki"] for r in trials.values()}
    assert best["best_value"] == pytest.approx(min(ppl.values()))
    assert best["best_params"]["ria_alpha"] == pytest.approx(min(ppl, key=ppl.get))


@pytest.mark.slow  # two Python start-ups of run.py
def test_an_ad_hoc_sweep_gets_a_stable_directory_a_dense_baseline_and_resumes(tmp_path):
    command = [sys.executable, str(ROOT / "run.py"), "-m", "model=tiny_random", *TINY, "logger=none",
               "method=magnitude,wanda", "sparsity=0.3,0.6", "hydra.callbacks.aggregate.report=false"]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = tmp_path / "multirun" / "tiny_random" / (
        "method=magnitude,wanda__sparsity=0.3,0.6__calib_data.nsamples=4__eval.max_windows=2__eval.ppl_datasets=[wiki]")
    done = records(sweep)
    assert len(done) == 5 and [r["plan"]["method"] for r in done.values()].count("dense") == 1
    assert all(r["status"] == "completed" for r in done.values())
    said = first.stdout + first.stderr
    assert "job 1/5" in said and "job 5/5" in said and "ETA" in said  # progress, one line per job
    assert f"all jobs: {sweep / 'results.csv'}" in said and "eval/ppl_wiki" in said  # the table at the end
    table = pd.read_csv(sweep / "results.csv")
    assert sorted(table["sparsity"].astype(float)) == [0.0, 0.3, 0.3, 0.6, 0.6]  # dense: the 0% point

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    said_again = again.stdout + again.stderr
    assert said_again.count("skipped: a completed run") == 5  # the same command resumes
    assert "job 5/5" in said_again and "ETA" not in said_again  # no job ran: no estimate from skips


@pytest.mark.slow  # one Python start-up of run.py
def test_a_presets_dense_baseline_joins_its_directory_with_the_presets_evaluation(tmp_path):
    # module_sensitivity names its directory after the method (.../module_sensitivity/wanda) and varies
    # preset settings that select method and pattern; the dense job must land beside the grid, once.
    command = [sys.executable, str(ROOT / "run.py"), "+experiment=module_sensitivity", "model=tiny_random", *TINY,
               "logger=none", "target.modules=[mlp],[all]", "+experiment/setting=unstructured_50,nm_2_4",
               "hydra.callbacks.aggregate.report=false"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = [p.parent for p in (tmp_path / "multirun").rglob("multirun.yaml")]
    assert sweeps == [tmp_path / "multirun" / "tiny_random" / "module_sensitivity" / "wanda"]
    done = records(sweeps[0])
    dense = [r for r in done.values() if r["plan"]["method"] == "dense"]
    assert len(done) == 5 and len(dense) == 1 and all(r["status"] == "completed" for r in done.values())
    assert "+experiment=module_sensitivity" in dense[0]["overrides"]  # the preset's settings apply to it
    assert not any(o.startswith(("+experiment/setting", "target.")) for o in dense[0]["overrides"])
    assert sorted(pd.read_csv(sweeps[0] / "results.csv")["method"]) == ["dense"] + ["wanda"] * 4
