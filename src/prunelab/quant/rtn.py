"""``quant=rtn``: round to nearest on the authors' min-max grid, per row and group of input columns.

Each group's scale and zero come from the (pruned) weights of that group alone; nothing is
calibrated. Pruned weights stay exactly 0 (the grid contains 0; the mask is re-applied anyway).
"""

from __future__ import annotations

import torch

from prunelab.quant import Quantization
from prunelab.quant.quantizer import QuantizedWeight, codes, find_params, group_width, keep_pruned


@torch.no_grad()
def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int, sym: bool,
                 pruned: torch.Tensor | None = None) -> QuantizedWeight:
    """``weight`` (``[out, in]``) rounded to nearest, group by group; the result's ``weight`` is in ``weight.dtype``."""
    work = weight.float()
    rows, cols = work.shape
    width = group_width(group_size, cols)
    scales, zeros, all_codes = [], [], torch.empty_like(work)
    for start in range(0, cols, width):
        group = work[:, start:start + width]
        scale, zero = find_params(group, bits, sym)
        all_codes[:, start:start + width] = codes(group, scale.unsqueeze(1), zero.unsqueeze(1), bits)
        scales.append(scale)
        zeros.append(zero)
    scale_t, zero_t = torch.stack(scales, 1), torch.stack(zeros, 1)
    result = QuantizedWeight(weight, all_codes.to(torch.uint8), scale_t, zero_t, bits, group_size, sym)
    values = result.dequantize()
    if pruned is not None:
        values = keep_pruned(values, pruned)
        result.codes = torch.where(pruned, _zero_codes(result), result.codes)
    result.weight = values.to(weight.dtype)
    return result


def _zero_codes(result: QuantizedWeight) -> torch.Tensor:
    """The code of 0.0 at every position (each group's zero point)."""
    width = group_width(result.group_size, result.codes.shape[1])
    return result.zeros.repeat_interleave(width, dim=1)[:, : result.codes.shape[1]].to(torch.uint8)


class RTN(Quantization):
    name = "rtn"

    def quantize_layer(self, weight: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor | None) -> QuantizedWeight:
        return rtn_quantize(weight, self.bits, self.group_size, self.sym, pruned)
