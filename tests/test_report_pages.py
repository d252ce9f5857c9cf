"""The hand-in's pages and figures: a figure stars a "best" point only beyond noise (the findings'
rule), a sweep's own report starts each section on a page, and no page of a report ends with a
heading or with the caption of a table that went to the next page."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pymupdf
import pytest

from prunelab.evaluate import log_ppl_standard_error
from prunelab.study import figures, report
from prunelab.study.findings import best_point, findings
from prunelab.study.records import Sweep

ALPHA0 = [5.0, 5.4, 4.7, 5.2, 4.9, 5.3, 5.1, 4.8]  # per-window NLL at alpha=0: windows of different difficulty
JITTER = [0.02, -0.03, 0.01, -0.02, 0.03, -0.01, 0.02, -0.015]


def _knob_sweep(tmp_path: Path, shift: float) -> Sweep:
    """RIA at alpha 0, 0.5 and 1, as results.csv holds it: alpha=0.5 is ``shift`` lower in every
    window's NLL (plus jitter), alpha=1 a little higher."""
    windows = {0.0: ALPHA0, 0.5: [w - shift + j for w, j in zip(ALPHA0, JITTER)],
               1.0: [w + 0.3 + j for w, j in zip(ALPHA0, JITTER[::-1])]}
    rows = [{"job": str(i), "status": "completed", "model": "m", "method": "ria", "sparsity": 0.5, "pattern": "unstructured",
             "method.alpha": alpha, "eval_seqlen": 65, "eval/ppl_wiki": math.exp(np.mean(nll)),
             "eval/ppl_wiki_tokens": 64 * len(nll), "noise/ppl_wiki_window_nll": json.dumps(nll),
             "noise/ppl_wiki_se_log": log_ppl_standard_error(nll)} for i, (alpha, nll) in enumerate(windows.items())]
    return Sweep(tmp_path, pd.DataFrame(rows), pd.DataFrame(), {})


def _stars(monkeypatch) -> list:
    """The star markers the figure code plots (recorded as it draws)."""
    drawn = []
    original = plt.Axes.plot

    def plot(self, *args, **kwargs):
        if kwargs.get("marker") == "*":
            drawn.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "plot", plot)
    return drawn


def test_a_figure_stars_a_best_point_only_beyond_noise_as_the_findings_say(tmp_path, monkeypatch):
    stars = _stars(monkeypatch)
    within = _knob_sweep(tmp_path, shift=0.01)  # alpha=0.5 lowest by 1%, within the paired noise
    made = figures.knob_curve(within, "method.alpha", tmp_path / "within.png")
    assert stars == []
    assert "no best: lowest at 0.5" in made.caption and "within noise of 0" in made.caption
    assert "Lowest: alpha=0.5, but within noise of α=0" in findings(within.results)[0]  # the findings agree

    beyond = _knob_sweep(tmp_path, shift=0.15)  # 14% lower on every window: beyond noise
    made = figures.knob_curve(beyond, "method.alpha", tmp_path / "beyond.png")
    assert [list(x) for x, _ in stars] == [[0.5]]
    assert "best at 0.5:" in made.caption and "beyond noise) against 0" in made.caption
    assert "Best: alpha=0.5" in findings(beyond.results)[0]


def test_best_point_compares_with_the_reference_else_the_runner_up():
    frame = _knob_sweep(Path("."), shift=0.15).results
    assert best_point(frame, frame["method.alpha"], "eval/ppl_wiki", reference=0.0).against == 0.0
    without = frame[frame["method.alpha"] > 0]
    found = best_point(without, without["method.alpha"], "eval/ppl_wiki", reference=0.0)
    assert (found.value, found.against, found.beyond_noise) == (0.5, 1.0, True)
    unknown = without.drop(columns=["noise/ppl_wiki_window_nll", "noise/ppl_wiki_se_log"])
    assert best_point(unknown, unknown["method.alpha"], "eval/ppl_wiki").beyond_noise is None  # no noise estimate: no star


# ------------------------------------------------------------------------------------------ pages
def _pages(path: Path) -> list[list[str]]:
    with pymupdf.open(path) as document:
        return [page.get_text().strip().splitlines() for page in document]


def _filler(lines: int) -> str:
    return "\n\n".join(f"Line {i} of the filler." for i in range(lines))


def test_no_page_ends_with_a_heading_or_a_tables_caption(tmp_path):
    """The filler puts the heading, then the caption, at the foot of page 1 (found by typesetting
    without the check); typeset with it, both start page 2 above their table."""
    table = "| setting | perplexity |\n|---|---|\n| 50% | 12.34 |"
    at_foot = {}
    for lines in range(20, 40):
        text = f"# Title\n\n{_filler(lines)}\n\n### Results heading\n\n*Table: perplexity by setting.*\n\n{table}\n\n" \
               + "More text after the table. " * 100
        report._typeset([text], tmp_path, tmp_path / "raw.pdf", "")
        last = _pages(tmp_path / "raw.pdf")[0][-1]
        if last in ("Results heading", "Table: perplexity by setting.") and last not in at_foot:
            at_foot[last] = text
        if len(at_foot) == 2:
            break
    assert set(at_foot) == {"Results heading", "Table: perplexity by setting."}  # both cases happen unchecked
    for text in at_foot.values():
        pages = _pages(report.write_pdf(text, tmp_path, tmp_path / "checked.pdf"))
        assert pages[1][:3] == ["Results heading", "Table: perplexity by setting.", "setting"]
        assert all(page[-1] not in ("Results heading", "Table: perplexity by setting.") for page in pages)


def test_a_figures_caption_stays_below_its_figure_and_is_no_keep_with_next_line():
    lines = ["## Figures", "", "![ppl](figures/ppl.png)", "", "*Figure 1. Perplexity.*", "", "![b](b.png)", "", "*Figure 2.*", "",
             "*Table: x.*", "", "| a |", "|---|", "| 1 |", "", "**Findings.**", "", "- one"]
    assert [lines[i] for i in report.keeps_with_next(lines)] == ["## Figures", "*Table: x.*", "**Findings.**"]


def test_a_sweeps_own_report_starts_each_section_after_the_setup_on_a_new_page():
    text = "# Sweep x\n\n## Setup\n\n- a\n\n## Methods\n\nrule\n\n## Findings\n\n- f\n\n## Results\n\n### t\n\n|a|\n|-|\n|1|\n"
    parts = report.split_sections(text, report.SWEEP_PAGE_BREAK)
    assert [part.splitlines()[0] for part in parts] == ["# Sweep x", "## Findings", "## Results"]


def test_figures_plot_accuracies_in_percent_as_the_tables_show_them():
    frame = pd.DataFrame({"sparsity": [0.3, 0.5], "zeroshot/mean_acc": [0.412, 0.388], "zeroshot/arc_easy/acc": [0.25, 0.2],
                          "eval/ppl_wiki": [30.0, 40.0]})
    long = figures._long(frame, ["zeroshot/mean_acc", "zeroshot/arc_easy/acc", "eval/ppl_wiki"], ["sparsity"])
    shown = long.groupby("metric")["value"].apply(list).to_dict()
    assert shown == {"zero-shot mean accuracy (%)": pytest.approx([41.2, 38.8]), "arc_easy acc (%)": [25.0, 20.0],
                     "perplexity (wiki)": [30.0, 40.0]}


def test_the_patterns_bars_are_not_drawn_over_a_varying_method_knob(tmp_path):
    """The α study also varies the pattern: bars per pattern would average α=0 and α=0.5."""
    both = _knob_sweep(tmp_path, shift=0.15).results.iloc[:2]
    rows = pd.concat([both, both.assign(pattern="2:4", job=["2", "3"])], ignore_index=True)
    assert figures.patterns(Sweep(tmp_path, rows, pd.DataFrame(), {}), tmp_path / "p.png") is None
    one_alpha = rows[rows["method.alpha"] == 0.0]
    assert figures.patterns(Sweep(tmp_path, one_alpha, pd.DataFrame(), {}), tmp_path / "p.png") is not None
    by_modules = pd.concat([one_alpha.assign(modules="all"), one_alpha.assign(modules="mlp", job=["4", "5"])], ignore_index=True)
    assert figures.patterns(Sweep(tmp_path, by_modules, pd.DataFrame(), {}), tmp_path / "p.png") is None  # the module study


def test_the_config_diff_leaves_calibration_blank_for_a_job_that_calibrates_nothing(tmp_path):
    from prunelab.study.describe import config_diff

    def record(method: str, calibration) -> dict:
        return {"status": "completed", "config": {"method": {"name": method}, "calib_data": {"nsamples": 8}, "sparsity": 0.5},
                "plan": {"sparsity": 0.5, "calibration": calibration}}

    records = {"0": record("magnitude", None), "1": record("wanda", {"nsamples": 8})}
    table, _ = config_diff(Sweep(tmp_path, pd.DataFrame(), pd.DataFrame(), records))
    assert table.set_index("job")["calib_data.nsamples"].to_dict() == {"0": "", "1": 8}


def test_a_baseline_that_answered_more_tasks_gets_its_mean_over_the_studys_tasks():
    from prunelab.study.records import comparable

    study = pd.DataFrame({"zeroshot/mean_acc": [0.5], "zeroshot/mean_acc_tasks": [2.0], "zeroshot/arc_easy/acc": [0.4],
                          "zeroshot/arc_easy/acc_stderr": [0.08], "zeroshot/arc_easy/samples": [40], "zeroshot/piqa/acc": [0.6],
                          "zeroshot/piqa/acc_stderr": [0.08], "zeroshot/piqa/samples": [40]})
    dense = pd.DataFrame({"zeroshot/mean_acc": [0.3], "zeroshot/mean_acc_tasks": [4.0],
                          "zeroshot/arc_easy/acc": [0.5], "zeroshot/arc_easy/acc_stderr": [0.08], "zeroshot/arc_easy/samples": [40],
                          "zeroshot/piqa/acc": [0.725], "zeroshot/piqa/acc_stderr": [0.06], "zeroshot/piqa/samples": [40],
                          "zeroshot/mmlu/acc": [0.1], "zeroshot/mmlu/samples": [100]})
    joined = comparable(dense, study).iloc[0]
    assert joined["zeroshot/mean_acc"] == pytest.approx(0.6125) and joined["zeroshot/mean_acc_tasks"] == 2
    assert joined["zeroshot/mean_acc_stderr"] == pytest.approx(0.05)
    assert math.isnan(comparable(dense.assign(**{"zeroshot/piqa/samples": [100]}), study).iloc[0]["zeroshot/mean_acc"])


CAPTION = ("Figure 4. ria: perplexity against alpha, over the jobs whose method has this knob. A star marks a line's best "
           "value only where it is best beyond noise against alpha=0, else the runner-up (the findings' rule: paired "
           "per-window losses, 2 SE or Student's 95% value with few windows); red rings alpha=0. Evaluated on wiki: "
           "8 windows x 64 tokens (504 predicted tokens).")


def _figure_text(lines: int) -> str:
    return f"# Title\n\n{_filler(lines)}\n\n## Figures\n\n![curve](curve.png)\n\n*{CAPTION}*\n\n" + "Text after the figure. " * 200


def _image_above_caption(path: Path) -> list[tuple[bool, bool]]:
    """Per page holding any of the caption: (the whole caption is on it, an image is right above it)."""
    found = []
    with pymupdf.open(path) as document:
        for page in document:
            blocks = sorted(report._blocks(page), key=lambda b: b["bbox"][1])
            for position, block in enumerate(blocks):
                text = report._text(block)
                if len(text) >= 10 and text in report._plain(CAPTION):
                    found.append((text == report._plain(CAPTION), position > 0 and blocks[position - 1].get("type") == 1))
    return found


def test_a_figure_and_its_caption_share_a_page_and_no_page_holds_a_captions_tail(tmp_path):
    """The filler puts the caption's tail, then the whole caption, at the top of page 2 below an
    image at the foot of page 1 (found by typesetting without the check); typeset with it, the
    image moves to page 2 with its whole caption below it."""
    pixmap = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 640, 400), 0)
    pixmap.clear_with(200)
    pixmap.save(tmp_path / "curve.png")
    parted = {}
    for lines in range(10, 40):
        text = _figure_text(lines)
        report._typeset([text], tmp_path, tmp_path / "raw.pdf", "")
        top = report._first_block(pymupdf.open(tmp_path / "raw.pdf")[1])
        whole = report._plain(CAPTION)
        case = "whole" if top == whole else "tail" if top and whole.endswith(top) else None
        if case and case not in parted:
            parted[case] = text
        if len(parted) == 2:
            break
    assert set(parted) == {"whole", "tail"}  # both happen unchecked
    for text in parted.values():
        report._typeset([text], tmp_path, tmp_path / "raw.pdf", "")
        assert (True, True) not in _image_above_caption(tmp_path / "raw.pdf")  # unchecked: parted from its image
        checked = report.write_pdf(text, tmp_path, tmp_path / "checked.pdf")
        assert _image_above_caption(checked) == [(True, True)]
        pages = _pages(checked)
        assert pages[1][0] == "Figures"  # the heading above the figure went along


def test_a_long_tables_caption_that_wraps_onto_the_next_page_moves_there_whole(tmp_path):
    """A page that ends with the head of a table's caption (its lines wrapped onto the next page)
    ends with that caption: it moves to the next page whole, above its table."""
    caption = "Table: perplexity by setting, " + ", ".join(f"measured on set {i} of the evaluation" for i in range(30)) + "."
    table = "| setting | perplexity |\n|---|---|\n| 50% | 12.34 |"
    found = None
    for lines in range(25, 45):
        text = f"# Title\n\n{_filler(lines)}\n\n*{caption}*\n\n{table}\n\n" + "More text after the table. " * 100
        report._typeset([text], tmp_path, tmp_path / "raw.pdf", "")
        with pymupdf.open(tmp_path / "raw.pdf") as document:
            last = report._last_block(document[0])
        if len(last) >= report.SHORTEST_HEAD and report._plain(caption).startswith(last) and last != report._plain(caption):
            found = text
            break
    assert found is not None  # it happens unchecked
    with pymupdf.open(report.write_pdf(found, tmp_path, tmp_path / "checked.pdf")) as document:
        assert report._first_block(document[1]) == report._plain(caption)
        assert not report._plain(caption).startswith(report._last_block(document[0]))


def test_a_best_label_at_the_right_end_of_a_line_is_written_leftwards_off_the_legend(tmp_path, monkeypatch):
    labels = []
    original = plt.Axes.annotate

    def annotate(self, text, *args, **kwargs):
        labels.append((text, kwargs.get("ha", "left")))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "annotate", annotate)
    middle = _knob_sweep(tmp_path, shift=0.15)  # best at 0.5: room on the right
    figures.knob_curve(middle, "method.alpha", tmp_path / "middle.png")
    right = middle.results.assign(**{"method.alpha": middle.results["method.alpha"].map({0.0: 0.0, 0.5: 1.0, 1.0: 0.5})})
    figures.knob_curve(Sweep(tmp_path, right, pd.DataFrame(), {}), "method.alpha", tmp_path / "right.png")
    assert [label for label in labels if label[0].startswith("best")] == [("best 0.5", "left"), ("best 1", "right")]


def _typeset_lines(path: Path) -> str:
    with pymupdf.open(path) as document:
        return report._plain("".join(page.get_text() for page in document))


def test_a_section_after_the_first_loses_nothing_of_a_table_across_a_page(tmp_path):
    """MuPDF's Story (under ``markdown-pdf``) dropped the rest of a section after a document's first
    where its table crossed a page: the quick study-all's report lost half of this section's table
    and its Figure 3 (the section as report_all wrote it, its image left out). Every line of the
    Markdown is in the PDF."""
    section = (Path(__file__).parent / "fixtures" / "report_patterns_section.md").read_text()
    text = f"# Pruning smollm2_135m\n\nThe first section.\n\n{section}"
    path = report.write_pdf(text, tmp_path, tmp_path / "report.pdf", page_per_section=True)
    typeset = _typeset_lines(path)
    missing = [line for line in text.splitlines() if len(report._plain(line)) >= 3 and report._plain(line) not in typeset]
    assert missing == []
    assert "figure3perplexitypermethodunstructuredvsnmatthesamesparsity" in typeset


def test_a_table_wider_than_a_page_is_cut_into_tables_led_by_its_row_names():
    table = pd.DataFrame({"method": ["wanda", "ria"], "setting": ["2:4", "4:8"],
                          **{f"metric {i}": [float(i), i + 0.5] for i in range(20)}})
    text = report.markdown_table(table)
    parts = text.split("\n\n")
    assert len(parts) == 2 and all(p.splitlines()[0].startswith("| method   | setting") for p in parts)
    assert [p.splitlines()[0].count("metric") for p in parts] == [10, 10]  # equal parts, no stub of one column
    assert all(f"metric {i}" in text for i in range(20)) and text.count("| wanda") == 2
    assert "\n\n" not in report.markdown_table(table.iloc[:, :13])  # 13 columns fit a page
