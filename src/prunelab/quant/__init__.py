"""The quantize stage: weights of the decoder's linear layers rounded to ``bits``-bit grids after
pruning (``quant=rtn`` or ``quant=gptq``; ``quant=none``, the default, adds nothing to a run).

One module per quantizer (:mod:`~prunelab.quant.rtn`, :mod:`~prunelab.quant.gptq`) over the
authors' min-max grid (:mod:`~prunelab.quant.quantizer`); :mod:`~prunelab.quant.stage` walks the
model (block by block with calibration for GPTQ) and measures; :mod:`~prunelab.quant.export_ct`
writes a compressed-tensors checkpoint. Weights are stored back dequantized in the model's dtype
(fake quant); the integer codes, scales and zeros are kept for export.
"""

from __future__ import annotations

from typing import Any

import torch

from prunelab import checks
from prunelab.checks import ConfigError
from prunelab.quant.quantizer import BITS, QuantizedWeight


class Quantization:
    """The interface of a quant component (``conf/quant/<name>.yaml``, ``_target_``)."""

    name = "quant"
    needs_hessian = False  # True: block-by-block calibration inputs (GPTQ)

    def __init__(self, bits: int = 4, group_size: int = 128, sym: bool = True) -> None:
        self.bits = checks.integer(bits, "bits")
        if self.bits not in BITS:
            raise ConfigError(f"bits={bits!r} is not valid; allowed: {', '.join(map(str, BITS))}")
        self.group_size = checks.integer(group_size, "group_size")
        if self.group_size != -1 and self.group_size < 1:
            raise ConfigError(f"group_size={group_size!r} is not valid; allowed: a positive number of input columns "
                              "per scale, or -1 (one scale per output channel)")
        self.sym = checks.boolean(sym, "sym")

    def settings(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "sym": self.sym}

    def describe(self) -> str:
        group = "per channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"{self.name} {self.bits}-bit {group} {'sym' if self.sym else 'asym'}"

    def width_problem(self, in_features: int) -> str | None:
        """Why a layer of this input width cannot be quantized with this group size (None: it can)."""
        if self.group_size != -1 and in_features % self.group_size:
            return f"its input width {in_features} is not a multiple of {self.group_size}"
        return None

    def check_method(self, method) -> None:
        """Raise :class:`ConfigError` when this quantizer cannot follow ``method`` (before load)."""

    def quantize_layer(self, weight: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor | None) -> QuantizedWeight:
        """Quantize one ``[out, in]`` weight; ``pruned`` marks the positions that must stay 0;
        ``hessian``: ``2/n X^T X`` of the layer's calibration inputs (fp32) when ``needs_hessian``."""
        raise NotImplementedError
