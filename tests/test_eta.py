"""The sweep's ETA: every job's work from its config (:func:`prunelab.study.eta.job_cost`), the
seconds per unit fitted on the jobs that finished (:func:`prunelab.study.eta.remaining_seconds`)."""

from __future__ import annotations

import pytest

from prunelab.study.eta import JobCost, job_cost, remaining_seconds
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
