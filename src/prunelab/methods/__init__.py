"""Pruning methods, one module each, built from the ``method`` config group."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from omegaconf import DictConfig

from prunelab.methods.base import LayerStats, PruningMethod, ScoreMethod, StatsNeeds
from prunelab.methods.dense import Dense
from prunelab.methods.magnitude import Magnitude
from prunelab.methods.owl import OWL
from prunelab.methods.ria import RIA
from prunelab.methods.sparsegpt import SparseGPT
from prunelab.methods.wanda import Wanda

_REGISTRY: dict[str, Callable[..., PruningMethod]] = {
    "dense": Dense,
    "magnitude": Magnitude,
    "wanda": Wanda,
    "ria": RIA,
    "sparsegpt": SparseGPT,
    **{f"owl_{base}": partial(OWL, base) for base in ("wanda", "magnitude", "ria", "sparsegpt")},
}


def register(name: str, factory: Callable[..., PruningMethod]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(_REGISTRY)


def build_method(cfg: DictConfig | dict) -> PruningMethod:
    """Instantiate ``cfg.name`` with the remaining keys of the method config as arguments."""
    options = dict(cfg)
    name = options.pop("name")
    if name not in _REGISTRY:
        raise ValueError(f"method.name={name!r} is unknown; allowed: {', '.join(available())}")
    return _REGISTRY[name](**options)


__all__ = ["LayerStats", "PruningMethod", "ScoreMethod", "StatsNeeds", "build_method", "available", "register"]
