"""Patterns: exact counts, deterministic ties, N:M groups along the input dimension, channel dealing."""

from __future__ import annotations

import pytest
import torch

from prunelab.patterns import (
    NM,
    PatternError,
    Unstructured,
    check_sparsity,
    deal_channels,
    kept_score,
    parse_pattern,
    prune_lowest,
    refine_channels,
)


def _oracle_prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Plain Python: sort every row by (score, index) and drop the first ``count``."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    for row in range(scores.shape[0]):
        ranked = sorted(range(scores.shape[1]), key=lambda j: (float(scores[row, j]), j))
        for j in ranked[:count]:
            keep[row, j] = False
    return keep


@pytest.mark.parametrize("cols", [5, 31, 32, 97])
def test_prune_lowest_matches_a_plain_sort_with_ties_broken_by_index(cols):
    generator = torch.Generator().manual_seed(cols)
    scores = torch.randint(0, 4, (6, cols), generator=generator).float()  # many ties
    for count in (0, 1, cols // 3, cols // 2, cols - 1, cols):
        assert torch.equal(prune_lowest(scores, count), _oracle_prune_lowest(scores, count)), count


def test_prune_lowest_ties_prune_the_lower_index_first():
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.5, 1.0] + [2.0] * 40])
    keep = prune_lowest(scores, 3)
    assert keep[0, :5].tolist() == [False, False, True, False, True]
    assert int((~keep).sum()) == 3


@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.5, 0.7, 0.9])
def test_unstructured_counts_are_exact_per_row_and_per_layer(sparsity):
    scores = torch.rand(12, 50, generator=torch.Generator().manual_seed(0)).round(decimals=1)
    row = Unstructured().mask(scores, sparsity, "row")
    assert ((~row).sum(dim=1) == int(50 * sparsity)).all()
    layer = Unstructured().mask(scores, sparsity, "layer")
    assert int((~layer).sum()) == int(scores.numel() * sparsity)


def test_unstructured_row_vs_layer_by_hand():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    assert Unstructured().mask(scores, 0.5, "row").tolist() == [[False, False, True, True], [False, False, True, True]]
    assert Unstructured().mask(scores, 0.5, "layer").tolist() == [[False, False, False, False], [True, True, True, True]]
    with pytest.raises(PatternError, match="comparison group"):
        Unstructured().mask(scores, 0.5, "column")


def test_nm_groups_run_along_the_input_dimension():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0],
                           [0.0, 9.0, 0.0, 9.0, 5.0, 5.0, 5.0, 5.0]])
    keep = NM(2, 4).mask(scores)
    assert keep.tolist() == [[True, True, False, False, False, False, True, True],
                             [False, True, False, True, False, False, True, True]]  # ties: lower index pruned
    keep48 = NM(4, 8).mask(scores)
    assert keep48[0].tolist() == [True, True, False, False, False, False, True, True]


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (3, 8), (8, 16)])
def test_nm_invariant_on_random_scores(n, m):
    scores = torch.randn(7, 4 * m, generator=torch.Generator().manual_seed(m))
    keep = NM(n, m).mask(scores)
    assert (keep.view(7, 4, m).sum(dim=-1) == n).all()


def test_nm_needs_input_size_multiple_of_m():
    with pytest.raises(PatternError, match="multiple of 4"):
        NM(2, 4).mask(torch.rand(3, 6))


@pytest.mark.parametrize("spec,expected", [("unstructured", Unstructured()), ("2:4", NM(2, 4)), (" 4 : 8 ", NM(4, 8))])
def test_parse_pattern(spec, expected):
    assert parse_pattern(spec) == expected


@pytest.mark.parametrize("spec", ["4:2", "0:4", "2-4", "half"])
def test_parse_pattern_rejects_bad_specs(spec):
    with pytest.raises(PatternError, match="pattern="):
        parse_pattern(spec)


def test_check_sparsity_names_the_implied_value():
    check_sparsity(NM(2, 4), 0.5)
    with pytest.raises(PatternError, match="implies sparsity=0.5"):
        check_sparsity(NM(2, 4), 0.6)


def test_deal_channels_puts_one_channel_of_every_importance_tier_in_each_group():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(5, 16, generator=generator) * torch.linspace(0.1, 3.0, 16)[torch.randperm(16, generator=generator)]
    order = deal_channels(scores, 4)
    assert sorted(order.tolist()) == list(range(16))
    rank = torch.empty(16, dtype=torch.long)
    rank[torch.sort(scores.sum(0), descending=True, stable=True).indices] = torch.arange(16)
    tiers = (rank[order] // 4).view(4, 4)  # tier of each channel, per group
    assert (tiers.sort(dim=1).values == torch.arange(4)).all()


def test_channel_permutation_raises_the_kept_score_where_the_plain_order_is_bad():
    # the strong channels sit next to each other, so plain 2:4 throws half of them away
    strong = torch.tensor([10.0, 9.0, 8.0, 7.0])
    weak = torch.tensor([0.1, 0.2, 0.3, 0.4])
    scores = torch.cat([strong, weak]).repeat(3, 1)
    pattern = NM(2, 4)
    plain = kept_score(scores, pattern)
    dealt = deal_channels(scores, 4)
    refined = refine_channels(scores, dealt, pattern)
    assert sorted(refined.tolist()) == list(range(8))
    assert kept_score(scores[:, dealt], pattern) == pytest.approx(3 * 34.0)  # all four strong kept
    assert kept_score(scores[:, refined], pattern) >= kept_score(scores[:, dealt], pattern) > plain


def test_refinement_never_lowers_the_kept_score():
    for seed in range(5):
        scores = torch.rand(16, 32, generator=torch.Generator().manual_seed(seed)).pow(3)
        for pattern in (NM(2, 4), NM(4, 8)):
            dealt = deal_channels(scores, pattern.m)
            refined = refine_channels(scores, dealt, pattern)
            assert sorted(refined.tolist()) == list(range(32))
            assert kept_score(scores[:, refined], pattern) >= kept_score(scores[:, dealt], pattern) - 1e-4
