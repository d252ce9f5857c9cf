"""``quant=gptq`` (Frantar et al., 2023; IST-DASLab/gptq ``fasterquant``), and SparseGPT's joint
prune + quantize pass (IST-DASLab/sparsegpt ``fasterprune`` with ``--wbits``).

From ``H = 2/n X^T X`` of the layer's calibration inputs (dead diagonals set to 1 and their weight
columns zeroed, damping ``percdamp * mean(diag H)``) take ``U = cholesky_upper(H^-1)``. Walk the
columns in blocks of ``blocksize``; column ``j``'s weights are rounded onto the grid of their row
and group, the error ``(w - q) / U_jj`` is spread over the block's later columns (``U[j, j:]``) and
the block's errors over the remaining columns at once. Group grids are found, as the authors do,
when the walk reaches a group's first column, from the weights as they are then outside the current
block (``find_params(W[:, j:j+g])``); per-channel grids once from the weights before the walk.
``act_order`` walks columns by decreasing ``diag H`` (per-channel grids only here: with groups the
grid of a column would depend on the order, which the export would have to store as ``g_idx``).

Pruned weights (a fixed mask, after any method) are set to 0 before rounding, and their error is
propagated like any other: the OBS update sees them as quantized to 0, as SparseGPT does with a
given mask. ``sparsity``/``nm`` choose the mask inside the walk (the joint SparseGPT pass): per
block of columns by ``w^2 / U_jj^2`` over all rows (exactly ``floor(n s)`` pruned, as our
``method=sparsegpt``), or every M columns for N:M.
"""

from __future__ import annotations

from typing import Any

import torch

from prunelab import checks
from prunelab.checks import ConfigError
from prunelab.methods.sparsegpt import MAX_PERCDAMP, inverse_hessian_factor
from prunelab.patterns import NM, prune_lowest
from prunelab.quant import Quantization
from prunelab.quant.quantizer import QuantizedWeight, find_params, max_code


@torch.no_grad()
def obs_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, sym: bool,
                 percdamp: float = 0.01, blocksize: int = 128, act_order: bool = False,
                 pruned: torch.Tensor | None = None, sparsity: float = 0.0, nm: NM | None = None) -> QuantizedWeight:
    """GPTQ of ``weight`` (``[out, in]``) with ``hessian`` (``2/n X^T X``, ``[in, in]``); the result's
    ``weight`` is the dequantized weight in ``weight.dtype``, zero wherever pruned."""
    rows, cols = weight.shape
    work = weight.float().clone()
    joint = sparsity > 0 or nm is not None
    if joint and (pruned is not None or act_order):
        raise ValueError("a joint prune+quantize pass chooses its own mask, in the natural column order")
    fixed = pruned.clone() if pruned is not None else torch.zeros_like(work, dtype=torch.bool)
    maxq = max_code(bits)
    per_channel = group_size == -1
    if per_channel:
        scale, zero = find_params(work.masked_fill(fixed, 0.0), bits, sym)  # before dead columns, as the authors
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    elif act_order:
        raise ValueError("act_order needs per-channel grids (group_size=-1) here")
    factor, dead, perm = _factor(hessian.float(), percdamp, act_order)
    work[:, dead] = 0
    if perm is not None:
        work, fixed = work[:, perm], fixed[:, perm]
    quantized = torch.zeros_like(work)
    all_codes = torch.zeros_like(work)
    mask = fixed.clone()
    groups = 1 if per_channel else cols // group_size
    scales = torch.zeros(rows, groups, device=work.device)
    zeros = torch.zeros(rows, groups, device=work.device)
    if per_channel:
        scales[:, 0], zeros[:, 0] = scale[:, 0], zero[:, 0]

    for start in range(0, cols, blocksize):
        stop = min(start + blocksize, cols)
        block = work[:, start:stop].clone()
        errors = torch.zeros_like(block)
        block_factor = factor[start:stop, start:stop]
        if joint and nm is None:
            saliency = block.pow(2) / block_factor.diagonal().pow(2).unsqueeze(0)
            count = int(saliency.numel() * sparsity)
            mask[:, start:stop] = ~prune_lowest(saliency.reshape(1, -1), count).reshape(saliency.shape)
        for i in range(stop - start):
            column = start + i
            if not per_channel and column % group_size == 0:
                group = work[:, column:column + group_size].masked_fill(fixed[:, column:column + group_size], 0.0)
                scale, zero = find_params(group, bits, sym)
                scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
                scales[:, column // group_size], zeros[:, column // group_size] = scale[:, 0], zero[:, 0]
            if nm is not None and i % nm.m == 0:
                saliency = block[:, i:i + nm.m].pow(2) / block_factor.diagonal()[i:i + nm.m].pow(2).unsqueeze(0)
                mask[:, column:column + nm.m] = ~prune_lowest(saliency, nm.m - nm.n)
            w = block[:, i]
            d = block_factor[i, i]
            q_in = w.masked_fill(mask[:, column], 0.0).unsqueeze(1)
            code = torch.clamp(torch.round(q_in / scale) + zero, 0, maxq)
            q = (scale * (code - zero)).flatten()
            all_codes[:, column] = code.flatten()
            quantized[:, column] = q
            error = (w - q) / d
            block[:, i:] -= error.unsqueeze(1).matmul(block_factor[i, i:].unsqueeze(0))
            errors[:, i] = error
        work[:, stop:] -= errors.matmul(factor[start:stop, stop:])

    if perm is not None:
        inverse = torch.argsort(perm)
        quantized, all_codes, mask = quantized[:, inverse], all_codes[:, inverse], mask[:, inverse]
    quantized = quantized.masked_fill(mask, 0.0)  # already 0 (the grid holds 0): SparseGPT's mask re-applied
    return QuantizedWeight(quantized.to(weight.dtype), all_codes.to(torch.uint8), scales, zeros, bits, group_size, sym,
                           pruned=mask if joint else None)


def _factor(hessian: torch.Tensor, percdamp: float, act_order: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``U`` of the damped ``H^-1``, the dead input channels and, with ``act_order``, the column order
    (decreasing ``diag H``, taken after dead diagonals are set to 1 and before damping, as the authors)."""
    if not act_order:
        factor, dead = inverse_hessian_factor(hessian, percdamp)
        return factor, dead, None
    hessian = hessian.clone()
    dead = hessian.diagonal() == 0
    hessian.diagonal()[dead] = 1.0
    perm = torch.argsort(hessian.diagonal(), descending=True)
    factor, _ = inverse_hessian_factor(hessian[perm][:, perm], percdamp)
    return factor, dead, perm


def layer_hessian(hessian_sum: torch.Tensor, tokens: int) -> torch.Tensor:
    """``2/n X^T X`` from the collected ``X^T X`` (as SparseGPT)."""
    return hessian_sum.float() * (2.0 / tokens)


class GPTQ(Quantization):
    name = "gptq"
    needs_hessian = True

    def __init__(self, bits: int = 4, group_size: int = 128, sym: bool = True, percdamp: float = 0.01,
                 blocksize: int = 128, act_order: bool = False, joint: bool = True) -> None:
        super().__init__(bits, group_size, sym)
        self.joint = checks.boolean(joint, "joint")  # with method=sparsegpt: one OBS pass (true) or prune, then GPTQ
        self.percdamp = checks.number(percdamp, "percdamp", low=0, low_open=True, what="damping, a fraction of mean diag H")
        if self.percdamp > MAX_PERCDAMP:
            raise ConfigError(f"percdamp={percdamp!r} is outside (0, {MAX_PERCDAMP:g}] (damping, a fraction of mean diag H; "
                              "the reference uses 0.01)")
        self.blocksize = checks.positive_int(blocksize, "blocksize", what="columns per lazy batch update, the reference's 128")
        self.act_order = checks.boolean(act_order, "act_order")
        if self.act_order and self.group_size != -1:
            raise ConfigError(f"act_order=true with group_size={self.group_size}: with groups a column's grid depends on the "
                              "order, which our export does not store (g_idx); allowed: act_order=false, or group_size=-1")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "percdamp": self.percdamp, "blocksize": self.blocksize, "act_order": self.act_order,
                "joint": self.joint}

    def quantize_layer(self, weight: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor | None) -> QuantizedWeight:
        if hessian is None:
            raise RuntimeError("gptq needs the layer's input Hessian; it was not collected")
        return obs_quantize(weight, hessian, self.bits, self.group_size, self.sym, self.percdamp, self.blocksize,
                            self.act_order, pruned=pruned)
