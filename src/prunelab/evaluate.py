"""Perplexity with the papers' protocol: non-overlapping ``seqlen`` windows, tail dropped,
``ppl = exp(mean token NLL)`` over every predicted token of every window."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunelab.data import evaluation_stream
from prunelab.offload import is_dispatched


@dataclass(frozen=True)
class PerplexitySpec:
    """Which sets, how many non-overlapping windows of how many tokens, in batches of what size."""

    datasets: tuple[str, ...]
    seqlen: int
    max_windows: int | None
    batch_size: int


@dataclass
class PerplexityResult:
    dataset: str
    perplexity: float
    windows: int
    tokens: int
    seconds: float


def windows_of(stream: torch.Tensor, seqlen: int, max_windows: int | None) -> torch.Tensor:
    """``[n, seqlen]`` non-overlapping windows of a ``[1, tokens]`` stream; the tail is dropped."""
    count = stream.shape[1] // seqlen
    if max_windows is not None:
        count = min(count, int(max_windows))
    if count == 0:
        raise ValueError(f"evaluation text has {stream.shape[1]} tokens, fewer than one window of {seqlen}")
    return stream[0, : count * seqlen].reshape(count, seqlen)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, device: torch.device, batch_size: int, label: str = "ppl") -> tuple[float, int]:
    """Mean next-token NLL over all windows, exponentiated; also the number of scored tokens."""
    total_nll = 0.0
    total_tokens = 0
    for batch in tqdm(windows.split(batch_size), desc=label, unit="batch", leave=False):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:]
        total_nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
        total_tokens += targets.numel()
    return math.exp(total_nll / total_tokens), total_tokens


def evaluate_perplexity(model, tokenizer, spec: PerplexitySpec, device: torch.device) -> list[PerplexityResult]:
    """Perplexity of ``model`` (moved to ``device``; a dispatched model stays where its device map
    put it, accelerate's hooks bring each part to its execution device) on each dataset."""
    if not is_dispatched(model):
        model.to(device)
    results = []
    for name in spec.datasets:
        start = time.perf_counter()
        windows = windows_of(evaluation_stream(name, tokenizer), spec.seqlen, spec.max_windows)
        value, tokens = perplexity(model, windows, device, spec.batch_size, label=f"ppl {name}")
        results.append(PerplexityResult(name, value, windows.shape[0], tokens, time.perf_counter() - start))
    return results
