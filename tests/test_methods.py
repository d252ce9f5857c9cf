"""Method semantics on small hand-checkable matrices, and invariants of every method's output."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelab.methods.ria import RIA, relative_importance
from prunelab.patterns import NM, Unstructured, parse_pattern
from prunelab.plan import make_plan
from prunelab.prune import prune_model
from prunelab.stats import LayerStats
from tests.conftest import build_method, compose_config

PRUNING_METHODS = ["magnitude", "wanda", "ria", "sparsegpt", "owl_wanda", "owl_magnitude", "owl_ria", "owl_sparsegpt"]


def stats_from_norms(norms: list[float]) -> LayerStats:
    """Layer statistics whose activation norms are exactly ``norms``."""
    return LayerStats(tokens=1, sq_norm_sum=torch.tensor(norms).pow(2))


def stats_from_inputs(inputs: torch.Tensor) -> LayerStats:
    stats = LayerStats()
    stats.update(inputs, norms=True, hessian=True)
    return stats


def build(name: str, *overrides: str):
    return build_method("model=tiny_random", f"method={name}", *overrides)


# --- Wanda -------------------------------------------------------------------------------------
def test_wanda_selects_per_output_row_by_weight_times_input_norm():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                           [4.0, 3.0, 2.0, 1.0]])
    stats = stats_from_norms([8.0, 1.0, 1.0, 1.0])
    # scores: row0 [8, 2, 3, 4] -> prune cols 1, 2; row1 [32, 3, 2, 1] -> prune cols 3, 2
    pruned = build("wanda").prune_layer(weight, stats, 0.5, Unstructured())
    assert pruned.tolist() == [[1.0, 0.0, 0.0, 4.0], [4.0, 3.0, 0.0, 0.0]]


def test_wanda_nm_groups_run_along_the_input_dimension():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0]])
    stats = stats_from_norms([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0])
    pruned = build("wanda", "pattern=2:4").prune_layer(weight, stats, 0.5, NM(2, 4))
    # group 1 [1,2,3,4] keeps 3,4; group 2 scores [4,3,2,10] keeps 4 and the 10 (col 7)
    assert pruned.tolist() == [[0.0, 0.0, 3.0, 4.0, 4.0, 0.0, 0.0, 1.0]]


# --- RIA ---------------------------------------------------------------------------------------
def test_ria_relative_importance_normalises_by_column_and_by_row():
    weight = torch.tensor([[1.0, -3.0],
                           [2.0, 4.0]])
    # column sums |W|: [3, 7]; row sums: [4, 6]
    expected = torch.tensor([[1 / 3 + 1 / 4, 3 / 7 + 3 / 4],
                             [2 / 3 + 2 / 6, 4 / 7 + 4 / 6]])
    assert torch.allclose(relative_importance(weight), expected)


def test_ria_activation_exponent_applies_to_the_input_channel():
    weight = torch.tensor([[1.0, -3.0, 2.0],
                           [2.0, 4.0, 1.0]])
    norms = [4.0, 9.0, 1.0]
    for alpha in (0.0, 0.5, 1.0):
        score = RIA(alpha=alpha).score(weight, stats_from_norms(norms))
        expected = relative_importance(weight) * torch.tensor(norms).pow(alpha).unsqueeze(0)
        assert torch.allclose(score, expected)
    # alpha = 0.5 multiplies column j by sqrt(norm_j): column 1 by 3, not row 1
    ratio = RIA(alpha=0.5).score(weight, stats_from_norms(norms)) / relative_importance(weight)
    assert torch.allclose(ratio, torch.tensor([[2.0, 3.0, 1.0], [2.0, 3.0, 1.0]]))


def test_ria_whole_matrix_is_the_default_and_row_is_selectable():
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0],
                           [1.0, 2.0, 50.0, 60.0]])
    stats = stats_from_norms([1.0, 1.0, 1.0, 1.0])
    layer = build("ria").prune_layer(weight, stats, 0.5, Unstructured())
    row = build("ria", "method.comparison=row").prune_layer(weight, stats, 0.5, Unstructured())
    # column sums [2, 3, 51, 61], row sums [4, 113]; RI row 0 = [.750, .583, .270, .266],
    # row 1 = [.509, .684, 1.423, 1.514]: the four lowest over the matrix are three of row 0 and one of row 1
    assert (layer == 0).tolist() == [[False, True, True, True], [True, False, False, False]]
    assert (row == 0).tolist() == [[False, False, True, True], [True, True, False, False]]


def test_ria_alpha_comes_from_the_root_knob():
    assert build("ria", "ria_alpha=0.25").alpha == 0.25
    assert build("owl_ria", "ria_alpha=0.75").base.alpha == 0.75


def test_ria_channel_permutation_keeps_nm_in_the_permuted_order_and_more_score():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 64, generator=generator) * torch.rand(64, generator=generator).pow(4)
    stats = stats_from_norms((torch.rand(64, generator=generator) * 5).tolist())
    plain = RIA().prune_layer(weight, stats, 0.5, NM(2, 4))
    permuted = RIA(permute_channels=True)
    pruned = permuted.prune_layer(weight, stats, 0.5, NM(2, 4))
    order = permuted.last_order
    assert sorted(order.tolist()) == list(range(64))
    assert ((pruned[:, order] != 0).view(32, 16, 4).sum(-1) == 2).all()
    score = RIA().score(weight, stats)
    assert float(score[pruned != 0].sum()) >= float(score[plain != 0].sum())
    assert permuted.evidence["ria_permuted_layers"] == 1


# --- every method, every pattern ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["magnitude", "wanda", "ria", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "3:8"])
def test_nm_invariant_on_every_layer_method(name, pattern):
    nm = parse_pattern(pattern)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(256, 32, generator=generator)
    weight = torch.randn(24, 32, generator=generator)
    pruned = build(name).prune_layer(weight, stats_from_inputs(inputs), nm.implied_sparsity(), nm)
    assert ((pruned != 0).view(24, 32 // nm.m, nm.m).sum(-1) == nm.n).all()


@pytest.mark.parametrize("name", ["magnitude", "wanda", "ria", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_exact_sparsity_of_every_layer_method(name, sparsity):
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(256, 40, generator=generator)
    weight = torch.randn(24, 40, generator=generator).round(decimals=1)  # ties
    method = build(name)
    pruned = method.prune_layer(weight, stats_from_inputs(inputs), sparsity, Unstructured())
    zeros = int((pruned == 0).sum())
    if name == "sparsegpt":  # one joint choice per block of 128 columns (here: the whole matrix)
        assert zeros == int(weight.numel() * sparsity)
    elif method.comparison == "row":
        assert ((pruned == 0).sum(dim=1) == int(40 * sparsity)).all()
    else:
        assert zeros == int(weight.numel() * sparsity)


@pytest.mark.parametrize("name", PRUNING_METHODS)
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.8), ("2:4", 0.5), ("4:8", 0.5)])
def test_every_method_prunes_the_tiny_model(name, pattern, sparsity, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    nm = parse_pattern(pattern)
    ids = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    before = copy.deepcopy(tiny_model.state_dict())
    report = prune_model(tiny_model, build(name), sparsity, nm, ids, torch.device("cpu"), batch_size=2)
    for index, block in enumerate(tiny_model.model.layers):
        for layer in (m for m in block.modules() if isinstance(m, torch.nn.Linear)):
            rows, cols = layer.weight.shape
            if isinstance(nm, NM):
                keep_n = report.method_evidence.get("owl_block_keep_n", [nm.n] * 2)[index]
                assert ((layer.weight != 0).view(rows, cols // nm.m, nm.m).sum(-1) == keep_n).all()
            else:
                zeros = (layer.weight == 0).float().mean().item()
                assert abs(zeros - report.block_sparsity[index]) < 0.02
    if not name.startswith("owl_"):
        assert report.achieved_sparsity == pytest.approx(sparsity, abs=0.01)
    assert torch.equal(tiny_model.model.embed_tokens.weight, before["model.embed_tokens.weight"])


@pytest.mark.parametrize("name", PRUNING_METHODS)
def test_method_yaml_composes_validates_and_reads_the_root_knobs(name):
    cfg = compose_config("model=tiny_random", "logger=none", f"method={name}", "ria_alpha=0.3", "owl_lambda=0.11",
                         "owl_m=4", "pattern=2:4", "sparsity=0.5")
    plan = make_plan(cfg)
    assert (plan.calibration is not None) == (name != "magnitude")
    method = plan.method
    assert method.name == name == plan.method_label
    if name.startswith("owl_"):
        assert (method.lambda_, method.m) == (0.11, 4.0)
    if name.endswith("ria"):
        assert (method.base if name.startswith("owl_") else method).alpha == 0.3
