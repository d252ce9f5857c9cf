"""What unstructured sparsity buys on a CPU: dense ``F.linear`` vs CSR sparse x dense matmul.

For every distinct linear shape of a model's block, the weight is pruned by magnitude at each
sparsity (50/70/90 % by default), stored as ``torch.sparse_csr``, and ``W_csr @ x.T`` is timed
against the dense ``x @ W.T`` at a few token counts (medians of repeats after warm-up). The seeds'
claim this checks: unstructured sparsity gives little or no speedup at moderate sparsity, because
CSR pays index loads and irregular access for every kept weight.

CLI on random weights of a config's shapes:
``python -m prunelab.bench.cpu_sparse --model smollm2_135m --tokens 1 128``.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from prunelab import checks, files
from prunelab.bench import engines
from prunelab.bench.roofline import LinearShape, ModelShape, format_table, load_model_shape
from prunelab.bench.timing import time_interleaved
from prunelab.models import DecoderAdapter
from prunelab.patterns import Unstructured

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CsrResult:
    """Dense vs CSR time of one weight shape at one sparsity and token count (``count`` layers of
    the block share the shape)."""

    layers: str
    count: int
    in_features: int
    out_features: int
    tokens: int
    sparsity: float
    dense_ms: float
    csr_ms: float
    threads: int
    clock: str

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.csr_ms

    def row(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


def distinct_shapes(shapes: list[LinearShape]) -> list[tuple[str, int, LinearShape]]:
    """Shapes that differ, with the names of the layers sharing each and how many they are."""
    groups: dict[tuple[int, int], list[LinearShape]] = {}
    for shape in shapes:
        groups.setdefault((shape.in_features, shape.out_features), []).append(shape)
    return [("+".join(s.name.split(".")[-1] for s in same), len(same), same[0]) for same in groups.values()]


def magnitude_prune(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``weight`` with the ``int(in * sparsity)`` smallest magnitudes of every row set to zero."""
    return weight * Unstructured().mask(weight.abs(), sparsity, group="row")


@torch.no_grad()
def benchmark_csr(weights: dict[str, torch.Tensor] | None, shapes: list[LinearShape], sparsities: list[float],
                  tokens: list[int], warmup: int = 2, repeats: int = 9, min_sample_ms: float = 2.0,
                  threads: int | None = None, clock: str = "cpu", seed: int = 0) -> list[CsrResult]:
    """Time dense vs CSR for every distinct shape; ``weights`` (by layer name) or random normal ones.
    ``threads``: torch intra-op threads during the benchmark (``None`` keeps the current setting);
    ``clock``: ``cpu`` (CPU time of the process: the work done, robust on a shared machine; with one
    thread it equals the latency of an idle machine) or ``wall``."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _benchmark_csr(weights, shapes, sparsities, tokens, warmup, repeats, min_sample_ms, clock, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _benchmark_csr(weights, shapes, sparsities, tokens, warmup, repeats, min_sample_ms, clock, seed) -> list[CsrResult]:
    generator = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    results = []
    for names, count, shape in distinct_shapes(shapes):
        if weights is not None and shape.name in weights:
            dense = weights[shape.name].detach().to(cpu, torch.float32).contiguous()
        else:
            dense = torch.randn(shape.out_features, shape.in_features, generator=generator)
        for n_tokens in tokens:
            x = torch.randn(n_tokens, shape.in_features, generator=generator)
            x_t = x.t().contiguous()
            for sparsity in sparsities:
                pruned = magnitude_prune(dense, sparsity)
                with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
                    warnings.simplefilter("ignore", UserWarning)
                    csr = pruned.to_sparse_csr()
                expected = F.linear(x, pruned)
                got = torch.sparse.mm(csr, x_t).t()
                if not torch.allclose(got, expected, rtol=1e-4, atol=1e-3):
                    raise RuntimeError(f"CSR matmul disagrees with dense for {names} at sparsity {sparsity}")
                timings = time_interleaved({"dense": lambda: F.linear(x, pruned),
                                            "csr": lambda: torch.sparse.mm(csr, x_t)},
                                           cpu, warmup, repeats, min_sample_ms, clock)
                results.append(CsrResult(names, count, shape.in_features, shape.out_features, n_tokens,
                                         float(sparsity), timings["dense"].median_ms, timings["csr"].median_ms,
                                         torch.get_num_threads(), clock))
    return results


def block_speedups(results: list[CsrResult]) -> dict[tuple[float, int], float]:
    """Per (sparsity, tokens): one block's dense time over its CSR time, all its linear layers counted."""
    totals: dict[tuple[float, int], list[float]] = {}
    for r in results:
        dense_csr = totals.setdefault((r.sparsity, r.tokens), [0.0, 0.0])
        dense_csr[0] += r.count * r.dense_ms
        dense_csr[1] += r.count * r.csr_ms
    return {key: dense / csr for key, (dense, csr) in totals.items()}


def metrics(results: list[CsrResult]) -> dict:
    found: dict = {"bench/cpu_threads": results[0].threads if results else torch.get_num_threads()}
    for (sparsity, n_tokens), speedup in block_speedups(results).items():
        found[f"bench/cpu_csr_speedup_s{round(sparsity * 100)}_t{n_tokens}"] = speedup
    found["bench/cpu_csr"] = [r.row() for r in results]
    return found


def write_csv(results: list[CsrResult], path: Path) -> None:
    files.write_csv(path, [r.row() for r in results])


def table(results: list[CsrResult]) -> str:
    return format_table([r.row() for r in results])


class CpuEngine(engines.Engine):
    """``engine=cpu``: dense vs CSR on the model's block-0 linear shapes (its own weights,
    magnitude-pruned at each sparsity), plus the roofline prediction of 2:4 on a GPU."""

    name = "cpu"

    def __init__(self, sparsities=(0.5, 0.7, 0.9), tokens=(1, 128), warmup: int = 2, repeats: int = 9,
                 min_sample_ms: float = 2.0, threads: int | None = 1, clock: str = "cpu",
                 roofline_gpu: str = "H100") -> None:
        super().__init__(warmup=warmup, repeats=repeats, roofline_gpu=roofline_gpu)
        if isinstance(sparsities, (str, bytes)) or not sparsities:
            raise engines.EngineError(f"sparsities={sparsities!r} must list at least one sparsity in (0, 1), e.g. [0.5, 0.9]")
        self.sparsities = tuple(checks.number(v, f"sparsities[{i}]", 0, 1, low_open=True, high_open=True)
                                for i, v in enumerate(sparsities))
        self.tokens = checks.positive_ints(tokens, "tokens")
        self.min_sample_ms = engines.sample_ms(min_sample_ms)
        self.threads = None if threads is None else checks.positive_int(threads, "threads")
        self.clock = checks.choice(clock, "clock", ("cpu", "wall"))

    def context_problem(self, context: int) -> str | None:
        """The rows of ``x`` stand for the tokens of one forward: no more than the model's context."""
        if max(self.tokens) > context:
            return (f"engine.tokens={list(self.tokens)} multiplies {max(self.tokens)} token rows, beyond the model's "
                    f"context of {context}; allowed: at most {context}")
        return None

    def run(self, model, tokenizer, shape, gpu, bench_dir: Path, into: dict) -> None:
        adapter = DecoderAdapter(model)
        weights = {n: layer.weight for n, layer in adapter.linear_layers(adapter.blocks[0]).items()}
        results = benchmark_csr(weights, shape.linear_shapes(), list(self.sparsities), list(self.tokens),
                                self.warmup, self.repeats, self.min_sample_ms, self.threads, self.clock)
        write_csv(results, bench_dir / "cpu_csr.csv")
        into.update(engines.versions())
        into.update(metrics(results))
        log.info("CPU dense vs CSR (block 0 shapes, medians):\n%s", table(results))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m prunelab.bench.cpu_sparse", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model name (its block's shapes)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--min-sample-ms", type=float, default=2.0, help="calls per sample fill at least this")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own default)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: CPU time of the process (robust on a shared machine); wall: elapsed time")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    shape: ModelShape = load_model_shape(args.model)
    results = benchmark_csr(None, shape.linear_shapes(), args.sparsities, args.tokens, args.warmup, args.repeats,
                            args.min_sample_ms, args.threads or None, args.clock)
    lines = [f"# CPU: dense vs CSR, {args.model} block shapes (random weights), {results[0].threads} threads, "
             f"{args.clock} clock, median of {args.repeats} interleaved samples after {args.warmup} warm-up", "", table(results), "",
             "block (all linear layers) dense/CSR:"]
    lines += [f"  sparsity {s:.0%}, {t} tokens: {v:.2f}x" for (s, t), v in block_speedups(results).items()]
    text = "\n".join(lines)
    print(text)
    if args.csv is not None:
        write_csv(results, args.csv)
    return text


if __name__ == "__main__":
    main()
