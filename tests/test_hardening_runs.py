"""Hardening of resuming, sweeps and run directories (issue 16): each case was a wrong or stale
result reported as fine. A changed model or code re-runs a job; two different sweeps in one
directory are reported; single runs never share a directory; a bad record is redone, not reused;
a full disk fails one job, not the sweep; an empty sweep and an unusable output directory say so
in one line; a sweep's directory name fits the file system in bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab import naming
from tests.conftest import ROOT, TINY


def cli(tmp_path: Path, *arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python run.py <arguments>`` on the tiny model, from the repository root."""
    return subprocess.run([sys.executable, "run.py", *TINY, *arguments], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------------ sweep names
@pytest.mark.parametrize("text", ["日本語のモデル" * 20, "🦙" * 80, "é" * 200], ids=["cjk", "emoji", "accented"])
def test_a_non_ascii_sweep_name_is_cut_in_bytes_and_stays_unique(tmp_path, text):
    name = naming.sweep_name(["-m", "seed=1,2", f"model.path=/data/{text}"])
    other = naming.sweep_name(["-m", "seed=1,2", f"model.path=/data/{text}x"])
    assert len(name.encode("utf-8")) <= naming.SWEEP_NAME_MAX and name != other
    (tmp_path / name).mkdir()  # not "File name too long"
    assert name.startswith("seed=1,2__model.path=_data_")
