"""End-to-end speed of a causal LM: prefill latency and decode tokens/s with a manual KV-cache loop.

Prefill: one forward over ``[batch, tokens]`` random token ids (logits for every token, as a plain
Hugging Face forward computes them). Decode: a ``context``-token prompt fills the KV cache (not
timed), then ``steps`` greedy single-token steps are timed; tokens/s = ``batch * steps / time``.
CUDA events on a GPU, ``perf_counter`` on the CPU; warm-up, then the median of repeats. The same
functions time the dense and the 2:4 model, so the ratio compares like with like.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from prunelab.bench.timing import (
    Stopwatch,
    Timing,
    cuda_graph,
    synchronize,
    time_call,
    time_interleaved,
)


def random_ids(batch: int, tokens: int, vocab: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, tokens), generator=generator).to(device)


@torch.no_grad()
def prefill_latency(model, tokens: int, batch: int, vocab: int, device: torch.device, warmup: int = 3,
                    repeats: int = 10) -> Timing:
    """Milliseconds of one forward over ``batch`` prompts of ``tokens`` tokens (no KV cache kept)."""
    ids = random_ids(batch, tokens, vocab, device)
    return time_call(lambda: model(input_ids=ids, use_cache=False), device, warmup, repeats)


@torch.no_grad()
def prefill_graph_latency(model, tokens: int, vocab: int, device: torch.device, warmup: int = 3,
                          repeats: int = 10) -> Timing:
    """:func:`prefill_latency` of one prompt as a CUDA-graph replay: the GPU's time for the forward
    without the host-side work of eager PyTorch (which bounds a 7B eager forward at ~20 ms on an
    H200 whatever its size). Raises where the forward cannot be captured."""
    ids = random_ids(1, tokens, vocab, device)
    replay = cuda_graph(lambda: model(input_ids=ids, use_cache=False), device, warmup)
    return time_call(replay, device, warmup, repeats)


def graphed_prefill(model, prefill_tokens: list[int], vocab: int, device: torch.device, warmup: int,
                    repeats: int) -> tuple[dict[int, Timing], str | None]:
    """Graph-replay prefill times by prompt length, and why capture failed (then the times are empty)."""
    try:
        return {n: prefill_graph_latency(model, n, vocab, device, warmup, repeats) for n in prefill_tokens}, None
    except RuntimeError as error:
        torch.cuda.synchronize(device)
        return {}, f"{type(error).__name__}: {error}"[:300]


def compare_graphed(dense: dict[int, Timing], sparse: dict[int, Timing], label: str = "2to4") -> dict:
    """``bench/prefill_graph_*``: graph-replay prefill of both states and the speedups."""
    found: dict = {}
    for n, timing in dense.items():
        if n in sparse:
            found[f"bench/prefill_graph_ms_dense_{n}"] = timing.median_ms
            found[f"bench/prefill_graph_ms_{label}_{n}"] = sparse[n].median_ms
            found[f"bench/prefill_graph_speedup_{n}"] = timing.median_ms / sparse[n].median_ms
    return found


@dataclass(frozen=True)
class DecodeTiming:
    batch: int
    context: int
    steps: int
    loop: Timing

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.steps / (self.loop.median_ms / 1e3)


def prefill_cache(model, prompt: torch.Tensor):
    """Run the prompt once; the KV cache and the greedy next token of every sequence."""
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    return out.past_key_values, out.logits[:, -1:].argmax(-1)


def decode_steps(model, cache, next_ids: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` greedy single-token forwards on the KV cache; the tokens fed in, ``[batch, steps]``."""
    fed = []
    for _ in range(steps):
        fed.append(next_ids)
        out = model(input_ids=next_ids, past_key_values=cache, use_cache=True)
        cache, next_ids = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return torch.cat(fed, dim=1)


@torch.no_grad()
def decode_throughput(model, batch: int, context: int, steps: int, vocab: int, device: torch.device,
                      warmup: int = 1, repeats: int = 5) -> DecodeTiming:
    """Greedy decode of ``steps`` tokens per sequence after a ``context``-token prompt; each repeat
    starts from a fresh cache so every timed loop covers the same context lengths."""
    if steps < 1 or context < 1:
        raise ValueError(f"decode needs steps >= 1 and context >= 1 (got steps={steps}, context={context})")
    prompt = random_ids(batch, context, vocab, device, seed=1)
    watch = Stopwatch(device)
    samples = []
    for repeat in range(warmup + repeats):
        cache, next_ids = prefill_cache(model, prompt)
        synchronize(device)
        watch.start()
        decode_steps(model, cache, next_ids, steps)
        elapsed = watch.stop()
        if repeat >= warmup:
            samples.append(elapsed)
        del cache
    return DecodeTiming(batch, context, steps, Timing(statistics.median(samples), tuple(samples)))


@dataclass
class EndToEnd:
    """Prefill milliseconds by prompt length and decode timings by batch size, of one model state."""

    prefill: dict[int, Timing]
    decode: dict[int, DecodeTiming]


def measure(model, prefill_tokens: list[int], decode_batches: list[int], decode_context: int, decode_steps: int,
            vocab: int, device: torch.device, warmup: int, repeats: int) -> EndToEnd:
    model.eval()
    prefill = {n: prefill_latency(model, n, 1, vocab, device, warmup, repeats) for n in prefill_tokens}
    decode = {b: decode_throughput(model, b, decode_context, decode_steps, vocab, device,
                                   max(1, warmup // 2), max(1, repeats // 2)) for b in decode_batches}
    return EndToEnd(prefill, decode)


@torch.no_grad()
def measure_interleaved(models: dict, prefill_tokens: list[int], decode_batches: list[int], decode_context: int,
                        steps: int, vocab: int, device: torch.device, warmup: int, repeats: int,
                        min_sample_ms: float = 0.0, clock: str = "wall") -> dict[str, EndToEnd]:
    """:func:`measure` for several models at once, their samples alternating (a, b, a, b, ...) so that
    a change of machine load hits each alike: the same prompts, threads and warm-up for all.
    ``clock`` as :class:`~prunelab.bench.timing.Stopwatch` (CPU only; CUDA events on a GPU)."""
    for model in models.values():
        model.eval()
    prefill: dict[str, dict[int, Timing]] = {name: {} for name in models}
    for n in prefill_tokens:
        ids = random_ids(1, n, vocab, device)
        calls = {name: (lambda model=model: model(input_ids=ids, use_cache=False)) for name, model in models.items()}
        for name, timing in time_interleaved(calls, device, warmup, repeats, min_sample_ms, clock).items():
            prefill[name][n] = timing
    decode: dict[str, dict[int, DecodeTiming]] = {name: {} for name in models}
    watch = Stopwatch(device, clock)
    for batch in decode_batches:
        prompt = random_ids(batch, decode_context, vocab, device, seed=1)
        samples: dict[str, list[float]] = {name: [] for name in models}
        for repeat in range(max(1, warmup // 2) + repeats):
            for name, model in models.items():
                cache, next_ids = prefill_cache(model, prompt)
                synchronize(device)
                watch.start()
                decode_steps(model, cache, next_ids, steps)
                elapsed = watch.stop()
                if repeat >= max(1, warmup // 2):
                    samples[name].append(elapsed)
                del cache
        for name, values in samples.items():
            decode[name][batch] = DecodeTiming(batch, decode_context, steps,
                                               Timing(statistics.median(values), tuple(values)))
    return {name: EndToEnd(prefill[name], decode[name]) for name in models}


def compare(dense: EndToEnd, sparse: EndToEnd, label: str = "2to4") -> dict:
    """``bench/`` metrics: times of both states and the speedups (dense time / sparse time)."""
    found: dict = {}
    for n, timing in dense.prefill.items():
        found[f"bench/prefill_ms_dense_{n}"] = timing.median_ms
        found[f"bench/prefill_ms_{label}_{n}"] = sparse.prefill[n].median_ms
        found[f"bench/prefill_speedup_{n}"] = timing.median_ms / sparse.prefill[n].median_ms
    for b, timing in dense.decode.items():
        found[f"bench/decode_tok_s_dense_b{b}"] = timing.tokens_per_s
        found[f"bench/decode_tok_s_{label}_b{b}"] = sparse.decode[b].tokens_per_s
        found[f"bench/decode_speedup_b{b}"] = sparse.decode[b].tokens_per_s / timing.tokens_per_s
    return found


@torch.no_grad()
def reference_logits(model, vocab: int, device: torch.device, tokens: int = 64, batch: int = 2) -> torch.Tensor:
    """Logits (float32) on a fixed random prompt: compared between the dense and the 2:4 path."""
    ids = random_ids(batch, tokens, vocab, device, seed=2)
    return model(input_ids=ids, use_cache=False).logits.float()


def compare_logits(dense: torch.Tensor, sparse: torch.Tensor, tolerance: float) -> dict:
    """How far the sparse path's logits are from the masked dense model's.

    ``rel_max_diff`` = max |sparse - dense| / max |dense|; they match when it is <= ``tolerance``
    (fp16 kernels sum in different orders, so exact equality is not expected)."""
    difference = (sparse - dense).abs()
    scale = float(dense.abs().max()) or 1.0
    rel = float(difference.max()) / scale
    return {
        "bench/logits_max_abs_diff": float(difference.max()),
        "bench/logits_mean_abs_diff": float(difference.mean()),
        "bench/logits_rel_max_diff": rel,
        "bench/logits_top1_agreement": float((sparse.argmax(-1) == dense.argmax(-1)).float().mean()),
        "bench/logits_match": bool(rel <= tolerance and torch.isfinite(sparse).all()),
    }
