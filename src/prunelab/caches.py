"""What runs of a sweep can share exactly, cached on disk under ``assets.cache_dir()/stats``.

- Calibration token windows (``calib_tokens/``): they depend only on the tokenizer, the set,
  ``nsamples``, ``seqlen`` and the seed, so they are reusable across methods, sparsities and
  patterns. Block 0's inputs are these windows through the embedding (recomputed, cheap); block
  ``l``'s statistics depend on how blocks ``< l`` were pruned, so nothing later is reusable.
- Dense-pass summaries (``dense_pass/``): one value per block of the *dense* model (OWL's
  outlier ratios, ShortGPT's Block Influence, FLAP's per-channel fluctuations), keyed by the
  content of the block-0 inputs and every block's weights plus what the method says they depend on (:meth:`PruningMethod.dense_pass_key`), so an OWL sweep over
  sparsity or lambda runs the dense pass once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import assets, data

log = logging.getLogger(__name__)


def tokenizer_identity(tokenizer) -> str:
    """Hash of the tokenizer's class, size and vocabulary (windows depend on nothing else of the model)."""
    known = getattr(tokenizer, "_prunelab_identity", None)
    if known is not None:
        return known
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(f"{type(tokenizer).__name__}|{len(tokenizer)}|".encode())
    digest.update(json.dumps(vocab, ensure_ascii=False).encode())
    identity = digest.hexdigest()[:16]
    tokenizer._prunelab_identity = identity  # hashing 50k entries is not free; a tokenizer does not change
    return identity


def cache_key(spec: data.CalibrationSpec, tokenizer) -> dict:
    return {"tokenizer": tokenizer_identity(tokenizer), "tokenizer_path": str(tokenizer.name_or_path),
            "dataset": spec.dataset, "nsamples": spec.nsamples, "seqlen": spec.seqlen, "seed": spec.seed}


def cache_path(key: dict, root: Path | None = None) -> Path:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return (root or assets.cache_dir() / "stats") / "calib_tokens" / f"{key['dataset']}-{name}.pt"


def calibration_tokens(spec: data.CalibrationSpec, tokenizer, root: Path | None = None) -> torch.Tensor:
    """``data.calibration_tokens`` through the disk cache (a miss computes and stores them).

    ``root`` defaults to ``assets.cache_dir()/stats``.
    """
    key = cache_key(spec, tokenizer)
    path = cache_path(key, root)
    if path.exists():
        stored = torch.load(path, weights_only=True)
        if stored.get("key") == json.dumps(key, sort_keys=True):
            log.info("calibration windows from cache %s", path)
            return stored["input_ids"]
    input_ids = data.calibration_tokens(spec, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")  # parallel jobs may race: last rename wins
    torch.save({"key": json.dumps(key, sort_keys=True), "input_ids": input_ids}, partial)
    partial.replace(path)
    return input_ids


# ------------------------------------------------------------------------- dense-pass summaries
def content_key(hidden: Iterable[torch.Tensor], blocks: Iterable[nn.Module], extra: dict) -> str:
    """Hash of the block-0 inputs, every block's weights and ``extra`` (what else the values depend on)."""
    blocks = list(blocks)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({**extra, "blocks": len(blocks)}, sort_keys=True).encode())
    for states in hidden:
        digest.update(_tensor_bytes(states))
    for block in blocks:
        for name, tensor in block.state_dict().items():
            digest.update(name.encode())
            digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def dense_summaries(key: str, count: int, compute: Callable[[], list[Any]], root: Path | None = None) -> tuple[list[Any], bool]:
    """``compute()`` through the disk cache; returns the values and whether they came from it.

    One number per block (OWL's outlier ratios, ShortGPT's Block Influence) is stored as JSON;
    anything else (FLAP's per-channel tensors) with ``torch.save`` and read back weights-only."""
    folder = (root or assets.cache_dir() / "stats") / "dense_pass"
    for path in (folder / f"{key}.json", folder / f"{key}.pt"):
        values = _read_summaries(path) if path.exists() else None
        if values is not None and len(values) == count and all(_finite(v) for v in values):
            log.info("dense-pass summaries from cache %s", path)
            return values, True
    values = compute()
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    path = folder / f"{key}.{'json' if numbers else 'pt'}"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    if numbers:
        partial.write_text(json.dumps({"values": [float(v) for v in values]}))
    else:
        torch.save({"values": values}, partial)
    partial.replace(path)
    return values, False


def _read_summaries(path: Path) -> list[Any] | None:
    try:
        if path.suffix == ".json":
            return [float(v) for v in json.loads(path.read_text()).get("values", [])]
        return list(torch.load(path, weights_only=True).get("values", []))
    except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
        return None


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return isinstance(value, (int, float)) and math.isfinite(value)
