"""The one interface every pruning method implements.

A method sees one linear layer at a time: its weight ``[out, in]``, the calibration statistics
of that layer's input, the sparsity for this layer and the pattern. Most methods only define a
*score* (higher = more important) and a comparison group; the pattern turns scores into a mask.
Methods that also change the surviving weights (SparseGPT) override :meth:`prune_layer`.
A method may also plan different sparsities per decoder block (OWL) from a pass over the dense
model: it declares ``needs.dense_pass``, summarises each dense block in
:meth:`summarize_dense_block` and turns the summaries into sparsities in :meth:`plan_block_sparsity`.

A *structured* method (:class:`StructuredMethod`) removes whole units instead of single weights:
attention head groups and MLP channels, which span several linear layers, or whole decoder blocks
(:mod:`prunelab.structure` defines the units). It decides per block in :meth:`StructuredMethod.removal`
(under the sequential protocol when it declares ``needs.norms``), or for all blocks at once from a
dense pass in :meth:`StructuredMethod.plan_removals` (FLAP's global comparison, block removal).

Methods are built by Hydra from ``conf/method/<name>.yaml`` (``_target_`` + the method's own
knobs); constructors check their arguments and raise :class:`~prunelab.checks.ConfigError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from prunelab import checks
from prunelab.patterns import (
    COMPARISON_GROUPS,
    NM,
    ComparisonGroup,
    Pattern,
    PatternError,
)
from prunelab.stats import BlockIO, LayerStats, StatsNeeds
from prunelab.structure import (
    ATTENTION_OUTPUT,
    COUNT_RULES,
    MLP_OUTPUT,
    BlockGeometry,
    Removal,
    Scope,
    check_uniform,
    group_scores,
    lowest,
    uniform_counts,
)

# Said of every method that compares scores across a whole matrix (magnitude, RIA, SparseGPT).
EXACT_K = ("Deliberate deviation from the reference code: the reference keeps weights above a "
           "`sorted[int(n·s)]`-style threshold, pruning `int(n·s)+1` weights plus every weight tied at the "
           "threshold (on quantized checkpoints up to 61.8% instead of 50%); we prune exactly `⌊n·s⌋`, ties "
           "broken by index, so the achieved sparsity is the one asked for.")


class PruningMethod(ABC):
    """Base class: prune one layer; optionally plan per-block sparsities first."""

    name: str = "base"
    # What the method does, for a report's "Methods" section (markdown, one paragraph; our deliberate
    # deviations from the reference code included). Empty: the report points to the class instead.
    rule: str = ""
    needs: StatsNeeds = StatsNeeds()
    prunes: bool = True  # False for the dense baseline: its runs remove nothing
    structured: bool = False  # True: removes whole units (heads, channels, blocks), see StructuredMethod

    @abstractmethod
    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Return the new weight (same shape and dtype) with pruned entries set to zero."""

    @classmethod
    def describe(cls, configs: list[dict]) -> str:
        """The report's paragraph on this method; ``configs``: the method configs a study ran it with."""
        return cls.rule

    def check_pattern(self, pattern: Pattern) -> None:
        """Raise :class:`~prunelab.checks.ConfigError` when this method cannot prune with ``pattern``
        (checked with the run plan, before any weights load)."""

    def check_sparsity(self, sparsity: float, pattern: Pattern) -> None:
        """Raise :class:`~prunelab.checks.ConfigError` when this method cannot reach ``sparsity``
        (checked with the run plan; OWL: every block's sparsity must stay in [0, 0.99])."""

    def summarize_dense_block(self, linears: dict[str, nn.Linear], stats: dict[str, LayerStats],
                              io: BlockIO | None = None) -> Any:
        """One value per block of the dense model (``needs.dense_pass`` methods only): a number, or
        a dict of tensors; ``io`` holds the block's inputs and outputs."""
        raise NotImplementedError(f"{type(self).__name__} declares no dense pass")

    def dense_pass_key(self) -> dict:
        """What the dense-pass summaries depend on besides the model and the calibration inputs
        (they are cached under this key)."""
        return {}

    def plan_block_sparsity(self, summaries: list[float] | None, block_sizes: list[int], sparsity: float,
                            pattern: Pattern) -> list[float]:
        """Sparsity of each decoder block; uniform unless a method (OWL) says otherwise.

        ``summaries``: :meth:`summarize_dense_block` of every block (``needs.dense_pass``), else None;
        ``block_sizes``: the prunable parameters of every block.
        """
        return [sparsity] * len(block_sizes)

    @property
    def evidence(self) -> dict:
        """Method-specific facts recorded in the run's metrics (e.g. OWL's block sparsities)."""
        return {}


class ScoreMethod(PruningMethod):
    """A method defined by an importance score and the group in which scores are compared."""

    comparison: ComparisonGroup = "row"

    def __init__(self, comparison: ComparisonGroup = "row") -> None:
        self.comparison = checks.choice(comparison, "comparison", COMPARISON_GROUPS)

    @abstractmethod
    def score(self, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """Importance of every weight, ``[out, in]``, fp32; higher means keep."""

    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        if sparsity <= 0:
            return weight
        keep = pattern.mask(self.score(weight, stats), sparsity, self.comparison)
        return weight * keep.to(weight.dtype)


class StructuredMethod(PruningMethod):
    """Removes whole units that span several linear layers; the model physically shrinks.

    ``sparsity`` keeps its meaning: the fraction of the in-scope linear weights removed (a head
    group counts its q, k, v rows and o columns; an MLP channel its gate and up rows and down
    column). Subclasses implement :meth:`removal` (one block, from its weights and statistics) or,
    with ``needs.dense_pass``, :meth:`plan_removals` (every block at once, from the dense pass).
    """

    structured = True
    removes_blocks = False  # True: whole decoder blocks go (plan_removals fills removed_blocks)

    def __init__(self) -> None:
        self.removed_blocks: list[int] = []
        self.planned: dict[int, Removal] = {}

    def prune_layer(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} removes units of whole blocks; prunelab.prune calls removal()")

    def check_pattern(self, pattern: Pattern) -> None:
        if isinstance(pattern, NM):
            raise PatternError(
                f"pattern={pattern.name} does not apply to method={self.name}: it removes whole attention heads, MLP "
                "channels or blocks, not weights within groups of M; allowed: pattern=unstructured (the default)")

    def check_structure(self, geometries: list[BlockGeometry], sparsity: float, scope: Scope) -> None:
        """Raise :class:`~prunelab.checks.ConfigError` when ``sparsity`` cannot be planned on a model of
        these block shapes (checked with the run plan on a meta-device skeleton, before weights load)."""

    def removal(self, index: int, geometry: BlockGeometry, linears: dict[str, nn.Linear],
                stats: dict[str, LayerStats], sparsity: float, scope: Scope) -> Removal:
        """What block ``index`` loses; by default what :meth:`plan_removals` decided for it."""
        return self.planned.get(index, Removal())

    def plan_removals(self, summaries: list[Any] | None, geometries: list[BlockGeometry], sparsity: float,
                      scope: Scope) -> None:
        """Decide for every block at once (``needs.dense_pass`` methods): fill :attr:`planned` and,
        for block removal, :attr:`removed_blocks`."""


COUNT_RULE = ("`method.count_rule=exact` (default) removes from every block the group count nearest to `s · groups`, "
              "then the MLP channels that bring the block nearest to `s` of its weights; `authors` takes the authors' "
              "`int(s · groups)` groups and `int(s · channels)` channels, which removes less.")


def channel_multiple_value(value) -> int:
    """``method.channel_multiple``: kept MLP widths rounded to a multiple of this (1 = as the method chose)."""
    return checks.integer(value, "channel_multiple", low=1, high=1 << 20,
                          what="kept MLP channels per block rounded to a multiple of this (1 = off; 8 or 64 for GPU GEMM tiles)")


class ChannelScoreMethod(StructuredMethod):
    """Uniform structured pruning by a score per input channel of the output projections.

    Every block in scope loses the same fraction of its weights (:func:`~prunelab.structure.uniform_counts`):
    the lowest-scoring head groups (a group's score sums the scores of its o_proj input channels)
    and MLP channels (scores of the down_proj input channels), as in the authors' ``wanda_sp`` and
    ``mag_sp``, which score only the output projection of each unit. ``count_rule`` says how many:
    ``exact`` (nearest to ``sparsity`` of every block) or ``authors`` (``int(sparsity * groups)`` groups
    and ``int(sparsity * channels)`` channels, as the authors' code; less than ``sparsity``).
    """

    def __init__(self, count_rule: str = "exact", channel_multiple: int = 1) -> None:
        super().__init__()
        self.count_rule = checks.choice(count_rule, "count_rule", COUNT_RULES)
        self.channel_multiple = channel_multiple_value(channel_multiple)

    @abstractmethod
    def channel_scores(self, layer: nn.Linear, stats: LayerStats) -> torch.Tensor:
        """Importance of every input channel of ``layer`` (``[in]``, fp32); higher means keep."""

    def check_structure(self, geometries: list[BlockGeometry], sparsity: float, scope: Scope) -> None:
        check_uniform(geometries, sparsity, scope, self.name, self.count_rule, self.channel_multiple)

    def removal(self, index: int, geometry: BlockGeometry, linears: dict[str, nn.Linear],
                stats: dict[str, LayerStats], sparsity: float, scope: Scope) -> Removal:
        groups, channels = uniform_counts(geometry, sparsity, scope, self.count_rule, self.channel_multiple)
        removal = Removal()
        if groups:
            scores = self.channel_scores(linears[ATTENTION_OUTPUT], stats.get(ATTENTION_OUTPUT, LayerStats()))
            removal.groups = lowest(group_scores(scores, geometry), groups)
        if channels:
            removal.channels = lowest(self.channel_scores(linears[MLP_OUTPUT], stats.get(MLP_OUTPUT, LayerStats())), channels)
        return removal
