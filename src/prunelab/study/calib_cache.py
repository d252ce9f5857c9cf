"""Calibration token windows cached on disk, so a sweep draws and tokenizes its calibration set once.

The windows depend only on the tokenizer, the set, ``nsamples``, ``seqlen`` and the seed, so
they are exactly reusable across methods, sparsities and patterns. They are what every run of a
sweep shares under the sequential protocol: block 0's inputs are these windows through the
embedding (recomputed, cheap), and block ``l``'s statistics depend on how blocks ``< l`` were
pruned, so nothing later is reusable. Files live in ``assets.cache_dir()/stats/calib_tokens``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

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
