"""OWL: outlier ratios, the map to block sparsities (weighted mean, bounds, order), N:M offsets,
evidence in the run's metrics, and the cache of the dense pass."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelab.checks import ConfigError
from prunelab.methods.owl import OWL, block_nm_keep, block_sparsities, outlier_ratio
from prunelab.patterns import NM, Unstructured
from prunelab.prune import prune_model
from tests.conftest import build_method


def test_outlier_ratio_counts_scores_strictly_above_m_times_the_mean():
    scores = [torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[6.0]])]  # pooled mean 2
    assert outlier_ratio(scores, 3.0) == 0.0  # 6 is not > 6
    assert outlier_ratio(scores, 2.9) == pytest.approx(1 / 5)
    assert outlier_ratio(scores, 0.4) == 1.0


def test_reference_map_by_hand():
    # D = [0, .5, 1] -> r = [0, lambda, 2 lambda], mean lambda -> s = S + lambda - r
    plan = block_sparsities([0.0, 0.5, 1.0], [10, 10, 10], 0.6, 0.1)
    assert plan == pytest.approx([0.7, 0.6, 0.5])


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("lambda_", [0.02, 0.08, 0.2])
def test_plan_keeps_the_weighted_mean_the_bounds_and_the_order(sparsity, lambda_):
    generator = torch.Generator().manual_seed(0)
    for sizes in ([100] * 12, torch.randint(50, 500, (12,), generator=generator).tolist()):
        for ratios in (torch.rand(12, generator=generator).tolist(),
                       [0.01] * 11 + [0.2]):  # skewed: one block with many outliers
            plan = block_sparsities(ratios, sizes, sparsity, lambda_)
            weighted = sum(s * n for s, n in zip(plan, sizes)) / sum(sizes)
            assert weighted == pytest.approx(sparsity, abs=1e-9)
            assert all(sparsity - lambda_ - 1e-9 <= s <= sparsity + lambda_ + 1e-9 for s in plan)
            assert all(0 <= s < 1 for s in plan)
            for i in range(12):  # more outliers -> lower (or equal, where clipped) sparsity
                for j in range(12):
                    if ratios[i] > ratios[j]:
                        assert plan[i] <= plan[j] + 1e-12
            most = max(range(12), key=lambda i: ratios[i])
            assert plan[most] == min(plan) < sparsity


def test_equal_ratios_or_zero_lambda_give_the_uniform_plan():
    assert block_sparsities([0.3, 0.3, 0.3], [1, 2, 3], 0.5, 0.08) == [0.5, 0.5, 0.5]
    assert block_sparsities([0.1, 0.3, 0.2], [1, 1, 1], 0.5, 0.0) == [0.5, 0.5, 0.5]


def test_nm_variant_shifts_n_by_rounded_mean_zero_offsets():
    ratios = torch.linspace(0.0, 1.0, 10).tolist()
    keep = block_nm_keep(ratios, [1] * 10, NM(4, 8), 0.08)  # offsets 8 * (r - mean) in [-.64, .64]
    assert sum(keep) == 4 * 10
    assert keep == sorted(keep) and keep[0] == 3 and keep[-1] == 5
    assert block_nm_keep([0.2] * 4, [1] * 4, NM(2, 4), 0.08) == [2, 2, 2, 2]
    assert all(1 <= n <= 3 for n in block_nm_keep(ratios, [1] * 10, NM(2, 4), 0.4))


def _owl(name: str, *overrides: str):
    return build_method("model=tiny_random", f"method={name}", *overrides)


def test_owl_records_its_plan_in_the_run_metrics_and_caches_the_dense_pass(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    ids = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    method = _owl("owl_wanda", "owl_lambda=0.1")
    assert (method.lambda_, method.m, method.base.name) == (0.1, 5.0, "wanda")
    report = prune_model(copy.deepcopy(tiny_model), method, 0.6, Unstructured(), ids, torch.device("cpu"), batch_size=2)
    metrics = report.metrics()
    assert metrics["prune/owl_block_sparsity"] == report.block_sparsity
    ratios = metrics["prune/owl_outlier_ratio"]
    assert len(ratios) == 2 and metrics["prune/dense_pass_cached"] is False
    assert ratios[0] != ratios[1]  # two blocks: one gets 0.5, the other 0.7
    assert sorted(report.block_sparsity) == pytest.approx([0.5, 0.7])
    assert list((tmp_path / "stats" / "dense_pass").glob("*.json"))

    def cached(method, sparsity, inputs) -> bool:
        report = prune_model(copy.deepcopy(tiny_model), method, sparsity, Unstructured(), inputs, torch.device("cpu"),
                             batch_size=2)
        return report.method_evidence["dense_pass_cached"]

    # another sparsity and lambda: same dense pass, read from the cache
    again = _owl("owl_wanda", "owl_lambda=0.05")
    assert cached(again, 0.4, ids) and again.ratios == ratios
    # another m or other calibration data: a new dense pass
    assert not cached(_owl("owl_wanda", "owl_m=3"), 0.4, ids)
    assert not cached(_owl("owl_wanda"), 0.4, ids + 1)


def test_owl_with_zero_lambda_is_its_base_method(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    ids = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(1))
    owl_model, base_model = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    prune_model(owl_model, _owl("owl_ria", "owl_lambda=0"), 0.5, Unstructured(), ids, torch.device("cpu"), batch_size=2)
    prune_model(base_model, _owl("ria"), 0.5, Unstructured(), ids, torch.device("cpu"), batch_size=2)
    for a, b in zip(owl_model.parameters(), base_model.parameters()):
        assert torch.equal(a, b)


def test_owl_nm_prunes_each_block_with_its_own_n(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    ids = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    method = _owl("owl_magnitude", "owl_lambda=0.1")
    report = prune_model(tiny_model, method, 0.5, NM(4, 8), ids, torch.device("cpu"), batch_size=2)
    keep_n = report.method_evidence["owl_block_keep_n"]
    assert sorted(keep_n) == [3, 5]  # two blocks: offsets +-0.8 round to +-1
    for index, block in enumerate(tiny_model.model.layers):
        for layer in (m for m in block.modules() if isinstance(m, torch.nn.Linear)):
            rows, cols = layer.weight.shape
            assert ((layer.weight != 0).view(rows, cols // 8, 8).sum(-1) == keep_n[index]).all()
    assert report.achieved_sparsity == pytest.approx(0.5)


def test_owl_rejects_bad_settings():
    with pytest.raises(ConfigError, match=r"method.lambda_=1.5 is outside \[0, 1\) \(owl_lambda\)"):
        _owl("owl_wanda", "owl_lambda=1.5")
    with pytest.raises(ConfigError, match="not a valid OWL base"):
        _owl("owl", "method@method.base=dense")
    with pytest.raises(ConfigError, match="not a valid OWL base"):
        OWL(_owl("owl_wanda"))  # OWL of OWL


def test_unbounded_plan_is_the_reference_formula_on_skewed_ratios():
    ratios = [0.0] * 9 + [1.0]
    reference = block_sparsities(ratios, [1] * 10, 0.7, 0.08, bounded=False)
    # r = [0]*9 + [0.16], mean 0.016: s = 0.716 for nine blocks, 0.556 (= S - 1.8 lambda) for the last
    assert reference == pytest.approx([0.716] * 9 + [0.556])
    bounded = block_sparsities(ratios, [1] * 10, 0.7, 0.08)
    assert bounded == pytest.approx([0.7 + 0.08 / 9] * 9 + [0.62])
