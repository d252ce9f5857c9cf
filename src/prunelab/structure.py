"""Units of structured pruning in a LLaMA block, and the surgery that removes them for real.

A leaf module (torch and :mod:`prunelab.checks` only): the structured methods choose units with
it, :mod:`prunelab.prune` applies their choice, :mod:`prunelab.models` rebuilds a saved shrunk
model from its per-layer shape map.

Units (``W`` is ``[out, in]``):

- **MLP channel** ``k``: row ``k`` of ``gate_proj`` and ``up_proj``, column ``k`` of ``down_proj``
  (``3 * hidden`` weights).
- **Attention head group** ``g``: with grouped-query attention, query head ``h`` reads KV head
  ``h // group_size`` (``repeat_kv`` repeats each KV head ``group_size`` times in a row). The unit
  is one KV group: its ``group_size`` query heads (rows of ``q_proj``, columns of ``o_proj``) and
  its key and value head (rows of ``k_proj``, ``v_proj``), ``hidden * head_dim * (2 * group_size + 2)``
  weights. Removing whole groups keeps every group the same size, so the stock attention code runs
  unchanged; for multi-head attention (``group_size = 1``) a group is one head, the authors' unit.
- **Block**: a whole decoder block (:func:`remove_blocks`).

Removed rows and columns are gone (new, smaller ``nn.Linear`` modules); :func:`mask_attention` and
:func:`mask_mlp` zero the same units instead (the authors' ``--unstr`` mode), which must give the
same logits. Bias compensation (FLAP) adds ``W[:, removed] @ mean(X[:, removed])`` to the output
projection's bias in both modes (:class:`Removal` carries the means; :func:`apply` computes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.checks import ConfigError

ATTENTION_OUTPUT = "self_attn.o_proj"
MLP_OUTPUT = "mlp.down_proj"
SHAPE_MAP_KEY = "prunelab_layers"  # per-layer shapes in a saved config.json where layers differ
STRUCTURE_KEY = "prunelab_structure"  # what was pruned, in every saved shrunk config.json


# --------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class BlockGeometry:
    """The sizes of one decoder block that structured pruning needs."""

    hidden: int
    heads: int          # query heads
    kv_heads: int
    head_dim: int
    intermediate: int

    @classmethod
    def from_block(cls, block: nn.Module) -> BlockGeometry:
        attention, mlp = block.self_attn, block.mlp
        head_dim = int(attention.head_dim)
        return cls(hidden=int(attention.q_proj.in_features), heads=attention.q_proj.out_features // head_dim,
                   kv_heads=attention.k_proj.out_features // head_dim, head_dim=head_dim,
                   intermediate=int(mlp.gate_proj.out_features))

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads if self.kv_heads else 0

    @property
    def groups(self) -> int:
        return self.kv_heads

    @property
    def group_params(self) -> int:
        """Weights one head group owns: q rows and o columns of its query heads, its k and v rows."""
        return self.hidden * self.head_dim * (2 * self.group_size + 2)

    @property
    def channel_params(self) -> int:
        """Weights one MLP channel owns: a row of gate and up, a column of down."""
        return 3 * self.hidden

    @property
    def attention_params(self) -> int:
        return self.groups * self.group_params

    @property
    def mlp_params(self) -> int:
        return self.intermediate * self.channel_params

    @property
    def params(self) -> int:
        return self.attention_params + self.mlp_params

    def group_channels(self, groups: torch.Tensor | list[int]) -> torch.Tensor:
        """Indices of the query-side channels (q rows, o columns) of these groups."""
        width = self.group_size * self.head_dim
        return _spans(groups, width)

    def kv_channels(self, groups: torch.Tensor | list[int]) -> torch.Tensor:
        """Indices of the k/v rows of these groups."""
        return _spans(groups, self.head_dim)

    def describe(self) -> dict:
        return {"num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "intermediate_size": self.intermediate}


def _spans(units: torch.Tensor | list[int], width: int) -> torch.Tensor:
    units = torch.as_tensor(units, dtype=torch.long).reshape(-1).cpu()  # unit indices live on the CPU; the
    if units.numel() == 0:  # surgery moves them to each weight's device (scores may come from a GPU)
        return units
    return (units.unsqueeze(1) * width + torch.arange(width)).reshape(-1)


def group_scores(channel_scores: torch.Tensor, geometry: BlockGeometry, reduce: str = "sum") -> torch.Tensor:
    """One score per head group from scores of the o_proj input channels (``[heads * head_dim]``)."""
    grouped = channel_scores.reshape(geometry.groups, geometry.group_size * geometry.head_dim).float()
    return grouped.sum(dim=1) if reduce == "sum" else grouped.mean(dim=1)


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (ascending) of the ``count`` lowest scores; among ties the lower index goes first."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores.float(), stable=True).indices[:count]
    return torch.sort(order).values


# ---------------------------------------------------------------------------------- scope
@dataclass(frozen=True)
class Scope:
    """Which units may go: blocks by index, and attention head groups and/or MLP channels."""

    blocks: tuple[int, ...]
    attention: bool = True
    mlp: bool = True

    def params(self, geometry: BlockGeometry) -> int:
        """Weights of one block that are in scope."""
        return geometry.attention_params * self.attention + geometry.mlp_params * self.mlp


# ------------------------------------------------------------------------------- decisions
@dataclass
class Removal:
    """What one block loses: head groups and MLP channels. With ``attention_mean`` / ``mlp_mean``
    (the mean of every input channel of o_proj / down_proj over the calibration tokens) the removed
    channels' mean contribution is added to that projection's bias (FLAP's bias compensation)."""

    groups: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    channels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    attention_mean: torch.Tensor | None = None
    mlp_mean: torch.Tensor | None = None

    def params(self, geometry: BlockGeometry) -> int:
        return len(self.groups) * geometry.group_params + len(self.channels) * geometry.channel_params

    @property
    def empty(self) -> bool:
        return len(self.groups) == 0 and len(self.channels) == 0


# How a uniform method turns a sparsity into unit counts: ``exact`` (ours) brings every block nearest to
# the sparsity; ``authors`` is the FLAP authors' rule (prune_wanda_sp, prune_magnitude_sp, UL-UM).
COUNT_RULES = ("exact", "authors")


def nearest_count(target: float, unit: int, available: int) -> int:
    """How many units of ``unit`` weights come closest to removing ``target`` weights (ties: fewer)."""
    if unit <= 0 or target <= 0:
        return 0
    return max(0, min(available, math.ceil(target / unit - 0.5)))


def unit_count(target: float, unit: int, available: int, count_rule: str = "exact") -> int:
    """Units of ``unit`` weights that remove about ``target`` weights: the nearest count (``exact``),
    or the count rounded down (``authors``: their ``int(...)``, e.g. FLAP's ``cal_remove_neuron``)."""
    if count_rule == "exact":
        return nearest_count(target, unit, available)
    return max(0, min(available, int(target / unit))) if unit > 0 and target > 0 else 0


def aligned_removal(removed: int, available: int, multiple: int) -> int:
    """Channels to remove so that the kept count is a multiple of ``multiple`` (the nearest one, at
    least ``multiple``; ties: keep more). GPU GEMMs lose their fast tiles on odd widths: on an H200,
    LLaMA-2-7B shapes with 30% of channels removed (7,706 kept) ran slower than dense at 2,048
    tokens, 50% (5,504 kept) at 0.82-0.86 of its ideal (docs/gpu.md). ``multiple=1``: unchanged."""
    if multiple <= 1 or removed <= 0:
        return removed
    kept = available - removed
    aligned = max(multiple, math.floor(kept / multiple + 0.5) * multiple)
    return max(0, available - min(aligned, available))


def uniform_counts(geometry: BlockGeometry, sparsity: float, scope: Scope, count_rule: str = "exact",
                   channel_multiple: int = 1) -> tuple[int, int]:
    """Head groups and MLP channels one block removes.

    ``exact``: the block loses ``sparsity`` of its in-scope weights: the group count nearest to
    ``sparsity * groups``, then the channel count that brings the block's total nearest to
    ``sparsity * in-scope weights`` (groups are coarse; channels fine). ``authors``: each module by
    itself, ``int(sparsity * groups)`` groups and ``int(sparsity * channels)`` channels (the FLAP
    authors' code; their unit is a head, ours a KV group), which removes less than ``sparsity``.
    ``channel_multiple`` > 1 then moves the channel count so the kept MLP width is a multiple of it
    (:func:`aligned_removal`).
    """
    if count_rule == "authors":
        return (int(sparsity * geometry.groups) if scope.attention else 0,
                aligned_removal(int(sparsity * geometry.intermediate), geometry.intermediate, channel_multiple)
                if scope.mlp else 0)
    groups = nearest_count(sparsity * geometry.attention_params, geometry.group_params, geometry.groups) if scope.attention else 0
    if not scope.mlp:
        return groups, 0
    rest = sparsity * scope.params(geometry) - groups * geometry.group_params
    channels = nearest_count(rest, geometry.channel_params, geometry.intermediate)
    return groups, aligned_removal(channels, geometry.intermediate, channel_multiple)


def check_uniform(geometries: list[BlockGeometry], sparsity: float, scope: Scope, method: str,
                  count_rule: str = "exact", channel_multiple: int = 1) -> None:
    """Reject a sparsity whose uniform removal would empty the attention or the MLP of a block."""
    for index in scope.blocks:
        geometry = geometries[index]
        groups, channels = uniform_counts(geometry, sparsity, scope, count_rule, channel_multiple)
        if channel_multiple > geometry.intermediate:
            raise ConfigError(f"method.channel_multiple={channel_multiple} is wider than the MLP of layers.{index} "
                              f"({geometry.intermediate} channels); allowed: 1 to {geometry.intermediate}")
        if scope.attention and groups >= geometry.groups:
            # the group count is the one nearest to sparsity * groups: all of them from (groups - 1/2) / groups on
            allowed = f"sparsity < {(geometry.groups - 0.5) / geometry.groups:.4f} or target.modules=mlp"
            raise ConfigError(
                f"sparsity={sparsity:g} with method={method} would remove every attention head of layers.{index} "
                f"(all {geometry.groups} KV head groups, {geometry.heads} query heads); allowed: {allowed}")
        if scope.mlp and channels >= geometry.intermediate:
            raise ConfigError(
                f"sparsity={sparsity:g} with method={method} would remove every MLP channel of layers.{index} "
                f"({geometry.intermediate}); allowed: a lower sparsity or target.modules=attention")


# --------------------------------------------------------------------------------- surgery
def compensation(weight: torch.Tensor, removed: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``W[:, removed] @ mean[removed]``: the removed inputs' mean contribution to the output (fp32)."""
    if removed.numel() == 0:
        return torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
    return weight[:, removed].float() @ mean[removed].to(weight.device, torch.float32)


def _keep(size: int, removed: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[removed.cpu()] = False
    return keep.nonzero().reshape(-1)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    layer.weight.data = weight.contiguous()
    if bias is not None:
        layer.bias.data = bias.to(weight.dtype).contiguous()
    return layer


def _rows(layer: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    rows = rows.to(layer.weight.device)
    return _linear(layer.weight.data[rows], None if layer.bias is None else layer.bias.data[rows])


def _columns(layer: nn.Linear, columns: torch.Tensor, extra_bias: torch.Tensor | None) -> nn.Linear:
    return _linear(layer.weight.data[:, columns.to(layer.weight.device)], _add_bias(layer, extra_bias))


def _add_bias(layer: nn.Linear, extra: torch.Tensor | None) -> torch.Tensor | None:
    if extra is None:
        return None if layer.bias is None else layer.bias.data
    base = torch.zeros(layer.out_features, dtype=torch.float32, device=layer.weight.device) if layer.bias is None \
        else layer.bias.data.float()
    return base + extra.to(base.device, torch.float32)


def shrink_attention(attention: nn.Module, geometry: BlockGeometry, removed_groups: torch.Tensor,
                     bias: torch.Tensor | None = None) -> None:
    """Remove head groups for real: q/k/v rows and o columns go; ``bias`` is added to o_proj."""
    if removed_groups.numel() == 0 and bias is None:
        return
    kept = _keep(geometry.groups, removed_groups)
    query, kv = geometry.group_channels(kept), geometry.kv_channels(kept)
    attention.q_proj = _rows(attention.q_proj, query)
    attention.k_proj = _rows(attention.k_proj, kv)
    attention.v_proj = _rows(attention.v_proj, kv)
    attention.o_proj = _columns(attention.o_proj, query, bias)


def shrink_mlp(mlp: nn.Module, geometry: BlockGeometry, removed_channels: torch.Tensor,
               bias: torch.Tensor | None = None) -> None:
    """Remove MLP channels for real: gate/up rows and down columns go; ``bias`` is added to down_proj."""
    if removed_channels.numel() == 0 and bias is None:
        return
    kept = _keep(geometry.intermediate, removed_channels)
    mlp.gate_proj = _rows(mlp.gate_proj, kept)
    mlp.up_proj = _rows(mlp.up_proj, kept)
    mlp.down_proj = _columns(mlp.down_proj, kept, bias)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(kept)


def _zero(layer: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> None:
    if rows is not None:
        layer.weight.data[rows.to(layer.weight.device)] = 0
        if layer.bias is not None:
            layer.bias.data[rows.to(layer.weight.device)] = 0
    if columns is not None:
        layer.weight.data[:, columns.to(layer.weight.device)] = 0


def _set_bias(layer: nn.Linear, extra: torch.Tensor | None) -> None:
    if extra is not None:
        layer.bias = nn.Parameter(_add_bias(layer, extra).to(layer.weight.dtype), requires_grad=False)


def mask_attention(attention: nn.Module, geometry: BlockGeometry, removed_groups: torch.Tensor,
                   bias: torch.Tensor | None = None) -> None:
    """Zero the same head groups in place (shapes kept): the masked twin of :func:`shrink_attention`."""
    query, kv = geometry.group_channels(removed_groups), geometry.kv_channels(removed_groups)
    for layer, rows in ((attention.q_proj, query), (attention.k_proj, kv), (attention.v_proj, kv)):
        _zero(layer, rows=rows)
    _zero(attention.o_proj, columns=query)
    _set_bias(attention.o_proj, bias)


def mask_mlp(mlp: nn.Module, geometry: BlockGeometry, removed_channels: torch.Tensor,
             bias: torch.Tensor | None = None) -> None:
    """Zero the same MLP channels in place: the masked twin of :func:`shrink_mlp`."""
    _zero(mlp.gate_proj, rows=removed_channels)
    _zero(mlp.up_proj, rows=removed_channels)
    _zero(mlp.down_proj, columns=removed_channels)
    _set_bias(mlp.down_proj, bias)


def apply(block: nn.Module, removal: Removal, shrink: bool = True) -> None:
    """Apply one block's :class:`Removal`: for real (``shrink``) or by zeroing the same units; the
    compensating biases are computed from the weights before anything is removed."""
    geometry = BlockGeometry.from_block(block)
    query = geometry.group_channels(removal.groups)
    attention_bias = None if removal.attention_mean is None else \
        compensation(block.self_attn.o_proj.weight.data, query, removal.attention_mean)
    mlp_bias = None if removal.mlp_mean is None else \
        compensation(block.mlp.down_proj.weight.data, removal.channels, removal.mlp_mean)
    attention_step, mlp_step = (shrink_attention, shrink_mlp) if shrink else (mask_attention, mask_mlp)
    attention_step(block.self_attn, geometry, removal.groups, attention_bias)
    mlp_step(block.mlp, geometry, removal.channels, mlp_bias)


def remove_blocks(model: nn.Module, removed: list[int]) -> None:
    """Delete decoder blocks; the others are renumbered (KV-cache slots) and the config follows."""
    layers = model.model.layers
    kept = [block for index, block in enumerate(layers) if index not in set(removed)]
    if not kept:
        raise ValueError("removing every decoder block leaves no model")
    model.model.layers = nn.ModuleList(kept)
    for index, block in enumerate(kept):
        if hasattr(block.self_attn, "layer_idx"):
            block.self_attn.layer_idx = index
    config = model.config
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [t for i, t in enumerate(layer_types) if i not in set(removed)]


# --------------------------------------------------------------------- shapes of a saved model
def layer_shapes(model: nn.Module) -> list[dict]:
    """Per block: head counts, MLP width and which output projections carry a bias."""
    shapes = []
    for block in model.model.layers:
        entry = BlockGeometry.from_block(block).describe()
        entry["o_proj_bias"] = block.self_attn.o_proj.bias is not None
        entry["down_proj_bias"] = block.mlp.down_proj.bias is not None
        shapes.append(entry)
    return shapes


def _resize(layer: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, device=layer.weight.device, dtype=layer.weight.dtype)


def reshape_to(model: nn.Module, shapes: list[dict]) -> None:
    """Give a freshly built model the per-layer shapes of a shrunk one (weights are loaded after)."""
    layers = model.model.layers
    if len(shapes) != len(layers):
        raise ValueError(f"{SHAPE_MAP_KEY} lists {len(shapes)} layers but the config has {len(layers)}")
    for block, shape in zip(layers, shapes):
        attention, mlp = block.self_attn, block.mlp
        hidden, head_dim = attention.q_proj.in_features, int(attention.head_dim)
        query, kv = int(shape["num_attention_heads"]) * head_dim, int(shape["num_key_value_heads"]) * head_dim
        inter = int(shape["intermediate_size"])
        attention.q_proj = _resize(attention.q_proj, hidden, query, attention.q_proj.bias is not None)
        attention.k_proj = _resize(attention.k_proj, hidden, kv, attention.k_proj.bias is not None)
        attention.v_proj = _resize(attention.v_proj, hidden, kv, attention.v_proj.bias is not None)
        attention.o_proj = _resize(attention.o_proj, query, hidden, bool(shape.get("o_proj_bias")))
        if query // head_dim and kv // head_dim:
            attention.num_key_value_groups = (query // head_dim) // (kv // head_dim)
        mlp.gate_proj = _resize(mlp.gate_proj, hidden, inter, mlp.gate_proj.bias is not None)
        mlp.up_proj = _resize(mlp.up_proj, hidden, inter, mlp.up_proj.bias is not None)
        mlp.down_proj = _resize(mlp.down_proj, inter, hidden, bool(shape.get("down_proj_bias")))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = inter
