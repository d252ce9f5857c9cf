"""The compression study's report (issue 17), on synthetic records: the bytes table against the dense
F16 file, the sentence on the seeds' 8x claim, the Pareto fronts, the figures and the W&B panels."""
from __future__ import annotations

import json
import math

import pytest

from prunelab.study import compression, dashboard, figures
from prunelab.study.aggregate import aggregate_sweep
from prunelab.study.records import collect

F16, Q4 = 270_000_000, 90_000_000  # dense GGUF file bytes in F16 and in Q4_K_M


def _job(method, sparsity, pattern, quant, ppl, file_pruned, tok_s_pruned, acc=0.5, bits=None, joint=False, decode=1.0):
    """One metrics.json: llama.cpp timed the dense model and this one in the format's GGUF type."""
    dense_file, dense_tok_s = (F16, 100.0) if quant == "F16" else (Q4, 150.0)
    metrics = {"eval/ppl_wiki": ppl, "eval/ppl_wiki_tokens": 1020, "zeroshot/mean_acc": acc, "bench/quant": quant,
               "bench/file_bytes_dense": dense_file, "bench/file_bytes_pruned": file_pruned,
               "bench/prefill_256_tok_s_dense": dense_tok_s, "bench/prefill_256_tok_s_pruned": tok_s_pruned,
               "bench/prefill_speedup_256": tok_s_pruned / dense_tok_s, "bench/prefill_ideal_256": 1.0,
               "bench/prefill_efficiency_256": tok_s_pruned / dense_tok_s,
               "bench/decode_b1_tok_s_dense": 20.0, "bench/decode_b1_tok_s_pruned": 20.0 * decode,
               "bench/decode_speedup_b1": decode, "bench/decode_ideal_b1": 1.0, "bench/decode_efficiency_b1": decode,
               "time/prune_s": 1.0}
    if bits:
        metrics.update({"quant/method": "gptq" if joint else "rtn", "quant/bits": bits, "quant/joint_with_pruning": joint,
                        "quant/bytes": 113_000_000, "quant/compression_vs_fp16": 2.38,
                        "quant/compression_vs_fp16_if_zeros_sparse": 2.70 if sparsity else 2.27})
    config = {"model": {"name": "smollm2_135m"}, "method": {"name": method}, "sparsity": sparsity, "pattern": pattern,
              "target": {"modules": ["all"]}, "calib_data": {"dataset": "wiki", "nsamples": 16, "seqlen": 256}, "seed": 0,
              "eval": {"seqlen": 256}}
    plan = {"model": "smollm2_135m", "method": method, "sparsity": sparsity, "pattern": pattern, "target_modules": ["all"]}
    return {"status": "completed", "config": config, "plan": plan, "metrics": metrics, "overrides": []}


JOBS = [  # method, sparsity, pattern, GGUF type, wiki ppl, file bytes, prefill tok/s
    _job("dense", 0.0, "unstructured", "F16", 20.0, F16, 100.0),
    _job("wanda", 0.5, "unstructured", "F16", 50.0, F16, 100.0),
    _job("wanda", 0.5, "unstructured", "Q4_K_M", 70.0, Q4, 150.0, bits=4),
    _job("sparsegpt", 0.5, "unstructured", "Q4_K_M", 60.0, Q4, 150.0, bits=4, joint=True),
    _job("flap", 0.3, "structured", "Q4_K_M", 300.0, 30_000_000, 400.0, acc=0.3, bits=4),
]


def _sweep(tmp_path, jobs):
    for index, record in enumerate(jobs):
        (tmp_path / str(index)).mkdir(parents=True)
        (tmp_path / str(index) / "metrics.json").write_text(json.dumps(record))
    return tmp_path


def test_bytes_table_sets_every_file_against_the_dense_f16_file_and_says_who_reaches_8x(tmp_path):
    sweep, found, made = aggregate_sweep(_sweep(tmp_path, JOBS))
    table = found["compression_bytes"]
    assert table.loc[("wanda", "unstructured 50%", "RTN-4"), compression.RATIO] == pytest.approx(F16 / Q4)  # 3x: zeros cost 4 bits
    assert table.loc[("wanda", "unstructured 50%", "fp16"), compression.RATIO] == pytest.approx(1.0)
    assert table.loc[("flap", "structured 30%", "RTN-4"), compression.RATIO] == pytest.approx(9.0)
    assert table.loc[("sparsegpt", "unstructured 50%", "GPTQ-4 joint"), "GGUF type"] == "Q4_K_M"
    assert list(table.index.get_level_values("format"))[:2] == ["fp16", "fp16"]  # dense first, then by method and bits
    assert compression.eight_x_sentence(sweep).startswith(
        "1 combination reaches 8x smaller than the dense F16 file: flap structured 30% RTN-4 (9.00x); the most accurate "
        "is flap structured 30% RTN-4, wiki perplexity 300.00 against 20.00 dense fp16.")
    speed = found["compression_speed"]
    assert speed.loc[("wanda", "unstructured 50%", "RTN-4"), "prefill speedup"] == pytest.approx(1.0)  # vs dense Q4_K_M
    assert speed.loc[("wanda", "unstructured 50%", "RTN-4"), compression.SPEEDUP_F16] == pytest.approx(1.5)  # vs dense F16
    assert speed.loc[("flap", "structured 30%", "RTN-4"), compression.SPEEDUP_F16] == pytest.approx(4.0)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Compression: pruning and quantization: dense, wanda, sparsegpt, flap on smollm2_135m")
    assert "1 combination reaches 8x" in report and "Compression: file bytes against the dense F16 file" in report
    assert "Pareto front of wiki perplexity against file size (vs dense F16): dense fp16 1.00x at 20.00; sparsegpt " \
           "unstructured 50% GPTQ-4 joint 3.00x at 60.00; flap structured 30% RTN-4 9.00x at 300.00." in report
    assert set(made) == {"compression_bytes", "compression_speed", "compression_decode"}  # no figure that averages over the formats
    panels = dashboard.panels(sweep, list(made))
    assert {"section": "Compression: bytes and speed against accuracy", "kind": "ScatterPlot",
            "title": "eval/ppl_wiki vs bench/file_bytes_pruned", "x": "summary.bench/file_bytes_pruned",
            "y": "summary.eval/ppl_wiki"} in panels
    chart = next(c for c in dashboard.charts(sweep, list(made)) if c.key == "charts/compression_bytes/ppl_wiki")
    assert chart.frame.set_index(["model", "x smaller than dense F16 file"])["value"][("wanda unstructured 50%", 1.0)] == 50.0
    assert json.loads((tmp_path / "dashboard.json").read_text())["panels"] == json.loads(json.dumps(panels))


def test_without_a_file_8x_smaller_the_sentence_gives_the_best_ratio_and_its_perplexity(tmp_path):
    """Two formats of the same size (RTN-4, GPTQ-4 joint: 3.00x): the sentence names the more accurate."""
    sweep = collect(_sweep(tmp_path, JOBS[:4]))
    assert compression.eight_x_sentence(sweep) == (
        "No combination reaches 8x: the smallest file is sparsegpt unstructured 50% GPTQ-4 joint, 90,000,000 bytes, 3.00x "
        "smaller than the dense F16 file (270,000,000 bytes), wiki perplexity 60.00 against 20.00 dense fp16. Stored with the "
        "zeros as a bitmask (an estimate, `quant/bytes_if_zeros_sparse`), the best would be wanda unstructured 50% "
        "RTN-4 at 2.70x (dense-packed as we count it: 2.38x).")
    assert not compression.is_compression(collect(_sweep(tmp_path / "fp16", JOBS[:2])).completed)


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    import pandas as pd

    x = pd.Series([1.0, 1.0, 3.0, 9.0, 2.0])  # times smaller: higher is better
    y = pd.Series([20.0, 50.0, 60.0, 300.0, math.nan])  # perplexity: lower is better
    assert list(compression.pareto_front(x, y, x_lower_better=False)) == [True, False, True, True, False]


def test_the_paper_of_a_model_directory_gives_compression_its_own_section(tmp_path):
    from prunelab.study import report_all

    _sweep(tmp_path / "smollm2_135m" / "compression", JOBS)
    md_path, _ = report_all.report_all(tmp_path / "smollm2_135m")
    text = md_path.read_text()
    assert "## 2. Compression: pruning and quantization" in text and "- 1 combination reaches 8x" in text
    assert "*Table: Compression: llama.cpp speedups (same format, and against dense F16).*" in text
    assert "papers' orderings on these numbers" not in text.split("## 3.")[0]  # no ordering across formats


def test_the_labels_of_a_pareto_front_stay_inside_their_panel_clear_of_the_legend_and_of_each_other(tmp_path):
    """The fastest and smallest point, far right on the x axis, is on every front: its label ran past the
    panel's right edge, under the legend beside it (ShortGPT in the decode figure of the measured sweep);
    two front points side by side at the bottom (dense fp16 and 8-bit) had their labels on top of each other."""
    import matplotlib.pyplot as plt

    jobs = [_job("dense", 0.0, "unstructured", "F16", 25.0, F16, 100.0),
            _job("dense", 0.0, "unstructured", "Q8_0", 25.06, 145_000_000, 112.0, bits=8, decode=1.2),
            _job("dense", 0.0, "unstructured", "Q4_K_M", 51.0, Q4, 150.0, bits=4),
            _job("wanda", 0.5, "unstructured", "Q4_K_M", 120.0, Q4, 150.0, bits=4, decode=1.06),
            _job("flap", 0.3, "structured", "Q4_K_M", 181.0, 85_000_000, 170.0, bits=4, decode=1.1),
            _job("shortgpt", 0.3, "structured", "Q4_K_M", 366.0, 80_000_000, 215.0, bits=4, decode=1.33)]
    sweep = collect(_sweep(tmp_path, jobs))
    for name in figures.COMPRESSION_PLOTS:
        figure, _, _ = figures.compression_plot(sweep, name)
        figure.draw_without_rendering()
        renderer = figure.canvas.get_renderer()
        legend = figure.axes[-1].get_legend().get_window_extent(renderer)
        labels = [(axis, text) for axis in figure.axes for text in axis.texts]
        assert "shortgpt structured 30% RTN-4" in [text.get_text() for _, text in labels]
        for axis, text in labels:
            box, extent = axis.get_window_extent(renderer), text.get_window_extent(renderer)
            inside = box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1
            assert inside and not extent.overlaps(legend), (name, text.get_text(), extent, box)
        for axis in figure.axes:
            extents = [(text.get_text(), text.get_window_extent(renderer)) for text in axis.texts]
            assert not [(a, b) for i, (a, one) in enumerate(extents) for b, other in extents[i + 1:] if one.overlaps(other)], name
        plt.close(figure)
