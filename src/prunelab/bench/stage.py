"""The benchmark stage: the roofline prediction for the model, then the chosen engine's measurements,
printed side by side and recorded as ``bench/...`` metrics (and CSVs under ``<run dir>/bench``)."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import torch

from prunelab.bench import cpu_sparse, engines, roofline
from prunelab.bench.roofline import GPU, ModelShape, Phase

log = logging.getLogger(__name__)


def roofline_gpu(engine_cfg) -> GPU:
    """``engine.roofline_gpu``: a table name, or ``auto`` = the CUDA device found (else H100)."""
    name = str(engine_cfg.get("roofline_gpu", "auto"))
    if name != "auto":
        return roofline.get_gpu(name)
    if torch.cuda.is_available():
        found = roofline.match_gpu(torch.cuda.get_device_name())
        if found is not None:
            return found
        log.warning("GPU %s is not in the roofline table; predicting for H100", torch.cuda.get_device_name())
    return roofline.GPUS["H100"]


def phases(engine_cfg) -> list[Phase]:
    context = int(engine_cfg.get("decode_context", 128))
    prefill = [roofline.Phase.prefill(int(n)) for n in engine_cfg.get("prefill_tokens", [128, 512, 2048])]
    decode = [roofline.Phase.decode(int(b), context) for b in engine_cfg.get("decode_batches", [1, 8, 32])]
    return prefill + decode


def roofline_metrics(shape: ModelShape, engine_cfg, gpu: GPU, bench_dir: Path) -> dict[str, Any]:
    found: dict[str, Any] = {"bench/roofline_gpu": gpu.name, "bench/roofline_ridge": gpu.ridge}
    rows = []
    for phase in phases(engine_cfg):
        prediction = roofline.predict(shape, phase, gpu)
        rows.extend(prediction.rows())
        key = f"prefill_bound_{phase.tokens}" if phase.kind == "prefill" else f"decode_bound_b{phase.batch}"
        found[f"bench/roofline_{key}"] = prediction.speedup
        if phase.kind == "decode" and phase.batch == 1:
            found["bench/roofline_decode_bound"] = prediction.speedup
    found["bench/roofline_linear_decode_bound"] = 1 / roofline.sparse_weight_fraction()
    bench_dir.mkdir(parents=True, exist_ok=True)
    with (bench_dir / "roofline.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return found


def comparison_rows(metrics: dict[str, Any]) -> list[dict]:
    """Each measured speedup beside its roofline bound (bounds without a measurement are listed too)."""
    rows = []
    for key, bound in metrics.items():
        if not key.startswith("bench/roofline_") or not isinstance(bound, float):
            continue
        what = key.removeprefix("bench/roofline_")
        if what in ("ridge", "decode_bound", "linear_decode_bound"):
            continue
        measured_key = "bench/" + what.replace("_bound", "_speedup")
        rows.append({"measurement": what.replace("_bound", ""), "roofline_bound": bound,
                     "measured": metrics.get(measured_key, float("nan"))})
    return rows


def bench_stage(engine_cfg, model, tokenizer, device: torch.device, output_dir: Path,
                into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Benchmark ``model`` (already pruned) with ``engine_cfg``; return ``bench/...`` metrics.

    ``device`` is the run's device, kept for the stage interface: ``cpu`` measures on the CPU and the
    2:4 engines on CUDA whatever it is. ``into`` (the run's metrics) is filled as results come in,
    so a failure keeps what was measured."""
    metrics: dict[str, Any] = into if into is not None else {}
    start = time.perf_counter()
    name = engine_cfg.name
    if name not in engines.ENGINES:
        raise engines.EngineError(f"engine.name={name!r} is not valid; allowed: {', '.join(engines.ENGINES)}")
    bench_dir = Path(output_dir) / "bench"
    shape = ModelShape.from_hf_config(model.config)
    gpu = roofline_gpu(engine_cfg)
    metrics["bench/engine"] = name
    metrics.update(roofline_metrics(shape, engine_cfg, gpu, bench_dir))
    metrics["artifacts/bench_dir"] = str(bench_dir)

    if name == "cpu":
        from prunelab.models import DecoderAdapter

        adapter = DecoderAdapter(model)
        weights = {n: layer.weight for n, layer in adapter.linear_layers(adapter.blocks[0]).items()}
        results = cpu_sparse.benchmark_csr(weights, shape.linear_shapes(), [float(s) for s in engine_cfg.sparsities],
                                           [int(t) for t in engine_cfg.tokens], int(engine_cfg.warmup),
                                           int(engine_cfg.repeats), float(engine_cfg.min_sample_ms),
                                           engine_cfg.get("threads"), str(engine_cfg.get("clock", "cpu")))
        cpu_sparse.write_csv(results, bench_dir / "cpu_csr.csv")
        metrics.update(engines.versions())
        metrics.update(cpu_sparse.metrics(results))
        log.info("CPU dense vs CSR (block 0 shapes, medians):\n%s", cpu_sparse.table(results))
    elif name == "torch_sparse":
        from prunelab.bench import torch_sparse

        torch_sparse.run(engine_cfg, model, shape, gpu, bench_dir, metrics)
    else:
        from prunelab.bench import trtllm

        trtllm.run(engine_cfg, model, tokenizer, bench_dir, metrics)
    rows = comparison_rows(metrics)
    if not any(r["measured"] == r["measured"] for r in rows):  # nothing measured on a GPU (engine=cpu)
        rows = [{k: v for k, v in r.items() if k != "measured"} for r in rows]
    log.info("2:4 speedup, roofline bound (%s) vs measured (%s):\n%s", gpu.name, name, roofline.format_table(rows))
    metrics["time/bench_s"] = time.perf_counter() - start
    return metrics
