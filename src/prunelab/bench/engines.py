"""The engine interface, what the 2:4 engines need, and the 2:4 weight swap for PyTorch.

Engines (each a class named by ``conf/engine/<name>.yaml``): ``cpu`` (:mod:`.cpu_sparse`, dense vs
CSR matmul, runs anywhere); ``torch_sparse`` (:mod:`.torch_sparse`, the pruned model's linear
weights become ``SparseSemiStructuredTensor`` and ``F.linear`` dispatches to the sparse
tensor-core kernel); ``tensorrt_llm`` (:mod:`.trtllm`, the pruned checkpoint is exported,
converted and built into a dense and a ``--weight_sparsity`` engine). Nothing is
faked: when CUDA or a package is missing the error says what to install or which engine runs here.
"""

from __future__ import annotations

import logging
import os
import types
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from prunelab import checks
from prunelab.bench import roofline
from prunelab.checks import ConfigError
from prunelab.files import write_csv

log = logging.getLogger(__name__)

BACKENDS = ("cusparselt", "cutlass")
SPARSE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
TRTLLM_INSTALL = "pip install -e .[tensorrt] (tensorrt-llm wheel: Linux x86-64 with CUDA only, > 1 GB)"
CONVERT_SCRIPTS = ("models/core/llama/convert_checkpoint.py", "llama/convert_checkpoint.py")


MAX_REPEATS = 1_000  # warmup / repeats: a median of more samples says nothing more, and the job never ends
MAX_DECODE_BATCH = 4_096  # sequences decoded at once: beyond this the KV cache alone outgrows any one device
MAX_SAMPLE_MS = 10_000.0  # min_sample_ms: a sample repeats the call until it lasts this long; beyond 10 s a benchmark never ends


def sample_ms(value, key: str = "min_sample_ms") -> float:
    return checks.number(value, key, low=0, high=MAX_SAMPLE_MS, what="each sample repeats the call until it lasts this long")


class EngineError(ConfigError):
    """An engine that cannot run with this config or on this machine; says what would make it run."""


# ------------------------------------------------------------------------------ requirements
def cuda_problem() -> str | None:
    """Why the sparse tensor cores cannot be used here, or ``None`` when they can."""
    if not torch.cuda.is_available():
        return ("no CUDA GPU is visible (torch.cuda.is_available() is False; this torch build is "
                f"{torch.__version__}); 2:4 kernels need an NVIDIA GPU of compute capability >= 8.0 "
                "(Ampere, Ada, Hopper) and a CUDA build of torch")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return (f"the GPU {torch.cuda.get_device_name()} has compute capability {major}.{minor}; "
                "sparse tensor cores need >= 8.0 (Ampere or newer)")
    return None


def backend_problem(backend: str) -> str | None:
    if backend not in BACKENDS:
        return f"engine.backend={backend!r} is not valid; allowed: {', '.join(BACKENDS)}"
    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        return ("this torch build has no cuSPARSELt (torch.backends.cusparselt.is_available() is False); "
                "install a CUDA wheel of torch from pytorch.org, or use engine.backend=cutlass (Ampere only)")
    if backend == "cutlass" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 8:
        return "engine.backend=cutlass runs on Ampere (compute capability 8.x) only; use engine.backend=cusparselt"
    return None


def trtllm_examples_dir(engine) -> Path | None:
    value = getattr(engine, "examples_dir", None) or os.environ.get("TRTLLM_EXAMPLES_DIR")
    return Path(str(value)).expanduser() if value else None


def find_convert_script(examples_dir: Path | None) -> Path:
    """``convert_checkpoint.py`` for LLaMA in a TensorRT-LLM ``examples`` checkout (layouts of 0.x and 1.x)."""
    hint = ("the tensorrt_llm wheel does not ship the examples: `git clone --branch v1.2.1 "
            "https://github.com/NVIDIA/TensorRT-LLM` and set engine.examples_dir=/path/to/TensorRT-LLM/examples "
            "(or TRTLLM_EXAMPLES_DIR)")
    if examples_dir is None:
        raise EngineError(f"engine=tensorrt_llm needs engine.examples_dir: {hint}")
    for relative in CONVERT_SCRIPTS:
        if (examples_dir / relative).exists():
            return examples_dir / relative
    raise EngineError(f"engine.examples_dir={str(examples_dir)!r} holds none of {', '.join(CONVERT_SCRIPTS)}; {hint}")


class Engine(ABC):
    """A speed benchmark of the pruned model (``conf/engine/<name>.yaml``, built from its ``_target_``).

    The constructor checks the engine's own knobs; :meth:`check` whether it can run for this
    method and pattern on this machine (before any weights load); :meth:`run` measures and fills
    ``bench/...`` metrics as results come in, so a failure keeps what was measured. The knobs
    every engine has feed the roofline prediction printed beside the measurements.
    """

    name: str = "engine"
    needs_dense: bool = False  # True: run() also takes ``dense``, a loader of the unpruned model
    runs_model: bool = False  # True: its prefill and decode sequences go through the model (context-bound)

    def __init__(self, prefill_tokens=(128, 512, 2048), decode_batches=(1, 8, 32), decode_context: int = 128,
                 warmup: int = 2, repeats: int = 5, roofline_gpu: str = "auto") -> None:
        self.prefill_tokens = checks.positive_ints(prefill_tokens, "prefill_tokens")
        self.decode_batches = checks.positive_ints(decode_batches, "decode_batches", high=MAX_DECODE_BATCH,
                                                   what="sequences decoded at once")
        self.decode_context = checks.positive_int(decode_context, "decode_context")
        self.warmup = checks.integer(warmup, "warmup", low=0, high=MAX_REPEATS, what="untimed calls before timing")
        self.repeats = checks.integer(repeats, "repeats", low=1, high=MAX_REPEATS, what="timed samples (median)")
        self.roofline_gpu = str(roofline_gpu)
        if self.roofline_gpu != "auto":
            try:
                roofline.get_gpu(self.roofline_gpu)
            except roofline.RooflineError:
                raise ConfigError(f"roofline_gpu={roofline_gpu!r} is not in the roofline table; allowed: auto, "
                                  f"{', '.join(roofline.GPUS)}") from None

    def check(self, pattern, method) -> None:
        """Whether this engine can measure a model pruned by ``method`` with ``pattern``, here."""

    def context_problem(self, context: int) -> str | None:
        """Why a sequence this engine runs through the model would exceed the model's ``context``
        (``None``: every one fits, or the engine runs no sequence through the model)."""
        if not self.runs_model:
            return None
        lengths = {f"engine.prefill_tokens={list(self.prefill_tokens)}": max(self.prefill_tokens)}
        steps = getattr(self, "decode_steps", 0)
        lengths[f"engine.decode_context={self.decode_context} + engine.decode_steps={steps}"] = self.decode_context + steps
        memory = getattr(self, "memory_tokens", None)
        if memory is not None:
            lengths[f"engine.memory_tokens={memory}"] = memory
        for what, tokens in lengths.items():
            if tokens > context:
                return f"{what} runs {tokens}-token sequences, beyond the model's context of {context}; allowed: at most {context}"
        return None

    def predict(self, shape, gpu, bench_dir: Path) -> dict:
        """The analytic prediction recorded beside the measurements: by default the 2:4 roofline."""
        return roofline_metrics(shape, self, gpu, bench_dir)

    @abstractmethod
    def run(self, model, tokenizer, shape, gpu, bench_dir: Path, into: dict) -> None:
        """Measure; fill ``into`` (the run's metrics) with ``bench/...`` keys as results come in.
        An engine with ``needs_dense`` also takes ``dense``: a function that returns the unpruned
        model (the stage reloads it from the run's model source)."""


def phases(engine: "Engine") -> list[roofline.Phase]:
    prefill = [roofline.Phase.prefill(n) for n in engine.prefill_tokens]
    decode = [roofline.Phase.decode(b, engine.decode_context) for b in engine.decode_batches]
    return prefill + decode


def roofline_metrics(shape, engine: "Engine", gpu, bench_dir: Path) -> dict:
    """The 2:4 roofline prediction of every phase the engine measures, as ``bench/roofline_...``
    metrics and ``bench_dir/roofline.csv``."""
    found: dict = {"bench/roofline_gpu": gpu.name, "bench/roofline_ridge": gpu.ridge}
    rows = []
    for phase in phases(engine):
        prediction = roofline.predict(shape, phase, gpu)
        rows.extend(prediction.rows())
        key = f"prefill_bound_{phase.tokens}" if phase.kind == "prefill" else f"decode_bound_b{phase.batch}"
        found[f"bench/roofline_{key}"] = prediction.speedup
        if phase.kind == "decode" and phase.batch == 1:
            found["bench/roofline_decode_bound"] = prediction.speedup
    found["bench/roofline_linear_decode_bound"] = 1 / roofline.sparse_weight_fraction()
    write_csv(bench_dir / "roofline.csv", rows)
    return found


class SparseEngine(Engine):
    """An engine that runs 2:4 sparse kernels on a CUDA GPU."""

    backend: str | None = None

    def missing_requirements(self) -> list[str]:
        """Everything this engine needs that this machine lacks (empty when it can run)."""
        problems = [cuda_problem(), backend_problem(self.backend) if self.backend is not None else None]
        return [p for p in problems if p]

    def check(self, pattern, method) -> None:
        if getattr(pattern, "name", str(pattern)) != "2:4" or not method.prunes:
            raise EngineError(
                f"engine={self.name} runs 2:4 sparse kernels, so the model must be pruned with pattern=2:4 "
                f"(got method={getattr(method, 'name', type(method).__name__)}, pattern={getattr(pattern, 'name', pattern)}); "
                "for unstructured sparsity the CPU benchmark engine=cpu measures CSR matmul instead"
            )
        missing = self.missing_requirements()
        if missing:
            raise EngineError(f"engine={self.name} cannot run here: " + "; ".join(missing) + "."
                              " Without a GPU, use engine=cpu (CSR benchmark + roofline) or engine=null.")


def require_sparse_kernels(backend: str = "cusparselt") -> None:
    problems = [p for p in (cuda_problem(), backend_problem(backend)) if p]
    if problems:
        raise EngineError("2:4 sparse kernels cannot run here: " + "; ".join(problems) + ". Use engine=cpu instead.")


# ------------------------------------------------------------------------------- 2:4 weights
def is_two_four(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive input columns of every row holds at most 2 non-zeros."""
    rows, cols = weight.shape
    if cols % 4:
        return False
    return bool(((weight.reshape(rows, cols // 4, 4) != 0).sum(-1) <= 2).all())


def shape_problem(weight_shape: tuple[int, int], dtype: torch.dtype, backend: str = "cusparselt") -> str | None:
    """Why a weight of this shape/dtype cannot be compressed by ``backend``, or ``None``."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    cls = SparseSemiStructuredTensorCUSPARSELT if backend == "cusparselt" else SparseSemiStructuredTensorCUTLASS
    if dtype not in cls._DTYPE_SHAPE_CONSTRAINTS:
        return f"dtype {dtype} is not supported by {backend}"
    rule = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
    rows, cols = weight_shape
    if rows < rule.sparse_min_rows or rows % rule.sparse_min_rows or cols < rule.sparse_min_cols or cols % rule.sparse_min_cols:
        return f"shape {tuple(weight_shape)} is not a multiple of ({rule.sparse_min_rows}, {rule.sparse_min_cols})"
    return None


@contextmanager
def semi_structured_backend(backend: str) -> Iterator[None]:
    """Route ``to_sparse_semi_structured`` to cuSPARSELt (default) or CUTLASS inside the block."""
    from torch.sparse import SparseSemiStructuredTensor

    previous = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = previous


@dataclass
class SwapReport:
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict:
        return {"bench/sparse_layers": len(self.converted), "bench/dense_layers_kept": len(self.skipped),
                **({"bench/dense_layers_kept_why": dict(list(self.skipped.items())[:20])} if self.skipped else {})}


def swap_candidates(model: nn.Module, backend: str = "cusparselt") -> tuple[dict[str, nn.Linear], dict[str, str]]:
    """The decoder's linear layers that can take a 2:4 weight, and why the others cannot."""
    from prunelab.models import DecoderAdapter

    adapter = DecoderAdapter(model)
    ok: dict[str, nn.Linear] = {}
    skipped: dict[str, str] = {}
    for index, block in enumerate(adapter.blocks):
        for name, layer in adapter.linear_layers(block).items():
            full = f"layers.{index}.{name}"
            reason = shape_problem(tuple(layer.weight.shape), layer.weight.dtype, backend)
            if reason is None and layer.bias is not None and layer.bias.dtype != layer.weight.dtype:
                reason = "bias dtype differs from weight dtype"
            if reason is None and not is_two_four(layer.weight.data):
                reason = "weight is not 2:4 (layer not pruned with pattern=2:4)"
            if reason is None:
                ok[full] = layer
            else:
                skipped[full] = reason
    return ok, skipped


@contextmanager
def semi_structured_weights(model: nn.Module, backend: str = "cusparselt") -> Iterator[SwapReport]:
    """Inside the block every 2:4 linear weight of the decoder is a ``SparseSemiStructuredTensor``
    (``F.linear`` then runs the sparse kernel); the dense weights are put back on exit."""
    require_sparse_kernels(backend)
    candidates, skipped = swap_candidates(model, backend)
    report = SwapReport(skipped=skipped)
    originals: list[tuple[nn.Linear, nn.Parameter]] = []
    with semi_structured_backend(backend):
        try:
            for full, layer in candidates.items():
                if layer.weight.device.type != "cuda":
                    raise EngineError(f"{full} is on {layer.weight.device}; move the model to CUDA first")
                originals.append((layer, layer.weight))
                sparse = torch.sparse.to_sparse_semi_structured(layer.weight.data.contiguous())
                layer.weight = nn.Parameter(sparse, requires_grad=False)
                layer.forward = types.MethodType(_two_dimensional_linear, layer)
                report.converted.append(full)
            yield report
        finally:
            for layer, weight in originals:
                layer.weight = weight
                layer.__dict__.pop("forward", None)


def _two_dimensional_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``F.linear`` on a ``[tokens, in]`` view: a decode step's ``[batch, 1, in]`` input otherwise
    reaches the sparse weight as a batched matmul that ``expand``s it, which cuSPARSELt tensors do
    not support (seen on an H200, torch 2.11)."""
    shape = x.shape
    y = nn.functional.linear(x.reshape(-1, shape[-1]).contiguous(), layer.weight, layer.bias)
    return y.reshape(*shape[:-1], y.shape[-1])


def versions() -> dict:
    """Device, torch, CUDA and cuSPARSELt versions of the benchmark (evidence for the numbers)."""
    found = {"bench/torch": torch.__version__, "bench/cuda": str(torch.version.cuda)}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        found["bench/device"] = torch.cuda.get_device_name()
        found["bench/compute_capability"] = f"{major}.{minor}"
        if torch.backends.cusparselt.is_available():
            found["bench/cusparselt"] = str(torch.backends.cusparselt.version())
    else:
        import platform

        found["bench/device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return found
