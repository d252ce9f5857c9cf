"""``export=gguf``: the model in memory as GGUF files that llama.cpp loads, and llama.cpp's perplexity on our windows.

The float file (F16 or F32) is written here with the ``gguf`` package's ``GGUFWriter``, in the layout
llama.cpp's ``convert_hf_to_gguf.py`` gives a LLaMA: tensor names ``blk.N.attn_q`` ..., the q/k rows
permuted for llama.cpp's RoPE (pairs of consecutive values instead of HF's two halves), norms and
biases in F32, a tied ``lm_head`` left out (llama.cpp reuses ``token_embd``), the byte-level BPE
tokenizer (tokens, merges, token types, special ids, pre-tokenizer name). Quantized types (Q8_0,
Q4_K_M, ...) come from llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``) on that file.

Shapes: a model whose blocks all have the same widths (dense, unstructured, N:M, ShortGPT's fewer
blocks, uniform structured pruning) is written as architecture ``llama``. Per-block widths (FLAP,
adaptive structure) are written as architecture ``deci``: llama.cpp's hparams loader reads
``head_count``, ``head_count_kv`` and ``feed_forward_length`` as per-layer arrays for every
architecture, but its ``llama`` tensor loader and graph use layer 0's widths for every layer; its
``deci`` model (Nemotron-NAS, otherwise the same LLaMA block) sizes each layer from the arrays.
Both take the compensation biases of FLAP (``attn_output.bias``, ``ffn_down.bias``).

Widths a quantized type's block does not divide are not refused by llama.cpp: Q4_K (256 values per
super-block) falls back to Q5_0 (32), Q6_K to Q8_0, and a width that 32 does not divide to F16;
:func:`tensor_types` reads back what each file holds, and the run records it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prunelab import checks
from prunelab.checks import ConfigError

log = logging.getLogger(__name__)

FLOAT_TYPES = ("F32", "F16")
QUANT_TYPES = {"Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q4_K_M": 15, "Q4_0": 2}  # llama_ftype values (llama.h)
TYPES = (*FLOAT_TYPES, *QUANT_TYPES)
INSTALL = "llama-cpp-python (make setup builds it from source; pyproject.toml pins it)"
F16_TOLERANCE = 0.005  # llama.cpp's perplexity of the F16/F32 file may differ from ours by at most 0.5%


@dataclass(frozen=True)
class GGUFExport:
    """``conf/export/gguf.yaml``."""

    name: str = "gguf"
    types: tuple[str, ...] = ("F16", "Q8_0", "Q4_K_M")
    threads: int = 2  # llama.cpp threads for quantizing and perplexity
    ppl_tolerance: float = field(default=F16_TOLERANCE, metadata={"between": (0, 1)})
    perplexity: bool = True  # llama.cpp's perplexity on the run's evaluation windows, per type
    ffn_multiple: int = 0  # >0: every MLP width padded with zero channels up to a multiple (exact; see pad_ffn)

    def __post_init__(self) -> None:
        if not self.types:
            raise ConfigError(f"export.types=[] writes nothing; allowed: a list of {', '.join(TYPES)}")
        for index, name in enumerate(self.types):
            checks.choice(name, f"export.types[{index}]", TYPES)
        if len(set(self.types)) != len(self.types):
            raise ConfigError(f"export.types={list(self.types)} lists a type twice; allowed: each of {', '.join(TYPES)} once")
        checks.positive_int(self.threads, "export.threads")
        checks.number(self.ppl_tolerance, "export.ppl_tolerance", low=0, high=1, low_open=True,
                      what="largest relative perplexity difference of a float GGUF to ours")
        checks.boolean(self.perplexity, "export.perplexity")
        check_ffn_multiple(self.ffn_multiple, "export.ffn_multiple")


def check_ffn_multiple(value: Any, key: str) -> int:
    return checks.integer(value, key, low=0, high=4096, what="MLP widths padded up to a multiple of it; 0 = as they are")


def read_settings(node: Any) -> GGUFExport:
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    allowed = set(GGUFExport.__dataclass_fields__)
    for key in plain:
        if key not in allowed:
            raise ConfigError(f"export.{key} is not a setting of export=gguf; allowed: {', '.join(sorted(allowed))}")
    if "types" in plain:
        types = plain["types"]
        plain["types"] = (types,) if isinstance(types, str) else tuple(types)
    return GGUFExport(**plain)


# ------------------------------------------------------------------------------ what can be written
def llama_cpp_problem() -> str | None:
    """Why llama-cpp-python cannot be used here (``None``: it imports and its library loads)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"the package llama_cpp is not installed; install {INSTALL}"
    try:
        import llama_cpp  # noqa: F401 - loads libllama
    except Exception as error:  # noqa: BLE001 - a broken build: the shared library does not load
        first = str(error).splitlines()[0] if str(error) else ""
        return f"llama_cpp does not import ({type(error).__name__}: {first}); reinstall {INSTALL}"
    return None


def rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def check_model(hf_config, tokenizer_dir: str | None, key: str = "export") -> None:
    """What GGUF cannot express for this model, from its config and tokenizer file (no weights)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "llama":
        raise ConfigError(f"{key}=gguf writes the LLaMA layout; model_type={model_type!r} is not it; allowed: llama")
    parameters = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = parameters.get("rope_type") or (getattr(hf_config, "rope_scaling", None) or {}).get("rope_type") or "default"
    if rope_type != "default":
        raise ConfigError(f"{key}=gguf: rope_type={rope_type!r} (RoPE scaling) is not written by this exporter; allowed: default")
    for bias in ("attention_bias", "mlp_bias"):
        if getattr(hf_config, bias, False):
            raise ConfigError(f"{key}=gguf: the model's {bias}=true (q/k/v or gate/up biases) is not written by this "
                              "exporter; allowed: false (only the output-projection biases FLAP adds are written)")
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    if head_dim % 2:
        raise ConfigError(f"{key}=gguf: head_dim={head_dim} is odd; RoPE rotates pairs; allowed: an even head_dim")
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").exists():
        tokenizer_kind(json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text()), key)


def tokenizer_kind(backend: dict, key: str = "export") -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE ``tokenizer.json``; other tokenizers are refused."""
    model = backend.get("model") or {}
    parts = _pre_tokenizers(backend.get("pre_tokenizer"))
    byte_level = any(p.get("type") == "ByteLevel" for p in parts)
    if model.get("type") != "BPE" or not byte_level:
        raise ConfigError(f"{key}=gguf writes GPT2-style byte-level BPE tokenizers; this one is "
                          f"{model.get('type')!r} with pre-tokenizers {[p.get('type') for p in parts]}; allowed: BPE + ByteLevel")
    if any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts):
        return "smollm"  # digits one by one, then GPT-2's regex (SmolLM, llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM)
    return "gpt-2"  # llama.cpp's name for GPT-2's regex (LLAMA_VOCAB_PRE_TYPE_GPT2)


def _pre_tokenizers(node: dict | None) -> list[dict]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [p for child in node.get("pretokenizers", []) for p in _pre_tokenizers(child)]
    return [node]


# ------------------------------------------------------------------------------------ the writer
@dataclass(frozen=True)
class LayerWidths:
    heads: int
    kv_heads: int
    intermediate: int


def padded(width: int, multiple: int) -> int:
    return -(-width // multiple) * multiple if multiple else width


def layer_widths(model, ffn_multiple: int = 0) -> list[LayerWidths]:
    widths = []
    for block in model.model.layers:
        head_dim = int(block.self_attn.head_dim)
        widths.append(LayerWidths(block.self_attn.q_proj.out_features // head_dim, block.self_attn.k_proj.out_features // head_dim,
                                  padded(block.mlp.gate_proj.out_features, ffn_multiple)))
    return widths


def pad_ffn(weight: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``weight`` with zeros appended along ``dim`` up to ``width``: zero rows of gate/up give
    ``silu(0) * 0 = 0`` in the added channels, zero columns of down read nothing from them, so the
    block computes the same function; llama.cpp's quantizer then finds widths its blocks divide
    (a width 32 does not divide is stored in F16 even in a Q4_K_M file)."""
    missing = width - weight.shape[dim]
    if missing <= 0:
        return weight
    return F.pad(weight, (0, missing) if dim == 1 else (0, 0, 0, missing))


def rope_permute(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """HF's q/k rows (per head: first halves, then second halves of the rotated pairs) in llama.cpp's
    order (pairs adjacent), as ``convert_hf_to_gguf.py``'s ``LlamaModel.permute``."""
    heads = weight.shape[0] // head_dim
    return weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _array(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    tensor = tensor.detach().to("cpu", torch.float32)
    return tensor.numpy().astype(np.float16 if dtype == "F16" else np.float32)


def write_gguf(model, tokenizer, path: Path, dtype: str = "F16", name: str = "prunelab",
               ffn_multiple: int = 0) -> dict[str, Any]:
    """Write ``model`` (a LLaMA in memory, pruned or shrunk) as a ``dtype`` (F16/F32) GGUF file;
    ``ffn_multiple``: MLP widths padded with zero channels up to a multiple of it (:func:`pad_ffn`)."""
    import gguf

    config = model.config
    widths = layer_widths(model, ffn_multiple)
    layers = model.model.layers
    head_dim = int(layers[0].self_attn.head_dim)
    uniform = all(w == widths[0] for w in widths)
    arch = "llama" if uniform else "deci"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    embeddings = model.get_input_embeddings().weight
    vocab = int(embeddings.shape[0])
    writer.add_name(name)
    writer.add_block_count(len(layers))
    writer.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config.hidden_size))
    if uniform:
        writer.add_feed_forward_length(widths[0].intermediate)
        writer.add_head_count(widths[0].heads)
        writer.add_head_count_kv(widths[0].kv_heads)
    else:
        writer.add_feed_forward_length([w.intermediate for w in widths])
        writer.add_head_count([w.heads for w in widths])
        writer.add_head_count_kv([w.kv_heads for w in widths])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "F16" else gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, tokenizer, vocab)

    def matrix(tensor_name: str, tensor: torch.Tensor) -> None:
        writer.add_tensor(tensor_name, _array(tensor, dtype))

    def vector(tensor_name: str, tensor: torch.Tensor) -> None:
        writer.add_tensor(tensor_name, _array(tensor, "F32"))

    matrix("token_embd.weight", embeddings)
    vector("output_norm.weight", model.model.norm.weight)
    output = model.get_output_embeddings().weight
    if output.data_ptr() != embeddings.data_ptr():
        matrix("output.weight", output)
    for index, block in enumerate(layers):
        attention, mlp = block.self_attn, block.mlp
        prefix = f"blk.{index}"
        vector(f"{prefix}.attn_norm.weight", block.input_layernorm.weight)
        matrix(f"{prefix}.attn_q.weight", rope_permute(attention.q_proj.weight, head_dim))
        matrix(f"{prefix}.attn_k.weight", rope_permute(attention.k_proj.weight, head_dim))
        matrix(f"{prefix}.attn_v.weight", attention.v_proj.weight)
        matrix(f"{prefix}.attn_output.weight", attention.o_proj.weight)
        if attention.o_proj.bias is not None:
            vector(f"{prefix}.attn_output.bias", attention.o_proj.bias)
        vector(f"{prefix}.ffn_norm.weight", block.post_attention_layernorm.weight)
        width = widths[index].intermediate
        matrix(f"{prefix}.ffn_gate.weight", pad_ffn(mlp.gate_proj.weight, width, 0))
        matrix(f"{prefix}.ffn_up.weight", pad_ffn(mlp.up_proj.weight, width, 0))
        matrix(f"{prefix}.ffn_down.weight", pad_ffn(mlp.down_proj.weight, width, 1))
        if mlp.down_proj.bias is not None:
            vector(f"{prefix}.ffn_down.bias", mlp.down_proj.bias)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, path)
    return {"arch": arch, "blocks": len(layers), "uniform": uniform}


def _add_tokenizer(writer, tokenizer, vocab: int) -> None:
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = tokenizer_kind(backend)
    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(reverse) >= vocab:
        raise ConfigError(f"export=gguf: the tokenizer has token id {max(reverse)}, beyond the embedding's {vocab} rows")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab):
        if index not in reverse:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for what, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                        ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if value is not None:
            getattr(writer, f"add_{what}_token_id")(int(value))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id))
    writer.add_add_eos_token(False)


# --------------------------------------------------------------------------- llama.cpp's side
def quantize(source: Path, target: Path, type_name: str, threads: int) -> None:
    """llama.cpp's quantizer (``llama_model_quantize``) from the float file ``source`` to ``type_name``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[type_name]
    params.nthread = threads
    partial = target.with_name(target.name + ".partial")
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
    if code != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({source.name} -> {type_name}) returned {code}")
    os.replace(partial, target)


def tensor_types(path: Path) -> dict[str, dict[str, int]]:
    """What a GGUF file holds, by ggml type: tensor count and bytes."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    counts: Counter = Counter()
    sizes: Counter = Counter()
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] += 1
        sizes[tensor.tensor_type.name] += int(tensor.n_bytes)
    return {name: {"tensors": counts[name], "bytes": sizes[name]} for name in sorted(counts)}


def describe_types(types: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{name} {v['tensors']} ({v['bytes'] / 2**20:.1f} MB)" for name, v in types.items())


def load(path: Path, context: int, threads: int, logits_all: bool = True, mmap: bool = True):
    """A llama-cpp-python ``Llama`` on ``path`` with one sequence of ``context`` tokens."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context, n_threads=threads,
                 n_threads_batch=threads, logits_all=logits_all, use_mmap=mmap, verbose=False, seed=0)


def logits(llm, ids: list[int]) -> torch.Tensor:
    """llama.cpp's logits ``[len(ids), vocab]`` for one sequence fed as token ids (the cache cleared first)."""
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))


def perplexity(path: Path, windows: torch.Tensor, threads: int) -> tuple[float, int]:
    """``exp(mean next-token NLL)`` of llama.cpp on ``windows`` (``[n, seqlen]`` token ids), as
    :func:`prunelab.evaluate.perplexity` computes it from ours."""
    llm = load(path, int(windows.shape[1]), threads)
    total, count = 0.0, 0
    try:
        for window in windows:
            scores = logits(llm, window.tolist())[:-1]
            total += float(F.cross_entropy(scores, window[1:].long(), reduction="sum"))
            count += int(window.numel() - 1)
    finally:
        llm.close()
    return math.exp(total / count), count


# ------------------------------------------------------------------------------------ the stage
def export(settings: GGUFExport, model, tokenizer, windows: dict[str, torch.Tensor], ours: dict[str, float],
           out_dir: Path, into: dict[str, Any]) -> None:
    """Write every ``settings.types`` file into ``out_dir``; with ``settings.perplexity``, llama.cpp's
    perplexity on ``windows`` (per dataset) beside ``ours``. ``into`` (the run's metrics) is filled
    as results come in. Raises :class:`prunelab.outcome.OutcomeError` when a float file's
    perplexity differs from ours by more than ``settings.ppl_tolerance``."""
    from prunelab.outcome import OutcomeError

    problem = llama_cpp_problem() if any(t in QUANT_TYPES for t in settings.types) or settings.perplexity else None
    if problem:
        raise ConfigError(f"export=gguf cannot quantize or load GGUF files here: {problem}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    start = time.perf_counter()
    floats = [t for t in settings.types if t in FLOAT_TYPES]
    source_type = "F32" if "F32" in floats else "F16"  # what the quantizer reads
    for type_name in dict.fromkeys([*floats, *([source_type] if len(floats) < len(settings.types) else [])]):
        files[type_name] = out_dir / f"model-{type_name}.gguf"
        layout = write_gguf(model, tokenizer, files[type_name], type_name, ffn_multiple=settings.ffn_multiple)
        into["gguf/arch"] = layout["arch"]
        into["gguf/blocks"] = layout["blocks"]
    for type_name in settings.types:
        if type_name in QUANT_TYPES:
            files[type_name] = out_dir / f"model-{type_name}.gguf"
            quantize(files[source_type], files[type_name], type_name, settings.threads)
    if source_type not in settings.types:
        files.pop(source_type).unlink()
    into["time/gguf_write_s"] = time.perf_counter() - start
    into["artifacts/gguf_dir"] = str(out_dir)
    for type_name, path in files.items():
        types = tensor_types(path)
        into[f"gguf/bytes_{type_name}"] = path.stat().st_size
        into[f"gguf/tensor_types_{type_name}"] = describe_types(types)
        log.info("GGUF %s: %s, %.1f MB (%s)", type_name, path, path.stat().st_size / 2**20, describe_types(types))
    if not settings.perplexity:
        return
    failures = []
    for type_name, path in files.items():
        for dataset, batch in windows.items():
            start = time.perf_counter()
            value, tokens = perplexity(path, batch, settings.threads)
            reference = ours[dataset]
            difference = value / reference - 1
            into[f"llamacpp/ppl_{dataset}_{type_name}"] = value
            into[f"llamacpp/ppl_{dataset}_{type_name}_rel_diff"] = difference
            into[f"llamacpp/ppl_{dataset}_tokens"] = tokens
            log.info("llama.cpp perplexity %s %s: %.4f (ours %.4f, %+.3f%%; %d tokens, %.1f s)", dataset, type_name,
                     value, reference, 100 * difference, tokens, time.perf_counter() - start)
            if type_name in FLOAT_TYPES and abs(difference) > settings.ppl_tolerance:
                failures.append(f"{dataset} {type_name}: llama.cpp {value:.4f} vs ours {reference:.4f} "
                                f"({100 * difference:+.2f}%, allowed +/-{100 * settings.ppl_tolerance:g}%)")
    if failures:
        raise OutcomeError("the GGUF export does not reproduce the model's perplexity in llama.cpp: " + "; ".join(failures))
