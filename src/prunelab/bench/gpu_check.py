"""The prepared GPU check: 2:4 through ``torch_sparse`` and structured pruning, both measured on
LLaMA-2-7B shapes (random fp16 weights), in one command that needs only PyTorch with CUDA,
transformers, PyYAML and tqdm (no Hydra, OmegaConf, datasets, lm-eval or W&B on this path).

1. The model of ``conf/model/<model>.yaml`` (``llama2_7b_shapes``) is built on the device, seeded.
2. Structured: for each sparsity (and each ``--channel-multiples`` rounding of the kept MLP widths)
   a copy is shrunk by ``mag_sp`` (data-free; on random weights the
   choice of units does not change the shapes, and the speed follows the shapes), then dense and
   pruned are timed interleaved (:func:`prunelab.bench.structured.measure_pair`): prefill, decode,
   parameter bytes, peak memory, ideal ratios and efficiency.
3. 2:4: the model is magnitude-pruned 2:4 and measured by the ``torch_sparse`` engine (per-layer
   GEMMs, prefill and decode with ``SparseSemiStructuredTensor`` weights, eager and as CUDA-graph
   replays, logits checked against the masked dense model), beside the roofline bound for the GPU found.

It prints one table per part and writes ``gpu_check.json`` (and the CSVs) under ``--out``.
Sized for one H100/H200 within 8 minutes (first run and findings: docs/gpu.md). ``--model tiny_random --device cpu`` is a dry run of the
same code on the CPU (the 2:4 kernels are skipped there, with the reason), which the tests run.

    PYTHONPATH=src python3 -m prunelab.bench.gpu_check --out "$OUT"
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
import traceback
from pathlib import Path

import torch

from prunelab.bench import engines, structured
from prunelab.bench.roofline import ModelShape, format_table

log = logging.getLogger("prunelab.gpu_check")


def build_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """``conf/model/<name>.yaml``'s random-weight LLaMA, built directly on ``device`` in ``dtype``."""
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from prunelab.locations import CONF_DIR

    spec = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())
    architecture = spec.get("source", {}).get("architecture")
    if not architecture:
        raise SystemExit(f"conf/model/{name}.yaml has no source.architecture (a random-weight shape config is needed)")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**architecture))
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    model.config.use_cache = False
    return model


def settings(args) -> structured.StructuredEngine:
    return structured.StructuredEngine(prefill_tokens=args.prefill, decode_batches=args.batches,
                                       decode_context=args.context, decode_steps=args.steps, warmup=args.warmup,
                                       repeats=args.repeats, device=args.device, memory_tokens=max(args.prefill),
                                       threads=None, clock="wall")


def structured_part(model, args, out: Path, report: dict) -> None:
    from prunelab.methods.mag_sp import MagnitudeSP
    from prunelab.patterns import Unstructured
    from prunelab.prune import prune_model

    device = torch.device(args.device)
    for sparsity in args.sparsities:
        seen_widths: set[tuple[int, ...]] = set()
        for multiple in args.channel_multiples:
            start = time.perf_counter()
            pruned = copy.deepcopy(model)
            result = prune_model(pruned, MagnitudeSP(channel_multiple=multiple), sparsity, Unstructured(), None, device)
            widths = tuple(block.mlp.up_proj.out_features for block in pruned.model.layers)
            if widths in seen_widths:  # already a multiple: the same model measured again says nothing new
                print(f"\n## structured mag_sp {sparsity:.0%}, channel multiple {multiple}: same widths as before, not re-measured")
                del pruned
                continue
            seen_widths.add(widths)
            key = f"{sparsity:g}" if multiple == 1 else f"{sparsity:g}@{multiple}"
            metrics: dict = {}
            rows = structured.measure_pair({"dense": model, "pruned": pruned}, settings(args), device,
                                           out / f"structured_{round(sparsity * 100)}_{multiple}", metrics)
            report["structured"][key] = {"achieved_sparsity": result.achieved_sparsity, "rows": rows,
                                         "channel_multiple": multiple, "mlp_widths": sorted(set(widths)),
                                         "seconds": time.perf_counter() - start,
                                         **{k: v for k, v in metrics.items() if k.startswith("bench/")}}
            print(f"\n## structured mag_sp {sparsity:.0%} (achieved {result.achieved_sparsity:.4f}, MLP width "
                  f"{'/'.join(str(w) for w in sorted(set(widths)))}, channel multiple {multiple}) on {device}, "
                  f"params {metrics['bench/param_bytes_dense'] / 2**30:.2f} -> {metrics['bench/param_bytes_pruned'] / 2**30:.2f} GiB, "
                  f"peak {metrics['bench/peak_memory_mb_dense']:.0f} -> {metrics['bench/peak_memory_mb_pruned']:.0f} MiB\n")
            print(format_table([{k: v for k, v in r.items() if k != "key"} for r in rows]), flush=True)
            del pruned
            if device.type == "cuda":
                torch.cuda.empty_cache()


def two_four_part(model, args, out: Path, report: dict) -> None:
    from prunelab.bench.engines import roofline_metrics
    from prunelab.bench.stage import roofline_gpu
    from prunelab.bench.torch_sparse import TorchSparseEngine, run
    from prunelab.patterns import NM

    adapter_blocks = model.model.layers
    with torch.no_grad():
        for block in adapter_blocks:
            for layer in (m for m in block.modules() if isinstance(m, torch.nn.Linear)):
                layer.weight.data *= NM(2, 4).mask(layer.weight.data.abs().float()).to(layer.weight.dtype)
    engine = TorchSparseEngine(gemm_tokens=args.gemm_tokens, prefill_tokens=sorted(set(args.prefill) | {2048}),
                               decode_batches=args.batches, decode_context=args.context, decode_steps=args.steps,
                               warmup=args.warmup, repeats=args.repeats, fail_on_mismatch=False)
    shape = ModelShape.from_model(model)
    gpu = roofline_gpu(engine)
    metrics = roofline_metrics(shape, engine, gpu, out / "two_four")
    problems = engine.missing_requirements()
    if problems:
        report["two_four"] = {"skipped": "; ".join(problems), **metrics}
        print(f"\n## 2:4 torch_sparse skipped: {'; '.join(problems)}")
        return
    run(engine, model, shape, gpu, out / "two_four", metrics)
    report["two_four"] = metrics
    rows = [{"measurement": key.removeprefix("bench/"), "measured": metrics.get(key),
             "roofline_bound": metrics.get(key.replace("_graph", "").replace("_speedup", "_bound").replace("bench/", "bench/roofline_"))}
            for key in sorted(metrics) if "_speedup" in key and not key.startswith("bench/roofline")]
    print(f"\n## 2:4 ({metrics.get('bench/device')}, cuSPARSELt {metrics.get('bench/cusparselt')}): logits match "
          f"{metrics.get('bench/logits_match')} (rel max diff {metrics.get('bench/logits_rel_max_diff', float('nan')):.2e})\n")
    print(format_table(rows), flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m prunelab.bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama2_7b_shapes", help="a conf/model with source.architecture")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default=None, help="float16 (default on cuda) or float32 (default on cpu)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--channel-multiples", type=int, nargs="+", default=[1, 64],
                        help="each sparsity is measured with the kept MLP widths rounded to each multiple (1 = as chosen)")
    parser.add_argument("--prefill", type=int, nargs="+", default=[128, 512, 2048, 4096],
                        help="eager prefill up to 512 tokens is host-bound on an H100/H200 (docs/gpu.md)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gemm-tokens", type=int, nargs="+", default=[1, 16, 128, 512, 2048])
    parser.add_argument("--skip-two-four", action="store_true")
    parser.add_argument("--skip-structured", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible; for a dry run on the CPU: --model tiny_random --device cpu")
    dtype = getattr(torch, args.dtype or ("float16" if args.device == "cuda" else "float32"))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = build_model(args.model, torch.device(args.device), dtype)
    report: dict = {"model": args.model, "dtype": str(dtype), "versions": engines.versions(), "structured": {},
                    "build_s": time.perf_counter() - start}
    print(f"# GPU check: {args.model} ({model.config.num_hidden_layers} blocks, hidden {model.config.hidden_size}), "
          f"{dtype}, {report['versions'].get('bench/device')}, torch {torch.__version__}", flush=True)
    parts = ([] if args.skip_structured else [("structured", structured_part)]) + \
        ([] if args.skip_two_four else [("two_four", two_four_part)])
    for name, part in parts:  # one part failing keeps the other's numbers; the exit status says it failed
        try:
            part(model, args, args.out, report)
        except Exception as error:  # noqa: BLE001 - recorded, printed and turned into the exit status
            report.setdefault("failed", {})[name] = traceback.format_exc()
            print(f"\n## {name} FAILED: {type(error).__name__}: {error}", flush=True)
            log.exception("%s part failed", name)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    report["total_s"] = time.perf_counter() - start
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\ntotal {report['total_s']:.0f} s; details in {args.out / 'gpu_check.json'}")
    if report.get("failed"):
        raise SystemExit(f"failed parts: {', '.join(report['failed'])} (tracebacks above and in gpu_check.json)")
    return report


if __name__ == "__main__":
    main()
