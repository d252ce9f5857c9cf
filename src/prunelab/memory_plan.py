"""The memory plan of a run, from the model's config alone (no weights read): the estimated peak
of every stage on every device it uses, checked against the budget before anything loads.

Stages: ``load`` (the weights arrive), ``calibrate+prune`` (the block-wise walk: one block on the
work device with every calibration sample's inputs and outputs, the method's statistics and the
pruning of its largest layer) and ``evaluate`` (perplexity: the weights, one batch's activations
and its logits). Each estimate is a sum of named parts, each a product of config sizes (README of
the formulas: docs/big_models.md), without the process's own baseline (interpreter, torch,
tokenizer), which the plan measures and prints next to it. The budget of a device is
``model.max_memory`` where given, else what the device has; ``python -m prunelab.memory_plan
model=... method=...`` prints the plan without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FP32 = 4
INDEX = 8  # int64: sort indices


@dataclass(frozen=True)
class Sizes:
    """The shapes that memory depends on (LLaMA layout)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config) -> Sizes | None:
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        values = [getattr(config, key, None) for key in keys]
        if not all(isinstance(v, int) and v > 0 for v in values):
            return None
        hidden, intermediate, layers, heads, vocab = values
        return cls(hidden, intermediate, layers, heads, getattr(config, "num_key_value_heads", None) or heads,
                   getattr(config, "head_dim", None) or hidden // heads, vocab,
                   bool(getattr(config, "tie_word_embeddings", False)))

    def linears(self) -> dict[str, tuple[int, int]]:
        """``(out, in)`` of every linear layer of one block."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (q, self.hidden), "k_proj": (kv, self.hidden), "v_proj": (kv, self.hidden),
                "o_proj": (self.hidden, q), "gate_proj": (self.intermediate, self.hidden),
                "up_proj": (self.intermediate, self.hidden), "down_proj": (self.hidden, self.intermediate)}

    def block_params(self) -> int:
        return sum(o * i for o, i in self.linears().values()) + 2 * self.hidden  # + two RMSNorms

    def params(self) -> int:
        return self.layers * self.block_params() + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


@dataclass
class Need:
    """One stage's estimated peak on one device, as named parts (bytes)."""

    stage: str
    device: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return " + ".join(f"{name} {mib(size)}" for name, size in self.parts.items() if size)


def mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB" if size < 10 * 2**30 else f"{size / 2**30:,.1f} GiB"


@dataclass(frozen=True)
class Workload:
    """What the run does, in the sizes memory depends on."""

    dtype: torch.dtype
    work_device: str  # "cpu" or "cuda:<i>"
    calib: tuple[int, int, int] | None  # nsamples, seqlen, batch size; None: no calibration data
    hessian: bool  # SparseGPT: one in x in fp32 matrix per linear layer of the block
    norms: bool  # Wanda, RIA, OWL: one fp32 vector per linear layer
    prunes: bool
    evaluation: tuple[int, int] | None  # seqlen, batch size of the perplexity windows; None: no perplexity
    mapped: bool = False  # weights read from a memory-mapped checkpoint (from_pretrained): its pages stay mapped


def working_sets(sizes: Sizes, work: Workload) -> list[Need]:
    """Each stage's memory on the work device besides the resident weights (which depend on placement)."""
    b = torch.finfo(work.dtype).bits // 8
    h, inter = sizes.hidden, sizes.intermediate
    linears = sizes.linears()
    widest = max(out * inp for out, inp in linears.values())
    needs = []
    if work.calib is not None or work.prunes:
        parts: dict[str, int] = {}
        if work.calib is not None:
            nsamples, seqlen, batch = work.calib
            batch = min(batch, nsamples)
            parts["block inputs+outputs"] = 2 * nsamples * seqlen * h * b
            parts["one mini-batch through the block"] = batch * seqlen * (4 * h + 3 * inter) * b + batch * seqlen * inter * FP32
            if work.norms:
                parts["activation norms"] = sum(inp for _, inp in linears.values()) * FP32
            if work.hessian:
                parts["Hessians"] = sum(inp * inp for _, inp in linears.values()) * FP32
        if work.prunes:
            largest = max(linears.values(), key=lambda shape: shape[0] * shape[1] + (3 * shape[1] ** 2 if work.hessian else 0))
            out, inp = largest
            parts["pruning the largest layer"] = (out * inp * FP32 + 3 * inp * inp * FP32 if work.hessian
                                                  else widest * (FP32 + INDEX + 1))  # scores, sort order, mask
        needs.append(Need("calibrate+prune", work.work_device, parts))
    if work.evaluation is not None:
        seqlen, batch = work.evaluation
        needs.append(Need("evaluate", work.work_device, {
            "activations of one batch": batch * seqlen * (4 * h + 3 * inter) * b,
            "logits": batch * seqlen * sizes.vocab * b,
            "loss (fp32 logits, log-softmax)": 2 * batch * (seqlen - 1) * sizes.vocab * FP32,
        }))
    return needs


def plan(sizes: Sizes, work: Workload, resident: dict[str, int] | None, block_bytes: int) -> list[Need]:
    """Every stage on every device: ``resident`` = weights per device of a dispatched model
    (``None``: not dispatched, the whole model in host memory; on a GPU work device evaluation
    moves it there, and calibration holds one block there at a time)."""
    b = torch.finfo(work.dtype).bits // 8
    weights = sizes.params() * b
    needs: list[Need] = []
    gpu = work.work_device != "cpu"
    if resident is None:
        needs.append(Need("load", "cpu", {"weights": weights}))
        # from_pretrained leaves the weights on the checkpoint's memory map; a pruned layer is a new tensor
        # beside its mapped pages (file-backed: reclaimable, but resident), so pruned linears count twice
        copies = ({"pruned copies of the linear weights": sizes.layers * (sizes.block_params() - 2 * sizes.hidden) * b}
                  if work.mapped and work.prunes else {})
        for need in working_sets(sizes, work):
            if gpu and need.stage == "calibrate+prune":  # the host keeps the model; one block at a time on the GPU
                needs.append(Need(need.stage, "cpu", {"weights": weights, **copies}))
                need.parts = {"one block": block_bytes, **need.parts}
            elif gpu:  # evaluation moves the whole model to the GPU
                need.parts = {"weights": weights, **need.parts}
            else:
                need.parts = {"weights": weights, **copies, **need.parts}
            needs.append(need)
        return needs
    largest_tensor = max(sizes.vocab * sizes.hidden, max(o * i for o, i in sizes.linears().values())) * b
    needs.append(Need("load", "cpu", {"weights placed on cpu": resident.get("cpu", 0), "tensor being read": largest_tensor}))
    offloaded = any(device in ("disk", "cpu") and device != work.work_device for device in resident) or "disk" in resident
    for need in working_sets(sizes, work):
        held = block_bytes if need.stage == "calibrate+prune" and offloaded else (
            max(o * i for o, i in sizes.linears().values()) * b if offloaded else 0)
        need.parts = {f"weights placed on {need.device}": resident.get(need.device, 0),
                      ("one block held" if need.stage == "calibrate+prune" else "one offloaded layer in flight"): held,
                      **need.parts}
        needs.append(need)
        if gpu and resident.get("cpu"):
            needs.append(Need(need.stage, "cpu", {"weights placed on cpu": resident["cpu"]}))
    return needs


def budget_key(device: str) -> str | int:
    return "cpu" if device == "cpu" else int(device.split(":")[1]) if ":" in device else 0


def table(needs: list[Need], budgets: dict, baseline: int) -> str:
    rows = [f"memory plan (estimated peak per stage and device; this process already holds {mib(baseline)}):"]
    for need in needs:
        budget = budgets.get(budget_key(need.device))
        rows.append(f"  {need.stage:<16} {need.device:<7} {mib(need.total):>10}  = {need.describe()}"
                    + (f"  (budget {mib(budget)})" if budget else ""))
    return "\n".join(rows)
