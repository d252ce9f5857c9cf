"""The min-max weight quantizer of the GPTQ authors (IST-DASLab/gptq ``quant.py``), per row and group.

For a slice ``x`` (``[rows, cols]``) every row gets a grid of ``2^bits`` levels: the range is first
widened to contain 0 (``xmin = min(x.min, 0)``, ``xmax = max(x.max, 0)``); symmetric grids use
``xmax = max(|xmin|, xmax)`` and ``xmin = -xmax`` (only when the row has a negative value, as the
authors do), ``scale = (xmax - xmin) / maxq`` and the zero point ``(maxq + 1) / 2``; asymmetric
grids ``zero = round(-xmin / scale)``. A row of zeros gets the range [-1, 1]. Codes are
``clamp(round(x / scale) + zero, 0, maxq)`` and the value is ``scale * (code - zero)``.

Because the range always contains 0 and ``zero`` is an integer in ``[0, maxq]``, the code ``zero``
stands for exactly 0.0 on every grid, symmetric or not: a pruned weight is stored as that code and
stays exactly zero (:func:`keep_pruned` re-applies the mask after quantization all the same, as the
SparseGPT authors do, and the run's outcome check asserts it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BITS = (4, 8)  # what quant.bits accepts (compressed-tensors' pack-quantized format stores 1..8)


def max_code(bits: int) -> int:
    return 2 ** bits - 1


@torch.no_grad()
def find_params(x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` per row of ``x`` (``[rows]`` each, fp32): the authors' ``find_params(x, weight=True)``."""
    x = x.float()
    maxq = max_code(bits)
    tmp = torch.zeros(x.shape[0], device=x.device)
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        negative = xmin < 0
        if torch.any(negative):
            xmin[negative] = -xmax[negative]
    empty = (xmin == 0) & (xmax == 0)
    xmin[empty] = -1
    xmax[empty] = +1
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale, zero


def codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (as floats) of ``x`` on the grid; ``scale``/``zero`` broadcast against ``x``."""
    return torch.clamp(torch.round(x / scale) + zero, 0, max_code(bits))


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """The authors' ``quantize``: ``x`` rounded onto the grid, as values."""
    return scale * (codes(x, scale, zero, bits) - zero)


@dataclass
class QuantizedWeight:
    """One quantized linear layer: codes ``[out, in]`` (uint8, ``0..2^bits-1``), and per row and group
    ``scales`` / ``zeros`` (``[out, groups]``, fp32; zeros are integers); group ``g`` covers input
    columns ``[g * group_size, (g + 1) * group_size)`` (one group over all columns when
    ``group_size == -1``). ``weight`` is the dequantized weight in the model's dtype (fake quant)."""

    weight: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    sym: bool
    pruned: torch.Tensor | None = None  # the mask a joint prune+quantize pass chose (None: pruned before)

    def dequantize(self) -> torch.Tensor:
        """``scale * (code - zero)`` in fp32 from the stored integers (equals ``weight`` before the cast)."""
        width = self.codes.shape[1] if self.group_size == -1 else self.group_size
        scales = self.scales.repeat_interleave(width, dim=1)[:, : self.codes.shape[1]]
        zeros = self.zeros.repeat_interleave(width, dim=1)[:, : self.codes.shape[1]]
        return scales * (self.codes.float() - zeros)

    def packed_bytes(self, scale_bytes: int = 2) -> int:
        """Bytes as stored packed: ``bits`` per weight, one fp16 scale per row and group, and for
        asymmetric grids a ``bits``-wide zero point per row and group."""
        groups = self.scales.numel()
        bits = self.codes.numel() * self.bits + (0 if self.sym else groups * self.bits)
        return (bits + 7) // 8 + groups * scale_bytes

    def bitmask_bytes(self, scale_bytes: int = 2) -> int:
        """Bytes if the zeros were stored sparse (compressed-tensors' sparse-bitmask layout): one bit per
        weight saying whether it is stored, ``bits`` per non-zero code, scales and zero points as packed."""
        groups = self.scales.numel()
        nonzero = int((self.weight != 0).sum())
        bits = self.codes.numel() + nonzero * self.bits + (0 if self.sym else groups * self.bits)
        return (bits + 7) // 8 + groups * scale_bytes


def keep_pruned(quantized: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """``quantized`` with the pruned positions forced back to 0 (SparseGPT's mask re-application)."""
    return quantized.masked_fill(pruned, 0.0)


def group_width(group_size: int, columns: int) -> int:
    return columns if group_size == -1 else group_size
