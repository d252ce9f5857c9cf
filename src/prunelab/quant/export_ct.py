"""``export=compressed_tensors``: the quantized model as a compressed-tensors checkpoint.

The format vLLM and transformers read (``quantization_config.quant_method = compressed-tensors``):
every quantized decoder linear layer is stored pack-quantized (``bits``-bit integer codes packed
into int32, one scale per row and group, and for asymmetric grids a packed zero point),
``W4A16``/``W8A16`` with the run's group size (``group_size=-1``: the ``channel`` strategy);
embeddings, norms and ``lm_head`` stay in the model's dtype. The library writes it: the scheme is
applied to a copy of the model (:func:`~compressed_tensors.quantization.apply_quantization_config`),
our scales and zero points are set on its layers, and :class:`~compressed_tensors.compressors.ModelCompressor`
packs and describes it. Stock ``AutoModelForCausalLM.from_pretrained(<dir>)`` loads it.

Our grid (the GPTQ authors') has unsigned codes ``c`` in ``[0, 2^b - 1]`` and an integer zero point
``z`` in the same range, value ``s (c - z)``; compressed-tensors' has signed codes and zero points in
``[-2^(b-1), 2^(b-1) - 1]``, value ``(q - zp) s``: ``q = c - 2^(b-1)`` and ``zp = z - 2^(b-1)``
give the same values (a symmetric grid's ``z = 2^(b-1)`` is ``zp = 0``, which the format omits).
The library re-derives the codes from the weight and our scale and zero point; the export checks
that they are ours, code for code.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from prunelab.models import DecoderAdapter

log = logging.getLogger(__name__)

FORMAT = "pack-quantized"


def scheme_args(bits: int, group_size: int, sym: bool):
    from compressed_tensors.quantization import QuantizationArgs

    if group_size == -1:
        return QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy="channel")
    return QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy="group", group_size=group_size)


def quantization_config(bits: int, group_size: int, sym: bool, ignore: list[str]):
    """Every ``Linear`` but those in ``ignore`` (``lm_head``), as llm-compressor writes W4A16."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationStatus

    scheme = QuantizationScheme(targets=["Linear"], weights=scheme_args(bits, group_size, sym))
    return QuantizationConfig(config_groups={"group_0": scheme}, quant_method="compressed-tensors", format=FORMAT,
                              ignore=ignore, quantization_status=QuantizationStatus.FROZEN)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@torch.no_grad()
def export(model, tokenizer, quant, directory: Path, plan=None) -> dict[str, Any]:
    """Write ``model`` (quantized by the quantize stage, whose report is ``quant``) to ``directory``
    (replaced if present); return ``export/*`` metrics. The model in memory is not changed."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config
    from compressed_tensors.quantization.lifecycle.forward import quantize

    if quant is None or not quant.layers:
        raise ValueError("export=compressed_tensors needs a quantized model (quant=rtn or quant=gptq)")
    q = quant.quant
    offset = 2 ** (q.bits - 1)
    copy_ = copy.deepcopy(model).cpu()
    adapter = DecoderAdapter(copy_)
    keys = {id(layer): f"layers.{index}.{name}" for index, block in enumerate(adapter.blocks)
            for name, layer in adapter.linear_layers(block).items()}
    names = {path: keys[id(module)] for path, module in copy_.named_modules() if id(module) in keys}
    if set(quant.layers) != set(names.values()):
        raise ValueError(f"the quantized layers ({len(quant.layers)}) are not the model's decoder linear layers ({len(names)})")
    ignore = [path for path, module in copy_.named_modules() if isinstance(module, torch.nn.Linear) and path not in names]
    config = quantization_config(q.bits, q.group_size, q.sym, ignore)
    apply_quantization_config(copy_, config, show_progress=False)
    modules = dict(copy_.named_modules())
    for path, key in names.items():
        module, result = modules[path], quant.layers[key]
        module.weight_scale.data = result.scales.to(module.weight_scale.dtype).clone()
        zero = (result.zeros - offset).to(torch.int8)
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data = zero.to(module.weight_zero_point.dtype)
        ours = result.codes.to(torch.int16) - offset
        theirs = quantize(module.weight.data, module.weight_scale.data,
                          getattr(module, "weight_zero_point", None), module.quantization_scheme.weights, dtype=torch.int8)
        if not torch.equal(theirs.to(torch.int16), ours):
            bad = int((theirs.to(torch.int16) != ours).sum())
            raise RuntimeError(f"compressed-tensors would store other codes than ours for {key} ({bad} of {ours.numel()})")
    compressor = ModelCompressor.from_pretrained_model(copy_, quantization_format=FORMAT)
    compressor.compress_model(copy_)
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    copy_.save_pretrained(directory)
    compressor.update_config(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    size = directory_bytes(directory)
    log.info("compressed-tensors checkpoint (%s, %d-bit, group %d, %s) in %s: %.4g MB", FORMAT, q.bits, q.group_size,
             "sym" if q.sym else "asym", directory, size / 1e6)
    return {"export/bytes": size, "export/format": f"compressed-tensors {FORMAT} W{q.bits}A16",
            "export/layers": len(names)}
