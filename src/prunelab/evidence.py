"""What every run leaves next to it: versions, code commit, peak memory, and ``metrics.json``."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import torch

from prunelab.files import atomic_write

PACKAGES = ("torch", "transformers", "datasets", "hydra-core", "omegaconf", "lm_eval", "wandb", "prunelab")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    if torch.cuda.is_available():
        found["cuda"] = str(torch.version.cuda)
        found["gpu"] = torch.cuda.get_device_name()
    return found


def git_commit() -> str:
    """Commit of the prunelab checkout that ran, with ``-dirty`` when it had uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


class PeakMemory:
    """Peak resident memory of this process during a ``with`` block (sampled), and CUDA peak.

    Sampling (every 20 ms) rather than ``ru_maxrss`` gives a per-run peak even when a multirun
    executes several jobs in one process.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_rss = self.start_rss = self._stage_peak = 0
        self.stage_peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._process = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._process.memory_info().rss
            self.peak_rss, self._stage_peak = max(self.peak_rss, rss), max(self._stage_peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak_rss = self.start_rss = self._stage_peak = self._process.memory_info().rss  # start: interpreter, torch, ...
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def mark(self, stage: str) -> None:
        """Record the peak since the previous mark (or the start) as ``stage``'s, and start a new one."""
        now = self._process.memory_info().rss
        self._stage_peak = max(self._stage_peak, now)
        self.stage_peaks[stage] = self._stage_peak
        self._stage_peak = now

    def metrics(self) -> dict[str, float]:
        found = {"memory/peak_rss_mb": self.peak_rss / 2**20, "memory/start_rss_mb": self.start_rss / 2**20,
                 **{f"memory/peak_rss_{stage}_mb": peak / 2**20 for stage, peak in self.stage_peaks.items()}}
        if torch.cuda.is_available():
            found["memory/peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return found


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    """Write atomically (:func:`prunelab.files.atomic_write`): a killed job, a full disk or a second
    writer never leaves half a file behind, and a failed write keeps the previous record."""
    atomic_write(path, json.dumps(_jsonable(payload), indent=2, sort_keys=False) + "\n")
