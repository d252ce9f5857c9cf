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

from prunelab.checks import ConfigError

ComparisonGroup = Literal["row", "layer"]
COMPARISON_GROUPS: tuple[ComparisonGroup, ...] = ("row", "layer")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class PatternError(ConfigError):
    """A pattern string or a pattern/sparsity combination is not valid."""


_SORT_BELOW = 32  # groups this small (N:M) are ranked by a stable sort; larger ones by selection


def prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask over the last dimension: the ``count`` lowest scores of each row are pruned.

    Same result as a stable ascending sort (among equal scores the lower index goes first), but
    long rows use a selection (``kthvalue``, linear time) instead of a full sort.
    """
    size = scores.shape[-1]
    if count <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if count >= size:
        return torch.zeros_like(scores, dtype=torch.bool)
    if size < _SORT_BELOW:
        order = torch.sort(scores, dim=-1, stable=True).indices[..., :count]
        return torch.ones_like(scores, dtype=torch.bool).scatter_(-1, order, False)
    threshold = torch.kthvalue(scores, count, dim=-1, keepdim=True).values
    at_most = scores <= threshold
    if not (at_most.sum(dim=-1) > count).any():  # no tie straddles the threshold (the usual case)
        return ~at_most
    below = scores < threshold
    ties = at_most & ~below
    still_needed = count - below.sum(dim=-1, keepdim=True)
    pruned = below | (ties & (ties.cumsum(dim=-1) <= still_needed))
    return ~pruned


@dataclass(frozen=True)
class Unstructured:
    """Any weight may be pruned; exactly ``int(group_size * sparsity)`` per comparison group."""

    name: str = "unstructured"

    def implied_sparsity(self) -> float | None:
        return None

    def width_problem(self, in_features: int) -> str | None:
        """Why a layer with this many input columns cannot take the pattern (``None``: it can)."""
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

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or isinstance(self.m, bool) or not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise PatternError(f"pattern N:M needs integers N and M (got N={self.n!r}, M={self.m!r})")
        if not 0 < self.n < self.m:
            raise PatternError(f"pattern={self.n}:{self.m}: N:M needs 0 < N < M (got N={self.n}, M={self.m})")

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}"

    def implied_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def width_problem(self, in_features: int) -> str | None:
        if in_features % self.m:
            return f"its input size {in_features} is not a multiple of {self.m}"
        return None

    def mask(self, scores: torch.Tensor, sparsity: float | None = None, group: ComparisonGroup = "row") -> torch.Tensor:
        rows, cols = scores.shape
        if cols % self.m:
            raise PatternError(f"pattern {self.name} needs the input size ({cols}) to be a multiple of {self.m}")
        if self.m <= _RANK_UP_TO:
            return _nm_keep_by_rank(scores, self.n, self.m)
        grouped = scores.reshape(rows, cols // self.m, self.m)
        return prune_lowest(grouped, self.m - self.n).reshape(rows, cols)


_RANK_UP_TO = 8  # for small M, M(M-1) comparisons of whole columns beat a sort of tiny groups


def _nm_keep_by_rank(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M keep-mask from each entry's rank in its group (ties: lower index ranks lower), the
    same result as :func:`prune_lowest` on the groups."""
    rows, cols = scores.shape
    members = scores.reshape(-1, m).T.contiguous()  # [m, groups]: member k of every group
    rank = torch.zeros(members.shape, dtype=torch.uint8, device=scores.device)
    for i in range(m):
        for j in range(m):
            if j < i:
                rank[i] += members[j] <= members[i]
            elif j > i:
                rank[i] += members[j] < members[i]
    return (rank >= m - n).T.reshape(rows, cols)


Pattern = Unstructured | NM


def kept_score(scores: torch.Tensor, pattern: NM) -> float:
    """Sum of the scores an N:M mask keeps (what a channel permutation tries to raise)."""
    return float(scores[pattern.mask(scores)].sum())


def deal_channels(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Column order that deals input channels out by importance, one per tier, into groups of ``m``.

    Channels are ranked by their summed score (stable, descending) and cut into ``m`` tiers of
    ``in / m``; group ``g`` gets the ``g``-th channel of every tier (snake order, so the strongest
    and weakest of neighbouring tiers pair up). Returns ``order``: position ``k`` holds column ``order[k]``.
    """
    cols = scores.shape[1]
    groups = cols // m
    ranked = torch.sort(scores.sum(dim=0), descending=True, stable=True).indices
    tiers = ranked.view(m, groups).clone()
    tiers[1::2] = tiers[1::2].flip(-1)
    return tiers.T.reshape(-1)


def refine_channels(scores: torch.Tensor, order: torch.Tensor, pattern: NM, rounds: int = 2,
                    chunk_elements: int = 1 << 23) -> torch.Tensor:
    """Improve a column order by linear sum assignment, one slot of the ``m``-groups at a time.

    With the other ``m - 1`` members of every group fixed, the channel in slot ``t`` of group ``g``
    adds ``sum_rows max(x_row, a_row)`` to the kept score, ``a`` being the ``n``-th largest of the
    fixed members; the optimal assignment of the slot's channels to groups is then an assignment
    problem (scipy). Each step can only raise the kept score.
    """
    from scipy.optimize import linear_sum_assignment

    n, m = pattern.n, pattern.m
    rows, cols = scores.shape
    groups = cols // m
    slots = order.view(groups, m).clone()
    for _ in range(rounds):
        changed = False
        for slot in range(m):
            others = scores[:, slots[:, [k for k in range(m) if k != slot]].reshape(-1)].view(rows, groups, m - 1)
            nth_largest = torch.topk(others, n, dim=-1).values[..., -1]  # [rows, groups]
            candidates = scores[:, slots[:, slot]]  # [rows, channel]
            gain = torch.empty(groups, groups, dtype=torch.float64)
            step = max(1, chunk_elements // max(1, rows * groups))
            for start in range(0, groups, step):
                block = nth_largest[:, start:start + step]
                gain[start:start + step] = torch.maximum(block.unsqueeze(-1), candidates.unsqueeze(1)).sum(dim=0).double()
            group_index, channel_index = linear_sum_assignment(gain.numpy(), maximize=True)
            assignment = torch.as_tensor(channel_index[group_index.argsort()])
            if not torch.equal(assignment, torch.arange(groups)):
                current = float(gain.diagonal().sum())
                best = float(gain[torch.arange(groups), assignment].sum())
                if best > current * (1 + 1e-12):
                    slots[:, slot] = slots[assignment, slot]
                    changed = True
        if not changed:
            break
    return slots.reshape(-1)


def parse_pattern(spec: str) -> Pattern:
    """``"unstructured"`` or ``"N:M"`` with ``0 < N < M``."""
    text = str(spec).strip().lower()
    if text in {"unstructured", "none", "dense"}:
        return Unstructured()
    match = _NM.match(text)
    if not match:
        raise PatternError(f"pattern={spec!r} is not valid; allowed: 'unstructured' or 'N:M' such as 2:4, 4:8")
    return NM(int(match.group(1)), int(match.group(2)))


def check_sparsity(pattern: Pattern, sparsity: float) -> None:
    """N:M fixes the sparsity at 1 - N/M; any other requested value is a user error."""
    implied = pattern.implied_sparsity()
    if implied is not None and abs(implied - sparsity) > 1e-9:
        shown = (lambda v: f"{v:g}") if f"{implied:g}" != f"{sparsity:g}" else repr
        raise PatternError(
            f"pattern={pattern.name} implies sparsity={shown(implied)}, but sparsity={shown(sparsity)} was "
            f"requested; pass sparsity={shown(implied)} with this pattern"
        )
