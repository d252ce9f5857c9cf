"""Timing with warm-up and medians of repeats: CUDA events on a GPU, ``perf_counter`` on the CPU."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: the median of ``samples`` (each the mean of ``inner`` calls)."""

    median_ms: float
    samples: tuple[float, ...]


CLOCKS = ("wall", "cpu")


class Stopwatch:
    """Elapsed milliseconds between ``start`` and ``stop``: CUDA events on a GPU (they time the
    stream, so host-side launch gaps count only when the GPU waits for them, which is what a user
    sees); on the CPU wall time (``clock="wall"``) or the CPU time of this process (``clock="cpu"``),
    which a shared, oversubscribed machine does not inflate when it deschedules the benchmark."""

    def __init__(self, device: torch.device | str, clock: str = "wall") -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock={clock!r} is not valid; allowed: {', '.join(CLOCKS)}")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._now = time.process_time if clock == "cpu" else time.perf_counter
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        if self.cuda:
            self._start.record()
        else:
            self._t0 = self._now()

    def stop(self) -> float:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            return float(self._start.elapsed_time(self._end))
        return (self._now() - self._t0) * 1e3


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | str, warmup: int = 3, repeats: int = 10,
              inner: int = 1) -> Timing:
    """Median milliseconds of ``fn()`` after ``warmup`` untimed calls; each sample averages ``inner``
    back-to-back calls (use > 1 for kernels of a few microseconds)."""
    if repeats < 1 or inner < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} and inner={inner} must be >= 1 and warmup={warmup} >= 0")
    for _ in range(warmup):
        fn()
    synchronize(device)
    watch = Stopwatch(device)
    samples = []
    for _ in range(repeats):
        watch.start()
        for _ in range(inner):
            fn()
        samples.append(watch.stop() / inner)
    return Timing(statistics.median(samples), tuple(samples))


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device | str, warmup: int = 3,
                     repeats: int = 10, min_sample_ms: float = 0.0, clock: str = "wall") -> dict[str, Timing]:
    """Like :func:`time_call` for several functions whose samples alternate (a, b, a, b, ...), so a
    change of machine load hits every one alike. Each sample repeats its call ``inner`` times, with
    ``inner`` chosen from the warm-up so that a sample lasts at least ``min_sample_ms``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    watch = Stopwatch(device, clock)
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        fn()  # first call: allocations, kernel selection
        synchronize(device)
        watch.start()
        for _ in range(max(warmup, 1)):
            fn()
        per_call = watch.stop() / max(warmup, 1)
        inner[name] = max(1, int(min_sample_ms / per_call) + 1) if min_sample_ms > 0 and per_call > 0 else 1
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            watch.start()
            for _ in range(inner[name]):
                fn()
            samples[name].append(watch.stop() / inner[name])
    return {name: Timing(statistics.median(values), tuple(values)) for name, values in samples.items()}


def cuda_graph(fn: Callable[[], object], device: torch.device | str, warmup: int = 3) -> Callable[[], None]:
    """``fn`` captured once into a CUDA graph; the returned callable replays it. Replay times the
    kernels alone: the host-side work of each eager call (Python, dispatch, launches and, for 2:4
    weights in torch 2.11, cuSPARSELt's per-call set-up of about 0.4 ms, measured on an H200) is
    left out. Raises on the CPU or where ``fn`` cannot be captured (host syncs, data-dependent shapes)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise RuntimeError(f"CUDA graphs need a CUDA device (got {device})")
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
        for _ in range(max(1, warmup)):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay
