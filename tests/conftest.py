"""Shared fixtures: the real Hydra config composed with the compose API, and a tiny random LLaMA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from prunelab import assets, models

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(*overrides: str) -> DictConfig:
    """The project's config as `python run.py <overrides>` would see it (without Hydra's run dir)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer():
    cfg = compose_config("model=tiny_random")
    return models.load_model(cfg.model)


@pytest.fixture
def tiny_model(tiny_model_and_tokenizer):
    """A fresh copy of the tiny random LLaMA for each test (tests prune it in place)."""
    import copy

    model, _ = tiny_model_and_tokenizer
    return copy.deepcopy(model)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_and_tokenizer):
    return tiny_model_and_tokenizer[1]


def embedded_model_available() -> bool:
    return (assets.paths().smollm2_dir / "model.safetensors").exists()


requires_embedded = pytest.mark.skipif(
    not embedded_model_available(), reason="embedded SmolLM2 not prepared: run `make setup`"
)
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
