"""Per-linear-layer GEMM timing on a GPU: dense ``F.linear`` vs the 2:4 semi-structured kernel.

For each distinct weight shape of a decoder block (the model's real 2:4-pruned weights of block 0)
and each token count, ``x @ W.T`` is timed with CUDA events after warm-up, dense and with ``W`` as
a ``SparseSemiStructuredTensor`` (cuSPARSELt by default), medians of interleaved repeats. With
``graphs`` both are also timed as CUDA-graph replays: the kernels alone, without the host-side work
of each eager call (in torch 2.11 a cuSPARSELt call spends about 0.4 ms setting up on the host,
which hides the kernel below ~8k tokens: measured on an H200, docs/gpu.md).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from prunelab import files
from prunelab.bench import engines
from prunelab.bench.cpu_sparse import distinct_shapes
from prunelab.bench.roofline import GPU, LinearShape, ModelShape, gemm_bound
from prunelab.bench.timing import cuda_graph, time_interleaved

log = logging.getLogger(__name__)


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
    dense_graph_ms: float | None = None  # CUDA-graph replay (kernels only); None where not captured
    sparse_graph_ms: float | None = None

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms

    @property
    def graph_speedup(self) -> float | None:
        if self.dense_graph_ms is None or self.sparse_graph_ms is None:
            return None
        return self.dense_graph_ms / self.sparse_graph_ms

    @property
    def tflops_dense(self) -> float:
        return 2 * self.tokens * self.in_features * self.out_features / (self.dense_ms * 1e-3) / 1e12

    def row(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "graph_speedup": self.graph_speedup, "tflops_dense": self.tflops_dense}


@torch.no_grad()
def benchmark_gemm(weights: dict[str, torch.Tensor], shapes: list[LinearShape], tokens: list[int],
                   device: torch.device, dtype: torch.dtype = torch.float16, backend: str = "cusparselt",
                   warmup: int = 5, repeats: int = 20, min_sample_ms: float = 1.0, graphs: bool = False) -> list[GemmResult]:
    """Dense vs 2:4 time of every distinct shape at every token count (weights must be 2:4); with
    ``graphs`` also as CUDA-graph replays (a shape that cannot be captured keeps ``None``)."""
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
                calls = {"dense": lambda: F.linear(x, weight), "sparse": lambda compressed=sparse: F.linear(x, compressed)}
                if graphs:
                    try:
                        calls.update({f"{name}_graph": cuda_graph(call, device) for name, call in list(calls.items())})
                    except RuntimeError as error:  # recorded as missing graph times, never as a number
                        log.warning("CUDA graph capture failed for %s at %d tokens: %s", names, n_tokens, error)
                timings = time_interleaved(calls, device, warmup, repeats, min_sample_ms)
                graph = {name: timings[name].median_ms if name in timings else None for name in ("dense_graph", "sparse_graph")}
                results.append(GemmResult(names, count, shape.in_features, shape.out_features, n_tokens,
                                          timings["dense"].median_ms, timings["sparse"].median_ms, diff,
                                          graph["dense_graph"], graph["sparse_graph"]))
            del sparse
    return results


def block_speedups(results: list[GemmResult], graph: bool = False) -> dict[int, float]:
    """Per token count: one block's linear-layer time dense over 2:4, every layer counted; with
    ``graph`` from the CUDA-graph replays (token counts where any shape has none are left out)."""
    totals: dict[int, list[float]] = {}
    missing: set[int] = set()
    for r in results:
        dense, sparse = (r.dense_graph_ms, r.sparse_graph_ms) if graph else (r.dense_ms, r.sparse_ms)
        if dense is None or sparse is None:
            missing.add(r.tokens)
            continue
        pair = totals.setdefault(r.tokens, [0.0, 0.0])
        pair[0] += r.count * dense
        pair[1] += r.count * sparse
    return {n: dense / sparse for n, (dense, sparse) in totals.items() if n not in missing}


def metrics(results: list[GemmResult], shape: ModelShape, gpu: GPU | None) -> dict:
    found: dict = {}
    for n_tokens, speedup in block_speedups(results).items():
        found[f"bench/gemm_speedup_t{n_tokens}"] = speedup
        if gpu is not None:
            found[f"bench/roofline_gemm_bound_t{n_tokens}"] = gemm_bound(shape, n_tokens, gpu)
    for n_tokens, speedup in block_speedups(results, graph=True).items():
        found[f"bench/gemm_graph_speedup_t{n_tokens}"] = speedup
    found["bench/gemm"] = [r.row() for r in results]
    return found


def write_csv(results: list[GemmResult], path: Path) -> None:
    files.write_csv(path, [r.row() for r in results])
