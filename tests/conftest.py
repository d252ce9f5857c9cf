"""Shared fixtures: the real Hydra config composed with the compose API, a tiny random LLaMA, and
the test tiers: ``slow`` (the real embedded model; ``make test-all``), ``gpu`` (skipped without
CUDA), ``network`` (skipped without the Hugging Face hub)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from prunelab import assets, models
from prunelab.config import CONF_DIR as _CONF_DIR
from prunelab.config import build, compose

CONF_DIR = str(_CONF_DIR)
ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_random", "calib_data.nsamples=4", "eval.max_windows=2", "eval.ppl_datasets=[wiki]", "logger=none"]


def compose_config(*overrides: str) -> DictConfig:
    """The project's config as `python run.py <overrides>` would see it (without Hydra's run dir)."""
    return compose(*overrides)


def build_method(*overrides: str):
    """The method object of the composed config (``method=ria``, ``ria_alpha=0.3``...)."""
    return build(compose_config(*overrides).method, "method")


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer():
    cfg = compose_config("model=tiny_random")
    return build(cfg.model.source, "model.source").load(torch.float32)


@pytest.fixture
def tiny_model(tiny_model_and_tokenizer):
    """A fresh copy of the tiny random LLaMA for each test (tests prune it in place)."""
    model, _ = tiny_model_and_tokenizer
    return copy.deepcopy(model)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_and_tokenizer):
    return tiny_model_and_tokenizer[1]


def embedded_model_available() -> bool:
    return (assets.paths().smollm2_dir / "model.safetensors").exists()


def requires_embedded(test):
    """A check on the real embedded model: the ``slow`` tier, skipped when it is not prepared."""
    skip = pytest.mark.skipif(not embedded_model_available(), reason="embedded SmolLM2 not prepared: run `make setup`")
    return pytest.mark.slow(skip(test))


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests skip without CUDA, ``network`` tests without the hub, each with its reason."""
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    offline = pytest.mark.skip(reason="needs the Hugging Face hub (unreachable)")
    hub = None
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "network" in item.keywords:
            hub = models.hub_reachable() if hub is None else hub
            if not hub:
                item.add_marker(offline)
