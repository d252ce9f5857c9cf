"""Sweeps through submitit: the SLURM preset composes and becomes the sbatch script a cluster would
get (no SLURM here: nothing is submitted), what a job pickles, and a real ``submitit_local`` sweep
on the tiny model: the basic launcher's numbers, a killed job that does not stop the sweep, and a
re-run that redoes only it."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.utils import instantiate

from prunelab.config import compose
from prunelab.study.submitit_jobs import SubmititJobs, executor, is_submitit

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_random", "calib_data.nsamples=4", "eval.max_windows=2", "eval.ppl_datasets=[wiki]", "logger=none"]


def _launcher(*overrides: str):
    cfg = compose("+experiment=sparsity_curve", *overrides, "hydra.job.name=run", hydra_config=True)
    return cfg, instantiate(cfg.hydra.launcher)


def test_slurm_preset_becomes_an_sbatch_array_with_the_clusters_settings(tmp_path, monkeypatch):
    cfg, launcher = _launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=lab",
                              "hydra.launcher.gpus_per_node=2", "hydra.launcher.array_parallelism=3",
                              'hydra.launcher.setup=["module load cuda/12.4","source ~/venv/bin/activate"]',
                              "+hydra.launcher.additional_parameters.mail-type=END", f"hydra.sweep.dir={tmp_path}")
    assert is_submitit(launcher) and type(launcher).__name__ == "SlurmLauncher"
    fake = tmp_path / "bin"  # submitit refuses to build a SLURM executor where `srun` is not on PATH; it is never run
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    from submitit.slurm.slurm import _make_sbatch_string

    made = executor(launcher)._executor  # submitit's SlurmExecutor inside its AutoExecutor
    assert made.max_num_timeout == 0  # no silent re-queue: a re-run of the sweep resumes
    script = _make_sbatch_string(command="python -m submitit.core._submit", folder=made.folder, map_count=7,
                                 **made.parameters)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --time=240", "#SBATCH --array=0-6%3",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1", "#SBATCH --job-name=run", "#SBATCH --mail-type=END",
                 "module load cuda/12.4", "source ~/venv/bin/activate"):
        assert line in script.splitlines(), (line, script)
    assert f"--output={tmp_path}/.submitit/%A_%a/%A_%a_0_log.out" in script  # the logs stay in the sweep directory


def test_submitit_local_is_wrapped_and_what_a_job_pickles_pickles(tmp_path):
    cfg, launcher = _launcher("hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}")
    assert is_submitit(launcher) and not is_submitit(instantiate(compose("hydra/launcher=joblib", hydra_config=True)
                                                                 .hydra.launcher))
    assert SubmititJobs(launcher, cfg.hydra.sweep.dir).sweep_dir == tmp_path
    made = executor(launcher)._executor
    assert made.parameters["timeout_min"] == 60  # the plugin's default: a local job is stopped after an hour
    callbacks = [instantiate(node) for node in cfg.hydra.callbacks.values()]  # sent to every job with the launcher
    for callback in pickle.loads(pickle.dumps(callbacks)):
        assert type(callback).__module__ == "prunelab.study.callbacks"


def _multirun(cwd: Path, *extra: str, kill_job: str | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    """``run.py -m`` of two magnitude jobs (and the dense baseline) started in ``cwd``, into the
    sweep directory named by the command line (``multirun/tiny_random/<overrides>``, the same name
    with either launcher); ``kill_job``: SIGKILL that job's process (its ``.job.claim`` names it)
    as soon as its record says it is running."""
    cwd.mkdir(exist_ok=True)
    command = [sys.executable, str(ROOT / "run.py"), "-m", *TINY, "method=magnitude", "sparsity=0.3,0.6",
               "hydra.callbacks.aggregate.report=false", *extra]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while kill_job is not None and process.poll() is None:
        try:
            job = next(cwd.glob(f"multirun/tiny_random/*/{kill_job}"))
            running = json.loads((job / "metrics.json").read_text())["status"] == "running"
            pid = json.loads((job / ".job.claim").read_text())["pid"]
        except (StopIteration, OSError, ValueError, KeyError):
            time.sleep(0.05)
            continue
        if running:
            os.kill(pid, signal.SIGKILL)
            kill_job = None
    output, _ = process.communicate(timeout=600)
    sweeps = [p for p in cwd.glob("multirun/tiny_random/*") if p.name != "baselines"]  # baselines: the shared dense records
    assert len(sweeps) == 1, sweeps
    return subprocess.CompletedProcess(command, process.returncode, output), sweeps[0]


def _results(sweep: Path) -> dict[str, tuple[str, float | None]]:
    found = {}
    for path in sorted(sweep.glob("*/metrics.json")):
        record = json.loads(path.read_text())
        found[path.parent.name] = (record["status"], record["metrics"].get("eval/ppl_wiki"))
    return found


@pytest.mark.slow  # three sweeps of three tiny jobs: ~1.5 min idle, ~3 min at load 16 on 2 cores
def test_submitit_local_sweep_matches_the_basic_launcher_survives_a_killed_job_and_resumes_only_it(tmp_path):
    basic, basic_sweep = _multirun(tmp_path / "basic")
    assert basic.returncode == 0, basic.stdout[-3000:]
    expected = _results(basic_sweep)
    assert [status for status, _ in expected.values()] == ["completed"] * 3

    killed, sweep = _multirun(tmp_path / "submitit", "hydra/launcher=submitit_local", kill_job="1")
    said = killed.stdout
    assert killed.returncode == 1, said[-3000:]  # the sweep went on, aggregated, and says a job did not complete
    assert sweep.name == basic_sweep.name  # the job processes write where the sweep's process named the directory
    assert "3 job(s) submitted" in said  # the dense baseline goes with the grid, not after it
    assert "job 1 (" in said and "its process ended without a result" in said and ".submitit/" in said
    assert "1 job(s) of" in said and "job 1 [running]" in said and "the process died?" in said
    assert (sweep / "results.csv").exists()
    first = _results(sweep)
    assert first["1"][0] == "running" and first["0"] == expected["0"] and first["2"] == expected["2"]
    stamps = {job: (sweep / job / "metrics.json").stat().st_mtime_ns for job in first}

    again, same = _multirun(tmp_path / "submitit", "hydra/launcher=submitit_local")
    assert again.returncode == 0 and same == sweep, again.stdout[-3000:]
    assert _results(sweep) == expected  # the same numbers as the basic launcher's, to the last bit
    assert (sweep / "1" / "metrics.json").stat().st_mtime_ns != stamps["1"]
    assert all((sweep / job / "metrics.json").stat().st_mtime_ns == stamps[job] for job in ("0", "2"))
    assert again.stdout.count("(found completed)") == 2 and "job 2/3 finished (completed)" in again.stdout
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    assert logs.count("skipped: a completed run") >= 2  # each job process decided for itself


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_job_without_a_result_is_reported_with_its_cause_and_log_not_raised(tmp_path, caplog):
    """Real submitit local jobs (no prunelab in them): one raises, one is killed; each becomes a NaN
    result, a log line naming the cause and the job's log, and a line of the sweep's summary."""
    import submitit
    from submitit.core.utils import UncompletedJobError

    from prunelab.study.callbacks import unfinished_jobs

    run = submitit.AutoExecutor(folder=tmp_path / ".submitit" / "%j", cluster="local")
    raised, killed = run.submit(int, "x"), run.submit(_die)
    jobs = SubmititJobs(launcher=None, sweep_dir=str(tmp_path))
    said = {}
    for number, job in enumerate((raised, killed)):
        with pytest.raises(UncompletedJobError) as error:
            job.results()
        back = jobs._lost(number, [f"sparsity=0.{number + 1}"], job, error.value)
        assert back.return_value != back.return_value  # NaN: the sweep goes on
        said[number] = next(line for line in unfinished_jobs(tmp_path) if line.startswith(f"job {number} "))
    assert "[failed] sparsity=0.1: the job could not run: ValueError: invalid literal for int()" in said[0]
    assert "[failed] sparsity=0.2: its process ended without a result (killed? out of memory?" in said[1]
    logged = [r.getMessage() for r in caplog.records if r.name == "prunelab.study.submitit_jobs"]
    assert [f"log: {job.paths.stdout}" in line for line, job in zip(logged, (raised, killed))] == [True, True]
