"""The model directory's report as a paper (``make report``): sweeps of one study merge into one
section, failed and empty sweeps stay out of the title and the findings, and a perplexity
difference is called "best" only beyond its noise (paired per-window losses)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pymupdf
import pytest
import torch

from prunelab.evaluate import log_ppl_standard_error, perplexity, windows_of
from prunelab.study import findings, noise, orderings, report_all
from tests.test_resume import run_job


# ------------------------------------------------------------------------------- per-window losses
def test_per_window_losses_leave_the_perplexity_as_it_was_and_give_its_noise(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    windows = torch.randint(0, model.config.vocab_size, (5, 32), generator=torch.Generator().manual_seed(0))
    plain, tokens = perplexity(model, windows, torch.device("cpu"), batch_size=2)
    per_window: list[float] = []
    value, _ = perplexity(model, windows, torch.device("cpu"), batch_size=2, window_nll=per_window)
    assert value == plain  # bitwise: the total is summed as before, the windows apart
    assert len(per_window) == 5 and tokens == 5 * 31
    assert math.exp(sum(per_window) / 5) == pytest.approx(plain, rel=1e-6)  # equal windows: log ppl = mean (float32 sums)
    assert log_ppl_standard_error(per_window) == pytest.approx(np.std(per_window, ddof=1) / math.sqrt(5))
    assert math.isnan(log_ppl_standard_error(per_window[:1]))
    assert windows_of(windows.reshape(1, -1), 32, None).shape == (5, 32)


def test_a_run_records_its_window_losses_beside_its_perplexity(tmp_path):
    run_job(tmp_path / "0", "method=magnitude", "sparsity=0.5", multirun=False)
    metrics = json.loads((tmp_path / "0" / "metrics.json").read_text())["metrics"]
    window_nll = metrics["noise/ppl_wiki_window_nll"]
    assert len(window_nll) == 2
    assert math.exp(sum(window_nll) / 2) == pytest.approx(metrics["eval/ppl_wiki"], rel=1e-6)
    assert metrics["noise/ppl_wiki_se_log"] == pytest.approx(log_ppl_standard_error(window_nll))
    assert metrics["machine/cpus"] >= 1 and metrics["machine/load_1m_end"] >= 0
    assert isinstance(metrics["machine/cpu_model"], str) and metrics["machine/cpu_model"]  # on what machine


# --------------------------------------------------------------------------------- noise verdicts
def _frame(windows: dict[str, list[float]], setting: str = "unstructured") -> pd.DataFrame:
    """Rows as results.csv holds them: each method's perplexity from its per-window losses."""
    return pd.DataFrame([{"job": str(i), "status": "completed", "model": "m", "method": method, "sparsity": 0.5,
                          "pattern": setting, "eval_seqlen": 65, "eval/ppl_wiki": math.exp(np.mean(nll)),
                          "eval/ppl_wiki_tokens": 64 * len(nll), "noise/ppl_wiki_window_nll": json.dumps(nll),
                          "noise/ppl_wiki_se_log": log_ppl_standard_error(nll)}
                         for i, (method, nll) in enumerate(windows.items())])


WANDA = [5.0, 5.4, 4.7, 5.2, 4.9, 5.3, 5.1, 4.8]  # eight windows of different difficulty


def test_a_perplexity_difference_within_noise_is_not_called_best():
    jitter = [0.02, -0.03, 0.01, -0.02, 0.03, -0.01, 0.02, -0.015]  # ria differs from wanda by noise only
    frame = _frame({"wanda": WANDA, "ria": [w + j for w, j in zip(WANDA, jitter)]})
    sentence = findings.findings(frame)[0]
    assert "Best" not in sentence
    assert "but within noise of" in sentence and "paired over 8 windows" in sentence and "no best" in sentence
    verdict = orderings.verdicts(frame, ["eval/ppl_wiki"])[0]
    assert verdict.outcome == "inconclusive" and verdict.ordering.claim == "RIA below Wanda"


def test_a_perplexity_difference_beyond_noise_is_best_and_the_papers_ordering_says_so():
    worse = [w + 0.10 + j for w, j in zip(WANDA, [0.01, -0.01, 0.02, 0.0, -0.02, 0.01, 0.0, -0.01])]
    frame = _frame({"wanda": WANDA, "ria": worse})  # ria 10% above wanda on every window: RIA's claim fails
    sentence = findings.findings(frame)[0]
    assert "Best: wanda, -9.5% (paired over 8 windows" in sentence and "beyond noise" in sentence
    verdict = orderings.verdicts(frame, ["eval/ppl_wiki"])[0]
    assert verdict.outcome == "not reproduced (opposite)"
    assert verdict.text().startswith("**not reproduced (opposite)**: RIA below Wanda (unstructured 50%; wiki)")
    # the same difference without per-window losses (older records): unpaired standard errors only
    unpaired = frame.drop(columns=["noise/ppl_wiki_window_nll"])
    found = noise.compare(unpaired[unpaired["method"] == "ria"], unpaired[unpaired["method"] == "wanda"], "eval/ppl_wiki")
    assert found.windows == 0 and not found.beyond_noise  # two independent spreads of the windows: too wide


def test_few_windows_need_students_value_not_two_standard_errors():
    found = noise.Comparison(delta=0.05, se=0.01, windows=4)  # 5 SE
    assert found.threshold == pytest.approx(3.182, abs=1e-3) and found.beyond_noise
    assert not noise.Comparison(delta=0.03, se=0.01, windows=4).beyond_noise  # 3 SE: enough with 32, not with 4
    assert noise.Comparison(delta=0.03, se=0.01, windows=32).beyond_noise


# ---------------------------------------------------------------------------- the model directory
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Real tiny runs: a dense baseline; a sparsity curve in two sweeps that share one config; a
    sweep whose jobs all failed; and an OWL study with no completed job."""
    root = tmp_path_factory.mktemp("paper") / "tiny_random"
    run_job(root / "dense" / "0", "method=dense")
    for index, (method, sparsity) in enumerate((("magnitude", "0.3"), ("wanda", "0.3"), ("wanda", "0.5"))):
        run_job(root / "sparsity_curve" / str(index), f"method={method}", f"sparsity={sparsity}")
    for index, sparsity in enumerate(("0.5", "0.7")):  # wanda 0.5 again: the same config measured twice
        run_job(root / "sparsity_curve_extra" / str(index), "method=wanda", f"sparsity={sparsity}")
    run_job(root / "ria_point" / "0", "method=ria", "sparsity=0.5")  # methods at one sparsity: points of the curve
    run_job(root / "broken" / "0", "method=wanda", "sparsity=1.5")
    for index, lam in enumerate(("0.0", "0.1")):
        run_job(root / "owl_lambda" / str(index), "method=owl_wanda", f"owl_lambda={lam}", "sparsity=1.2")
    return root


def test_failed_and_empty_sweeps_stay_out_of_title_and_findings_and_two_sweeps_merge(model_dir):
    md_path, pdf_path = report_all.report_all(model_dir)
    text = md_path.read_text()
    title = text.splitlines()[0]
    assert title == "# Pruning tiny_random: Sparsity curves"  # OWL never completed: not in the title
    appendix = text.index("## Appendix C.")
    body = text[:appendix]
    assert "OWL" not in body and "λ" not in body and "owl_lambda" not in body and "`broken/`" not in body
    assert "no completed job" not in body
    assert "`broken/`: 1 job (1 failed)" in text[appendix:]
    assert (model_dir / "broken" / "report.md").read_text().startswith(  # its own report says so too
        "# Sweep broken: no completed job that pruned anything (1 failed)") and "`owl_lambda/`: 2 jobs (2 failed)" in text[appendix:]
    # one section, one curve: both sweeps pooled, the config measured twice counted once
    assert [line for line in text.splitlines() if line.startswith("## ") and "Sparsity curves" in line] == \
        ["## 2. Sparsity curves"]
    assert "Sweeps: `sparsity_curve/` (3 jobs), `sparsity_curve_extra/` (2 jobs), `ria_point/` (1 job) pooled into " \
           "one curve; 1 config measured in two sweeps counted once." in text
    studies, _, empty = report_all.gather(model_dir, figures=False)
    assert [s.kind for s in studies] == ["sparsity"] and sorted(s.directory.name for s in empty) == ["broken", "owl_lambda"]
    pooled = studies[0].sweep.completed
    assert sorted(zip(pooled["method"], pooled["sparsity"])) == [
        ("dense", 0.0), ("magnitude", 0.3), ("ria", 0.5), ("wanda", 0.3), ("wanda", 0.5), ("wanda", 0.7)]
    findings_part = body[body.index("**Findings.**"):]
    assert "wiki perplexity (sparsity=0.3):" in findings_part and "paired over 2 windows" in findings_part
    assert "| dense     | 0 " in text  # the dense row's target sparsity is 0, not the config's 0.5
    assert "Perplexity (wiki)" in text and "eval/ppl_wiki" not in text  # headers in words
    assert "measured under a 1-minute load average of" in text and "Peak RSS (MiB)" in text
    with pymupdf.open(pdf_path) as document:
        pages = [page.get_text() for page in document]
    assert len(pages) >= 4 and pages[0].startswith("Pruning tiny_random")
    assert any(page.lstrip().startswith("2. Sparsity curves") for page in pages)  # a section starts its page


def test_owl_at_lambda_zero_is_the_uniform_wanda_of_the_owl_ordering():
    better = [w - 0.2 + j for w, j in zip(WANDA, [0.01, -0.01, 0.02, 0.0, -0.02, 0.01, 0.0, -0.01])]
    frame = _frame({"owl_wanda": WANDA, "owl_wanda ": better}).assign(
        method="owl_wanda", sparsity=0.7, **{"method.lambda_": [0.0, 0.08]})
    [verdict] = orderings.verdicts(frame, ["eval/ppl_wiki"])
    assert verdict.ordering.claim == "OWL-Wanda below uniform Wanda" and verdict.outcome == "reproduced"
    assert "(unstructured 70%, λ=0.08 vs λ=0; wiki)" in verdict.text()


def test_no_page_of_the_paper_or_of_a_sweeps_report_ends_with_a_heading(model_dir):
    from prunelab.study.report import keeps_with_next

    report_all.report_all(model_dir)
    for document in (model_dir / "report", model_dir / "sparsity_curve" / "report"):
        lines = document.with_suffix(".md").read_text().splitlines()
        keep = {" ".join(lines[i].replace("*", "").replace("`", "").lstrip("# ").split()) for i in keeps_with_next(lines)}
        with pymupdf.open(document.with_suffix(".pdf")) as pdf:
            pages = [page.get_text().strip().splitlines() for page in pdf]
        assert all(page[-1].strip() not in keep for page in pages[:-1]), [page[-1] for page in pages]
    starts = [page[0] for page in pages]  # the sweep's own report: each section after the setup starts a page
    assert starts[0].startswith("Sparsity curves: magnitude, wanda, dense on tiny_random")
    assert {"Findings", "Results", "Figures"} <= set(starts)


def test_a_report_leaves_the_evaluation_size_to_its_setup_and_findings_alone_keep_it():
    frame = _frame({"wanda": WANDA, "ria": [w + 0.1 for w in WANDA]})
    assert "(all jobs; wiki: 8 windows × 65 tokens (512 predicted tokens))" in findings.findings(frame)[0]
    assert findings.findings(frame, sizes=False)[0].startswith("wiki perplexity (all jobs): wanda")


@pytest.mark.parametrize(("loads", "says"), [
    ([1.6, 1.9, 2.4, 2.0], "running only these jobs"),  # two threads on two cores: the jobs' own load
    ([4.0, 9.8, 7.5, 6.0], "shared, loaded machine"),
])
def test_the_setup_calls_a_machine_loaded_only_when_more_than_the_jobs_ran_on_it(loads, says):
    records = [{"metrics": {"machine/load_1m_start": a, "machine/load_1m_end": b, "machine/cpus": 2, "machine/cpu_model": "AMD EPYC"},
                "plan": {"dtype": "float32", "device": "cpu"}} for a, b in zip(loads[::2], loads[1::2])]
    assert says in report_all._machine(records) and "2 CPUs (AMD EPYC)" in report_all._machine(records)
