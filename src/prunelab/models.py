"""Loading LLaMA-family models and the one adapter that knows where their parts live.

Sources (``model.source``): ``embedded`` (the offline SmolLM2-135M prepared by ``make setup``),
``hub`` (a Hugging Face id, online), ``local`` (any HF directory) and ``random`` (a LLaMA of a
configured shape with random weights, for tests and for speed measurements without a download).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunelab import assets

log = logging.getLogger(__name__)

SOURCES = ("embedded", "hub", "local", "random")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HUB_HOST = ("huggingface.co", 443)


class ModelConfigError(ValueError):
    """The model config points at something that cannot be loaded here."""


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub answers; False offline or with HF_HUB_OFFLINE=1."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelConfigError(f"model.device={name!r} but CUDA is not available here; use model.device=cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelConfigError(f"model.dtype={name!r} is not valid; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def model_location(cfg: DictConfig) -> str:
    """Directory or hub id to load from; raises a user-facing error when it cannot work here."""
    source = cfg.source
    if source not in SOURCES:
        raise ModelConfigError(f"model.source={source!r} is not valid; allowed: {', '.join(SOURCES)}")
    if source == "embedded":
        return str(assets.require(assets.paths().smollm2_dir, "The embedded SmolLM2-135M model"))
    if source == "local":
        if not cfg.path:
            raise ModelConfigError("model=local needs model.path=/path/to/hf_model_dir")
        path = Path(str(cfg.path)).expanduser()
        if not (path / "config.json").exists():
            raise ModelConfigError(
                f"model.path={cfg.path!r} is not a Hugging Face model directory (no config.json at {path})"
            )
        return str(path)
    if source == "hub":
        if not hub_reachable() and not _hub_cached(str(cfg.path)):
            raise ModelConfigError(
                f"model.path={cfg.path!r} is a hub id, but the Hugging Face hub is unreachable (offline) "
                f"and the model is not in the local HF cache. Offline, use model=smollm2_135m (embedded), "
                f"model=tiny_random, or model=local model.path=/dir/with/checkpoint"
            )
        return str(cfg.path)
    return str(assets.require(assets.paths().smollm2_dir, "The tokenizer of the embedded model"))


def load_config(cfg: DictConfig):
    """The model's HF config without loading weights (cheap; used to validate before heavy work)."""
    from transformers import AutoConfig, LlamaConfig

    if cfg.source == "random":
        return LlamaConfig(**OmegaConf.to_container(cfg.architecture, resolve=True))
    return AutoConfig.from_pretrained(model_location(cfg))


def load_model(cfg: DictConfig):
    """Return ``(model, tokenizer)`` on the CPU in ``cfg.dtype``, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    location = model_location(cfg)
    dtype = resolve_dtype(cfg.dtype)
    tokenizer = AutoTokenizer.from_pretrained(cfg.get("tokenizer") or location)
    if cfg.source == "random":
        torch.manual_seed(int(cfg.get("seed", 0)))
        config = load_config(cfg)
        # Token ids of the borrowed tokenizer must fit the embedding table.
        config.vocab_size = max(config.vocab_size, len(tokenizer))
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build in the target dtype: a 7B-shaped model in fp32 needs 27 GB
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    else:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, low_cpu_mem_usage=True)
    model.eval()
    model.config.use_cache = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def context_length(config) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 0)


@dataclass
class DecoderAdapter:
    """Where the parts of a LLaMA-style decoder live (LLaMA, Mistral, Qwen2 share this layout)."""

    model: nn.Module

    @property
    def backbone(self) -> nn.Module:
        return self.model.model

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.layers

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def entry_modules(self) -> list[nn.Module]:
        """Modules that run before the first block (moved to the work device for capture)."""
        return [m for m in (self.backbone.embed_tokens, getattr(self.backbone, "rotary_emb", None)) if m is not None]

    @staticmethod
    def linear_layers(block: nn.Module) -> dict[str, nn.Linear]:
        """Every linear layer of one block by its name inside the block (``self_attn.q_proj``...)."""
        return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}

    def prunable_parameters(self) -> int:
        return sum(
            layer.weight.numel() for block in self.blocks for layer in self.linear_layers(block).values()
        )
