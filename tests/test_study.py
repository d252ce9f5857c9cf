"""Study machinery in process: presets expand to valid runs, resuming, naming, the calibration cache,
and aggregation of real tiny-model runs into a table, figures and a report."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from prunelab import data, models, pipeline
from prunelab.settings import validate
from prunelab.study import aggregate, calib_cache, naming, report, skip
from tests.conftest import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_random", "calib_data.nsamples=4", "eval.max_windows=2", "eval.ppl_datasets=[wiki]", "logger=none"]
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
ONLINE_PRESETS = {"calibration_online"}


def compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def grid(params: dict[str, str]) -> list[list[str]]:
    """Every job of a basic-sweeper grid, as override lists (what `run.py -m` would launch)."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    return [list(job) for job in itertools.product(*axes)]


# ------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_a_multirun_whose_jobs_all_validate(preset):
    cfg = compose_with_hydra(f"+experiment={preset}", "model=tiny_random")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = dict(cfg.hydra.sweeper.params)
    assert params, f"{preset} sweeps nothing"
    if "optuna" in cfg.hydra.sweeper._target_:
        assert all(v.startswith(("interval(", "range(", "choice(")) for v in params.values())
        assert cfg.method.name in ("ria", "owl_wanda")
        return
    jobs = grid(params)
    assert len(jobs) >= 2
    if preset in ONLINE_PRESETS and not models.hub_reachable():
        pytest.skip(f"{preset} calibrates on hub datasets; the hub is unreachable here")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for job in jobs:  # e.g. a 2:4 pattern swept together with sparsity 0.7 would fail here
            validate(compose(config_name="config", overrides=[f"+experiment={preset}", "model=tiny_random", *job]))


def test_sparsity_curve_preset_is_the_issue_grid():
    cfg = compose_with_hydra("+experiment=sparsity_curve", "model=tiny_random")
    jobs = grid(dict(cfg.hydra.sweeper.params))
    assert sorted(jobs) == sorted([f"method={m}", f"sparsity={s}"] for m in ("magnitude", "wanda", "ria")
                                  for s in ("0.3", "0.5", "0.7", "0.9"))
    assert cfg.hydra.sweep.dir == "multirun/tiny_random/sparsity_curve"


def test_module_sensitivity_preset_sets_sparsity_and_pattern_together():
    cfg = compose_with_hydra("+experiment=module_sensitivity", "model=tiny_random")
    settings = set()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for job in grid(dict(cfg.hydra.sweeper.params)):
            job_cfg = compose(config_name="config", overrides=["+experiment=module_sensitivity", "model=tiny_random", *job])
            settings.add((tuple(job_cfg.target.modules), job_cfg.sparsity, job_cfg.pattern))
    assert settings == {(m, s, p) for m in (("attention",), ("mlp",), ("all",))
                        for s, p in ((0.5, "unstructured"), (0.7, "unstructured"), (0.5, "2:4"))}


# ----------------------------------------------------------------------------------- fingerprints
def test_fingerprint_ignores_logging_and_force_but_not_knobs():
    base = skip.fingerprint(compose_config(*TINY))
    same = skip.fingerprint(compose_config(*TINY[:-1], "logger=wandb", "force=true", "group=x", "run_name=y"))
    assert base == same
    for knob in ("sparsity=0.6", "method=magnitude", "calib_data=austen", "seed=1", "target.modules=[mlp]"):
        assert skip.fingerprint(compose_config(*TINY, knob)) != base, knob


def test_run_label_names_a_job_by_its_own_overrides():
    overrides = ["method=wanda", "sparsity=0.5", "+experiment=sparsity_curve", "logger=none", "force=true"]
    assert naming.run_label(overrides, default="x") == "method=wanda,sparsity=0.5"
    assert naming.run_label(["+experiment=a"], default="wanda-s0.5") == "wanda-s0.5"
    assert naming.sweep_group(Path.cwd() / "multirun" / "study") == os.path.join("multirun", "study")


# ----------------------------------------------------------------------------------------- resuming
def run_job(job_dir: Path, *overrides: str, multirun: bool = True) -> float:
    cfg = compose_config(*TINY, *overrides)
    return pipeline.main(cfg, output_dir=job_dir, overrides=list(overrides), multirun=multirun)


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
    table = aggregate.collect(sweep).results
    assert sorted(table["sparsity"]) == [0.6]  # the copy in 0/ is dropped while 1/ holds the original


# ------------------------------------------------------------------------------ calibration cache
def test_calibration_cache_returns_the_same_windows_without_redrawing(tmp_path, tokenizer, monkeypatch):
    spec = data.CalibrationSpec("wiki", 3, 32, 0)
    fresh = data.calibration_tokens(spec, tokenizer)
    first = calib_cache.calibration_tokens(spec, tokenizer, root=tmp_path)
    assert torch.equal(first, fresh)
    assert len(list((tmp_path / "calib_tokens").glob("wiki-*.pt"))) == 1

    def no_redraw(*_args, **_kwargs):
        raise AssertionError("calibration windows were drawn again")

    monkeypatch.setattr(data, "calibration_tokens", no_redraw)
    assert torch.equal(calib_cache.calibration_tokens(spec, tokenizer, root=tmp_path), fresh)
    with pytest.raises(AssertionError):  # another seed is another key
        calib_cache.calibration_tokens(data.CalibrationSpec("wiki", 3, 32, 1), tokenizer, root=tmp_path)


# ------------------------------------------------------------------------------------ aggregation
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    """Four real tiny runs laid out as a sweep, and a fifth that failed (an unknown dataset)."""
    sweep = tmp_path_factory.mktemp("sweep")
    jobs = [("magnitude", "0.5"), ("wanda", "0.3"), ("wanda", "0.5"), ("wanda", "0.7")]
    for index, (method, sparsity) in enumerate(jobs):
        run_job(sweep / str(index), f"method={method}", f"sparsity={sparsity}")
    run_job(sweep / str(len(jobs)), "method=wanda", "sparsity=0.5", "calib_data.dataset=nowhere")
    return sweep


def test_aggregate_writes_table_pivots_figures_and_report(tiny_sweep):
    result = aggregate.aggregate(tiny_sweep)
    table = pd.read_csv(tiny_sweep / "results.csv")
    assert len(table) == 5
    assert table["status"].value_counts().to_dict() == {"completed": 4, "failed": 1}
    failed = table[table["status"] == "failed"].iloc[0]
    assert "nowhere" in failed["error"]
    assert {"method", "sparsity", "pattern", "eval/ppl_wiki", "prune/achieved_sparsity", "time/total_s"} <= set(table)
    done = table[table["status"] == "completed"]
    assert (done["prune/achieved_sparsity"] - done["sparsity"]).abs().max() < 0.02

    pivot = pd.read_csv(tiny_sweep / "tables" / "eval_ppl_wiki.csv", index_col=0)
    assert list(pivot.index) == ["magnitude", "wanda"] and list(pivot.columns) == ["0.3", "0.5", "0.7"]
    expected = done.set_index(["method", "sparsity"])["eval/ppl_wiki"]
    assert pivot.loc["wanda", "0.7"] == pytest.approx(expected[("wanda", 0.7)])
    assert result.varying_knobs() == ["method", "sparsity"]

    assert (tiny_sweep / "figures" / "ppl_vs_sparsity.png").stat().st_size > 10_000
    assert not (tiny_sweep / "figures" / "module_sensitivity.png").exists()  # nothing of the kind varied
    text = (tiny_sweep / "report.md").read_text()
    for section in ("## Setup", "## Results", "## Published numbers", "## Figures", "## Jobs that did not complete",
                    "## Runs and their configs", "figures/ppl_vs_sparsity.png", "nowhere"):
        assert section in text, section
    assert text.count("<details>") == 5
    pdf = (tiny_sweep / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") >= 3


def test_qualitative_checks_compare_the_sweeps_own_numbers(tiny_sweep):
    sweep = aggregate.collect(tiny_sweep)
    checks = report.qualitative_checks(sweep)
    done = sweep.completed.set_index(["method", "sparsity"])["eval/ppl_wiki"]
    wanda_wins = done[("wanda", 0.5)] < done[("magnitude", 0.5)]
    line = next(c for c in checks if "wanda below magnitude at 50%" in c)
    assert line.startswith("✓" if wanda_wins else "✗")
    assert sum("rises with sparsity" in c for c in checks) == 1  # wanda has three sparsities


def test_published_numbers_are_matched_by_model_method_setting_and_wikitext2(tiny_sweep):
    sweep = aggregate.collect(tiny_sweep)
    assert report.reference_table(sweep).empty  # tiny model, wiki: no published setting
    ours = sweep.results.copy()
    ours["model"] = "llama2_7b"  # as if the same runs had been LLaMA-2-7B on WikiText-2
    ours[report.REFERENCE_METRIC] = ours["eval/ppl_wiki"]
    matched = report.reference_table(aggregate.Sweep(sweep.directory, ours, sweep.block_sparsity, sweep.records))
    published = {(p.method, p.setting): p.ppl_wikitext2 for p in report.PUBLISHED if p.model == "llama2_7b"}
    assert sorted(zip(matched["method"], matched["setting"])) == [("magnitude", "unstructured 50%"), ("wanda", "unstructured 50%")]
    for row in matched.itertuples():
        assert row.published == published[(row.method, row.setting)]


def test_slurm_launcher_config_builds_on_the_submitit_plugin():
    cfg = compose_with_hydra("+experiment=sparsity_curve", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert launcher.submitit_folder.startswith("multirun/smollm2_135m/sparsity_curve/.submitit")


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_sweep_summary_goes_to_wandb_offline_or_nowhere(tiny_sweep, mode, tmp_path):
    from prunelab.study.tracking import log_sweep_summary

    sweep = aggregate.collect(tiny_sweep)
    copy = aggregate.Sweep(tmp_path, sweep.results, sweep.block_sparsity, sweep.records)
    log_sweep_summary(copy, {"kind": "wandb", "mode": mode, "project": "prunelab"}, {}, group="study-test")
    import wandb

    wandb.teardown()  # the W&B service writes the offline file asynchronously; a process exit also flushes it
    runs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    if mode == "disabled":
        assert runs == []
    else:
        payload = runs[0].read_bytes()
        assert b"study-test" in payload and b"summary/results" in payload
