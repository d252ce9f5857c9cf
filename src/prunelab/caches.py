"""What runs of a sweep can share exactly, cached on disk under ``assets.cache_dir()/stats``.

- Calibration token windows (``calib_tokens/``): they depend only on the tokenizer, the set,
  ``nsamples``, ``seqlen`` and the seed, so they are reusable across methods, sparsities and
  patterns. Block 0's inputs are these windows through the embedding (recomputed, cheap); block
  ``l``'s statistics depend on how blocks ``< l`` were pruned, so nothing later is reusable.
- Dense-pass summaries (``dense_pass/``): one number per block of the *dense* model (OWL's
  outlier ratios), keyed by the content of the block-0 inputs and every block's weights plus what
  the method says they depend on (:meth:`PruningMethod.dense_pass_key`), so an OWL sweep over
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


def dense_summaries(key: str, count: int, compute: Callable[[], list[float]], root: Path | None = None) -> tuple[list[float], bool]:
    """``compute()`` through the disk cache; returns the values and whether they came from it."""
    path = (root or assets.cache_dir() / "stats") / "dense_pass" / f"{key}.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            values = [float(v) for v in stored.get("values", [])]
        except (OSError, ValueError, TypeError, AttributeError):
            values = []
        if len(values) == count and all(math.isfinite(v) for v in values):
            log.info("dense-pass summaries from cache %s", path)
            return values, True
    values = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps({"values": values}))
    partial.replace(path)
    return values, False
