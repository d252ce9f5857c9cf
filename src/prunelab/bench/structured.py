"""``engine=structured``: the dense and the pruned model, side by side, in one process, with the
stock dense kernels; ``engine=roofline``: the 2:4 roofline prediction alone.

A structured method leaves a smaller *dense* model, so its speedup needs no special kernel. This
engine reloads the unpruned model from the run's model source (no copy is held during pruning),
then times both on the same device with the same threads, after warm-up, their samples
interleaved (dense, pruned, dense, ...), medians of repeats (on a CPU by default one thread and
the process's CPU time, which a shared, oversubscribed machine does not inflate; ``clock=wall``
for elapsed time): prefill latency per prompt length,
decode tokens/s per batch with the KV cache, parameter bytes and peak memory of one prefill.
Beside every measured ratio: the ideal ratio from FLOPs (prefill) and bytes moved (decode) of
the two shapes (:func:`prunelab.bench.roofline.structured_ideal`; embeddings, attention and
``lm_head`` count), and ``efficiency = measured / ideal``. For an unstructured or N:M model the
shapes are unchanged, so the measured ratio is about 1 (zeros are not skipped by dense kernels).
The same code runs on CUDA (CUDA events, ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch

from prunelab import checks
from prunelab.bench import e2e, engines
from prunelab.bench.roofline import ModelShape, Phase, format_table, structured_ideal
from prunelab.files import write_csv

log = logging.getLogger(__name__)


def parameter_bytes(model) -> int:
    """Bytes of every parameter and buffer (tied weights once)."""
    seen, total = set(), 0
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


@torch.no_grad()
def peak_memory_bytes(model, tokens: int, vocab: int, device: torch.device) -> float:
    """Peak memory of one prefill of ``tokens`` tokens: on CUDA ``max_memory_allocated`` (weights +
    activations); on Linux CPUs the weights plus the growth of the resident high-water mark during
    the forward (freed heap returned first with ``malloc_trim``, the mark reset via ``clear_refs``).
    NaN where neither can be read."""
    ids = e2e.random_ids(1, tokens, vocab, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        model(input_ids=ids, use_cache=False)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device))
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _rss_bytes()
        model(input_ids=ids, use_cache=False)
        return float(parameter_bytes(model) + max(0, _high_water_bytes() - before))
    except OSError:
        return float("nan")


class StructuredEngine(engines.Engine):
    """``engine=structured``: see the module docstring."""

    name = "structured"
    runs_model = True
    needs_dense = True

    def __init__(self, prefill_tokens=(128, 512), decode_batches=(1, 8), decode_context: int = 128,
                 decode_steps: int = 16, warmup: int = 1, repeats: int = 5, min_sample_ms: float = 0.0,
                 threads: int | None = 1, clock: str = "cpu", device: str = "auto", memory_tokens: int = 512,
                 roofline_gpu: str = "H100") -> None:
        super().__init__(prefill_tokens, decode_batches, decode_context, warmup, repeats, roofline_gpu)
        self.decode_steps = checks.positive_int(decode_steps, "decode_steps")
        self.min_sample_ms = engines.sample_ms(min_sample_ms)
        self.threads = None if threads is None else checks.positive_int(threads, "threads")
        self.clock = checks.choice(clock, "clock", ("cpu", "wall"))
        self.device = checks.choice(device, "device", ("auto", "cpu", "cuda"))
        self.memory_tokens = checks.positive_int(memory_tokens, "memory_tokens")

    def check(self, pattern, method) -> None:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise engines.EngineError("engine.device=cuda but no CUDA GPU is visible; use engine.device=auto or cpu")

    def predict(self, shape, gpu, bench_dir: Path) -> dict:
        return {}  # the ideal ratios come with the measurement (they need the dense shape too)

    def run(self, model, tokenizer, shape, gpu, bench_dir: Path, into: dict,
            dense: Callable[[], torch.nn.Module] | None = None) -> None:
        if dense is None:
            raise engines.EngineError("engine=structured needs the unpruned model (the benchmark stage passes it)")
        device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                              "cpu" if self.device == "auto" else self.device)
        reference = dense()
        measure_pair({"dense": reference, "pruned": model}, self, device, bench_dir, into)
        del reference


def measure_pair(models: dict, settings: StructuredEngine, device: torch.device, bench_dir: Path, into: dict) -> list[dict]:
    """Time ``models['dense']`` and ``models['pruned']`` interleaved; fill ``into`` with ``bench/...``
    metrics and write ``bench_dir/structured.csv``; return the rows."""
    home = {name: next(model.parameters()).device for name, model in models.items()}
    previous_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        for model in models.values():
            model.to(device)
        vocab = int(models["dense"].config.vocab_size)
        into.update(engines.versions())
        into["bench/threads"] = torch.get_num_threads()
        into["bench/clock"] = "cuda events" if device.type == "cuda" else settings.clock
        into["bench/load_avg_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        results = e2e.measure_interleaved(models, list(settings.prefill_tokens), list(settings.decode_batches),
                                          settings.decode_context, settings.decode_steps, vocab, device,
                                          settings.warmup, settings.repeats, settings.min_sample_ms, settings.clock)
        into["bench/load_avg_1m_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        memory = {name: peak_memory_bytes(model, settings.memory_tokens, vocab, device) for name, model in models.items()}
        params = {name: parameter_bytes(model) for name, model in models.items()}
        shapes = {name: ModelShape.from_model(model) for name, model in models.items()}
    finally:
        torch.set_num_threads(previous_threads)
        for name, model in models.items():
            model.to(home[name])
    element = next(models["dense"].parameters()).element_size()
    rows = _rows(results, shapes, settings, element)
    for row in rows:
        key = row["key"]
        into[f"bench/{key}_dense"] = row["dense"]
        into[f"bench/{key}_pruned"] = row["pruned"]
        into[f"bench/{key.split('_', 1)[0]}_speedup_{key.split('_', 1)[1]}"] = row["speedup"]
        into[f"bench/{key.split('_', 1)[0]}_ideal_{key.split('_', 1)[1]}"] = row["ideal"]
        into[f"bench/{key.split('_', 1)[0]}_efficiency_{key.split('_', 1)[1]}"] = row["efficiency"]
    into.update({"bench/param_bytes_dense": params["dense"], "bench/param_bytes_pruned": params["pruned"],
                 "bench/param_bytes_ratio": params["dense"] / params["pruned"],
                 "bench/peak_memory_mb_dense": memory["dense"] / 2**20, "bench/peak_memory_mb_pruned": memory["pruned"] / 2**20,
                 "bench/peak_memory_tokens": settings.memory_tokens, "bench/repeats": settings.repeats,
                 "bench/warmup": settings.warmup, "bench/measured_on": str(device)})
    bad = [k for k, v in into.items() if k.startswith("bench/") and isinstance(v, float) and k.split("/")[1].startswith(
        ("prefill_", "decode_")) and not (math.isfinite(v) and v > 0)]
    if bad:
        raise engines.EngineError(f"the speed benchmark produced non-finite or non-positive numbers: {bad[:5]}")
    write_csv(bench_dir / "structured.csv", rows)
    log.info("dense vs pruned on %s (%d threads, medians of %d interleaved repeats; parameters %.1f -> %.1f MB):\n%s",
             device, into["bench/threads"], settings.repeats, params["dense"] / 2**20, params["pruned"] / 2**20,
             format_table([{k: v for k, v in r.items() if k != "key"} for r in rows]))
    return rows


def _rows(results: dict[str, e2e.EndToEnd], shapes: dict[str, ModelShape], settings: StructuredEngine,
          element: int) -> list[dict]:
    """One row per measurement: times of both models, measured and ideal speedup, efficiency."""
    rows = []
    dense, pruned = results["dense"], results["pruned"]
    for n in settings.prefill_tokens:
        ideal = structured_ideal(shapes["dense"], shapes["pruned"], Phase.prefill(n), element)
        speedup = dense.prefill[n].median_ms / pruned.prefill[n].median_ms
        rows.append({"key": f"prefill_{n}", "measurement": f"prefill {n} tok (ms)", "dense": dense.prefill[n].median_ms,
                     "pruned": pruned.prefill[n].median_ms, "speedup": speedup, **ideal, "efficiency": speedup / ideal["ideal"]})
    for b in settings.decode_batches:
        ideal = structured_ideal(shapes["dense"], shapes["pruned"], Phase.decode(b, settings.decode_context), element)
        speedup = pruned.decode[b].tokens_per_s / dense.decode[b].tokens_per_s
        rows.append({"key": f"decode_b{b}", "measurement": f"decode b{b} (tok/s)", "dense": dense.decode[b].tokens_per_s,
                     "pruned": pruned.decode[b].tokens_per_s, "speedup": speedup, **ideal,
                     "efficiency": speedup / ideal["ideal"]})
    return rows


class RooflineEngine(engines.Engine):
    """``engine=roofline``: no measurement, the analytic 2:4 prediction for ``roofline_gpu`` only
    (a study's 2:4 row on a machine without sparse tensor cores)."""

    name = "roofline"

    def __init__(self, prefill_tokens=(128, 512, 2048), decode_batches=(1, 8, 32), decode_context: int = 128,
                 roofline_gpu: str = "H100") -> None:
        super().__init__(prefill_tokens, decode_batches, decode_context, roofline_gpu=roofline_gpu)

    def run(self, model, tokenizer, shape, gpu, bench_dir: Path, into: dict) -> None:
        into["bench/measured_on"] = "nothing (roofline prediction only)"
