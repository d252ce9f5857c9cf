"""``engine=llamacpp``: the dense and the pruned model as GGUF files of one type, timed in llama.cpp.

Both models are written as GGUF (:mod:`prunelab.gguf_export`; the dense one reloaded from the run's
model source) and quantized by llama.cpp to ``engine.quant``, then loaded in this process through
llama-cpp-python with the same threads and timed interleaved, medians of repeats after warm-up (the
order alternates: dense first in even repeats, pruned first in odd ones; by default the CPU time of
the thread that runs llama.cpp's graph): prefill tokens/s per prompt length (one ``llama_decode`` of
the prompt, logits of its last token), decode tokens/s at batch 1 after a ``decode_context``-token
prompt filled the KV cache. Also the file bytes and the resident memory each model adds (weights
read, not mapped, plus its context). Beside each ratio: the ideal ratio ``engine=structured``
computes from the two shapes (FLOPs for prefill, bytes moved for decode;
:func:`prunelab.bench.roofline.structured_ideal`), counted for the work llama.cpp does (the logits
of a prompt's last token only; ``lm_head`` is a large share of a small model), and
``efficiency = measured / ideal``.

llama.cpp has no sparse kernels: the zeros of an unstructured or N:M model are stored and multiplied
like any weight, so its ideal and its measured ratio are about 1. Only a smaller shape (structured
pruning, fewer blocks) is faster.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from prunelab import checks, gguf_export
from prunelab.bench import engines
from prunelab.bench.roofline import BlockDims, ModelShape, Phase, format_table, operators, structured_ideal
from prunelab.bench.timing import Timing
from prunelab.files import write_csv

log = logging.getLogger(__name__)

QUANTS = (*gguf_export.FLOAT_TYPES, *gguf_export.QUANT_TYPES)
# thread: CPU time of the calling thread, which runs llama.cpp's whole graph when threads=1 (nothing else
# the process runs, torch's idle worker threads included, is counted); cpu: of the process; wall: elapsed
CLOCKS = {"thread": time.thread_time, "cpu": time.process_time, "wall": time.perf_counter}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class LlamaCppEngine(engines.Engine):
    """``engine=llamacpp``: see the module docstring."""

    name = "llamacpp"
    runs_model = True
    needs_dense = True

    def __init__(self, quant: str = "Q4_K_M", prefill_tokens=(128, 512), decode_context: int = 128,
                 decode_steps: int = 32, warmup: int = 1, repeats: int = 5, threads: int = 1, clock: str = "thread",
                 ffn_multiple: int = 0, roofline_gpu: str = "H100") -> None:
        super().__init__(prefill_tokens, (1,), decode_context, warmup, repeats, roofline_gpu)
        self.quant = checks.choice(quant, "quant", QUANTS)
        self.decode_steps = checks.positive_int(decode_steps, "decode_steps")
        self.threads = checks.positive_int(threads, "threads")
        self.clock = checks.choice(clock, "clock", tuple(CLOCKS))
        if self.clock == "thread" and self.threads != 1:
            raise engines.EngineError(f"clock=thread times the calling thread, which runs the whole graph only with threads=1 "
                                      f"(got threads={self.threads}); allowed: threads=1, or clock=cpu|wall")
        self.ffn_multiple = gguf_export.check_ffn_multiple(ffn_multiple, "ffn_multiple")

    def check(self, pattern, method) -> None:
        problem = gguf_export.llama_cpp_problem()
        if problem:
            raise engines.EngineError(f"engine=llamacpp cannot run here: {problem}; allowed here: engine=structured "
                                      "(the same comparison in PyTorch) or engine=null")

    def predict(self, shape, gpu, bench_dir: Path) -> dict:
        return {}  # the ideal ratios come with the measurement (they need the dense shape too)

    @property
    def context(self) -> int:
        return max(*self.prefill_tokens, self.decode_context + self.decode_steps)

    def run(self, model, tokenizer, shape, gpu, bench_dir: Path, into: dict,
            dense: Callable[[], torch.nn.Module] | None = None) -> None:
        if dense is None:
            raise engines.EngineError("engine=llamacpp needs the unpruned model (the benchmark stage passes it)")
        files_dir = Path(bench_dir) / "gguf"
        reference = dense()
        shapes = {"dense": ModelShape.from_model(reference), "pruned": ModelShape.from_model(model)}
        files = {"dense": self._write(reference, tokenizer, files_dir / "dense"),
                 "pruned": self._write(model, tokenizer, files_dir / "pruned")}
        del reference
        vocab = int(model.get_input_embeddings().weight.shape[0])
        measure_files(files, shapes, vocab, self, Path(bench_dir), into)

    def _write(self, model, tokenizer, directory: Path) -> Path:
        float_type = self.quant if self.quant in gguf_export.FLOAT_TYPES else "F16"
        source = directory / f"model-{float_type}.gguf"
        gguf_export.write_gguf(model, tokenizer, source, float_type, ffn_multiple=self.ffn_multiple)
        if self.quant == float_type:
            return source
        target = directory / f"model-{self.quant}.gguf"
        gguf_export.quantize(source, target, self.quant, max(2, self.threads))
        source.unlink()
        return target


def _work(shape: ModelShape, phase: Phase) -> tuple[float, float]:
    """FLOPs and bytes of one llama.cpp forward: as :func:`prunelab.bench.roofline.totals`, but the
    ``lm_head`` of a prompt runs for its last token only (llama.cpp computes no other logits)."""
    flops = moved = 0.0
    for operator in operators(shape, phase, 2):
        share = 1.0 / phase.rows if operator.kind == "lm_head" else 1.0
        flops += operator.count * operator.ops * share
        moved += operator.count * (operator.weight_bytes + operator.activation_bytes * share)
    return flops, moved


def llamacpp_ideal(dense: ModelShape, pruned: ModelShape, phase: Phase) -> dict:
    """``engine=structured``'s ideal (FLOP ratio for prefill, byte ratio for decode) for the work
    llama.cpp does; ``ideal_all_logits``: the same with logits for every prompt token, as engine=structured counts."""
    (dense_flops, dense_bytes), (pruned_flops, pruned_bytes) = _work(dense, phase), _work(pruned, phase)
    flop_ratio, byte_ratio = dense_flops / pruned_flops, dense_bytes / pruned_bytes
    return {"flop_ratio": flop_ratio, "byte_ratio": byte_ratio, "ideal": flop_ratio if phase.kind == "prefill" else byte_ratio,
            "ideal_all_logits": structured_ideal(dense, pruned, phase, 2)["ideal"]}


def shape_from_gguf(path: Path) -> ModelShape:
    """The decoder shape a GGUF file declares (per-block widths where its arrays differ)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    arch = fields["general.architecture"].contents()

    def per_layer(key: str, layers: int) -> list[int]:
        value = fields[f"{arch}.{key}"].contents()
        return [int(v) for v in value] if isinstance(value, list) else [int(value)] * layers

    layers = int(fields[f"{arch}.block_count"].contents())
    dims = [BlockDims(h, k, f) for h, k, f in zip(per_layer("attention.head_count", layers),
                                                   per_layer("attention.head_count_kv", layers),
                                                   per_layer("feed_forward_length", layers))]
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    return ModelShape(hidden=int(fields[f"{arch}.embedding_length"].contents()), intermediate=dims[0].intermediate,
                      heads=dims[0].heads, kv_heads=dims[0].kv_heads, head_dim=int(fields[f"{arch}.attention.key_length"].contents()),
                      layers=layers, vocab=int(embedding.shape[1]), blocks=None if len(set(dims)) == 1 else tuple(dims))


def measure_files(files: dict[str, Path], shapes: dict[str, ModelShape], vocab: int, settings: LlamaCppEngine,
                  bench_dir: Path, into: dict) -> list[dict]:
    """Time the GGUF files ``files['dense']`` and ``files['pruned']`` in llama.cpp, interleaved; fill
    ``into`` with ``bench/...`` metrics, write ``bench_dir/llamacpp.csv``; return the rows."""
    import llama_cpp

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (settings.context,), generator=generator).tolist()
    into.update({"bench/llamacpp_version": getattr(llama_cpp, "__version__", "?"), "bench/quant": settings.quant,
                 "bench/threads": settings.threads, "bench/clock": settings.clock, "bench/measured_on": "cpu (llama.cpp)",
                 "bench/load_avg_1m": os.getloadavg()[0]})
    models, resident = {}, {}
    try:
        for name, path in files.items():
            before = _rss_bytes()
            models[name] = gguf_export.load(path, settings.context, settings.threads, logits_all=False, mmap=False)
            models[name].reset()
            models[name].eval(ids[: max(settings.prefill_tokens)])
            resident[name] = _rss_bytes() - before
        prefill = {n: _prefill(models, ids[:n], settings) for n in settings.prefill_tokens}
        decode = _decode(models, ids, settings)
    finally:
        for llm in models.values():
            llm.close()
    into["bench/load_avg_1m_after"] = os.getloadavg()[0]
    rows = []
    for n in settings.prefill_tokens:
        ideal = llamacpp_ideal(shapes["dense"], shapes["pruned"], Phase.prefill(n))
        dense_tps, pruned_tps = (n / (prefill[n][k].median_ms / 1e3) for k in ("dense", "pruned"))
        speedup = pruned_tps / dense_tps
        rows.append({"key": f"prefill_{n}", "measurement": f"prefill {n} tok (tok/s)", "dense": dense_tps,
                     "pruned": pruned_tps, "speedup": speedup, **ideal, "efficiency": speedup / ideal["ideal"]})
    ideal = llamacpp_ideal(shapes["dense"], shapes["pruned"], Phase.decode(1, settings.decode_context))
    speedup = decode["pruned"] / decode["dense"]
    rows.append({"key": "decode_b1", "measurement": f"decode b1 after {settings.decode_context} (tok/s)",
                 "dense": decode["dense"], "pruned": decode["pruned"], "speedup": speedup, **ideal,
                 "efficiency": speedup / ideal["ideal"]})
    for row in rows:
        phase, what = row["key"].split("_", 1)
        into[f"bench/{row['key']}_tok_s_dense"] = row["dense"]
        into[f"bench/{row['key']}_tok_s_pruned"] = row["pruned"]
        for metric in ("speedup", "ideal", "efficiency"):
            into[f"bench/{phase}_{metric}_{what}"] = row[metric]
    sizes = {name: path.stat().st_size for name, path in files.items()}
    into.update({"bench/file_bytes_dense": sizes["dense"], "bench/file_bytes_pruned": sizes["pruned"],
                 "bench/file_bytes_ratio": sizes["dense"] / sizes["pruned"],
                 "bench/resident_mb_dense": resident["dense"] / 2**20, "bench/resident_mb_pruned": resident["pruned"] / 2**20,
                 "bench/repeats": settings.repeats, "bench/warmup": settings.warmup,
                 "bench/tensor_types_dense": gguf_export.describe_types(gguf_export.tensor_types(files["dense"])),
                 "bench/tensor_types_pruned": gguf_export.describe_types(gguf_export.tensor_types(files["pruned"]))})
    bad = [k for k, v in into.items() if k.startswith(("bench/prefill_", "bench/decode_")) and not (math.isfinite(v) and v > 0)]
    if bad:
        raise engines.EngineError(f"the llama.cpp benchmark produced non-finite or non-positive numbers: {bad[:5]}")
    write_csv(bench_dir / "llamacpp.csv", rows)
    log.info("dense vs pruned in llama.cpp, %s, %d thread(s), %s clock, medians of %d interleaved repeats; files %.1f -> "
             "%.1f MB, resident %.1f -> %.1f MB (llama.cpp has no sparse kernels: zeros cost like weights):\n%s",
             settings.quant, settings.threads, settings.clock, settings.repeats, sizes["dense"] / 2**20,
             sizes["pruned"] / 2**20, resident["dense"] / 2**20, resident["pruned"] / 2**20,
             format_table([{k: v for k, v in r.items() if k != "key"} for r in rows]))
    return rows


def _alternating(names: list[str], repeat: int) -> list[str]:
    """dense, pruned in even repeats and pruned, dense in odd ones: an order effect cancels in the medians."""
    return names if repeat % 2 == 0 else names[::-1]


def _prefill(models: dict, prompt: list[int], settings: LlamaCppEngine) -> dict[str, Timing]:
    """Milliseconds of one prefill of ``prompt`` (KV cache cleared first), per model, interleaved."""
    clock = CLOCKS[settings.clock]
    samples: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(settings.warmup + settings.repeats):
        for name in _alternating(list(models), repeat):
            llm = models[name]
            llm.reset()
            start = clock()
            llm.eval(prompt)
            elapsed = (clock() - start) * 1e3
            if repeat >= settings.warmup:
                samples[name].append(elapsed)
    return {name: Timing(statistics.median(values), tuple(values)) for name, values in samples.items()}


def _decode(models: dict, ids: list[int], settings: LlamaCppEngine) -> dict[str, float]:
    """Tokens/s of ``decode_steps`` single-token steps after a ``decode_context``-token prompt (not timed)."""
    clock = CLOCKS[settings.clock]
    context, steps = ids[: settings.decode_context], ids[settings.decode_context: settings.decode_context + settings.decode_steps]
    samples: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(settings.warmup + settings.repeats):
        for name in _alternating(list(models), repeat):
            llm = models[name]
            llm.reset()
            llm.eval(context)
            start = clock()
            for token in steps:
                llm.eval([token])
            elapsed = clock() - start
            if repeat >= settings.warmup:
                samples[name].append(elapsed)
    return {name: settings.decode_steps / statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> None:
    """Time two GGUF files already written (e.g. ``<run dir>/bench/gguf/{dense,pruned}/model-Q4_K_M.gguf``)
    again, without pruning again: ``python -m prunelab.bench.llamacpp DENSE PRUNED [--repeats 5] [--out DIR]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dense", type=Path)
    parser.add_argument("pruned", type=Path)
    parser.add_argument("--prefill-tokens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--decode-context", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", default="thread", choices=tuple(CLOCKS))
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problem = gguf_export.llama_cpp_problem()
    if problem:
        parser.exit(2, f"cannot time GGUF files here: {problem}\n")
    settings = LlamaCppEngine(quant="F16", prefill_tokens=args.prefill_tokens, decode_context=args.decode_context,
                              decode_steps=args.decode_steps, warmup=args.warmup, repeats=args.repeats, clock=args.clock)
    settings.quant = args.dense.stem.removeprefix("model-")
    shapes = {"dense": shape_from_gguf(args.dense), "pruned": shape_from_gguf(args.pruned)}
    metrics: dict = {}
    measure_files({"dense": args.dense, "pruned": args.pruned}, shapes, shapes["dense"].vocab, settings, args.out, metrics)
    print(json.dumps(metrics, indent=1, default=str))


if __name__ == "__main__":
    main()
