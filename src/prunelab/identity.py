"""What a result depends on besides its config: the content of the model's files and the code.

Both are part of a sweep job's fingerprint (:func:`prunelab.resume.fingerprint`), so resuming
re-runs a job whose checkpoint at ``model.path`` was replaced or whose prunelab source changed
since its record. A checkpoint's identity hashes every byte of its files (SHA-256 runs at about
1.5 GB/s: 0.3 s for the 538 MB embedded model, ~10 s for a 7B fp16 checkpoint, once per process
and file version), because a retrained checkpoint of the same shapes has the same safetensors
header; the embedded model's is the record ``make setup`` keeps.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from prunelab.files import sha256_file

# The files of a checkpoint directory that can change what a run measures (weights, configs,
# tokenizer, chat template, custom code); READMEs, images and sub-directories are left out.
MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".model", ".txt", ".jinja", ".tiktoken", ".py")


def digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@lru_cache(maxsize=1024)
def _file_hash(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(Path(path))


def directory_identity(directory: Path, prefixes: tuple[str, ...] = ()) -> str:
    """A hash of the names and SHA-256 of a checkpoint directory's files (those named by
    :data:`MODEL_SUFFIXES`; only those starting with one of ``prefixes`` when given)."""
    entries = []
    for file in sorted(Path(directory).iterdir()):
        if file.name.startswith(".") or file.suffix not in MODEL_SUFFIXES or not file.is_file():
            continue
        if prefixes and not file.name.startswith(prefixes):
            continue
        stat = file.stat()
        entries.append((file.name, stat.st_size, _file_hash(str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)))
    return digest(entries)


def _source_files() -> list[tuple[str, Path]]:
    roots = [Path(__file__).resolve().parent]
    plugins = importlib.util.find_spec("hydra_plugins.prunelab_sweeper")
    if plugins is not None and plugins.origin:
        roots.append(Path(plugins.origin).resolve().parent)
    return [(f"{root.name}/{file.relative_to(root)}", file) for root in roots for file in sorted(root.rglob("*"))
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc"]


@lru_cache(maxsize=1)
def code_identity() -> str:
    """``<prunelab version>+<hash of the package's source tree>``: the code this process imported
    (hashed once, at first use), committed or not, in a git checkout or not."""
    try:
        version = metadata.version("prunelab")
    except metadata.PackageNotFoundError:
        version = "unknown"
    tree = hashlib.sha256()
    for name, file in _source_files():
        tree.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return f"{version}+{tree.hexdigest()[:16]}"
