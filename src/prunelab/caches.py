"""What runs of a sweep can share exactly, cached on disk under ``assets.cache_dir()/stats``.

- Calibration token windows (``calib_tokens/``): they depend only on the tokenizer, the set,
  ``nsamples``, ``seqlen`` and the seed, so they are reusable across methods, sparsities and
  patterns. Block 0's inputs are these windows through the embedding (recomputed, cheap); block
  ``l``'s statistics depend on how blocks ``< l`` were pruned, so nothing later is reusable.
- Dense-pass summaries (``dense_pass/``): one value per block of the *dense* model (OWL's
  outlier ratios, ShortGPT's Block Influence, FLAP's per-channel fluctuations), keyed by the
  content of the block-0 inputs and every block's weights plus what the method says they depend on
  (:meth:`PruningMethod.dense_pass_key`), so an OWL sweep over sparsity or lambda runs the dense pass once.

A cache that cannot be written (read-only, full, or a file where its folder should be) costs the
reuse, never the run: one warning, and the run goes on uncached.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import assets, data, offload
from prunelab.files import atomic_write

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

    A cached entry is used only if it is readable and its key, dtype, shape
    (``[nsamples, seqlen]``) and checksum are right; otherwise it is discarded with a warning that
    names the file, and the windows are drawn again. ``root`` defaults to ``assets.cache_dir()/stats``.
    """
    key = cache_key(spec, tokenizer)
    path = cache_path(key, root)
    if path.exists():
        found = _cached_windows(path, json.dumps(key, sort_keys=True), (spec.nsamples, spec.seqlen))
        if found is not None:
            log.info("calibration windows from cache %s", path)
            return found
    input_ids = data.calibration_tokens(spec, tokenizer)
    buffer = io.BytesIO()
    torch.save({"key": json.dumps(key, sort_keys=True), "input_ids": input_ids, "sha256": _digest(input_ids)}, buffer)
    _store(path, buffer.getvalue())
    return input_ids


_unwritable: set[str] = set()  # cache folders already warned about in this process


def _store(path: Path, payload: str | bytes) -> None:
    """Write a cache entry; a cache that cannot be written is warned about once and skipped."""
    try:
        atomic_write(path, payload)
    except OSError as error:
        folder = str(path.parent)
        if folder not in _unwritable:
            _unwritable.add(folder)
            log.warning("cache %s cannot be written (%s: %s); running without it (results are the same, "
                        "only not reused)", folder, type(error).__name__, error.strerror or error)


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(_tensor_bytes(tensor)).hexdigest()


def _discard(path: Path, why: str, what: str) -> None:
    log.warning("%s cache entry %s is %s; discarding it and computing it again", what, path, why)
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a directory in its place, or a read-only cache: left, and not used
        pass


def _cached_windows(path: Path, key: str, shape: tuple[int, int]) -> torch.Tensor | None:
    try:
        stored = torch.load(path, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is rebuilt
        _discard(path, f"unreadable ({type(error).__name__}: {str(error)[:120]})", "calibration-window")
        return None
    ids = stored.get("input_ids") if isinstance(stored, dict) else None
    if not isinstance(stored, dict) or stored.get("key") != key:
        why = "for another key" if isinstance(stored, dict) else "not a cache entry"
    elif not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or tuple(ids.shape) != shape:
        why = (f"of the wrong shape/dtype ({tuple(ids.shape)} {ids.dtype}, expected {shape} torch.int64)"
               if isinstance(ids, torch.Tensor) else "missing its windows")
    elif stored.get("sha256") != _digest(ids):
        why = "corrupt (checksum mismatch)"
    else:
        return ids
    _discard(path, why, "calibration-window")
    return None


# ------------------------------------------------------------------------- dense-pass summaries
def content_key(hidden: Iterable[torch.Tensor], blocks: Iterable[nn.Module], extra: dict) -> str:
    """Hash of the block-0 inputs, every block's weights and ``extra`` (what else the values depend on)."""
    blocks = list(blocks)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({**extra, "blocks": len(blocks)}, sort_keys=True).encode())
    for states in hidden:
        digest.update(_tensor_bytes(states))
    for block in blocks:
        for name, tensor in offload.state_items(block):  # offloaded tensors read from their store
            digest.update(name.encode())
            digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def dense_summaries(key: str, count: int, compute: Callable[[], list[Any]], root: Path | None = None) -> tuple[list[Any], bool]:
    """``compute()`` through the disk cache; returns the values and whether they came from it.

    One number per block (OWL's outlier ratios, ShortGPT's Block Influence) is stored as JSON;
    anything else (FLAP's per-channel tensors) with ``torch.save`` and read back weights-only. A
    cached entry is used only if it reads, holds ``count`` finite values and its checksum is right;
    otherwise it is discarded with a warning that names the file, and computed again.
    """
    folder = (root or assets.cache_dir() / "stats") / "dense_pass"
    for path in (folder / f"{key}.json", folder / f"{key}.pt"):
        values = _cached_summaries(path, count) if path.exists() else None
        if values is not None:
            log.info("dense-pass summaries from cache %s", path)
            return values, True
    values = list(compute())
    if _numbers(values):
        values = [float(v) for v in values]
        _store(folder / f"{key}.json", json.dumps({"values": values, "sha256": _summary_digest(values)}))
    else:
        buffer = io.BytesIO()
        torch.save({"values": values, "sha256": _summary_digest(values)}, buffer)
        _store(folder / f"{key}.pt", buffer.getvalue())
    return values, False


def _numbers(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _summary_digest(values: Any) -> str:
    if isinstance(values, list) and _numbers(values):
        return hashlib.sha256(json.dumps([float(v) for v in values]).encode()).hexdigest()
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(f"tensor{tuple(value.shape)}{value.dtype}".encode())
            digest.update(_tensor_bytes(value))
        elif isinstance(value, dict):
            for name in sorted(value):
                digest.update(str(name).encode())
                feed(value[name])
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed(values)
    return digest.hexdigest()


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cached_summaries(path: Path, count: int) -> list[Any] | None:
    try:
        stored = json.loads(path.read_text()) if path.suffix == ".json" else torch.load(path, weights_only=True)
        values = stored["values"]
    except Exception as error:  # noqa: BLE001 - any unreadable entry is recomputed
        _discard(path, f"unreadable ({type(error).__name__})", "dense-pass")
        return None
    if not isinstance(values, list) or len(values) != count:
        why = f"of the wrong size ({len(values) if isinstance(values, list) else type(values).__name__}, expected {count})"
    elif not all(_finite(v) for v in values):
        why = "holding values that are not finite numbers"
    elif stored.get("sha256") != _summary_digest(values):
        why = "corrupt or edited (checksum mismatch)"
    else:
        return [float(v) for v in values] if _numbers(values) else values
    _discard(path, why, "dense-pass")
    return None
