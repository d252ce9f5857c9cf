"""The benchmark stage: the roofline prediction for the model, then the chosen engine's measurements,
printed side by side and recorded as ``bench/...`` metrics (and CSVs under ``<run dir>/bench``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prunelab.bench import roofline
from prunelab.bench.engines import Engine
from prunelab.bench.roofline import GPU, ModelShape

log = logging.getLogger(__name__)


def roofline_gpu(engine: Engine) -> GPU:
    """``engine.roofline_gpu``: a table name, or ``auto`` = the CUDA device found (else H100)."""
    name = str(engine.roofline_gpu)
    if name != "auto":
        return roofline.get_gpu(name)
    if torch.cuda.is_available():
        found = roofline.match_gpu(torch.cuda.get_device_name())
        if found is not None:
            return found
        log.warning("GPU %s is not in the roofline table; predicting for H100", torch.cuda.get_device_name())
    return roofline.GPUS["H100"]


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


def bench_stage(engine: Engine, model, tokenizer, device: torch.device, output_dir: Path,
                into: dict[str, Any] | None = None, dense: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Benchmark ``model`` (already pruned) with ``engine``; return ``bench/...`` metrics.

    ``device`` is the run's device, kept for the stage interface: ``cpu`` measures on the CPU and the
    2:4 engines on CUDA whatever it is. ``dense`` loads the unpruned model, for engines that compare
    against it (``needs_dense``). ``into`` (the run's metrics) is filled as results come in, so a
    failure keeps what was measured."""
    metrics: dict[str, Any] = into if into is not None else {}
    start = time.perf_counter()
    bench_dir = Path(output_dir) / "bench"
    shape = ModelShape.from_model(model)
    gpu = roofline_gpu(engine)
    metrics["bench/engine"] = engine.name
    metrics.update(engine.predict(shape, gpu, bench_dir))
    metrics["artifacts/bench_dir"] = str(bench_dir)
    if engine.needs_dense:
        engine.run(model, tokenizer, shape, gpu, bench_dir, metrics, dense=dense)
    else:
        engine.run(model, tokenizer, shape, gpu, bench_dir, metrics)
    rows = comparison_rows(metrics)
    if not any(r["measured"] == r["measured"] for r in rows):  # nothing measured on a GPU (engine=cpu)
        rows = [{k: v for k, v in r.items() if k != "measured"} for r in rows]
    if rows:
        log.info("2:4 speedup, roofline bound (%s) vs measured (%s):\n%s", gpu.name, engine.name,
                 roofline.format_table(rows))
    metrics["time/bench_s"] = time.perf_counter() - start
    return metrics
