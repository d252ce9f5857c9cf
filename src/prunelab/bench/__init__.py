"""Speed: the analytic roofline (``roofline``), dense vs CSR on the CPU (``cpu_sparse``), dense vs 2:4
GEMMs and end-to-end prefill/decode on a GPU (``gemm``, ``e2e``, ``torch_sparse``), TensorRT-LLM
engines (``trtllm``), and the pipeline's benchmark stage (``stage.bench_stage``)."""

from __future__ import annotations


def bench_stage(engine_cfg, model, tokenizer, device, output_dir, into=None):
    """See :func:`prunelab.bench.stage.bench_stage` (imported lazily: torch-heavy)."""
    from prunelab.bench.stage import bench_stage as _bench_stage

    return _bench_stage(engine_cfg, model, tokenizer, device, output_dir, into=into)
