"""Files written so that nothing is ever read half-written, and archives extracted safely.

A leaf module (standard library only). :func:`atomic_write` writes a unique temporary file in
the target's directory, flushes it to disk and renames it over the target: a reader sees the old
file or the new one, two writers never share a temporary name, and a write that fails (a full
disk, a kill) leaves the old file as it was. The file gets the mode a plain ``open`` would give
it (0644 under the usual umask 022), not ``mkstemp``'s private 0600: results are for the group.
:func:`safe_member_path` refuses archive members that would land outside the extraction directory
(zip-slip).
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` atomically (the old content survives any failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_member_path(root: Path, member: str) -> Path:
    """Where archive ``member`` goes under ``root``; ``ValueError`` if it would leave ``root``."""
    root = Path(root).resolve()
    target = (root / member).resolve()
    if member.startswith(("/", "\\")) or ".." in Path(member).parts or not target.is_relative_to(root):
        raise ValueError(f"archive member {member!r} would be written outside {root}; refusing to extract it")
    return target


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the first row's keys) as a CSV file with a header; its folder is made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
