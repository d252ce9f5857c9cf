"""``export=<name>``: what the run writes for deployment after the save stage, by name.

Each entry names ``module:function``, imported only when a run exports (the writers' libraries are
heavy); the function takes ``(model, tokenizer, quant, directory, plan)`` (``quant``: the quantize
stage's :class:`~prunelab.quant.stage.QuantReport` or None) and returns ``export/*`` metrics.
``export=none`` (the default) writes nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

EXPORTS: dict[str, str] = {
    "compressed_tensors": "prunelab.quant.export_ct:export",
}


def writer(name: str) -> Callable:
    module, function = EXPORTS[name].split(":")
    return getattr(importlib.import_module(module), function)
