"""Hostile faults around files: the asset cache and its manifest, the calibration cache, and
saving the pruned model. Each case asserts that nothing wrong is used or reported as completed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from prunelab import assets
from tests.test_faults import _write


# ------------------------------------------------------------------------------------- assets
@pytest.fixture
def demo_asset(tmp_path, monkeypatch) -> Path:
    """A one-file asset group prepared and recorded by ``prepare_all`` in a cache under tmp_path."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    group = assets.AssetGroup("demo", "demo text", lambda p: [p.root / "text"],
                              lambda p: _write(p.root / "text" / "demo.jsonl", b'{"text": "a"}\n'))
    assert assets.prepare_all((group,)) == ["demo text: not prepared yet"]
    target = tmp_path / "cache" / "text" / "demo.jsonl"
    assets.require(target, "demo text")  # as prepared: accepted
    return target


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "not_records"])
def test_a_missing_or_corrupt_manifest_fails_closed_naming_make_setup(demo_asset, damage):
    manifest = demo_asset.parents[1] / "manifest.json"
    if damage == "missing":
        manifest.unlink()
    elif damage == "empty":
        manifest.write_text("")
    elif damage == "garbage":
        manifest.write_bytes(os.urandom(64))
    else:
        manifest.write_text(json.dumps({"demo": ["text/demo.jsonl"]}))
    with pytest.raises(assets.AssetMissingError, match=r"demo text at .* cannot be verified: .*manifest.json is "
                                                      r"(missing|corrupt).*Run `make setup`"):
        assets.require(demo_asset, "demo text")


def test_an_edit_that_keeps_size_and_mtime_is_refused(demo_asset):
    stat = demo_asset.stat()
    assets.require(demo_asset, "demo text")  # hashed once and remembered in this process
    demo_asset.write_bytes(b'{"text": "B"}\n')  # same size, other bytes
    os.utime(demo_asset, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back (as `touch -r` or a careful tool)
    assert demo_asset.stat().st_size == stat.st_size and demo_asset.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(assets.AssetMissingError, match="SHA-256 differs from the record.*Run `make setup`"):
        assets.require(demo_asset, "demo text")


def test_a_recorded_file_that_is_gone_or_a_path_not_recorded_is_refused(demo_asset):
    extra = _write(demo_asset.parent / "other.jsonl", b"{}\n")
    with pytest.raises(assets.AssetMissingError, match="records no file at"):
        assets.require(extra, "other text")
    demo_asset.unlink()
    with pytest.raises(assets.AssetMissingError, match="demo.jsonl: missing"):
        assets.require(demo_asset.parent, "demo text")


# -------------------------------------------------------------------------- calibration cache
@pytest.fixture
def fresh_warnings(monkeypatch):
    from prunelab import caches

    monkeypatch.setattr(caches, "_unwritable", set(), raising=False)


@pytest.mark.parametrize("blocked", ["stats_is_a_file", "entry_is_a_directory"])
def test_a_cache_that_is_a_file_runs_uncached_with_one_warning(tmp_path, tokenizer, caplog, fresh_warnings, blocked):
    from prunelab import caches, data
    from tests.test_faults import SPEC

    if blocked == "stats_is_a_file":
        root = _write(tmp_path / "stats", b"not a folder")
    else:
        root = tmp_path / "stats"
        caches.cache_path(caches.cache_key(SPEC, tokenizer), root).mkdir(parents=True)
    with caplog.at_level("WARNING"):
        for _ in range(2):
            windows = caches.calibration_tokens(SPEC, tokenizer, root=root)
            assert torch.equal(windows, data.calibration_tokens(SPEC, tokenizer))
            values, hit = caches.dense_summaries("k" * 32, 2, lambda: [0.1, 0.2], root=root)
            assert values == [0.1, 0.2] and hit is (blocked == "entry_is_a_directory" and _ > 0)
    warnings = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    # one per unwritable cache folder (windows; dense pass too when stats is a file), not one per write
    assert len(warnings) == (2 if blocked == "stats_is_a_file" else 1), caplog.text
    assert "running without it" in warnings[0].getMessage()


def test_a_read_only_calibration_cache_does_not_fail_the_run(tmp_path, monkeypatch, caplog, fresh_warnings):
    """Root ignores permissions, so the read-only cache is simulated where every cache write lands."""
    from prunelab import caches, pipeline
    from tests.conftest import TINY, compose_config

    def read_only(path, payload):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(caches, "atomic_write", read_only)
    overrides = [*TINY, "calib_data.seed=918273", "method=owl_wanda"]  # a seed no other run cached; a dense pass too
    with caplog.at_level("WARNING"):
        pipeline.main(compose_config(*overrides), output_dir=tmp_path / "run", overrides=overrides)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["metrics"]["eval/ppl_wiki"] > 0
    assert caplog.text.count("cannot be written") == 2 and "Permission denied" in caplog.text
