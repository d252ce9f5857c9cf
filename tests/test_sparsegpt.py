"""SparseGPT: reconstruction beats Wanda at equal density, agrees with a plain column-by-column
OBS loop, exact counts per block, N:M, dead inputs and the diagonal-Hessian special case."""

from __future__ import annotations

import pytest
import torch

from prunelab.methods.sparsegpt import SparseGPT, inverse_hessian_factor
from prunelab.methods.wanda import Wanda
from prunelab.patterns import NM, Unstructured
from prunelab.stats import LayerStats


def correlated_inputs(tokens: int, features: int, seed: int = 0, latent: int = 16) -> torch.Tensor:
    """Inputs driven by a few latent factors plus noise: strongly correlated channels."""
    generator = torch.Generator().manual_seed(seed)
    factors = torch.randn(tokens, latent, generator=generator)
    loadings = torch.randn(latent, features, generator=generator)
    return factors @ loadings + 0.3 * torch.randn(tokens, features, generator=generator)


def layer_stats(inputs: torch.Tensor) -> LayerStats:
    stats = LayerStats()
    stats.update(inputs, norms=True, hessian=True)
    return stats


def reconstruction_error(inputs: torch.Tensor, weight: torch.Tensor, pruned: torch.Tensor) -> float:
    return float(torch.linalg.norm(inputs @ weight.T - inputs @ pruned.T))


@pytest.mark.parametrize("pattern,sparsity", [(Unstructured(), 0.5), (Unstructured(), 0.7), (NM(2, 4), 0.5), (NM(4, 8), 0.5)])
def test_reconstruction_error_is_below_wandas_at_the_same_density(pattern, sparsity):
    inputs = correlated_inputs(2048, 64)
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    stats = layer_stats(inputs)
    sparse_gpt = SparseGPT().prune_layer(weight, stats, sparsity, pattern)
    wanda = Wanda().prune_layer(weight, stats, sparsity, pattern)
    # same density up to rounding (per row for Wanda, per block for SparseGPT); never fewer zeros
    assert 0 <= int((sparse_gpt == 0).sum()) - int((wanda == 0).sum()) < weight.shape[0]
    assert reconstruction_error(inputs, weight, sparse_gpt) < 0.9 * reconstruction_error(inputs, weight, wanda)


def _column_by_column(weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern, blocksize: int) -> torch.Tensor:
    """The algorithm as the paper states it, one column at a time (slow, obviously right)."""
    work = weight.clone().double()
    hessian = stats.hessian_sum.double() * 2 / stats.tokens
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1
    work[:, dead] = 0
    hessian += 0.01 * hessian.diagonal().mean() * torch.eye(hessian.shape[0], dtype=torch.float64)
    factor = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    cols = weight.shape[1]
    for start in range(0, cols, blocksize):
        stop = min(start + blocksize, cols)
        pruned = torch.zeros(weight.shape[0], stop - start, dtype=torch.bool)
        if not isinstance(pattern, NM):
            saliency = work[:, start:stop] ** 2 / factor.diagonal()[start:stop] ** 2
            flat = saliency.flatten()
            order = sorted(range(flat.numel()), key=lambda k: (float(flat[k]), k))
            for k in order[:int(flat.numel() * sparsity)]:
                pruned.view(-1)[k] = True
        for j in range(start, stop):
            if isinstance(pattern, NM) and (j - start) % pattern.m == 0:
                saliency = work[:, j:j + pattern.m] ** 2 / factor.diagonal()[j:j + pattern.m] ** 2
                for row in range(weight.shape[0]):
                    order = sorted(range(pattern.m), key=lambda k: (float(saliency[row, k]), k))
                    for k in order[:pattern.m - pattern.n]:
                        pruned[row, j - start + k] = True
            error = torch.where(pruned[:, j - start], work[:, j] / factor[j, j], torch.zeros(()).double())
            work[:, j:] -= error.unsqueeze(1) * factor[j, j:].unsqueeze(0)
            work[pruned[:, j - start], j] = 0
    return work.float()


@pytest.mark.parametrize("pattern,sparsity", [(Unstructured(), 0.6), (NM(2, 4), 0.5)])
def test_matches_the_plain_column_by_column_algorithm(pattern, sparsity):
    inputs = correlated_inputs(512, 24, seed=3)
    inputs[:, 5] = 0  # a dead input channel
    weight = torch.randn(10, 24, generator=torch.Generator().manual_seed(2))
    stats = layer_stats(inputs)
    fast = SparseGPT(blocksize=8).prune_layer(weight, stats, sparsity, pattern)
    slow = _column_by_column(weight, stats, sparsity, pattern, blocksize=8)
    assert torch.equal(fast == 0, slow == 0)
    assert torch.allclose(fast, slow, atol=1e-4)


def test_unstructured_counts_are_exact_in_every_block_of_columns():
    inputs = correlated_inputs(1024, 300)
    weight = torch.randn(20, 300, generator=torch.Generator().manual_seed(0))
    pruned = SparseGPT().prune_layer(weight, layer_stats(inputs), 0.5, Unstructured())
    zeros = (pruned == 0)
    assert [int(zeros[:, s:s + 128].sum()) for s in (0, 128, 256)] == [1280, 1280, 440]


def test_dead_inputs_are_pruned_and_the_rest_is_updated():
    inputs = correlated_inputs(512, 16)
    inputs[:, [2, 9]] = 0
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)) + 3
    pruned = SparseGPT().prune_layer(weight, layer_stats(inputs), 0.25, Unstructured())
    assert (pruned[:, [2, 9]] == 0).all()
    kept = pruned != 0
    assert not torch.allclose(pruned[kept], weight[kept])  # OBS moved the survivors


def test_with_a_diagonal_hessian_it_is_magnitude_scaled_by_the_hessian_per_block():
    # orthogonal inputs: H diagonal, so U is diagonal (U_jj = 1/sqrt(H_jj + damp)), no updates happen
    inputs = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    weight = torch.tensor([[4.0, 1.5, 1.0, 0.5],
                           [1.0, 1.0, 1.1, 1.0]])
    stats = layer_stats(inputs)
    factor, dead = inverse_hessian_factor(stats.hessian_sum * 2 / stats.tokens, 0.01)
    assert torch.allclose(factor, torch.diag(factor.diagonal())) and not dead.any()
    pruned = SparseGPT().prune_layer(weight, stats, 0.5, Unstructured())
    # H = diag(.5, 2, 4.5, 8), damp .0375; saliency w^2 (H_jj + damp):
    # row 0 [8.60, 4.58, 4.54, 2.01], row 1 [0.54, 2.04, 5.49, 8.04] -> the four lowest are pruned
    assert torch.equal(pruned, torch.tensor([[4.0, 1.5, 0.0, 0.0], [0.0, 0.0, 1.1, 1.0]]))


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="blocksize"):
        SparseGPT(blocksize=0)
    with pytest.raises(ValueError, match="percdamp"):
        SparseGPT(percdamp=0)
    with pytest.raises(RuntimeError, match="Hessian"):
        SparseGPT().prune_layer(torch.ones(2, 4), LayerStats(), 0.5, Unstructured())
