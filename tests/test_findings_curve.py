"""Findings of a sparsity curve with one method (e.g. magnitude alone, or a partial run): the curve
against the dense model, where perplexity doubles, every step with its noise; "too few" only for
one job. And the discussion's noise stated as a share of a perplexity, not a percent of a log."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from prunelab.evaluate import log_ppl_standard_error
from prunelab.study import findings, report_all
from prunelab.study.records import Sweep

DENSE = [3.0, 3.4, 2.7, 3.2, 2.9, 3.3, 3.1, 2.8]  # per-window NLL of the dense model: windows of different difficulty
JITTER = [0.02, -0.03, 0.01, -0.02, 0.03, -0.01, 0.02, -0.015]


def _row(job: int, method: str, sparsity: float, nll: list[float], **extra) -> dict:
    return {"job": str(job), "status": "completed", "model": "m", "method": method, "sparsity": sparsity,
            "pattern": "unstructured", "eval_seqlen": 65, "eval/ppl_wiki": math.exp(np.mean(nll)),
            "eval/ppl_wiki_tokens": 64 * len(nll), "noise/ppl_wiki_window_nll": json.dumps(nll),
            "noise/ppl_wiki_se_log": log_ppl_standard_error(nll), **extra}


def _curve(shifts: dict[float, float], dense: bool = True) -> pd.DataFrame:
    """Magnitude at each sparsity: every window's NLL ``shift`` above the dense model's (plus jitter)."""
    rows = [_row(i, "magnitude", s, [w + shift + j for w, j in zip(DENSE, JITTER[i % 2::1] + JITTER[:i % 2])])
            for i, (s, shift) in enumerate(shifts.items())]
    if dense:
        rows.append(_row(len(rows), "dense", 0.0, DENSE))
    return pd.DataFrame(rows)


def test_a_one_method_curve_says_where_perplexity_doubles_and_which_steps_are_beyond_noise():
    frame = _curve({0.3: math.log(1.3), 0.5: math.log(3.0), 0.7: math.log(3.0) + 0.005})
    sentences = findings.findings(frame)
    assert len(sentences) == 1
    sentence = sentences[0]
    ppl = frame.set_index("sparsity")["eval/ppl_wiki"]
    assert sentence.startswith("wiki perplexity of magnitude against sparsity (wiki: 8 windows × 65 tokens")
    assert f"30% {ppl[0.3]:.2f} ±" in sentence and f"({ppl[0.3] / ppl[0.0]:.2f}× dense)" in sentence
    assert f"It first exceeds twice the dense perplexity at 50%, {ppl[0.3] / ppl[0.0]:.2f}× at 30%." in sentence
    steps = sentence.split("Each step up in sparsity (paired over the same windows): ")[1].split("; ")
    assert [s.split(":")[0] for s in steps] == ["dense → 30%", "30% → 50%", "50% → 70%"]
    assert ["beyond noise" in s for s in steps] == [True, True, False]  # 70% is 50% plus noise


def test_a_curve_that_never_doubles_says_so_and_without_dense_still_compares_its_points():
    frame = _curve({0.3: 0.1, 0.5: 0.3})
    ppl = frame.set_index("sparsity")["eval/ppl_wiki"]
    assert f"It stays below twice the dense perplexity up to 50% ({ppl[0.5] / ppl[0.0]:.2f}×)." in findings.findings(frame)[0]
    no_dense = findings.findings(_curve({0.3: 0.1, 0.5: 0.3}, dense=False))
    rise = 100 * (ppl[0.5] / ppl[0.3] - 1)
    assert len(no_dense) == 1 and f"30% → 50%: +{rise:.1f}% (paired over 8 windows" in no_dense[0] and "dense" not in no_dense[0]


def test_too_few_only_for_one_job():
    assert findings.findings(_curve({0.5: 0.3}, dense=False)) == []  # one job: the report says too few
    frame = _curve({0.5: 0.3})
    one_point = findings.findings(frame)  # one pruned job and the dense model: a comparison
    ppl = frame.set_index("sparsity")["eval/ppl_wiki"]
    assert len(one_point) == 1 and f"dense → 50%: +{100 * (ppl[0.5] / ppl[0.0] - 1):.1f}% (paired" in one_point[0]


def test_a_one_method_accuracy_curve_says_where_it_falls_below_dense_beyond_noise():
    accuracy = {0.0: (0.50, 0.05), 0.3: (0.47, 0.05), 0.5: (0.28, 0.045)}
    frame = _curve({0.3: 0.1, 0.5: 0.3})
    for column, position in (("zeroshot/arc_easy/acc", 0), ("zeroshot/arc_easy/acc_stderr", 1)):
        frame[column] = [accuracy[s][position] for s in frame["sparsity"]]
    sentence = next(s for s in findings.findings(frame) if s.startswith("arc_easy accuracy"))
    assert "dense 50.0 ± 5.0%, 30% 47.0 ± 5.0%, 50% 28.0 ± 4.5%." in sentence
    drop, se = 100 * (0.28 - 0.50), 100 * math.hypot(0.045, 0.05)
    assert f"It first falls below the dense model beyond noise at 50%: {drop:+.1f} ± {se:.1f} points ({-drop / se:.1f} SE, " \
           "beyond noise)." in sentence
    assert "dense → 30%: -3.0 ± 7.1 points (0.4 SE, within noise)" in sentence  # the 30% point is not the first below


def test_the_discussion_states_a_perplexitys_noise_as_a_share_of_its_value(tmp_path):
    frame = pd.DataFrame([_row(0, "magnitude", 0.5, DENSE), _row(1, "magnitude", 0.9, [2 * w for w in DENSE])])
    frame["noise/ppl_wiki_se_log"] = [0.0962, 1.201]  # the embedded partial run's extremes
    sweep = Sweep(tmp_path, frame, pd.DataFrame(), {})
    text = report_all._noise_summary([report_all.Study("sparsity", [sweep], sweep, {})])
    low, high = math.expm1(0.0962), math.expm1(1.201)
    assert f"One standard error of a run's perplexity is {100 * low:.0f}–{100 * high:.0f}% (median" in text
    assert "0.0962–1.2 nats" in text and f"exp(SE) = {math.exp(0.0962):.2f}–{math.exp(1.201):.2f}" in text
    assert "120.1%" not in text and "9.6" not in text


def test_a_perplexity_whose_noise_is_wide_is_shown_with_its_factor_not_a_plus_minus_beyond_it():
    narrow = _curve({0.3: 0.1, 0.5: 0.3})
    wide = pd.DataFrame([_row(0, "magnitude", 0.9, [w * 3 + (4 if i % 2 else -4) for i, w in enumerate(DENSE)]),
                         _row(1, "dense", 0.0, DENSE)])  # windows 8 nats apart: SE of log-perplexity 1.4
    ppl, se = wide["eval/ppl_wiki"][0], wide["noise/ppl_wiki_se_log"][0]
    assert se > findings.WIDE_SE_LOG
    assert f"90% {findings._number(ppl, 'eval/ppl_wiki')} ×/÷ {math.exp(se):.2f} (" in findings.findings(wide)[0]  # no ± beyond it
    row = narrow.iloc[0]
    assert f"30% {row['eval/ppl_wiki']:.2f} ± {row['eval/ppl_wiki'] * row['noise/ppl_wiki_se_log']:.2f} (" in findings.findings(narrow)[0]
