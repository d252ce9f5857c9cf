"""``engine=torch_sparse``: the pruned model itself, dense vs 2:4 PyTorch kernels, on one GPU.

1. GEMM: every distinct linear shape of block 0 at ``gemm_tokens`` rows, dense vs 2:4.
2. Dense model: prefill latency and decode tokens/s, and reference logits.
3. 2:4 model (weights swapped for ``SparseSemiStructuredTensor``): the logits check against the
   masked dense model, then the same prefill/decode measurements.
The dense weights, device and dtype are restored afterwards, so later stages see the same model.

Eager Hugging Face decode at batch 1 is bound by kernel launches more than by HBM traffic, so its
end-to-end ratio understates the kernels' gain; the GEMM rows at 1, 8 and 32 tokens are the
kernel-level decode ratio to set beside the 16/9 memory bound (``bench/roofline_gemm_bound_t1``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from prunelab import checks
from prunelab.bench import e2e, engines, gemm
from prunelab.bench.roofline import GPU, ModelShape
from prunelab.models import DecoderAdapter

log = logging.getLogger(__name__)


def two_four_weights(model) -> dict:
    """For each linear layer name of a block, its weight in the first block where it is 2:4
    (``target.blocks``/``target.modules`` may have left some layers dense)."""
    adapter = DecoderAdapter(model)
    found: dict = {}
    for block in adapter.blocks:
        for name, layer in adapter.linear_layers(block).items():
            if name not in found and engines.is_two_four(layer.weight.data):
                found[name] = layer.weight
    return found


class TorchSparseEngine(engines.SparseEngine):
    """``engine=torch_sparse``: see the module docstring."""

    name = "torch_sparse"
    runs_model = True

    def __init__(self, backend: str = "cusparselt", dtype: str = "float16",
                 gemm_tokens=(1, 16, 64, 256, 1024, 2048, 4096), prefill_tokens=(128, 512, 2048),
                 decode_batches=(1, 8, 32), decode_context: int = 128, decode_steps: int = 64, warmup: int = 5,
                 repeats: int = 20, min_sample_ms: float = 1.0, logits_tolerance: float = 0.05,
                 fail_on_mismatch: bool = True, roofline_gpu: str = "auto", cuda_graphs: bool = True) -> None:
        super().__init__(prefill_tokens, decode_batches, decode_context, warmup, repeats, roofline_gpu)
        self.backend = checks.choice(backend, "backend", engines.BACKENDS)
        self.dtype = checks.choice(dtype, "dtype", engines.SPARSE_DTYPES)
        self.gemm_tokens = checks.positive_ints(gemm_tokens, "gemm_tokens")
        self.decode_steps = checks.positive_int(decode_steps, "decode_steps")
        self.min_sample_ms = engines.sample_ms(min_sample_ms)
        self.logits_tolerance = checks.number(logits_tolerance, "logits_tolerance", low=0)
        self.fail_on_mismatch = checks.boolean(fail_on_mismatch, "fail_on_mismatch")
        self.cuda_graphs = checks.boolean(cuda_graphs, "cuda_graphs")

    def run(self, model, tokenizer, shape, gpu, bench_dir: Path, into: dict) -> None:
        run(self, model, shape, gpu, bench_dir, into)


def run(engine_cfg, model, shape: ModelShape, gpu: GPU | None, bench_dir: Path, metrics: dict) -> None:
    """Fill ``metrics`` as measurements come in (a failure keeps what was measured)."""
    backend = str(engine_cfg.backend)
    engines.require_sparse_kernels(backend)
    device = torch.device("cuda")
    dtype = engines.SPARSE_DTYPES[str(engine_cfg.dtype)]
    first = next(model.parameters())
    home_device, home_dtype = first.device, first.dtype
    vocab = int(model.config.vocab_size)
    warmup, repeats = int(engine_cfg.warmup), int(engine_cfg.repeats)
    graphs = bool(getattr(engine_cfg, "cuda_graphs", True))
    metrics.update({**engines.versions(), "bench/backend": backend, "bench/dtype": str(engine_cfg.dtype)})
    model.to(device=device, dtype=dtype)
    try:
        weights = two_four_weights(model)
        shapes = [linear for linear in shape.linear_shapes() if linear.name in weights]
        if not shapes:
            raise engines.EngineError("no linear layer of the model is 2:4 sparse; prune with pattern=2:4 first")
        results = gemm.benchmark_gemm(weights, shapes, list(engine_cfg.gemm_tokens), device, dtype,
                                      backend, warmup, repeats, float(engine_cfg.min_sample_ms), graphs)
        gemm.write_csv(results, bench_dir / "gemm.csv")
        metrics.update(gemm.metrics(results, shape, gpu))
        log.info("GEMM dense vs 2:4 per block: %s", {t: round(s, 3) for t, s in gemm.block_speedups(results).items()})

        sizes = dict(prefill_tokens=list(engine_cfg.prefill_tokens), decode_batches=list(engine_cfg.decode_batches),
                     decode_context=int(engine_cfg.decode_context), decode_steps=int(engine_cfg.decode_steps),
                     vocab=vocab, device=device, warmup=warmup, repeats=repeats)
        dense = e2e.measure(model, **sizes)
        dense_graph, graph_error = e2e.graphed_prefill(model, sizes["prefill_tokens"], vocab, device, warmup, repeats) \
            if graphs else ({}, None)
        reference = e2e.reference_logits(model, vocab, device)
        with engines.semi_structured_weights(model, backend) as swap:
            metrics.update(swap.metrics())
            check = e2e.compare_logits(reference, e2e.reference_logits(model, vocab, device),
                                       float(engine_cfg.logits_tolerance))
            metrics.update(check)
            log.info("2:4 logits vs masked dense: rel max diff %.2e, top-1 agreement %.3f (%d layers 2:4, %d kept dense)",
                     check["bench/logits_rel_max_diff"], check["bench/logits_top1_agreement"],
                     len(swap.converted), len(swap.skipped))
            sparse = e2e.measure(model, **sizes)
            sparse_graph, sparse_error = e2e.graphed_prefill(model, sizes["prefill_tokens"], vocab, device, warmup, repeats) \
                if graphs and dense_graph else ({}, None)
        metrics.update(e2e.compare(dense, sparse))
        metrics.update(e2e.compare_graphed(dense_graph, sparse_graph))
        if graph_error or sparse_error:  # said, never filled in: the eager numbers stand alone
            metrics["bench/prefill_graph_error"] = graph_error or sparse_error
            log.warning("prefill as a CUDA graph could not be captured: %s", metrics["bench/prefill_graph_error"])
    finally:
        model.to(device=home_device, dtype=home_dtype)
        torch.cuda.empty_cache()
    if not metrics["bench/logits_match"] and bool(engine_cfg.fail_on_mismatch):
        raise engines.EngineError(
            f"the 2:4 model's logits differ from the masked dense model's: rel max diff "
            f"{metrics['bench/logits_rel_max_diff']:.3g} > engine.logits_tolerance={engine_cfg.logits_tolerance} "
            "(speed numbers are recorded in metrics.json)"
        )
