"""Per-linear-layer GEMM timing on a GPU: dense ``F.linear`` vs the 2:4 semi-structured kernel.

For each distinct weight shape of a decoder block (the model's real 2:4-pruned weights of block 0)
and each token count, ``x @ W.T`` is timed with CUDA events after warm-up, dense and with ``W`` as
a ``SparseSemiStructuredTensor`` (cuSPARSELt by default), medians of interleaved repeats.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from prunelab.bench import engines
from prunelab.bench.cpu_sparse import distinct_shapes
from prunelab.bench.roofline import GPU, LinearShape, ModelShape, gemm_bound
from prunelab.bench.timing import time_interleaved


@dataclass(frozen=True)
class GemmResult:
    layers: str
    count: int
    in_features: int
    out_features: int
    tokens: int
    dense_ms: float
    sparse_ms: float
    max_abs_diff: float

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms

    @property
    def tflops_dense(self) -> float:
        return 2 * self.tokens * self.in_features * self.out_features / (self.dense_ms * 1e-3) / 1e12

    def row(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "tflops_dense": self.tflops_dense}


@torch.no_grad()
def benchmark_gemm(weights: dict[str, torch.Tensor], shapes: list[LinearShape], tokens: list[int],
                   device: torch.device, dtype: torch.dtype = torch.float16, backend: str = "cusparselt",
                   warmup: int = 5, repeats: int = 20, min_sample_ms: float = 1.0) -> list[GemmResult]:
    """Dense vs 2:4 time of every distinct shape at every token count (weights must be 2:4)."""
    engines.require_sparse_kernels(backend)
    results = []
    with engines.semi_structured_backend(backend):
        for names, count, shape in distinct_shapes(shapes):
            weight = weights[shape.name].detach().to(device, dtype).contiguous()
            if not engines.is_two_four(weight):
                raise engines.EngineError(f"{shape.name} of block 0 is not 2:4 sparse; prune with pattern=2:4 first")
            sparse = torch.sparse.to_sparse_semi_structured(weight)
            for n_tokens in tokens:
                x = torch.randn(n_tokens, shape.in_features, device=device, dtype=dtype)
                diff = float((F.linear(x, sparse) - F.linear(x, weight)).abs().max())
                timings = time_interleaved({"dense": lambda: F.linear(x, weight),
                                            "sparse": lambda compressed=sparse: F.linear(x, compressed)},
                                           device, warmup, repeats, min_sample_ms)
                results.append(GemmResult(names, count, shape.in_features, shape.out_features, n_tokens,
                                          timings["dense"].median_ms, timings["sparse"].median_ms, diff))
            del sparse
    return results


def block_speedups(results: list[GemmResult]) -> dict[int, float]:
    """Per token count: one block's linear-layer time dense over 2:4, every layer counted."""
    totals: dict[int, list[float]] = {}
    for r in results:
        pair = totals.setdefault(r.tokens, [0.0, 0.0])
        pair[0] += r.count * r.dense_ms
        pair[1] += r.count * r.sparse_ms
    return {n: dense / sparse for n, (dense, sparse) in totals.items()}


def metrics(results: list[GemmResult], shape: ModelShape, gpu: GPU | None) -> dict:
    found: dict = {}
    for n_tokens, speedup in block_speedups(results).items():
        found[f"bench/gemm_speedup_t{n_tokens}"] = speedup
        if gpu is not None:
            found[f"bench/roofline_gemm_bound_t{n_tokens}"] = gemm_bound(shape, n_tokens, gpu)
    found["bench/gemm"] = [r.row() for r in results]
    return found


def write_csv(results: list[GemmResult], path: Path) -> None:
    rows = [r.row() for r in results]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
