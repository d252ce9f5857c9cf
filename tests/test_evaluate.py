"""Perplexity's cost: the per-window losses (noise) take no second pass over the vocabulary, and the
numbers keep the bits of the two ``F.cross_entropy`` calls (sum, then per token) they were computed
with when the per-window losses came in (docs/headline_time.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from prunelab.evaluate import perplexity


def _windows(model) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (5, 32), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_perplexity_and_window_losses_have_the_bits_of_two_cross_entropy_calls(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    windows = _windows(model)
    total = tokens = 0
    expected_windows: list[float] = []
    for batch in windows.split(2):  # the formula before: one cross_entropy for the sum, one per token
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        flat, targets = logits.reshape(-1, logits.shape[-1]), batch[:, 1:]
        total += float(F.cross_entropy(flat, targets.reshape(-1), reduction="sum"))
        tokens += targets.numel()
        per_token = F.cross_entropy(flat, targets.reshape(-1), reduction="none")
        expected_windows.extend(per_token.view(targets.shape).double().mean(dim=1).tolist())
    per_window: list[float] = []
    value, counted = perplexity(model, windows, torch.device("cpu"), batch_size=2, window_nll=per_window)
    assert counted == tokens == 5 * 31
    assert value == math.exp(total / tokens)  # bitwise
    assert per_window == expected_windows  # bitwise


def test_window_losses_cost_no_second_log_softmax(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    windows = _windows(model)  # 5 windows in batches of 2: 3 batches
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        perplexity(model, windows, torch.device("cpu"), batch_size=2, window_nll=[])
    counts = {event.key: event.count for event in prof.key_averages()}
    assert counts.get("aten::_log_softmax") == 3  # one pass over the vocabulary per batch (there were two)
