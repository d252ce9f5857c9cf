"""Hardening of resuming, sweeps and run directories (issue 16): each case was a wrong or stale
result reported as fine. A changed model or code re-runs a job; two different sweeps in one
directory are reported; single runs never share a directory; a bad record is redone, not reused;
a full disk fails one job, not the sweep; an empty sweep and an unusable output directory say so
in one line; a sweep's directory name fits the file system in bytes."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab import files, naming, pipeline, resume
from tests.conftest import ROOT, TINY, compose_config


def cli(tmp_path: Path, *arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python run.py <arguments>`` on the tiny model, from the repository root."""
    flags = [a for a in arguments if a.startswith("-")]
    return subprocess.run([sys.executable, "run.py", *flags, *TINY, *(a for a in arguments if a not in flags)],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------ sweep names
@pytest.mark.parametrize("text", ["日本語のモデル" * 20, "🦙" * 80, "é" * 200], ids=["cjk", "emoji", "accented"])
def test_a_non_ascii_sweep_name_is_cut_in_bytes_and_stays_unique(tmp_path, text):
    name = naming.sweep_name(["-m", "seed=1,2", f"model.path=/data/{text}"])
    other = naming.sweep_name(["-m", "seed=1,2", f"model.path=/data/{text}x"])
    assert len(name.encode("utf-8")) <= naming.SWEEP_NAME_MAX and name != other
    (tmp_path / name).mkdir()  # not "File name too long"
    assert name.startswith("seed=1,2__model.path=_data_")


# ------------------------------------------------------------------------- records before reuse
def run_job(job_dir: Path, *overrides: str) -> float:
    """One tiny job of the sweep ``job_dir.parent`` (in this process)."""
    return pipeline.main(compose_config(*TINY, *overrides), output_dir=job_dir, overrides=list(overrides),
                         sweep_dir=job_dir.parent)


def _nan_metric(record):
    record["metrics"]["eval/ppl_wiki"] = "nan"  # how write_json stores a NaN


def _json_nan(record):
    record["metrics"]["time/eval_s"] = float("nan")  # a hand-edited record: bare NaN in JSON


def _no_headline(record):
    del record["metrics"]["eval/ppl_wiki"]


def _no_metrics(record):
    del record["metrics"]


def _metrics_a_list(record):
    record["metrics"] = [1, 2]


BAD_RECORDS = {"nan_metric": _nan_metric, "json_nan": _json_nan, "no_headline": _no_headline,
               "no_metrics": _no_metrics, "metrics_a_list": _metrics_a_list}


@pytest.mark.parametrize("damage", BAD_RECORDS)
def test_a_bad_completed_record_is_run_again_with_a_warning_naming_it(tmp_path, caplog, damage):
    job = tmp_path / "sweep" / "0"
    first = run_job(job, "sparsity=0.4")
    path = job / "metrics.json"
    record = json.loads(path.read_text())
    BAD_RECORDS[damage](record)
    path.write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        again = run_job(job, "sparsity=0.4")  # never a traceback, never the bad record reused
    assert again == first  # the run is deterministic: the same number, measured again
    redone = json.loads(path.read_text())
    assert redone["status"] == "completed" and redone["metrics"]["eval/ppl_wiki"] == first
    assert f"not reusing {path}" in caplog.text and "the job runs again" in caplog.text


def test_a_bad_record_elsewhere_in_the_sweep_is_not_copied(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    run_job(sweep / "1", "sparsity=0.4")
    source = sweep / "1" / "metrics.json"
    record = json.loads(source.read_text())
    _nan_metric(record)
    source.write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        run_job(sweep / "0", "sparsity=0.4")  # the grid moved: job 0 is now what 1 held
    copied = json.loads((sweep / "0" / "metrics.json").read_text())
    assert copied["status"] == "completed" and "reused_from" not in copied and f"not reusing {source}" in caplog.text


@pytest.mark.parametrize("content", ["[1, 2]", "\udcff not utf-8"], ids=["a_list", "not_utf8"])
def test_an_unreadable_record_is_reported_not_a_traceback(tmp_path, caplog, content):
    from prunelab.study import callbacks

    path = tmp_path / "sweep" / "0" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content.encode("utf-8", errors="surrogateescape"))
    assert resume.read_record(path) is None and resume.find_completed(path.parent.parent, "x") is None
    (line,) = callbacks.unfinished_jobs(path.parent.parent)
    assert line.startswith("job 0: unreadable record (")


# ------------------------------------------------------------------- run and sweep directories
@pytest.mark.slow  # one Python start-up
def test_a_sweep_with_no_job_says_so_and_exits_non_zero(tmp_path):
    result = cli(tmp_path, "-m", "sparsity=range(0,0)", f"hydra.sweep.dir={tmp_path}/sweep")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Error: the sweep has no job: sparsity=range(0,0) expands to no value" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow  # one Python start-up per case
@pytest.mark.parametrize("where,key,why", [
    ("a_file/run", "hydra.run.dir", "Not a directory"),
    ("/proc/prunelab", "hydra.run.dir", "No such file or directory"),
    ("a_file", "hydra.sweep.dir", "it is a file"),
], ids=["run_dir_under_a_file", "run_dir_in_proc", "sweep_dir_a_file"])
def test_an_unusable_output_directory_is_one_line_and_exit_2(tmp_path, where, key, why):
    (tmp_path / "a_file").write_text("not a directory")
    path = where if where.startswith("/") else str(tmp_path / where)
    result = cli(tmp_path, *(["-m"] if key == "hydra.sweep.dir" else []), f"{key}={path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"Error: {key}={path} cannot hold the output: {why}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_single_runs_directory_names_its_process():
    """``outputs/<date>/<time>-<pid>``: two live processes never share a process id, so two runs
    started in the same second never share (and overwrite) a directory."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = compose(config_name="config", overrides=list(TINY), return_hydra_config=True)
    HydraConfig.instance().set_config(config)
    assert Path(str(config.hydra.run.dir)).name.endswith(f"-{os.getpid()}")


@pytest.mark.slow  # two Python start-ups at once
def test_two_single_runs_started_in_one_second_keep_their_own_directories(tmp_path):
    command = [sys.executable, str(ROOT / "run.py"), *TINY]
    runs = [subprocess.Popen([*command, f"sparsity={s}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for s in (0.3, 0.6)]
    assert [r.wait(timeout=600) for r in runs] == [0, 0], [r.stderr.read()[-2000:] for r in runs]
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs").glob("*/*/metrics.json")]
    assert sorted(r["config"]["sparsity"] for r in records) == [0.3, 0.6]
    assert all(r["status"] == "completed" for r in records)


# ---------------------------------------------------------------------------------- full disk
def full_disk(monkeypatch, when):
    """From now on a write whose content satisfies ``when(bytes)`` fails with ENOSPC (at fsync, as
    a full disk does with delayed allocation); returns a function that frees the disk."""
    real_fsync = files.os.fsync

    def fsync(fd):
        size = os.fstat(fd).st_size
        if when(os.pread(fd, size, 0)):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    return lambda: monkeypatch.setattr(files.os, "fsync", real_fsync)


@pytest.mark.parametrize("full", ["at_the_end", "from_the_start"])
def test_a_full_disk_fails_one_job_and_the_sweep_goes_on_to_its_summary(tmp_path, monkeypatch, caplog, full):
    from prunelab.study import callbacks

    sweep = tmp_path / "sweep"
    when = (lambda content: b'"status": "completed"' in content) if full == "at_the_end" else (lambda content: True)
    free = full_disk(monkeypatch, when)
    with caplog.at_level("ERROR"):
        assert math.isnan(run_job(sweep / "0", "sparsity=0.4"))  # no exception: the sweep goes on
    free()
    assert run_job(sweep / "1", "sparsity=0.6") > 0  # the next job runs
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "completed"
    assert "No space left on device" in caplog.text and "the sweep goes on" in caplog.text
    callbacks._unfinished.clear()
    with caplog.at_level("ERROR"):
        callbacks.report_unfinished(sweep)
    assert callbacks.exit_status() == 1 and "1 job(s) of" in caplog.text
    assert "job 0 [failed] sparsity=0.4:" in caplog.text and "No space left on device" in caplog.text
    if full == "at_the_end":  # the small failed record fits where the full one did not
        record = json.loads((sweep / "0" / "metrics.json").read_text())
        assert record["status"] == "failed" and "No space left on device" in record["error"]
    else:
        assert not (sweep / "0" / "metrics.json").exists() and "(not recorded on disk)" in caplog.text
    callbacks._unfinished.clear()


def test_a_full_disk_in_a_single_run_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    full_disk(monkeypatch, lambda content: b'"status": "completed"' in content)
    with pytest.raises(SystemExit) as stop, pipeline.user_errors():
        pipeline.main(compose_config(*TINY), output_dir=tmp_path / "run", overrides=[])
    assert stop.value.code == 1
    said = capsys.readouterr().err
    (line,) = [line for line in said.splitlines() if line.startswith("Error:")]  # the rest: progress bars
    assert line.startswith(f"Error: cannot write the run's record {tmp_path / 'run' / 'metrics.json'}: ")
    assert "No space left on device" in line and "Traceback" not in said


def test_a_record_path_that_is_a_directory_fails_only_its_job(tmp_path, caplog):
    from prunelab.study import callbacks

    sweep = tmp_path / "sweep"
    (sweep / "0" / "metrics.json").mkdir(parents=True)
    with caplog.at_level("ERROR"):
        assert math.isnan(run_job(sweep / "0", "sparsity=0.4"))
    assert run_job(sweep / "1", "sparsity=0.6") > 0
    callbacks._unfinished.clear()
    lines = callbacks.unfinished_jobs(sweep)
    callbacks._unfinished.clear()
    assert len(lines) == 1 and lines[0].startswith("job 0 [failed] sparsity=0.4: RecordError: cannot write")


# ------------------------------------------------------------------ model files and code in the fingerprint
LOCAL = ["model=local", "model.dtype=float32", "model.seqlen=64", "model.device=cpu"]


def _save(model, tokenizer, directory: Path, scale: float = 1.0) -> None:
    """Save ``model`` with every weight multiplied by ``scale``: the same shapes, so the same
    safetensors header, other bytes (a checkpoint retrained or re-exported in place)."""
    import copy

    import torch

    changed = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.mul_(scale)
    changed.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def test_a_replaced_checkpoint_or_changed_code_runs_the_job_again(tmp_path, tiny_model_and_tokenizer, caplog, monkeypatch):
    from prunelab import identity

    model, tokenizer = tiny_model_and_tokenizer
    checkpoint = tmp_path / "ckpt"
    _save(model, tokenizer, checkpoint)
    job = tmp_path / "sweep" / "0"
    overrides = [*LOCAL, f"model.path={checkpoint}"]
    first = run_job(job, *overrides)
    record_path = job / "metrics.json"
    stamp = record_path.stat().st_mtime_ns
    assert run_job(job, *overrides) == first and record_path.stat().st_mtime_ns == stamp  # unchanged: skipped

    _save(model, tokenizer, checkpoint, scale=0.5)  # the same path, other weights
    with caplog.at_level("WARNING"):
        second = run_job(job, *overrides)
    assert second != first and json.loads(record_path.read_text())["metrics"]["eval/ppl_wiki"] == second
    assert "running again: a completed run of this config in" in caplog.text and "the model's files" in caplog.text
    stamp = record_path.stat().st_mtime_ns
    assert run_job(job, *overrides) == second and record_path.stat().st_mtime_ns == stamp

    caplog.clear()
    monkeypatch.setattr(identity, "code_identity", lambda: "0.1.0+edited")  # the source tree changed
    with caplog.at_level("WARNING"):
        assert run_job(job, *overrides) == second  # measured again (deterministic)
    assert record_path.stat().st_mtime_ns != stamp
    assert "the code" in caplog.text and "-> 0.1.0+edited" in caplog.text
    assert json.loads(record_path.read_text())["identity"]["code"] == "0.1.0+edited"


def test_a_record_from_before_identities_is_run_again_and_says_why(tmp_path, caplog):
    job = tmp_path / "sweep" / "0"
    run_job(job, "sparsity=0.4")
    path = job / "metrics.json"
    record = json.loads(path.read_text())
    record["fingerprint"] = record.pop("identity")["config"]  # as the code before this change wrote it
    path.write_text(json.dumps(record))
    stamp = path.stat().st_mtime_ns
    with caplog.at_level("WARNING"):
        run_job(job, "sparsity=0.4")
    assert path.stat().st_mtime_ns != stamp and "before the model's files and the code were part" in caplog.text


def test_the_fingerprint_is_stable_and_covers_model_and_code():
    config = compose_config(*TINY)
    inputs = pipeline.job_identity(config)
    assert inputs["config"] == resume.fingerprint(pipeline._resolved(config))  # the config's own fingerprint, as before
    assert resume.fingerprint(config, inputs) == resume.fingerprint(compose_config(*TINY), pipeline.job_identity(config))
    for key in ("model", "code"):
        assert resume.fingerprint(config, {**inputs, key: "other"}) != resume.fingerprint(config, inputs)
    assert pipeline.job_identity(compose_config(*TINY[1:], "model=local"))["model"].startswith("unavailable (")


# ------------------------------------------------------------------ two sweeps in one directory
def _job_print(*overrides: str) -> str:
    config = compose_config(*TINY, *overrides)
    return resume.fingerprint(pipeline._resolved(config), pipeline.job_identity(config))


def test_a_job_held_by_another_sweeps_process_is_reported_not_skipped(tmp_path, caplog):
    from prunelab.study import callbacks

    sweep = tmp_path / "sweep"
    job = sweep / "0"
    with pipeline.job_claim(job, _job_print("sparsity=0.9"), ["sparsity=0.9"]) as holder:  # another sweep's job 0
        assert holder is None
        with caplog.at_level("WARNING"):
            assert math.isnan(run_job(job, "sparsity=0.4"))
    assert "two different sweeps share one directory, so this job did not run" in caplog.text
    assert "sparsity=0.9" in caplog.text and not (job / "metrics.json").exists()
    callbacks._unfinished.clear()
    callbacks.report_unfinished(sweep)
    assert callbacks.exit_status() == 1
    (line,) = callbacks._unfinished
    assert line.startswith("job 0 [not run] sparsity=0.4: another process (pid ")
    callbacks._unfinished.clear()

    run_job(job, "sparsity=0.4")  # the sweep run again, alone: the job runs and the report clears
    assert callbacks.unfinished_jobs(sweep) == [] and not list(job.glob(".conflict.*"))


def test_a_job_held_by_another_invocation_of_the_same_sweep_is_left_to_it(tmp_path, caplog):
    from prunelab.study import callbacks

    job = tmp_path / "sweep" / "0"
    with pipeline.job_claim(job, _job_print("sparsity=0.4"), ["sparsity=0.4"]), caplog.at_level("WARNING"):
        assert math.isnan(run_job(job, "sparsity=0.4"))
    assert "is being run by another process; left to it" in caplog.text and "did not run" not in caplog.text
    assert callbacks.unfinished_jobs(job.parent) == []


@pytest.mark.slow  # two sweeps of real run.py processes at once
def test_two_different_sweeps_in_one_directory_never_both_say_all_is_well(tmp_path):
    sweep = tmp_path / "sweep"
    common = [sys.executable, "run.py", "-m", *TINY, "hydra.sweeper.dense_baseline=false",
              "hydra.callbacks.aggregate.report=false", f"hydra.sweep.dir={sweep}"]
    grids = {"a": ["0.2", "0.4"], "b": ["0.6", "0.8"]}
    runs = {name: subprocess.Popen([*common, f"sparsity={','.join(values)}"], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True) for name, values in grids.items()}
    said = {name: run.communicate(timeout=600)[0] for name, run in runs.items()}
    completed = set()
    for path in sweep.glob("*/metrics*.json"):
        record = json.loads(path.read_text())
        if record["status"] == "completed":
            completed.add(str(record["config"]["sparsity"]))
    for name, values in grids.items():  # every job of a sweep completed, or its sweep failed and said which
        missing = [v for v in values if v not in completed]
        if missing:
            assert runs[name].returncode == 1, said[name][-3000:]
            assert "[not run]" in said[name] and all(f"sparsity={v}" in said[name] for v in missing)
    assert any(run.returncode == 1 for run in runs.values()) or completed == {"0.2", "0.4", "0.6", "0.8"}


def test_another_configs_record_in_a_job_directory_is_kept_aside_and_found_again(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_job(sweep / "0", "sparsity=0.2")  # sweep A
    run_job(sweep / "0", "sparsity=0.6")  # sweep B, later, into the same directory
    kept = resume.find_completed(sweep, _job_print("sparsity=0.2"))
    assert kept is not None and kept.path.name.startswith("metrics.") and kept.path.name != "metrics.json"
    assert json.loads((sweep / "0" / "metrics.json").read_text())["config"]["sparsity"] == 0.6
    assert run_job(sweep / "1", "sparsity=0.2") == first  # A again: its kept result is reused, not lost
    assert json.loads((sweep / "1" / "metrics.json").read_text())["reused_from"] == os.path.join("0", kept.path.name)


def test_a_hand_edited_fingerprint_never_names_a_path(tmp_path):
    job = tmp_path / "sweep" / "0"
    run_job(job, "sparsity=0.2")
    path = job / "metrics.json"
    record = json.loads(path.read_text())
    record["fingerprint"] = "../../escaped"
    path.write_text(json.dumps(record))
    assert run_job(job, "sparsity=0.2") > 0  # another config's record for resume: kept aside inside the job
    assert json.loads(path.read_text())["status"] == "completed" and len(list(job.glob("metrics.*.json"))) == 1
    assert not list(tmp_path.rglob("*escaped*"))


@pytest.mark.slow  # one sweep of real run.py
def test_a_job_that_hydra_cannot_start_fails_alone_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "0").write_text("a file where job 0's directory goes")
    result = cli(tmp_path, "-m", "sparsity=0.3,0.6", "hydra.sweeper.dense_baseline=false",
                 "hydra.callbacks.aggregate.report=false", f"hydra.sweep.dir={sweep}")
    said = result.stdout + result.stderr
    assert result.returncode == 1, said[-3000:]
    assert "Traceback" not in said and "1 job(s) of" in said
    assert "job 0 [failed]" in said and "sparsity=0.3: the job could not start: FileExistsError" in said
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "completed"
