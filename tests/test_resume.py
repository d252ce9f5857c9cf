"""Per-run machinery of a sweep: config fingerprints, run names, resuming (skip, redo, force,
a reordered grid) and the calibration-window cache, on real tiny-model runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from prunelab import caches, data, naming, pipeline, resume
from prunelab.study.records import collect
from tests.conftest import TINY, compose_config


def run_job(job_dir: Path, *overrides: str, multirun: bool = True) -> float:
    """One tiny job in ``job_dir``; as a job of the sweep ``job_dir.parent`` unless ``multirun=False``."""
    cfg = compose_config(*TINY, *overrides)
    return pipeline.main(cfg, output_dir=job_dir, overrides=list(overrides),
                         sweep_dir=job_dir.parent if multirun else None)


# ----------------------------------------------------------------------------------- fingerprints
def test_fingerprint_ignores_logging_and_force_but_not_knobs():
    def fingerprint(*overrides: str) -> str:
        return resume.fingerprint(compose_config(*overrides))

    base = fingerprint(*TINY)
    assert base == fingerprint(*TINY[:-1], "logger=wandb", "force=true", "group=x", "run_name=y")
    for knob in ("sparsity=0.6", "method=magnitude", "calib_data=austen", "seed=1", "target.modules=[mlp]"):
        assert fingerprint(*TINY, knob) != base, knob


def test_run_label_names_a_job_by_its_own_overrides():
    overrides = ["method=wanda", "sparsity=0.5", "+experiment=sparsity_curve", "logger=none", "force=true"]
    assert naming.run_label(overrides, default="x") == "method=wanda,sparsity=0.5"
    assert naming.run_label(["+experiment=a"], default="wanda-s0.5") == "wanda-s0.5"
    assert naming.sweep_group(Path.cwd() / "multirun" / "model" / "study") == os.path.join("model", "study")


def test_run_label_keeps_only_what_the_sweep_varies(tmp_path):
    """The keys a sweep varies come from the multirun.yaml Hydra writes: command-line sweeps and the
    preset's grid, minus keys the command line pins to one value."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.conftest import CONF_DIR

    command = ["+experiment=module_sensitivity", "model=tiny_random", "target.modules=[mlp]",
               "seed=0,1", "eval.max_windows=2", "logger=none"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # compose takes no sweep: seed=0 here
        config = compose(config_name="config", overrides=[o.replace("0,1", "0") for o in command],
                         return_hydra_config=True)
    config.hydra.overrides.task = command  # as the sweeper records the command line
    OmegaConf.save(config, tmp_path / "multirun.yaml")  # what Hydra's sweeper saves before launching
    swept = naming.swept_keys(tmp_path)
    assert swept == {"seed", "experiment/setting"}  # target.modules is swept by the preset but pinned here
    job = ["+experiment=module_sensitivity", "model=tiny_random", "target.modules=[mlp]", "seed=1",
           "eval.max_windows=2", "logger=none", "+experiment/setting=nm_2_4"]
    assert naming.run_label(job, default="x", swept=swept) == "seed=1,setting=nm_2_4"
    assert naming.swept_keys(tmp_path / "elsewhere") is None
    group = naming.sweep_group(tmp_path)
    assert naming.tracker_names(None, None, "x", job, tmp_path) == ("seed=1,setting=nm_2_4", group)
    assert naming.tracker_names("mine", "g", "x", job, tmp_path) == ("mine", "g")  # the user's names win
    assert naming.tracker_names(None, None, "wanda-unstructured-s0.5", job, None) == ("wanda-unstructured-s0.5", None)


# ----------------------------------------------------------------------------------------- resuming
def test_completed_job_is_skipped_failed_is_redone_force_redoes(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_job(sweep / "0", "sparsity=0.4")
    record_path = sweep / "0" / "metrics.json"
    stamp = record_path.stat().st_mtime_ns
    assert run_job(sweep / "0", "sparsity=0.4") == first  # the same study again: nothing rerun
    assert record_path.stat().st_mtime_ns == stamp

    record = json.loads(record_path.read_text())
    record["status"] = "failed"
    record_path.write_text(json.dumps(record))
    run_job(sweep / "0", "sparsity=0.4")  # a failed job is redone
    assert json.loads(record_path.read_text())["status"] == "completed"
    stamp = record_path.stat().st_mtime_ns

    run_job(sweep / "0", "sparsity=0.4", "force=true")
    assert record_path.stat().st_mtime_ns != stamp
    assert json.loads(record_path.read_text())["status"] == "completed"
    stamp = record_path.stat().st_mtime_ns

    run_job(sweep / "0", "sparsity=0.4", multirun=False)  # a single run is never skipped
    assert record_path.stat().st_mtime_ns != stamp


def test_reordered_grid_reuses_results_and_keeps_displaced_ones(tmp_path):
    sweep = tmp_path / "sweep"
    run_job(sweep / "0", "sparsity=0.4")
    run_job(sweep / "1", "sparsity=0.6")
    # The grid changed: job 0 is now sparsity=0.6 (done in 1/), job 1 a new point.
    run_job(sweep / "0", "sparsity=0.6")
    reused = json.loads((sweep / "0" / "metrics.json").read_text())
    assert reused["status"] == "skipped" and reused["reused_from"] == os.path.join("1", "metrics.json")
    kept = list((sweep / "0").glob("metrics.*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["config"]["sparsity"] == 0.4
    assert resume.find_completed(sweep, json.loads(kept[0].read_text())["fingerprint"]).path == kept[0]
    table = collect(sweep).results
    assert sorted(table["sparsity"]) == [0.6]  # the copy in 0/ is dropped while 1/ holds the original


# ------------------------------------------------------------------------------ calibration cache
def test_calibration_cache_returns_the_same_windows_without_redrawing(tmp_path, tokenizer, monkeypatch):
    spec = data.CalibrationSpec("wiki", 3, 32, 0)
    fresh = data.calibration_tokens(spec, tokenizer)
    first = caches.calibration_tokens(spec, tokenizer, root=tmp_path)
    assert torch.equal(first, fresh)
    assert len(list((tmp_path / "calib_tokens").glob("wiki-*.pt"))) == 1

    def no_redraw(*_args, **_kwargs):
        raise AssertionError("calibration windows were drawn again")

    monkeypatch.setattr(data, "calibration_tokens", no_redraw)
    assert torch.equal(caches.calibration_tokens(spec, tokenizer, root=tmp_path), fresh)
    with pytest.raises(AssertionError):  # another seed is another key
        caches.calibration_tokens(data.CalibrationSpec("wiki", 3, 32, 1), tokenizer, root=tmp_path)


# -------------------------------------------------------------------- ad-hoc sweeps: name, baseline
def test_an_ad_hoc_sweep_is_named_by_its_command_line_in_any_order():
    assert naming.sweep_name(["-m", "method=magnitude,wanda,ria", "sparsity=0.3,0.5,0.7,0.9"]) == \
        naming.sweep_name(["sparsity=0.3,0.5,0.7,0.9", "logger=none", "-m", "method=magnitude,wanda,ria"]) == \
        "method=magnitude,wanda,ria__sparsity=0.3,0.5,0.7,0.9"
    assert naming.sweep_name(["-m", "model=tiny_random", "hydra.launcher.n_jobs=2", "seed=1,2"]) == "seed=1,2"
    assert naming.sweep_name(["-m", "model.path=/a/b", "seed=1,2"]) == "seed=1,2__model.path=_a_b"
    long = naming.sweep_name(["-m", "method=" + ",".join(["magnitude"] * 30)])
    assert len(long) == naming.SWEEP_NAME_MAX and long != naming.sweep_name(["-m", "method=" + ",".join(["wanda"] * 30)])


def test_the_dense_baseline_joins_once_per_setting_a_dense_model_sees():
    from prunelab.study.sweeper import baseline_jobs

    grid = [[f"method={m}", f"sparsity={s}", "eval.max_windows=8"] for m in ("wanda", "ria") for s in (0.3, 0.5)]
    assert baseline_jobs(grid) == [["method=dense", "eval.max_windows=8"]]
    by_model = [[f"model={m}", "method=ria", f"ria_alpha={a}", "calib_data=wiki"] for m in ("a", "b") for a in (0, 1)]
    assert baseline_jobs(by_model) == [["method=dense", "model=a"], ["method=dense", "model=b"]]
    with_dense = grid + [["method=dense", "sparsity=0.3", "eval.max_windows=8"]]
    assert baseline_jobs(with_dense) == []  # the sweep has its baseline already
    assert baseline_jobs([["method=owl", "method@method.base=ria", "target.modules=[mlp]"]]) == [["method=dense"]]


def test_a_presets_baseline_keeps_the_preset_drops_its_settings_and_counts_a_dense_setting():
    from prunelab.study.sweeper import baseline_jobs, pinned

    grid = [["+experiment=module_sensitivity", f"target.modules={t}", f"+experiment/setting={s}", "seed=1"]
            for t in ("[mlp]", "[all]") for s in ("nm_2_4", "unstructured_50")]
    assert baseline_jobs(grid) == [["method=dense", "+experiment=module_sensitivity", "seed=1"]]
    granularity = [["+experiment=granularity", f"+experiment/granularity={s}"] for s in ("dense", "flap_20", "nm_2_4")]
    composed_dense = lambda job: "+experiment/granularity=dense" in job  # what composing the job tells  # noqa: E731
    assert baseline_jobs(granularity, is_dense=composed_dense) == []  # its setting `dense` is the baseline
    assert baseline_jobs(granularity) == [["method=dense", "+experiment=granularity"]]
    assert pinned(["method=dense"], "multirun/m/method=a,b__x=[wiki]") == \
        ["method=dense", "hydra.sweep.dir='multirun/m/method=a,b__x=[wiki]'"]


# ------------------------------------------------------------------ the dense baseline, measured once
def test_the_dense_baseline_is_measured_once_and_reused_by_another_sweep(tmp_path):
    """Two sweeps of one model with the same evaluation: the second sweep's dense job loads no
    weights, reuses the stored record (same numbers) under its own config, and knobs a dense model
    ignores (sparsity, calibration data, RIA's alpha) do not make another baseline; another
    evaluation does."""
    from prunelab import baselines

    model_dir = tmp_path / "multirun" / "tiny_random"
    first = run_job(model_dir / "sparsity_curve" / "4", "method=dense")
    stored = list((model_dir / "baselines").glob("*.json"))
    assert baselines.store_dir(model_dir / "module_sensitivity" / "wanda") == (model_dir / "baselines").resolve()
    assert len(stored) == 1 and json.loads(stored[0].read_text())["status"] == "completed"
    measured = json.loads((model_dir / "sparsity_curve" / "4" / "metrics.json").read_text())

    again = run_job(model_dir / "ria_alpha" / "module" / "9", "method=dense", "sparsity=0.7", "calib_data=austen",
                    "ria_alpha=0.25")
    reused = json.loads((model_dir / "ria_alpha" / "module" / "9" / "metrics.json").read_text())
    assert again == first and reused["status"] == "skipped" and reused["reused_from"] == str(stored[0])
    assert reused["metrics"] == measured["metrics"]  # the numbers of the measured run, not a re-measurement
    assert reused["config"]["sparsity"] == 0.7 and reused["overrides"][-1] == "ria_alpha=0.25"  # its own config
    assert reused["fingerprint"] != measured["fingerprint"] and "baseline_key" not in reused
    assert collect(model_dir / "ria_alpha" / "module").results["eval/ppl_wiki"].tolist() == \
        [measured["metrics"]["eval/ppl_wiki"]]

    other_eval = model_dir / "patterns" / "12"
    run_job(other_eval, "method=dense", "eval.max_windows=1")  # another evaluation: measured, stored beside
    assert json.loads((other_eval / "metrics.json").read_text())["status"] == "completed"
    assert len(list((model_dir / "baselines").glob("*.json"))) == 2
    run_job(model_dir / "sparsity_curve" / "4", "method=dense", "force=true")  # force measures it again
    assert json.loads((model_dir / "sparsity_curve" / "4" / "metrics.json").read_text())["status"] == "completed"


def test_a_broken_or_foreign_stored_baseline_is_measured_again(tmp_path):
    sweep = tmp_path / "multirun" / "tiny_random" / "a"
    run_job(sweep / "0", "method=dense")
    stored = next((tmp_path / "multirun" / "tiny_random" / "baselines").glob("*.json"))
    record = json.loads(stored.read_text())
    stored.write_text(json.dumps({**record, "metrics": {**record["metrics"], "eval/ppl_wiki": "nan"}}))
    other = tmp_path / "multirun" / "tiny_random" / "b" / "0"
    run_job(other, "method=dense")
    assert json.loads((other / "metrics.json").read_text())["status"] == "completed"  # not the NaN copy
    assert json.loads(stored.read_text())["metrics"]["eval/ppl_wiki"] == record["metrics"]["eval/ppl_wiki"]
