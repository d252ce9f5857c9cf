"""Analytic roofline of a LLaMA-style decoder, dense vs 2:4, per layer and phase (runs anywhere).

LLM-Viewer style: for every operator ``ops`` (FLOPs) and ``bytes`` moved to/from HBM give the
arithmetic intensity ``ops / bytes``; an operator below the ridge ``peak_ops / bandwidth`` is
memory-bound, else compute-bound, and its time is ``max(ops / peak, bytes / bandwidth)``.
2:4 linear layers store 9/16 of the dense weight bytes (fp16/bf16: half the values plus 2-bit
indices) and run on sparse tensor cores at twice the dense math rate; attention, norms,
element-wise ops and the (never pruned) ``lm_head`` are unchanged.

Attention is modelled as a fused kernel (FlashAttention / SDPA): ``attn.qk`` reads Q and K,
``attn.av`` reads V and writes O; the score matrix stays on chip. Prefill attention is causal
(query ``i`` sees ``i + 1`` keys); decode reads the whole KV cache. Prefill computes logits for
every prompt token, as a plain Hugging Face forward does.

Element-wise operators (RMSNorm, rotary, SiLU*up, residual adds) are fused into their neighbours
by serving engines (TensorRT-LLM, vLLM), so by default they move no extra bytes
(``fused_elementwise=True``); ``fused_elementwise=False`` charges each one a read and write of its
activations, as an eager Hugging Face forward does, which lowers the prefill bound.

CLI: ``python -m prunelab.bench.roofline --model llama2_7b_shapes --gpu H100``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

Bound = Literal["memory", "compute", "fused"]


class RooflineError(ValueError):
    """An unknown GPU name or a phase spec that cannot be parsed."""


@dataclass(frozen=True)
class GPU:
    """Peak dense fp16/bf16 tensor-core math (sparse = 2x) and HBM/GDDR bandwidth."""

    name: str
    dense_tflops: float
    bandwidth_tbs: float
    source: str

    @property
    def peak_ops(self) -> float:
        return self.dense_tflops * 1e12

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_tbs * 1e12

    @property
    def ridge(self) -> float:
        """FLOP/byte where a dense operator turns from memory- to compute-bound."""
        return self.peak_ops / self.bandwidth


# Dense (no sparsity) fp16/bf16 tensor-core peaks; the datasheets list 2x these "with sparsity".
GPUS: dict[str, GPU] = {
    gpu.name: gpu
    for gpu in (
        GPU("A100", 312.0, 2.039, "NVIDIA A100 datasheet (SXM4 80GB): BF16/FP16 tensor 312 TFLOPS, 2,039 GB/s"),
        GPU("A6000", 154.8, 0.768, "NVIDIA RTX A6000 datasheet: FP16 tensor 154.8 TFLOPS (309.7 sparse), 768 GB/s"),
        GPU("L40S", 362.05, 0.864, "NVIDIA L40S datasheet: BF16/FP16 tensor 362.05 TFLOPS (733 sparse), 864 GB/s"),
        GPU("H100", 989.4, 3.35, "NVIDIA H100 datasheet (SXM): BF16/FP16 tensor 989 TFLOPS (1,979 sparse), 3.35 TB/s"),
        GPU("H200", 989.4, 4.8, "NVIDIA H200 datasheet (SXM): BF16/FP16 tensor 989 TFLOPS (1,979 sparse), 4.8 TB/s"),
    )
}


def get_gpu(name: str) -> GPU:
    key = name.strip().upper()
    for gpu in GPUS.values():
        if gpu.name.upper() == key:
            return gpu
    raise RooflineError(f"gpu={name!r} is not in the roofline table; allowed: {', '.join(GPUS)}")


def match_gpu(device_name: str) -> GPU | None:
    """The table row for a CUDA device name (``NVIDIA H100 80GB HBM3`` -> H100), or ``None``."""
    upper = device_name.upper()
    for gpu in sorted(GPUS.values(), key=lambda g: -len(g.name)):
        if re.search(rf"(^|[^A-Z0-9]){gpu.name}([^0-9]|$)", upper):
            return gpu
    return None


def sparse_weight_fraction(bits: int = 16) -> float:
    """Bytes of a compressed 2:4 weight over dense: half the values plus a 2-bit index per value."""
    return (bits / 2 + 2 / 2) / bits


@dataclass(frozen=True)
class LinearShape:
    """One linear layer of a decoder block, named as inside the block (``mlp.down_proj``)."""

    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class BlockDims:
    """What structured pruning changes in one block: query heads, KV heads, MLP width."""

    heads: int
    kv_heads: int
    intermediate: int


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a LLaMA-style decoder that the roofline needs. ``blocks`` lists every block's
    :class:`BlockDims` where structured pruning made them differ (``None``: all blocks are
    ``heads``/``kv_heads``/``intermediate``, and ``layers`` of them)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int
    blocks: tuple[BlockDims, ...] | None = None

    @classmethod
    def from_model(cls, model) -> "ModelShape":
        """The shapes of a model as it is in memory (a shrunk model's real per-block widths)."""
        config = model.config
        layers = model.model.layers
        dims = []
        for block in layers:
            head_dim = int(block.self_attn.head_dim)
            dims.append(BlockDims(block.self_attn.q_proj.out_features // head_dim,
                                  block.self_attn.k_proj.out_features // head_dim, block.mlp.gate_proj.out_features))
        first = dims[0] if dims else BlockDims(0, 0, 0)
        return cls(hidden=int(config.hidden_size), intermediate=first.intermediate, heads=first.heads,
                   kv_heads=first.kv_heads, head_dim=int(layers[0].self_attn.head_dim) if dims else 0,
                   layers=len(dims), vocab=int(model.get_output_embeddings().weight.shape[0]),
                   blocks=None if all(d == first for d in dims) else tuple(dims))

    def block_dims(self) -> list[BlockDims]:
        return list(self.blocks) if self.blocks is not None else [BlockDims(self.heads, self.kv_heads, self.intermediate)] * self.layers

    def distinct_blocks(self) -> list[tuple["ModelShape", int]]:
        """One uniform shape per distinct block, with how many blocks have it (in order of first use)."""
        counts: dict[BlockDims, int] = {}
        for dims in self.block_dims():
            counts[dims] = counts.get(dims, 0) + 1
        return [(ModelShape(self.hidden, d.intermediate, d.heads, d.kv_heads, self.head_dim, n, self.vocab), n)
                for d, n in counts.items()]

    @classmethod
    def from_hf_config(cls, config) -> "ModelShape":
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden=int(config.hidden_size),
            intermediate=int(config.intermediate_size),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            layers=int(config.num_hidden_layers),
            vocab=int(config.vocab_size),
        )

    def linear_shapes(self) -> list[LinearShape]:
        """The linear layers of one block, in the order a LLaMA block runs them."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [
            LinearShape("self_attn.q_proj", self.hidden, q),
            LinearShape("self_attn.k_proj", self.hidden, kv),
            LinearShape("self_attn.v_proj", self.hidden, kv),
            LinearShape("self_attn.o_proj", q, self.hidden),
            LinearShape("mlp.gate_proj", self.hidden, self.intermediate),
            LinearShape("mlp.up_proj", self.hidden, self.intermediate),
            LinearShape("mlp.down_proj", self.intermediate, self.hidden),
        ]

    def prunable_parameters(self) -> int:
        return sum(count * sum(s.in_features * s.out_features for s in block.linear_shapes())
                   for block, count in self.distinct_blocks())


@dataclass(frozen=True)
class Phase:
    """``prefill``: ``tokens`` prompt tokens per sequence; ``decode``: one new token per sequence
    attending to ``context`` cached tokens. ``batch`` sequences in both."""

    kind: Literal["prefill", "decode"]
    batch: int = 1
    tokens: int = 1
    context: int = 0

    @classmethod
    def prefill(cls, tokens: int, batch: int = 1) -> "Phase":
        return cls("prefill", batch, tokens, 0)

    @classmethod
    def decode(cls, batch: int = 1, context: int = 128) -> "Phase":
        return cls("decode", batch, 1, context)

    @property
    def label(self) -> str:
        if self.kind == "prefill":
            return f"prefill {self.tokens} tok" + (f" x b{self.batch}" if self.batch > 1 else "")
        return f"decode b{self.batch} @ctx {self.context}"

    @property
    def rows(self) -> int:
        """Tokens that go through the linear layers."""
        return self.batch * self.tokens

    @property
    def kv_length(self) -> int:
        return self.tokens if self.kind == "prefill" else self.context + 1

    @property
    def attended_keys(self) -> int:
        """Sum over the new queries of one sequence of the keys each one attends to."""
        if self.kind == "prefill":
            return self.tokens * (self.tokens + 1) // 2
        return self.context + 1


def parse_phase(spec: str, context: int = 128) -> Phase:
    """``prefill:2048``, ``prefill:512x4`` (batch 4), ``decode:8`` (batch 8), ``decode:1@4096``."""
    match = re.fullmatch(r"\s*(prefill|decode):(\d+)(?:x(\d+))?(?:@(\d+))?\s*", spec)
    if not match:
        raise RooflineError(f"phase {spec!r} is not valid; use prefill:TOKENS[xBATCH] or decode:BATCH[@CONTEXT]")
    kind, first, batch, ctx = match.groups()
    if kind == "prefill":
        return Phase.prefill(int(first), int(batch or 1))
    return Phase.decode(int(first), int(ctx) if ctx else context)


@dataclass(frozen=True)
class Operator:
    """One operator of the model in one phase; ``count`` copies of it run (one per block)."""

    name: str
    kind: Literal["linear", "attention", "elementwise", "lm_head"]
    count: int
    ops: float
    weight_bytes: float
    activation_bytes: float
    sparse_capable: bool = False
    fused: bool = False  # runs inside a neighbouring kernel: its activations never reach HBM

    def bytes(self, sparse: bool = False) -> float:
        weights = self.weight_bytes * (sparse_weight_fraction() if sparse and self.sparse_capable else 1.0)
        return weights + self.activation_bytes

    def ceiling(self, gpu: GPU, sparse: bool = False) -> float:
        return gpu.peak_ops * (2.0 if sparse and self.sparse_capable else 1.0)

    def intensity(self, sparse: bool = False) -> float:
        moved = self.bytes(sparse)
        return self.ops / moved if moved else float("inf")

    def bound(self, gpu: GPU, sparse: bool = False) -> Bound:
        if self.fused:
            return "fused"
        ridge = self.ceiling(gpu, sparse) / gpu.bandwidth
        return "memory" if self.intensity(sparse) < ridge else "compute"

    def time_s(self, gpu: GPU, sparse: bool = False) -> float:
        """Roofline time of one copy: the slower of math and memory traffic."""
        return max(self.ops / self.ceiling(gpu, sparse), self.bytes(sparse) / gpu.bandwidth)


def operators(shape: ModelShape, phase: Phase, bytes_per_element: int = 2,
              fused_elementwise: bool = True) -> list[Operator]:
    """Every operator of one forward in ``phase``: each distinct block's operators (count = the
    blocks of that shape), then the final norm and ``lm_head`` (count = 1). Embedding lookups move
    a few rows and are left out."""
    ops_list: list[Operator] = []
    for block, count in shape.distinct_blocks():
        ops_list.extend(_block_operators(block, phase, bytes_per_element, fused_elementwise, count))
    b, n, h = bytes_per_element, phase.rows, shape.hidden
    traffic, fused = (0.0 if fused_elementwise else 1.0), fused_elementwise
    ops_list.append(Operator("norm", "elementwise", 1, 4.0 * n * h, h * b, traffic * 2.0 * n * h * b, fused=fused))
    ops_list.append(Operator("lm_head", "lm_head", 1, 2.0 * n * h * shape.vocab, h * shape.vocab * b,
                             n * (h + shape.vocab) * b))
    return ops_list


def _block_operators(shape: ModelShape, phase: Phase, b: int, fused_elementwise: bool, L: int) -> list[Operator]:
    """The operators of one decoder block of ``shape``, each run ``L`` times."""
    n = phase.rows
    traffic = 0.0 if fused_elementwise else 1.0  # element-wise activation bytes that reach HBM
    fused = fused_elementwise
    h, inter = shape.hidden, shape.intermediate
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    ops_list: list[Operator] = []

    def rmsnorm(name: str, count: int) -> Operator:
        return Operator(name, "elementwise", count, 4.0 * n * h, h * b, traffic * 2.0 * n * h * b, fused=fused)

    def residual(name: str) -> Operator:
        return Operator(name, "elementwise", L, 1.0 * n * h, 0.0, traffic * 3.0 * n * h * b, fused=fused)

    ops_list.append(rmsnorm("input_layernorm", L))
    for linear in shape.linear_shapes()[:3]:
        ops_list.append(_linear(linear, n, b, L))
    ops_list.append(Operator("rotary_embedding", "elementwise", L, 3.0 * n * (q_width + kv_width), 0.0,
                             traffic * 2.0 * n * (q_width + kv_width) * b, fused=fused))
    attention_ops = 2.0 * phase.batch * shape.heads * shape.head_dim * phase.attended_keys
    q_bytes = n * q_width * b
    kv_bytes = phase.batch * phase.kv_length * kv_width * b
    ops_list.append(Operator("attn.qk", "attention", L, attention_ops, 0.0, q_bytes + kv_bytes))
    ops_list.append(Operator("attn.av", "attention", L, attention_ops, 0.0, kv_bytes + q_bytes))
    ops_list.append(_linear(shape.linear_shapes()[3], n, b, L))
    ops_list.append(residual("residual_attn"))
    ops_list.append(rmsnorm("post_attention_layernorm", L))
    for linear in shape.linear_shapes()[4:6]:
        ops_list.append(_linear(linear, n, b, L))
    ops_list.append(Operator("mlp.act_mul", "elementwise", L, 5.0 * n * inter, 0.0, traffic * 3.0 * n * inter * b,
                             fused=fused))
    ops_list.append(_linear(shape.linear_shapes()[6], n, b, L))
    ops_list.append(residual("residual_mlp"))
    return ops_list


def _linear(linear: LinearShape, rows: int, b: int, count: int) -> Operator:
    return Operator(
        linear.name, "linear", count,
        ops=2.0 * rows * linear.in_features * linear.out_features,
        weight_bytes=float(linear.in_features * linear.out_features * b),
        activation_bytes=float(rows * (linear.in_features + linear.out_features) * b),
        sparse_capable=True,
    )


@dataclass
class Prediction:
    """Roofline time of one phase, dense and with 2:4 linear layers, and the rows behind it."""

    phase: Phase
    gpu: GPU
    operators: list[Operator] = field(repr=False)
    dense_s: float = 0.0
    sparse_s: float = 0.0

    @property
    def speedup(self) -> float:
        return self.dense_s / self.sparse_s

    def linear_speedup(self) -> float:
        """Bound for the linear layers alone (the per-GEMM ceiling)."""
        linears = [o for o in self.operators if o.sparse_capable]
        dense = sum(o.count * o.time_s(self.gpu) for o in linears)
        sparse = sum(o.count * o.time_s(self.gpu, sparse=True) for o in linears)
        return dense / sparse

    def linear_flop_fraction(self) -> float:
        total = sum(o.count * o.ops for o in self.operators)
        return sum(o.count * o.ops for o in self.operators if o.sparse_capable) / total

    def rows(self) -> list[dict]:
        """One dict per operator (per-copy numbers; ``count`` copies run), then the total."""
        out = []
        for op in self.operators:
            out.append({
                "phase": self.phase.label, "gpu": self.gpu.name, "layer": op.name, "count": op.count,
                "gflop": op.ops / 1e9, "mb_dense": op.bytes() / 1e6, "mb_2to4": op.bytes(True) / 1e6,
                "ai_dense": op.intensity(), "ai_2to4": op.intensity(True),
                "bound_dense": op.bound(self.gpu), "bound_2to4": op.bound(self.gpu, True),
                "us_dense": op.time_s(self.gpu) * 1e6, "us_2to4": op.time_s(self.gpu, True) * 1e6,
                "speedup": op.time_s(self.gpu) / op.time_s(self.gpu, True),
            })
        out.append({
            "phase": self.phase.label, "gpu": self.gpu.name, "layer": "TOTAL (all blocks)", "count": 1,
            "gflop": sum(o.count * o.ops for o in self.operators) / 1e9,
            "mb_dense": sum(o.count * o.bytes() for o in self.operators) / 1e6,
            "mb_2to4": sum(o.count * o.bytes(True) for o in self.operators) / 1e6,
            "ai_dense": float("nan"), "ai_2to4": float("nan"), "bound_dense": "", "bound_2to4": "",
            "us_dense": self.dense_s * 1e6, "us_2to4": self.sparse_s * 1e6, "speedup": self.speedup,
        })
        return out


def predict(shape: ModelShape, phase: Phase, gpu: GPU, bytes_per_element: int = 2,
            fused_elementwise: bool = True) -> Prediction:
    ops = operators(shape, phase, bytes_per_element, fused_elementwise)
    dense = sum(o.count * o.time_s(gpu) for o in ops)
    sparse = sum(o.count * o.time_s(gpu, sparse=True) for o in ops)
    return Prediction(phase, gpu, ops, dense, sparse)


def totals(shape: ModelShape, phase: Phase, bytes_per_element: int = 2) -> tuple[float, float]:
    """FLOPs and bytes moved (weights, KV cache, activations of unfused operators) of one forward."""
    ops = operators(shape, phase, bytes_per_element)
    return sum(o.count * o.ops for o in ops), sum(o.count * o.bytes() for o in ops)


def structured_ideal(dense: ModelShape, pruned: ModelShape, phase: Phase, bytes_per_element: int = 2) -> dict:
    """The speedup a smaller dense model could reach if time followed the work: ``flop_ratio``
    (dense FLOPs / pruned FLOPs), ``byte_ratio`` (bytes moved), and ``ideal``: the FLOP ratio for
    prefill (compute-bound) and the byte ratio for decode (memory-bound). Embeddings, norms,
    attention and ``lm_head`` count, unpruned or not."""
    dense_ops, dense_bytes = totals(dense, phase, bytes_per_element)
    pruned_ops, pruned_bytes = totals(pruned, phase, bytes_per_element)
    flop_ratio, byte_ratio = dense_ops / pruned_ops, dense_bytes / pruned_bytes
    return {"flop_ratio": flop_ratio, "byte_ratio": byte_ratio,
            "ideal": flop_ratio if phase.kind == "prefill" else byte_ratio}


def gemm_bound(shape: ModelShape, tokens: int, gpu: GPU, bytes_per_element: int = 2) -> float:
    """Predicted 2:4 speedup of one block's linear layers at ``tokens`` rows (dense time / sparse)."""
    ops = [_linear(s, tokens, bytes_per_element, 1) for s in shape.linear_shapes()]
    return sum(o.time_s(gpu) for o in ops) / sum(o.time_s(gpu, True) for o in ops)


# ---------------------------------------------------------------------------------------- tables
def _format_number(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if value != value or value == float("inf"):  # nan: not applicable; inf: no bytes moved
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_table(rows: list[dict], columns: Iterable[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts with the same keys)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_format_number(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def summary_rows(shape: ModelShape, phases: list[Phase], gpus: list[GPU]) -> list[dict]:
    """One row per GPU and phase: predicted dense/2:4 time and the speedup bound."""
    rows = []
    for gpu in gpus:
        for phase in phases:
            p = predict(shape, phase, gpu)
            eager = predict(shape, phase, gpu, fused_elementwise=False)
            rows.append({
                "gpu": gpu.name, "ridge_flop_per_byte": gpu.ridge, "phase": phase.label,
                "ms_dense": p.dense_s * 1e3, "ms_2to4": p.sparse_s * 1e3,
                "speedup_bound": p.speedup, "bound_unfused": eager.speedup, "linear_only_bound": p.linear_speedup(),
                "linear_flop_share": p.linear_flop_fraction(),
            })
    return rows


DEFAULT_PHASES = ("prefill:128", "prefill:512", "prefill:2048", "decode:1", "decode:8", "decode:32", "decode:1@4096")


def load_model_shape(name: str) -> ModelShape:
    """The shape of ``conf/model/<name>.yaml`` (random/embedded/local read here; hub needs its config)."""
    from omegaconf import OmegaConf

    from prunelab.config import CONF_DIR, build

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise RooflineError(f"model={name!r} has no conf/model/{name}.yaml; allowed: {', '.join(choices)}")
    return ModelShape.from_hf_config(build(OmegaConf.load(path).source, "model.source").hf_config())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m prunelab.bench.roofline", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama2_7b_shapes", help="a conf/model name (default llama2_7b_shapes)")
    parser.add_argument("--gpu", default="H100", help=f"one of {', '.join(GPUS)}, or 'all'")
    parser.add_argument("--phases", nargs="+", default=list(DEFAULT_PHASES),
                        help="prefill:TOKENS[xBATCH] or decode:BATCH[@CONTEXT]")
    parser.add_argument("--context", type=int, default=128, help="decode context when a phase gives none")
    parser.add_argument("--layers", nargs="*", default=["prefill:2048", "decode:1"],
                        help="phases whose per-layer table is printed")
    parser.add_argument("--csv", type=Path, default=None, help="also write every per-layer row here")
    args = parser.parse_args(argv)

    shape = load_model_shape(args.model)
    gpus = list(GPUS.values()) if args.gpu.lower() == "all" else [get_gpu(args.gpu)]
    phases = [parse_phase(s, args.context) for s in args.phases]
    parts = [f"# Roofline: {args.model} ({shape.layers} blocks, hidden {shape.hidden}, "
             f"{shape.prunable_parameters() / 1e9:.2f} B prunable params), fp16, dense vs 2:4"]
    for gpu in gpus:
        parts.append(f"\n{gpu.name}: {gpu.dense_tflops:g} TFLOPS dense ({2 * gpu.dense_tflops:g} 2:4), "
                     f"{gpu.bandwidth_tbs:g} TB/s, ridge {gpu.ridge:.0f} FLOP/byte (2:4 linear: {2 * gpu.ridge:.0f})"
                     f"  [{gpu.source}]")
        for spec in args.layers:
            prediction = predict(shape, parse_phase(spec, args.context), gpu)
            parts.append(f"\n## {gpu.name}, {prediction.phase.label}: per layer (one copy; count copies run)\n")
            parts.append(format_table(prediction.rows()))
    parts.append("\n## Predicted 2:4 speedup bounds\n")
    parts.append(format_table(summary_rows(shape, phases, gpus)))
    text = "\n".join(parts)
    print(text)
    if args.csv is not None:
        import csv

        all_rows = [row for gpu in gpus for phase in phases for row in predict(shape, phase, gpu).rows()]
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(all_rows[0]))
            writer.writeheader()
            writer.writerows(all_rows)
    return text


if __name__ == "__main__":
    main()
