"""Perplexity with the papers' protocol: non-overlapping ``seqlen`` windows, tail dropped,
``ppl = exp(mean token NLL)`` over every predicted token of every window.

Each window's mean NLL is kept too (:attr:`PerplexityResult.window_nll`): every window predicts
the same number of tokens, so log-perplexity is the mean of the window means, and their spread
gives its standard error (:func:`log_ppl_standard_error`) and paired comparisons of two models on
the same windows (:mod:`prunelab.study.noise`). The perplexity itself is summed as before."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

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
    window_nll: list[float] = field(default_factory=list)  # mean next-token NLL of each window, in order

    @property
    def se_log(self) -> float:
        return log_ppl_standard_error(self.window_nll)


def log_ppl_standard_error(window_nll: list[float]) -> float:
    """Standard error of log-perplexity (the mean of equal-sized windows' mean NLL): sample
    standard deviation of the window means over sqrt(windows); NaN with fewer than two windows."""
    n = len(window_nll)
    if n < 2:
        return math.nan
    mean = sum(window_nll) / n
    return math.sqrt(sum((x - mean) ** 2 for x in window_nll) / (n - 1) / n)


def windows_of(stream: torch.Tensor, seqlen: int, max_windows: int | None) -> torch.Tensor:
    """``[n, seqlen]`` non-overlapping windows of a ``[1, tokens]`` stream; the tail is dropped."""
    count = stream.shape[1] // seqlen
    if max_windows is not None:
        count = min(count, int(max_windows))
    if count == 0:
        raise ValueError(f"evaluation text has {stream.shape[1]} tokens, fewer than one window of {seqlen}")
    return stream[0, : count * seqlen].reshape(count, seqlen)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, device: torch.device, batch_size: int, label: str = "ppl",
               window_nll: list[float] | None = None) -> tuple[float, int]:
    """Mean next-token NLL over all windows, exponentiated; also the number of scored tokens.
    ``window_nll``, when given, receives each window's mean NLL (computed apart from the total,
    which stays summed exactly as it always was)."""
    total_nll = 0.0
    total_tokens = 0
    for batch in tqdm(windows.split(batch_size), desc=label, unit="batch", leave=False):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:].reshape(-1)
        # F.cross_entropy is log_softmax then nll_loss: the log-softmax over the vocabulary (~0.12 s
        # a batch of 4 x 255 tokens on one CPU core) is taken once for the total and the windows'
        # means, with the bits of the two cross_entropy calls it replaces (tests/test_evaluate.py)
        log_probs = F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
        total_nll += float(F.nll_loss(log_probs, targets, reduction="sum"))
        total_tokens += targets.numel()
        if window_nll is not None:
            per_token = F.nll_loss(log_probs, targets, reduction="none")
            window_nll.extend(per_token.view(batch.shape[0], -1).double().mean(dim=1).tolist())
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
        per_window: list[float] = []
        value, tokens = perplexity(model, windows, device, spec.batch_size, label=f"ppl {name}", window_nll=per_window)
        results.append(PerplexityResult(name, value, windows.shape[0], tokens, time.perf_counter() - start, per_window))
    return results
