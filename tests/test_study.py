"""Studies in process: presets expand to valid runs, and real tiny-model runs aggregate into a table,
figures, a report (Markdown and PDF) and a tracker summary. Per-run resuming: ``test_resume.py``."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pymupdf
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from prunelab.plan import make_plan
from prunelab.study import aggregate, dashboard, figures, findings, records, report, report_all, study_all
from prunelab.study.sweeper import baseline_jobs
from prunelab.study.tracking import log_sweep_summary
from tests.conftest import CONF_DIR, ROOT, TINY, compose_config
from tests.test_resume import run_job

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
ONLINE_PRESETS = {"calibration_online"}
# block removal at 20% needs at least 3 blocks to remove one (the tiny model has 2)
PRESET_OVERRIDES = {"granularity": ["model.source.architecture.num_hidden_layers=5",  # shortgpt removes whole blocks
                                    "model.source.architecture.max_position_embeddings=512"],  # engine=structured: 512-token prefill
                    "compression": ["model.source.architecture.num_hidden_layers=5",  # shortgpt 30% of 5 blocks
                                    "model.source.architecture.max_position_embeddings=1024"]}  # engine=llamacpp: 512 + context


def compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def grid(params: dict[str, str]) -> list[list[str]]:
    """Every job of a basic-sweeper grid, as override lists (what `run.py -m` would launch)."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    return [list(job) for job in itertools.product(*axes)]


# ------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.network) if p in ONLINE_PRESETS else p
                                    for p in PRESETS])
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
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for job in jobs:  # e.g. a 2:4 pattern swept together with sparsity 0.7 would fail here
            make_plan(compose(config_name="config", overrides=[f"+experiment={preset}", "model=tiny_random",
                                                                *PRESET_OVERRIDES.get(preset, []), *job]))


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


def pdf_pages(path: Path) -> int:
    with pymupdf.open(path) as document:
        return document.page_count


def test_aggregate_writes_table_pivots_figures_and_report(tiny_sweep):
    result = aggregate.aggregate(tiny_sweep)
    table = pd.read_csv(tiny_sweep / "results.csv")
    assert len(table) == 5
    assert table["status"].value_counts().to_dict() == {"completed": 4, "failed": 1}
    failed = table[table["status"] == "failed"].iloc[0]
    assert "nowhere" in failed["error"]
    assert {"method", "sparsity", "pattern", "eval/ppl_wiki", "prune/achieved_sparsity", "time/total_s"} <= set(table)
    assert not {"prune/method", "prune/pattern", "prune/target_sparsity"} & set(table)  # they repeat knob columns
    magnitude = table[(table["method"] == "magnitude")].iloc[0]
    assert pd.isna(magnitude["calib_data"]) and pd.isna(magnitude["calib_nsamples"])  # magnitude calibrates nothing
    done = table[table["status"] == "completed"]
    assert (done["prune/achieved_sparsity"] - done["sparsity"]).abs().max() < 0.02

    pivot = pd.read_csv(tiny_sweep / "tables" / "eval_ppl_wiki.csv", index_col=0)
    assert list(pivot.index) == ["magnitude", "wanda"] and list(pivot.columns) == ["0.3", "0.5", "0.7"]
    expected = done.set_index(["method", "sparsity"])["eval/ppl_wiki"]
    assert pivot.loc["wanda", "0.7"] == pytest.approx(expected[("wanda", 0.7)])
    assert result.varying_knobs() == ["method", "sparsity"]  # method.comparison differs only between methods
    pivot_md = (tiny_sweep / "tables" / "eval_ppl_wiki.md").read_text()
    assert pivot_md.splitlines()[0].replace(" ", "") == "|method|targetsparsity0.3|targetsparsity0.5|targetsparsity0.7|"

    assert (tiny_sweep / "figures" / "ppl_vs_sparsity.png").stat().st_size > 10_000
    assert not (tiny_sweep / "figures" / "module_sensitivity.png").exists()  # nothing of the kind varied
    assert not list((tiny_sweep / "figures").glob("knob_*.png"))  # no method knob varied
    text = (tiny_sweep / "report.md").read_text()
    assert text.startswith("# Sparsity curves: magnitude, wanda on tiny_random\n")  # a title, not the folder name
    for section in ("## Setup", "## Methods", "## Findings", "## Results", "## Figures", "## Speed and memory",
                    "## Configs: what varies between jobs", "## Jobs that did not complete",
                    "figures/ppl_vs_sparsity.png", "nowhere", "2 windows × 64 tokens (126 predicted tokens)",
                    "exactly `⌊n·s⌋`"):
        assert section in text, section
    assert "```yaml" not in text and "<details>" not in text  # configs are a diff, not pages of YAML
    assert (tiny_sweep / "dashboard.json").exists() and (tiny_sweep / "tables" / "timing.md").exists()
    pdf = tiny_sweep / "report.pdf"
    assert pdf.read_bytes().startswith(b"%PDF") and pdf_pages(pdf) >= 2


def test_report_pdf_typesets_the_markdown_with_its_tables_and_figures(tiny_sweep):
    sweep = records.collect(tiny_sweep)
    made = figures.draw_all(sweep, tiny_sweep / "figures")
    tables = aggregate.write_tables(sweep, tiny_sweep / "tables")
    _, pdf = report.write_report(sweep, tables, made)
    with pymupdf.open(pdf) as document:
        text = "".join(page.get_text() for page in document)
        images = sum(len(page.get_images()) for page in document)
    assert "Sparsity curves" in text and "Perplexity (wiki)" in text and "eval/ppl_wiki" not in text
    assert "|---" not in text  # tables are typeset as tables, not shown as Markdown source
    assert images == len(made) >= 1  # every figure is embedded (relative paths resolved)
    assert "Evaluated on wiki: 2 windows × 64 tokens" in made["ppl_vs_sparsity"].caption


def test_markdown_tables_go_through_pandas_with_readable_numbers():
    table = pd.DataFrame({"eval/ppl_wiki": [12.3456, 72916070.84], "zeroshot/mean_acc": [0.61234, float("nan")]},
                         index=pd.Index(["magnitude", "wanda"], name="method"))
    text = report.markdown_table(table)
    header, rule, first, second = text.splitlines()
    assert [c.strip() for c in header.strip("|").split("|")] == ["method", "Perplexity (wiki)", "Zero-shot mean accuracy (%)"]
    assert rule.replace(" ", "").startswith("|:-") and rule.replace(" ", "").endswith("-:|")  # numbers to the right
    assert "12.35" in first and "61.2" in first  # one format: two decimals, accuracies in percent
    assert "72,916,071" in second and "72916070.84" not in second and "nan" not in second
    pivot = pd.DataFrame([[5.123, 6.5]], index=pd.Index(["wanda"], name="method"),
                         columns=pd.Index([0.3, 0.5], name="sparsity"))
    assert report.markdown_table(pivot, "eval/ppl_wiki").splitlines()[0].replace(" ", "") == \
        "|method|targetsparsity0.3|targetsparsity0.5|"


def test_qualitative_checks_compare_the_sweeps_own_numbers(tiny_sweep):
    sweep = records.collect(tiny_sweep)
    checks = report.qualitative_checks(sweep)
    done = sweep.completed.set_index(["method", "sparsity"])["eval/ppl_wiki"]
    wanda_wins = done[("wanda", 0.5)] < done[("magnitude", 0.5)]
    line = next(c for c in checks if "Wanda below magnitude at 50%" in c)
    assert line.startswith(("**reproduced**", "**inconclusive**") if wanda_wins else ("**not reproduced", "**inconclusive**"))
    assert "paired over 2 windows" in line  # with its noise
    assert not any("rises with sparsity" in c for c in checks)  # trivial checks are gone


def test_published_numbers_are_matched_by_model_method_setting_and_wikitext2(tiny_sweep):
    sweep = records.collect(tiny_sweep)
    assert report.reference_table(sweep).empty  # tiny model, wiki: no published setting
    ours = sweep.results.copy()
    ours["model"] = "llama2_7b"  # as if the same runs had been LLaMA-2-7B on WikiText-2
    ours[report.REFERENCE_METRIC] = ours["eval/ppl_wiki"]
    matched = report.reference_table(records.Sweep(sweep.directory, ours, sweep.block_sparsity, sweep.records))
    published = {(p.method, p.setting): p.ppl_wikitext2 for p in report.PUBLISHED if p.model == "llama2_7b"}
    assert sorted(zip(matched["method"], matched["setting"])) == [("magnitude", "unstructured 50%"), ("wanda", "unstructured 50%")]
    for row in matched.itertuples():
        assert row.published == published[(row.method, row.setting)]


# ---------------------------------------------------------------------------------- method knobs
def run_hydra_job(job_dir: Path, *overrides: str) -> None:
    """A tiny job as a Hydra multirun leaves it: with the unresolved config in ``.hydra/config.yaml``."""
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(*TINY, *overrides), job_dir / ".hydra" / "config.yaml")
    run_job(job_dir, *overrides)


@pytest.fixture(scope="module")
def knob_sweep(tmp_path_factory) -> Path:
    """RIA at two alphas, magnitude and OWL-Wanda, all at 50%: each method with its own knobs."""
    sweep = tmp_path_factory.mktemp("knobs")
    for index, overrides in enumerate([("method=ria", "ria_alpha=0.25"), ("method=ria", "ria_alpha=0.75"),
                                       ("method=magnitude",), ("method=owl_wanda", "owl_lambda=0.04")]):
        run_hydra_job(sweep / str(index), *overrides)
    return sweep


def test_a_method_knob_is_a_column_only_on_that_methods_rows(knob_sweep):
    sweep = records.collect(knob_sweep)
    table = sweep.results.set_index("method")
    assert {"ria_alpha", "owl_lambda", "owl_m"}.isdisjoint(table.columns)  # root knobs only feed the methods
    assert not [c for c in table.columns if c.startswith("cfg:")]  # ria_alpha=... is shown as method.alpha
    assert sorted(table.loc["ria", "method.alpha"]) == [0.25, 0.75]
    assert table.loc[["magnitude", "owl_wanda"], "method.alpha"].isna().all()
    assert table["method.lambda_"].dropna().to_dict() == {"owl_wanda": 0.04}
    assert table.loc["owl_wanda", "method.base.comparison"] == "row"  # OWL's base method, flattened
    assert table.loc["owl_wanda", "method.m"] == 5 and pd.isna(table.loc["magnitude", "method.m"])
    assert not [c for c in table.columns if c.endswith(("._target_", ".name"))]
    assert sweep.varying_knobs() == ["method", "method.alpha"]  # comparison differs between methods only


def test_method_knobs_give_tables_and_one_figure_per_numeric_knob(knob_sweep):
    aggregate.aggregate(knob_sweep, report=False)
    pivot = pd.read_csv(knob_sweep / "tables" / "eval_ppl_wiki.csv", index_col=0)
    assert list(pivot.columns) == ["0.25", "0.75", records.MISSING]  # methods without alpha under "-"
    assert pivot.loc["ria", "0.25"] > 0 and pd.isna(pivot.loc["ria", records.MISSING])
    assert (knob_sweep / "figures" / "knob_method.alpha.png").stat().st_size > 10_000
    assert (knob_sweep / "figures" / "owl_block_sparsity.png").exists()
    assert not (knob_sweep / "figures" / "ria_alpha.png").exists()
    sweep = records.collect(knob_sweep)
    assert records.knob_label("method.lambda_") == "lambda" and records.knob_label("method.base.alpha") == "base.alpha"
    made = figures.draw_all(sweep, knob_sweep / "figures")
    assert "against alpha" in made["knob_method.alpha"].caption and "A star marks" in made["knob_method.alpha"].caption
    blocks = sweep.block_sparsity
    assert set(blocks.dropna(subset=["method.lambda_"])["method"]) == {"owl_wanda"}


# ---------------------------------------------------------------------------------------- launchers
def test_slurm_launcher_config_builds_on_the_submitit_plugin():
    cfg = compose_with_hydra("+experiment=sparsity_curve", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert launcher.submitit_folder.startswith("multirun/smollm2_135m/sparsity_curve/.submitit")


# ---------------------------------------------------------------------------------------- tracking
@pytest.mark.parametrize("logger", ["logger.mode=offline", "logger.mode=disabled", "logger=none"])
def test_sweep_summary_goes_through_the_logger_offline_or_nowhere(tiny_sweep, logger, tmp_path):
    sweep = records.collect(tiny_sweep)
    copy = records.Sweep(tmp_path, sweep.results, sweep.block_sparsity, sweep.records)
    made = figures.draw_all(copy, tmp_path / "figures")
    logger_cfg = compose_config(logger).logger  # the default logger is wandb
    import wandb

    for _ in range(2):  # aggregating again updates the same summary run
        log_sweep_summary(copy, logger_cfg, made, group="study-test")
        wandb.teardown()  # the W&B service writes the offline file asynchronously; a process exit also flushes it
    runs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    if logger != "logger.mode=offline":
        assert runs == [] and not (tmp_path / "wandb").exists()
    else:
        assert len(runs) == 1 and runs[0].parent.name.endswith(dashboard.summary_run_id("study-test"))
        payload = runs[0].read_bytes()
        for key in (b"study-test", b"summary/results", b"summary/long", b"charts/ppl_vs_sparsity/ppl_wiki",
                    b"wandb/line/v0", b"figures/ppl_vs_sparsity", b"summary"):
            assert key in payload, key
        assert b"summary/eval_ppl_wiki" not in payload  # no wide pivots: W&B cannot plot them


# ----------------------------------------------------------------------------------------- findings
def test_changing_a_number_in_results_csv_changes_the_findings_sentence(tiny_sweep):
    aggregate.aggregate(tiny_sweep, figures=False, report=False)
    table = pd.read_csv(tiny_sweep / "results.csv")

    def sentence(frame: pd.DataFrame) -> str:
        return next(s for s in findings.findings(frame) if s.startswith("wiki perplexity (sparsity=0.5"))

    before = sentence(table)
    wanda = (table["method"] == "wanda") & (table["sparsity"] == 0.5)
    magnitude = float(table.loc[table["method"] == "magnitude", "eval/ppl_wiki"].iloc[0])
    table.loc[wanda, "eval/ppl_wiki"] = magnitude * 3  # wanda now far worse than magnitude
    after = sentence(table)
    assert after != before
    assert before.split("): ", 1)[1].startswith("wanda") and after.split("): ", 1)[1].startswith("magnitude")
    assert f"{magnitude * 3:,.0f}" in after and "1.0% higher" not in after
    assert "2 windows × 64 tokens (126 predicted tokens)" in after  # perplexity: the evaluation size, no stderr


def test_accuracy_differences_carry_standard_errors_and_a_noise_verdict():
    frame = pd.DataFrame({"job": ["0", "1", "2"], "status": ["completed"] * 3, "method": ["wanda"] * 3,
                          "sparsity": [0.5] * 3, "calib_data": ["wiki", "gsm8k", "austen"],
                          "zeroshot/prunelab_mmlu_math/acc": [0.30, 0.25, 0.29],
                          "zeroshot/prunelab_mmlu_math/acc_stderr": [0.014, 0.013, 0.014],
                          "zeroshot/prunelab_mmlu_math/samples": [1064] * 3})
    text, _ = findings.findings(frame)
    assert text.startswith("MMLU-math accuracy (all jobs; prunelab_mmlu_math: 1,064 examples): "
                           "wiki 30.0 ± 1.4% > austen 29.0 ± 1.4% > gsm8k 25.0 ± 1.3%.")
    assert "gsm8k -5.0 ± 1.9 points (2.6 SE, beyond noise)" in text
    assert "austen -1.0 ± 2.0 points (0.5 SE, within noise)" in text
    verdict = findings.findings(frame.assign(**{"zeroshot/prunelab_mmlu_math/acc": [0.30, 0.31, 0.29]}))[-1]
    assert verdict.startswith("In-domain calibration (gsm8k) against general text (wiki): MMLU-math accuracy "
                              "+1.0 ± 1.9 points (0.5 SE, within noise).")
    assert "no difference is beyond noise" in verdict
    assert "it hurts beyond noise on MMLU-math accuracy" in findings.findings(frame)[-1]


# ---------------------------------------------------------------------------------- tables, figures
def test_one_varying_knob_gives_no_pivot_that_repeats_the_summary(knob_sweep, tiny_sweep):
    aggregate.aggregate(tiny_sweep, figures=False, report=False)  # method x sparsity: pivots spread sparsity
    assert (tiny_sweep / "tables" / "eval_ppl_wiki.md").exists()
    one = records.collect(knob_sweep)
    only_alpha = records.Sweep(one.directory, one.results[one.results["method"] == "ria"], one.block_sparsity, one.records)
    assert list(aggregate.tables(only_alpha)) == ["summary"]


def test_bench_metrics_reach_the_timing_table(tiny_sweep):
    sweep = records.collect(tiny_sweep)
    results = sweep.results.assign(**{"bench/prefill_speedup_512": [1.2, 1.3, 1.1, 1.4, None]})
    with_bench = records.Sweep(sweep.directory, results, sweep.block_sparsity, sweep.records)
    assert records.speed_metrics(with_bench.completed)[0] == "bench/prefill_speedup_512"
    table = report.timing_table(with_bench)
    assert table.loc[("wanda", "0.7"), "bench/prefill_speedup_512"] == pytest.approx(1.4)
    assert {"time/prune_s", "time/total_s", "memory/peak_rss_mb"} <= set(table.columns)


def test_log_axis_only_for_a_wide_range():
    assert figures.wide_range([440, 930, 2300, 5000]) and not figures.wide_range([440, 930])
    assert not figures.wide_range([0.0, 1.0])  # no log axis through zero


# --------------------------------------------------------------------------------------- dashboard
def test_dashboard_spec_from_a_real_sweep_is_a_workspace_over_its_group(tiny_sweep):
    import json

    from wandb_workspaces.workspaces import Workspace, internal

    sweep = records.collect(tiny_sweep)
    made = figures.draw_all(sweep, tiny_sweep / "figures")
    path = dashboard.write_spec(sweep, list(made), group="tiny/sparsity_curve", project="prunelab")
    spec = json.loads(path.read_text())
    chart = next(p for p in spec["panels"] if p["kind"].startswith("CustomChart"))
    assert chart == {"section": "Study charts (as in the report)", "kind": "CustomChart (line)",
                     "title": "eval/ppl_wiki vs sparsity", "table": "charts/ppl_vs_sparsity/ppl_wiki_table",
                     "x": "sparsity", "y": "value", "stroke": "method"}
    assert {"ScatterPlot", "ParallelCoordinatesPlot", "WeavePanelSummaryTable", "MediaBrowser"} <= \
        {p["kind"] for p in spec["panels"]}
    view = internal.View.model_validate(spec["view"])  # what W&B stores, read back by the library
    workspace = Workspace._from_model(view)
    assert workspace.name == "prunelab: tiny/sparsity_curve"
    assert sum(len(s.panels) for s in workspace.sections) == len(spec["panels"])
    assert "tiny/sparsity_curve" in json.dumps(spec["view"])  # the runset is the sweep's group
    points = next(c for c in dashboard.charts(sweep, list(made)) if c.figure == "ppl_vs_sparsity").frame
    done = sweep.completed.set_index(["method", "sparsity"])["eval/ppl_wiki"]
    assert len(points) == 4 and points.set_index(["method", "sparsity"])["value"][("wanda", 0.7)] == \
        pytest.approx(done[("wanda", 0.7)])


def test_an_ad_hoc_sweeps_group_makes_a_workspace_name_w_and_b_accepts():
    from wandb_workspaces.workspaces import Workspace

    group = "tiny_random/method=magnitude,wanda__sparsity=0.3,0.6__eval.ppl_datasets=[wiki]"
    with pytest.raises(ValueError):  # W&B refuses "=" (a Unicode symbol) in a workspace name
        Workspace(entity="", project="prunelab", name=f"prunelab: {group}")
    name = dashboard.workspace_name(group)
    assert Workspace(entity="", project="prunelab", name=name).name == name
    assert name == "prunelab: tiny_random/method is magnitude,wanda__sparsity is 0.3,0.6__eval.ppl_datasets is [wiki]"


# -------------------------------------------------------------------------------- report_all, study_all
def test_report_all_gathers_the_studies_of_a_model_directory_with_the_dense_baseline(tmp_path):
    root = tmp_path / "tiny_random"
    run_job(root / "dense" / "0", "method=dense")
    for index, lam in enumerate(("0.0", "0.1")):
        run_job(root / "owl_lambda" / str(index), "method=owl_wanda", f"owl_lambda={lam}", "sparsity=0.6")
    for index, (method, sparsity) in enumerate((("magnitude", "0.3"), ("magnitude", "0.6"))):
        run_job(root / "sparsity_curve" / str(index), f"method={method}", f"sparsity={sparsity}")
    md_path, pdf_path = report_all.report_all(root)
    text = md_path.read_text()
    curve, owl = text.index("## 2. Sparsity curves"), text.index("## 3. OWL's λ")  # the assignment's order
    assert curve < owl and "Dense baseline**: `dense/`" in text
    assert "**Jobs**: 5 in 2 studies and the dense baseline" in text  # a joined dense row is not a job of the study
    assert "Sweeps: `sparsity_curve/` (2 jobs)." in text and "from the 2 jobs in `sparsity_curve/`" in \
        (root / "sparsity_curve" / "report.md").read_text()
    assert "λ=0 (uniform sparsity)" in text[owl:]
    assert (root / "sparsity_curve" / "report.pdf").exists() and (root / "owl_lambda" / "dashboard.json").exists()
    joined = pd.read_csv(root / "sparsity_curve" / "tables" / "summary.csv")
    assert "dense" in set(joined["method"])  # the baseline joined the study without a dense job
    assert pdf_pages(pdf_path) >= 2


def test_study_all_runs_every_offline_preset_and_the_quick_variant_validates():
    full = study_all.commands(quick=False)
    assert [c[0] for c in full[1:]] == [f"+experiment={p}" for p in study_all.PRESETS]
    quick = study_all.commands(quick=True)
    assert all(any(a.startswith("hydra.sweep.dir=multirun/smollm2_135m_quick/") for a in c) for c in quick)
    jobs = dense = 0
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for command in quick:
            given = [a for a in command if a != "-m" and not a.startswith("hydra.")]
            preset = next((a.split("=", 1)[1] for a in given if a.startswith("+experiment=")), None)
            params = dict(compose(config_name="config", overrides=[f"+experiment={preset}"] if preset else [],
                                  return_hydra_config=True).hydra.sweeper.params or {}) if preset else {}
            swept = {k: v for k, v in (a.split("=", 1) for a in given) if "," in v and not v.startswith(("[", "{"))}
            fixed = [a for a in given if a.split("=", 1)[0] not in swept]
            sweep = [[*fixed, *job] for job in grid({**{k: v for k, v in params.items() if k not in swept}, **swept})
                     or [[]]]
            for job in sweep:
                make_plan(compose(config_name="config", overrides=job))
                jobs += 1
            # the dense job the sweeper adds (hydra/sweeper=baseline) validates too, with the preset's evaluation
            for job in baseline_jobs(sweep, is_dense=lambda j: compose(config_name="config", overrides=j).method.name
                                     == "dense"):
                assert make_plan(compose(config_name="config", overrides=job)).method_label == "dense"
                dense += 1
    assert jobs == 1 + 12 + 12 + 6 + 4 + 6 + 3  # dense, curve, patterns, alpha, lambda, modules, calibration
    assert dense == 6  # one per study but the dense one


# --- each method describes itself, under one name ---------------------------------------------------
METHOD_CONFIGS = sorted(path.stem for path in (Path(CONF_DIR) / "method").glob("*.yaml"))


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_every_builtin_method_is_described_by_its_class_under_its_yaml_name(name):
    """The report's "Methods" paragraph is the class's own description (never "see its docstring"),
    and the YAML's ``name`` (run names, table labels) is the class's ``name``."""
    from prunelab.config import build
    from prunelab.study.describe import method_paragraphs

    cfg = compose_config("model=tiny_random", "logger=none", f"method={name}")
    method = build(cfg.method, "method")
    resolved = OmegaConf.to_container(cfg.method, resolve=True)
    assert resolved["name"] == method.name
    paragraphs = method_paragraphs([{"config": {"method": resolved}}])
    assert type(method).rule and paragraphs[0] == type(method).describe([resolved])
    assert paragraphs[0].startswith(f"**{method.name if name != 'owl' and not name.startswith('owl_') else 'owl_X'}**")
    assert not any("describes itself nowhere" in p for p in paragraphs)
    if isinstance(resolved.get("base"), dict):  # OWL: its base method is described too
        assert paragraphs[1] == type(method.base).rule and resolved["base"]["name"] == method.base.name


def test_root_study_knobs_are_declared_once_and_used_everywhere():
    """``config.STUDY_KNOBS`` is the one list: every root key a method YAML interpolates is in it, the
    plan checks them (not RootSettings), a dense baseline ignores them, a config diff leaves them out."""
    import dataclasses
    import re

    from prunelab.config import STUDY_KNOBS
    from prunelab.plan import RootSettings
    from prunelab.study.describe import UNDIFFED
    from prunelab.study.sweeper import DENSE_IGNORES, _ignored

    interpolated = set()
    for path in (Path(CONF_DIR) / "method").glob("*.yaml"):
        interpolated |= set(re.findall(r"\$\{([a-z_]+)\}", path.read_text()))
    assert interpolated == set(STUDY_KNOBS)
    root = OmegaConf.load(Path(CONF_DIR) / "config.yaml")
    assert all(isinstance(root[knob], (int, float)) for knob in STUDY_KNOBS)
    assert not set(STUDY_KNOBS) & {f.name for f in dataclasses.fields(RootSettings)}
    assert set(STUDY_KNOBS) <= set(DENSE_IGNORES) and set(STUDY_KNOBS) <= set(UNDIFFED)
    assert all(_ignored(f"{knob}=0.3") for knob in STUDY_KNOBS)
    for knob in STUDY_KNOBS:
        with pytest.raises(Exception, match=f"{knob}='abc' must be a number"):
            make_plan(compose_config("model=tiny_random", "logger=none", f"{knob}=abc"))
    make_plan(compose_config("model=tiny_random", "logger=none", "method=owl", "owl_m=3", "owl_lambda=0.05"))


def test_the_root_config_lists_every_method():
    """conf/config.yaml's comment on the method group names every conf/method/*.yaml."""
    line = next(line for line in (Path(CONF_DIR) / "config.yaml").read_text().splitlines() if "- method:" in line)
    named = set(line.replace(",", " ").replace("{", " ").replace("}", " ").replace(";", " ").split())
    named |= {f"owl_{base}" for base in ("wanda", "magnitude", "ria", "sparsegpt") if base in named}
    assert set(METHOD_CONFIGS) <= named, set(METHOD_CONFIGS) - named
