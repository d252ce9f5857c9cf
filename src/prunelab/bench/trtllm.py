"""``engine=tensorrt_llm``: export the pruned model, build a dense and a 2:4 TensorRT-LLM engine,
benchmark both.

1. ``save_pretrained`` of the pruned model (its zeros are 2:4) into ``<run>/bench/trtllm/hf``.
2. ``python examples/.../llama/convert_checkpoint.py --model_dir hf --output_dir ckpt --dtype float16``.
3. ``trtllm-build`` twice from the same checkpoint: dense, and with ``--weight_sparsity``. The sparse
   engine always has ``--gemm_plugin disable``: matmuls routed through the GEMM plugin ignore
   sparsity (users report no gain); TensorRT's own GEMMs pick the sparse tactics. The dense engine
   uses ``engine.dense_gemm_plugin`` (``disable`` by default, so only sparsity differs).
4. ``tensorrt_llm.runtime.ModelRunner``: prefill latency (``max_new_tokens=1``) per prompt length,
   decode tokens/s per batch from the difference of a ``1 + steps`` and a ``1``-token generation,
   medians of repeats; greedy outputs of the two engines are compared token by token.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from prunelab import checks
from prunelab.bench import engines

log = logging.getLogger(__name__)


def convert_command(script: Path, hf_dir: Path, checkpoint_dir: Path, dtype: str = "float16",
                    python: str = sys.executable) -> list[str]:
    return [python, str(script), "--model_dir", str(hf_dir), "--output_dir", str(checkpoint_dir), "--dtype", dtype]


def build_command(checkpoint_dir: Path, engine_dir: Path, sparse: bool, max_batch_size: int, max_input_len: int,
                  max_seq_len: int, dense_gemm_plugin: str = "disable", trtllm_build: str = "trtllm-build") -> list[str]:
    """``trtllm-build`` for the dense engine, or the 2:4 one (``--weight_sparsity``, GEMM plugin off)."""
    command = [trtllm_build, "--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(engine_dir),
               "--max_batch_size", str(max_batch_size), "--max_input_len", str(max_input_len),
               "--max_seq_len", str(max_seq_len), "--gemm_plugin", "disable" if sparse else dense_gemm_plugin]
    if sparse:
        command.append("--weight_sparsity")
    return command


def plan(engine_cfg, work_dir: Path, convert_script: Path) -> dict[str, list[str]]:
    """Every command of the build, by step name (what runs, in order)."""
    hf_dir, checkpoint_dir = work_dir / "hf", work_dir / "checkpoint"
    limits = dict(max_batch_size=max(engine_cfg.decode_batches),
                  max_input_len=max(max(engine_cfg.prefill_tokens), int(engine_cfg.decode_context)),
                  max_seq_len=max(max(engine_cfg.prefill_tokens), int(engine_cfg.decode_context)) + int(engine_cfg.decode_steps) + 1,
                  trtllm_build=str(engine_cfg.trtllm_build))
    return {
        "convert": convert_command(convert_script, hf_dir, checkpoint_dir, str(engine_cfg.dtype)),
        "build_dense": build_command(checkpoint_dir, work_dir / "engine_dense", False,
                                     dense_gemm_plugin=str(engine_cfg.dense_gemm_plugin), **limits),
        "build_2to4": build_command(checkpoint_dir, work_dir / "engine_2to4", True, **limits),
    }


def run_logged(command: list[str], log_path: Path) -> float:
    """Run ``command``; its output goes to ``log_path``; seconds taken; a clear error with the tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("running: %s", " ".join(command))
    start = time.perf_counter()
    with log_path.open("w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise engines.EngineError(f"`{' '.join(command)}` failed with exit code {result.returncode} "
                                  f"(full log: {log_path}):\n{tail}")
    return time.perf_counter() - start


def export_checkpoint(model, tokenizer, hf_dir: Path) -> None:
    model.save_pretrained(hf_dir, safe_serialization=True)
    tokenizer.save_pretrained(hf_dir)


class EngineRunner:
    """A built engine behind ``tensorrt_llm.runtime.ModelRunner``; generation never stops early."""

    def __init__(self, engine_dir: Path, vocab: int) -> None:
        from tensorrt_llm.runtime import ModelRunner

        self.runner = ModelRunner.from_dir(engine_dir=str(engine_dir), rank=0)
        self.vocab = vocab

    def prompts(self, batch: int, tokens: int, seed: int = 0) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [torch.randint(0, self.vocab, (tokens,), generator=generator, dtype=torch.int32) for _ in range(batch)]

    def generate(self, prompts: list[torch.Tensor], new_tokens: int) -> torch.Tensor:
        output = self.runner.generate(prompts, max_new_tokens=new_tokens, end_id=-1, pad_id=0, return_dict=False)
        torch.cuda.synchronize()
        return output

    def time_ms(self, prompts: list[torch.Tensor], new_tokens: int, warmup: int, repeats: int) -> float:
        for _ in range(warmup):
            self.generate(prompts, new_tokens)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.generate(prompts, new_tokens)
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)


def benchmark(runner: EngineRunner, engine_cfg) -> dict[str, dict[int, float]]:
    warmup, repeats, steps = int(engine_cfg.warmup), int(engine_cfg.repeats), int(engine_cfg.decode_steps)
    prefill = {n: runner.time_ms(runner.prompts(1, n), 1, warmup, repeats) for n in engine_cfg.prefill_tokens}
    decode = {}
    for batch in engine_cfg.decode_batches:
        prompts = runner.prompts(batch, int(engine_cfg.decode_context))
        first = runner.time_ms(prompts, 1, warmup, repeats)
        full = runner.time_ms(prompts, 1 + steps, warmup, repeats)
        decode[batch] = batch * steps / (max(full - first, 1e-6) / 1e3)
    return {"prefill_ms": prefill, "decode_tok_s": decode}


class TensorRTLLMEngine(engines.SparseEngine):
    """``engine=tensorrt_llm``: see the module docstring."""

    name = "tensorrt_llm"
    runs_model = True

    def __init__(self, examples_dir: str | None = None, trtllm_build: str = "trtllm-build", dtype: str = "float16",
                 dense_gemm_plugin: str = "disable", prefill_tokens=(128, 512, 2048), decode_batches=(1, 8, 32),
                 decode_context: int = 128, decode_steps: int = 64, warmup: int = 2, repeats: int = 5,
                 roofline_gpu: str = "auto") -> None:
        super().__init__(prefill_tokens, decode_batches, decode_context, warmup, repeats, roofline_gpu)
        self.examples_dir = examples_dir
        self.trtllm_build = str(trtllm_build)
        self.dtype = checks.choice(dtype, "dtype", engines.SPARSE_DTYPES)
        self.dense_gemm_plugin = str(dense_gemm_plugin)
        self.decode_steps = checks.positive_int(decode_steps, "decode_steps")

    def missing_requirements(self) -> list[str]:
        missing = super().missing_requirements()
        if importlib.util.find_spec("tensorrt_llm") is None:
            missing.append(f"the tensorrt_llm package is not installed: {engines.TRTLLM_INSTALL}")
        if shutil.which(self.trtllm_build) is None:
            missing.append(f"the {self.trtllm_build!r} command is not on PATH (it comes with the tensorrt_llm wheel)")
        try:
            engines.find_convert_script(engines.trtllm_examples_dir(self))
        except engines.EngineError as error:
            missing.append(str(error))
        return missing

    def run(self, model, tokenizer, shape, gpu, bench_dir: Path, into: dict) -> None:
        run(self, model, tokenizer, bench_dir, into)


def run(engine_cfg, model, tokenizer, bench_dir: Path, metrics: dict) -> None:
    """Export, convert, build dense + 2:4, benchmark; fill ``metrics`` as results come in."""
    missing = engine_cfg.missing_requirements()
    if missing:
        raise engines.EngineError("engine=tensorrt_llm cannot run here: " + "; ".join(missing))
    import tensorrt_llm

    work_dir = bench_dir / "trtllm"
    convert_script = engines.find_convert_script(engines.trtllm_examples_dir(engine_cfg))
    commands = plan(engine_cfg, work_dir, convert_script)
    metrics.update({**engines.versions(), "bench/tensorrt_llm": tensorrt_llm.__version__,
                    "bench/trtllm_commands": {k: " ".join(v) for k, v in commands.items()}})
    export_checkpoint(model, tokenizer, work_dir / "hf")
    for step, command in commands.items():
        metrics[f"time/trtllm_{step}_s"] = run_logged(command, work_dir / f"{step}.log")

    vocab = int(model.config.vocab_size)
    results, outputs = {}, {}
    for label in ("dense", "2to4"):
        runner = EngineRunner(work_dir / f"engine_{label}", vocab)
        results[label] = benchmark(runner, engine_cfg)
        probe = runner.prompts(1, 32, seed=3)
        outputs[label] = runner.generate(probe, 16)[0, 0, 32:].cpu()
        del runner
        torch.cuda.empty_cache()
    dense, sparse = results["dense"], results["2to4"]
    for n, ms in dense["prefill_ms"].items():
        metrics[f"bench/prefill_ms_dense_{n}"] = ms
        metrics[f"bench/prefill_ms_2to4_{n}"] = sparse["prefill_ms"][n]
        metrics[f"bench/prefill_speedup_{n}"] = ms / sparse["prefill_ms"][n]
    for b, tok_s in dense["decode_tok_s"].items():
        metrics[f"bench/decode_tok_s_dense_b{b}"] = tok_s
        metrics[f"bench/decode_tok_s_2to4_b{b}"] = sparse["decode_tok_s"][b]
        metrics[f"bench/decode_speedup_b{b}"] = sparse["decode_tok_s"][b] / tok_s
    length = min(len(outputs["dense"]), len(outputs["2to4"]))
    metrics["bench/trtllm_greedy_token_agreement"] = float(
        (outputs["dense"][:length] == outputs["2to4"][:length]).float().mean()) if length else float("nan")
