"""Sparsity patterns: which weights compete with which when a mask is chosen from scores.

A pattern turns a score matrix ``[out, in]`` (higher = more important) into a keep-mask of the
same shape. Ties are broken deterministically by a stable sort: among equal scores the one with
the lower flat index is pruned first, so the achieved sparsity is exact even on quantized
checkpoints where many weights share a magnitude.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

ComparisonGroup = Literal["row", "layer"]
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class PatternError(ValueError):
    """A pattern string or a pattern/sparsity combination is not valid."""


def prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask over the last dimension: the ``count`` lowest scores of each row are pruned."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if count <= 0:
        return mask
    order = torch.sort(scores, dim=-1, stable=True).indices[..., :count]
    return mask.scatter_(-1, order, False)


@dataclass(frozen=True)
class Unstructured:
    """Any weight may be pruned; exactly ``int(group_size * sparsity)`` per comparison group."""

    name: str = "unstructured"

    def implied_sparsity(self) -> float | None:
        return None

    def mask(self, scores: torch.Tensor, sparsity: float, group: ComparisonGroup = "row") -> torch.Tensor:
        if group == "row":
            return prune_lowest(scores, int(scores.shape[1] * sparsity))
        if group == "layer":
            flat = scores.reshape(1, -1)
            return prune_lowest(flat, int(flat.shape[1] * sparsity)).reshape(scores.shape)
        raise PatternError(f"unknown comparison group {group!r}; allowed: 'row', 'layer'")


@dataclass(frozen=True)
class NM:
    """N:M semi-structured: in every ``m`` consecutive input columns each row keeps ``n``."""

    n: int
    m: int

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}"

    def implied_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def mask(self, scores: torch.Tensor, sparsity: float | None = None, group: ComparisonGroup = "row") -> torch.Tensor:
        rows, cols = scores.shape
        if cols % self.m:
            raise PatternError(f"pattern {self.name} needs the input size ({cols}) to be a multiple of {self.m}")
        grouped = scores.reshape(rows, cols // self.m, self.m)
        return prune_lowest(grouped, self.m - self.n).reshape(rows, cols)


Pattern = Unstructured | NM


def parse_pattern(spec: str) -> Pattern:
    """``"unstructured"`` or ``"N:M"`` with ``0 < N < M``."""
    text = str(spec).strip().lower()
    if text in {"unstructured", "none", "dense"}:
        return Unstructured()
    match = _NM.match(text)
    if not match:
        raise PatternError(f"pattern={spec!r} is not valid; allowed: 'unstructured' or 'N:M' such as 2:4, 4:8")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise PatternError(f"pattern={spec!r}: N:M needs 0 < N < M (got N={n}, M={m})")
    return NM(n, m)


def check_sparsity(pattern: Pattern, sparsity: float) -> None:
    """N:M fixes the sparsity at 1 - N/M; any other requested value is a user error."""
    implied = pattern.implied_sparsity()
    if implied is not None and abs(implied - sparsity) > 1e-9:
        raise PatternError(
            f"pattern={pattern.name} implies sparsity={implied:g}, but sparsity={sparsity:g} was "
            f"requested; pass sparsity={implied:g} with this pattern"
        )
