"""The sweep's ETA: every job's work from its config (:func:`prunelab.study.eta.job_cost`), the
seconds per unit fitted on the jobs that finished (:func:`prunelab.study.eta.remaining_seconds`)."""

from __future__ import annotations

import json

import pytest

from prunelab.study.eta import HALF_LIFE_JOBS, JobCost, job_cost, recency_weights, remaining_seconds
from tests.conftest import compose_config


def cost(*overrides: str) -> JobCost:
    return job_cost(compose_config("logger=none", *overrides))


def test_work_follows_what_a_job_does():
    magnitude, wanda, sparsegpt = cost("method=magnitude"), cost("method=wanda"), cost("method=sparsegpt")
    assert magnitude.work < wanda.work < sparsegpt.work
    assert cost("method=magnitude", "sparsity=0.9") == magnitude  # the same work at any sparsity
    assert cost("method=wanda", "calib_data.nsamples=8").work < wanda.work
    assert cost("method=magnitude", "eval.max_windows=8").work < magnitude.work
    assert cost("method=owl_wanda").work > wanda.work  # OWL's dense pass
    assert cost("method=magnitude", "eval=zeroshot").work > magnitude.work
    assert cost("method=dense", "recover=lora").work > cost("method=dense").work
    assert len({magnitude.kind, wanda.kind, sparsegpt.kind, cost("method=wanda", "engine=cpu").kind}) == 4


# The README's measured headline grid (embedded model, 2 idle cores): magnitude ~22 s, Wanda and
# RIA ~38 s a job; the grid runs magnitude first, then wanda, ria, then the dense baseline.
HEADLINE = [("magnitude", 22.0)] * 4 + [("wanda", 38.0)] * 4 + [("ria", 38.0)] * 4 + [("dense", 22.0)]


def test_the_headline_eta_after_three_cheap_jobs_accounts_for_the_calibrating_methods():
    costs = [cost(f"method={method}") for method, _ in HEADLINE]
    finished = [(costs[i], HEADLINE[i][1]) for i in range(3)]
    actual = sum(seconds for _, seconds in HEADLINE[3:])
    estimate = remaining_seconds(finished, costs[3:])
    mean_of_finished = 22.0 * len(HEADLINE[3:])  # the ETA before: all jobs cost what the first ones did
    assert abs(estimate - actual) / actual < 0.15, (estimate, actual)
    assert abs(mean_of_finished - actual) / actual > 0.3


def test_a_finished_job_of_a_kind_sets_that_kinds_rate():
    slow, cheap = JobCost("sparsegpt||", 1_000.0), JobCost("magnitude||", 1_000.0)
    assert remaining_seconds([], [slow]) is None  # nothing finished: no estimate
    assert remaining_seconds([(cheap, 10.0)], [slow, cheap]) == pytest.approx(20.0)  # unseen kind: overall rate
    # SparseGPT took 10x its modelled cost: the next SparseGPT job is estimated at that rate,
    # the magnitude one still at its own
    assert remaining_seconds([(cheap, 10.0), (slow, 100.0)], [slow, cheap]) == pytest.approx(110.0)
    assert remaining_seconds([(cheap, 10.0)], [JobCost("sparsegpt||", 2_000.0)]) == pytest.approx(20.0)


def test_the_constants_scale_with_the_models_shapes():
    """In the tiny model the 49,152 x 64 output layer, which calibration never runs, is most of a
    token's cost: Wanda's calibration adds almost nothing there, ~64% in the embedded model."""
    tiny_magnitude, tiny_wanda = cost("model=tiny_random", "method=magnitude"), cost("model=tiny_random", "method=wanda")
    assert tiny_wanda.work / tiny_magnitude.work < 1.01
    assert 1.5 < cost("method=wanda").work / cost("method=magnitude").work < 1.8


# The complete tiny-model headline sweep measured for docs/studies.md (`+experiment=sparsity_curve
# model=tiny_random logger=none`, 2 cores at load 20-25): seconds each job took, in job order, and
# from the start of job 4 to the end of the sweep 9m03s.
TINY_TOOK = [92, 78, 67, 54, 68, 41, 60, 57, 50, 52, 49, 46, 49]
TINY_REMAINING_AFTER_JOB_3 = 543


def test_the_measured_tiny_sweeps_eta_after_job_3_is_within_half_of_what_remained():
    costs = [cost("model=tiny_random", f"method={method}") for method, _ in HEADLINE]
    estimate = remaining_seconds(list(zip(costs[:3], TINY_TOOK[:3])), costs[3:])
    assert abs(estimate - TINY_REMAINING_AFTER_JOB_3) / TINY_REMAINING_AFTER_JOB_3 < 0.5, estimate


# The embedded model's headline sweep measured last session on the loaded machine (`+experiment=
# sparsity_curve calib_data.nsamples=8 eval.max_windows=8 eval.ppl_datasets=[wiki] logger=none`,
# 2 cores at load 25 falling to 10, kswapd busy): seconds each job took (the progress lines), and of
# them its calibration + perplexity seconds (time/calibration_s + time/eval_s of its metrics.json).
REDUCED = ("calib_data.nsamples=8", "eval.max_windows=8", "eval.ppl_datasets=[wiki]")
LOADED_TOOK = [326, 269, 259, 389, 401, 290, 291, 198, 255, 299, 180, 225, 69]
LOADED_TOKEN_S = [116.9, 109.5, 102.8, 126.3, 253.0, 184.3, 189.6, 129.3, 160.2, 147.0, 118.5, 115.0, 54.5]


def replay(costs: list[JobCost], took: list[float], token_s: list[float | None], after: int = 3,
           half_life: float | None = HALF_LIFE_JOBS) -> tuple[float, float]:
    """The ETA after job ``after`` from the recorded jobs, and the seconds the rest actually took."""
    finished = [(costs[i], took[i], token_s[i]) for i in range(after)]
    return remaining_seconds(finished, costs[after:], half_life=half_life), sum(took[after:])


def test_the_rest_of_a_job_has_its_own_rate_fitted_on_the_finished_jobs_stage_times():
    magnitude, wanda = JobCost("magnitude||", 3_000.0, rest=1_000.0), JobCost("wanda||", 6_000.0, rest=1_000.0)
    # the rest of a magnitude job took 100 s (0.1 s a unit), its tokens 20 s (0.01 s a unit): a
    # Wanda job is 5,000 token units and 1,000 of rest, 150 s; one rate for all would say 240 s
    assert remaining_seconds([(magnitude, 120.0, 20.0)], [wanda]) == pytest.approx(150.0)
    assert remaining_seconds([(magnitude, 120.0)], [wanda]) == pytest.approx(240.0)  # no stage times: one rate
    assert remaining_seconds([(magnitude, 120.0, 20.0)], [magnitude]) == pytest.approx(120.0)  # a seen kind: its own rate


def test_the_loaded_headline_sweeps_eta_after_job_3_with_the_rest_split_off():
    costs = [cost(f"method={method}", *REDUCED) for method, _ in HEADLINE]
    estimate, actual = replay(costs, LOADED_TOOK, LOADED_TOKEN_S)
    one_rate, _ = replay(costs, LOADED_TOOK, [None] * len(LOADED_TOOK))
    assert actual == 2_597
    # the progress line then said 1h17m (+75%); with every job weighing the same, one rate on
    # today's costs says +59%, two rates +29%; favouring recent jobs, +47% and +22%
    for half_life, one_rate_above in ((None, 0.5), (HALF_LIFE_JOBS, 0.4)):
        assert (replay(costs, LOADED_TOOK, [None] * len(LOADED_TOOK), half_life=half_life)[0] - actual) / actual > one_rate_above
    assert (replay(costs, LOADED_TOOK, LOADED_TOKEN_S, half_life=None)[0] - actual) / actual < 0.35
    assert abs(estimate - actual) / actual < 0.25 and estimate < one_rate, estimate


def test_a_records_token_seconds_are_its_calibration_and_evaluation(tmp_path):
    from prunelab.study.eta import token_seconds
    from tests.test_resume import run_job

    run_job(tmp_path / "0", "method=wanda", multirun=False)
    metrics = json.loads((tmp_path / "0" / "metrics.json").read_text())["metrics"]
    assert token_seconds(metrics) == pytest.approx(metrics["time/calibration_s"] + metrics["time/eval_s"])
    assert 0 < token_seconds(metrics) < metrics["time/total_s"]
    assert token_seconds({"time/load_s": 1.0}) is None


# Two headline sweeps measured on 4 December (`python run.py +experiment=sparsity_curve logger=none`,
# embedded model, 13 jobs): seconds each job took (between its two progress lines) and, of them, its
# calibration + perplexity seconds (its metrics.json). LOAD_DROP (17:59 UTC): a helper's tests shared
# the 2 cores during jobs 2-3 only, then the machine was idle; IDLE (18:55 UTC, load 0.2-2).
LOAD_DROP_TOOK = [39.2, 127.2, 133.0, 39.2, 67.6, 65.4, 81.2, 56.7, 59.1, 61.2, 59.1, 59.5, 34.7]
LOAD_DROP_TOKEN_S = [35.4, 123.9, 97.8, 36.0, 65.3, 62.3, 77.1, 54.5, 55.5, 58.0, 55.8, 56.9, 33.2]
IDLE_TOOK = [36.6, 36.3, 34.7, 33.4, 54.2, 56.3, 56.8, 55.9, 55.8, 54.1, 56.3, 56.3, 36.9]
IDLE_TOKEN_S = [32.9, 33.3, 32.3, 30.8, 52.4, 54.1, 54.6, 53.7, 52.9, 51.3, 53.4, 53.8, 35.2]


def _error(costs, took, token_s, after, half_life=HALF_LIFE_JOBS) -> float:
    estimate, actual = replay(costs, took, token_s, after=after, half_life=half_life)
    return (estimate - actual) / actual


def test_recent_jobs_weigh_more_so_the_eta_follows_the_load_when_it_drops():
    costs = [cost(f"method={method}") for method, _ in HEADLINE]
    assert recency_weights(3) == [0.0625, 0.25, 1.0] and recency_weights(3, None) == [1.0, 1.0, 1.0]
    # every job weighing the same (the live progress lines of that sweep): +143% after job 3,
    # still +107% after job 4 (the first idle job) and +51% after job 5
    before = [_error(costs, LOAD_DROP_TOOK, LOAD_DROP_TOKEN_S, k, half_life=None) for k in (3, 4, 5)]
    after = [_error(costs, LOAD_DROP_TOOK, LOAD_DROP_TOKEN_S, k) for k in (3, 4, 5)]
    assert before[0] > 1.3 and before[1] > 1.0 and before[2] > 0.45
    assert after[0] > before[0]  # after job 3 the two last jobs were loaded: no fit on finished jobs can know
    assert after[1] < 0.5 and after[2] < 0.15  # one idle job, and the ETA is within half; two, within 15%
    assert all(abs(_error(costs, LOAD_DROP_TOOK, LOAD_DROP_TOKEN_S, k)) < 0.1 for k in range(8, 13))


def test_on_the_idle_machine_favouring_recent_jobs_changes_nothing_that_matters():
    costs = [cost(f"method={method}") for method, _ in HEADLINE]
    for k in range(3, 12):  # the ETA after every job from 3 on, both rules, within 10% of what remained
        assert abs(_error(costs, IDLE_TOOK, IDLE_TOKEN_S, k)) < 0.1
        assert abs(_error(costs, IDLE_TOOK, IDLE_TOKEN_S, k, half_life=None)) < 0.1
    for k in range(1, 12):  # each job's own estimate within 10% (the dense job at the end: within 15%)
        finished = [(costs[i], IDLE_TOOK[i], IDLE_TOKEN_S[i]) for i in range(k)]
        assert abs(remaining_seconds(finished, costs[k:k + 1]) / IDLE_TOOK[k] - 1) < 0.1
    finished = [(costs[i], IDLE_TOOK[i], IDLE_TOKEN_S[i]) for i in range(12)]
    assert abs(remaining_seconds(finished, costs[12:]) / IDLE_TOOK[12] - 1) < 0.15


# The compression grid's 8-bit sweep (docs/compression.md; 20:20-20:31 UTC, load 1.2-6.3): seconds
# each job took and of them its calibration + perplexity seconds (metrics.json). Its first job is
# the dense model, whose rest is quantization and the llama.cpp benchmark.
COMPRESSION = ("+experiment=compression", "eval.max_windows=8", "eval.ppl_datasets=[wiki]", "calib_data.nsamples=16")
INT8_JOBS = ("dense", "flap_30", "shortgpt_30", "wanda_50", "wanda_2_4", "sparsegpt_50")
INT8_TOOK = [101.5, 80.8, 73.4, 110.2, 82.8, 105.7]
INT8_TOKEN_S = [27.4, 15.9, 20.7, 50.7, 45.1, 51.5]


def test_quantization_and_the_llama_cpp_benchmark_are_part_of_a_jobs_work():
    costs = [cost(*COMPRESSION, f"+experiment/compression={job}", "+experiment/compression_bits=int8") for job in INT8_JOBS]
    plain = cost("method=dense", "eval.max_windows=8", "eval.ppl_datasets=[wiki]")
    assert costs[0].rest > 20 * plain.rest and costs[0].kind == "dense||llamacpp|rtn"
    gptq = cost(*COMPRESSION, "+experiment/compression=dense", "+experiment/compression_bits=gptq4")
    assert gptq.rest > costs[0].rest and gptq.kind == "dense||llamacpp|gptq"
    estimate, actual = replay(costs, INT8_TOOK, INT8_TOKEN_S, after=1)
    assert abs(estimate - actual) / actual < 1.0  # measured +94% (without these terms: +3,121%)
    estimate, actual = replay(costs, INT8_TOOK, INT8_TOKEN_S, after=3)
    assert abs(estimate - actual) / actual < 0.2  # measured +2%
