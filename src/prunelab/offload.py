"""Models larger than one device: ``model.device_map`` through accelerate's big-model dispatch.

The model is built on the meta device, its checkpoint streamed one tensor at a time onto the device
the map gives it (``cpu``, a GPU, or ``disk``: a ``.dat`` file in the offload folder, accelerate's
store), and dispatched with accelerate's hooks: a forward (perplexity, zero-shot) loads offloaded
weights module by module. The block-wise calibration/pruning walk holds one block at a time
(:class:`Holder`): its weights are materialised on the work device, the hooks stand aside, and the
pruned weights are written back into the store, so that evaluation reads what pruning left.
With ``model.device_map=null`` (the default) none of this runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

DEVICES = "cpu, disk, a GPU index (0, 1, ...) or cuda:<index>"
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


@dataclass(frozen=True)
class DispatchSpec:
    """``model.device_map`` (``auto`` or module name -> device), ``model.max_memory`` (device ->
    bytes) and the folder offloaded weights are written to (``None``: inside the run directory)."""

    device_map: str | dict[str, Any]
    max_memory: dict[Any, int] | None = None
    folder: Path | None = None

    def summary(self) -> str:
        budget = ", ".join(f"{k}={v / 2**20:.0f}MiB" for k, v in (self.max_memory or {}).items())
        return f"{self.device_map if isinstance(self.device_map, str) else 'explicit'}" + (f" ({budget})" if budget else "")


# ------------------------------------------------------------------------------------- loading
def checkpoint_tensors(location: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the ``*.safetensors`` files in ``location``, read one at a time with plain
    reads (no memory map: only the tensor being read is resident)."""
    files = sorted(Path(location).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {location}")
    for file in files:
        with open(file, "rb") as handle:
            header_size = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(header_size))
            base = 8 + header_size
            for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0] if item[0] != "__metadata__" else -1):
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                handle.seek(base + start)
                buffer = bytearray(handle.read(end - start))
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                tensor = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
                yield name, tensor.reshape(info["shape"])


def store(value: torch.Tensor, name: str, folder: str | Path, index: dict) -> None:
    """Write ``value`` into accelerate's offload store as ``offload_weight`` does (``<name>.dat``, raw,
    bfloat16 as int16; ``index`` updated), with a plain write: no memory map, so the written pages
    never count as this process's resident memory."""
    dtype = None
    if value.dtype == torch.bfloat16:
        value, dtype = value.view(torch.int16), "bfloat16"
    array = value.detach().to("cpu").contiguous().numpy()
    index[name] = {"dtype": dtype or str(array.dtype), "shape": list(array.shape)}
    with open(Path(folder) / f"{name}.dat", "wb") as handle:
        array.tofile(handle)


def device_of(name: str, device_map: dict[str, Any]) -> Any:
    """The device ``device_map`` gives the parameter or module ``name`` (longest matching prefix)."""
    best, found = -1, None
    for key, device in device_map.items():
        if key == "" or name == key or name.startswith(key + "."):
            if len(key) > best:
                best, found = len(key), device
    if found is None:
        raise KeyError(name)
    return found


def skeleton_of(config, dtype: torch.dtype) -> nn.Module:
    """The model of ``config`` on the meta device (no memory), tied weights tied."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    return model


def plan_device_map(skeleton: nn.Module, spec: DispatchSpec, dtype: torch.dtype) -> dict[str, Any]:
    """The device map: accelerate's for ``auto`` (decoder blocks never split), else the given one;
    a tied ``lm_head`` goes where the embeddings go (one copy in memory, or both on disk)."""
    from accelerate import infer_auto_device_map

    if spec.device_map == "auto":
        device_map = dict(infer_auto_device_map(skeleton, max_memory=spec.max_memory, dtype=dtype,
                                                no_split_module_classes=list(skeleton._no_split_modules or [])))
    else:
        device_map = dict(spec.device_map)
    if getattr(skeleton.config, "tie_word_embeddings", False) and "lm_head" in device_map:
        device_map["lm_head"] = device_of("model.embed_tokens.weight", device_map)
    return device_map


def check_device_map(skeleton: nn.Module, device_map: dict[str, Any], key: str = "model.device_map") -> None:
    """Every weight has a device and no decoder block is split across devices (the block-wise
    walk holds whole blocks); raises :class:`~prunelab.checks.ConfigError` naming the key."""
    from prunelab.checks import ConfigError

    modules = dict(skeleton.named_modules())
    for name in device_map:
        if name and name not in modules:
            raise ConfigError(f"{key} names {name!r}, which the model does not have; allowed: module names such as "
                              "model.embed_tokens, model.layers.<i>, model.norm, lm_head (or '' for the whole model)")
        parts = name.split(".")
        if len(parts) > 3 and parts[:2] == ["model", "layers"]:
            raise ConfigError(f"{key} places {name!r}, a part of decoder block {parts[2]}; allowed: whole blocks "
                              f"(model.layers.{parts[2]}), which pruning holds on one device at a time")
    for name, _ in skeleton.named_parameters():
        try:
            device_of(name, device_map)
        except KeyError:
            raise ConfigError(f"{key} gives no device to {name}; allowed: a map that covers every module "
                              "(e.g. model.device_map=auto)") from None


def _torch_device(device: Any) -> torch.device:
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def dispatch(skeleton: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]], device_map: dict[str, Any],
             dtype: torch.dtype, folder: Path) -> nn.Module:
    """Stream ``tensors`` into ``skeleton`` (``disk`` ones into ``folder``) and attach accelerate's hooks."""
    from accelerate import dispatch_model
    from accelerate.utils import save_offload_index, set_module_tensor_to_device

    folder.mkdir(parents=True, exist_ok=True)
    aliases: dict[int, list[str]] = {}
    for name, parameter in skeleton.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(parameter), []).append(name)
    names = {name: group for group in aliases.values() for name in group}
    index: dict[str, Any] = {}
    for name, tensor in tensors:
        if name not in names:
            continue  # e.g. a checkpoint's saved rotary buffers
        value = tensor.to(dtype) if tensor.is_floating_point() else tensor
        placed = None
        for alias in names[name]:
            device = device_of(alias, device_map)
            if device == "disk":
                store(value, alias, folder, index)
            elif placed is None:
                set_module_tensor_to_device(skeleton, alias, _torch_device(device), value=value)
                placed = alias
        del value, tensor
    save_offload_index(index, str(folder))
    if getattr(skeleton.config, "tie_word_embeddings", False) and device_of("lm_head.weight", device_map) != "disk":
        skeleton.tie_weights()
    missing = [name for name, p in skeleton.named_parameters() if p.device.type == "meta"
               and device_of(name, device_map) != "disk"]
    if missing:
        raise ValueError(f"{len(missing)} weight(s) were not in the checkpoint, e.g. {missing[:3]}")
    model = dispatch_model(skeleton, device_map=device_map, offload_dir=str(folder) if index else None)
    model.eval()
    return model


def load(config, tensors: Iterator[tuple[str, torch.Tensor]], dtype: torch.dtype, spec: DispatchSpec,
         folder: Path) -> nn.Module:
    """The model of ``config`` with ``tensors`` placed by ``spec`` (offloaded ones into ``folder``)."""
    skeleton = skeleton_of(config, dtype)
    device_map = plan_device_map(skeleton, spec, dtype)
    check_device_map(skeleton, device_map)
    model = dispatch(skeleton, tensors, device_map, dtype, folder)
    model.prunelab_offload_folder = folder
    for module in (*model.model.layers, model.lm_head):  # offloaded weights come and go in every forward
        module.register_forward_hook(lambda *_: trim())
    trim()
    totals = placement(model)
    log.info("device_map=%s: weights %s; offload store %s", spec.summary(),
             ", ".join(f"{device} {size / 2**20:.0f} MiB" for device, size in totals.items()), folder)
    return model


def _libc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _libc_trim()


def trim() -> None:
    """Give freed heap memory back to the system (glibc keeps the buffers of weights loaded from the
    store and dropped again in its arenas: measured, a forward of the offloaded SmolLM2 grew the
    resident memory by 160 MiB that ``malloc_trim`` returned). Only dispatched models call it."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def offload_folder(spec: DispatchSpec, run_dir: Path | None) -> Path:
    """A fresh folder for this run's offloaded weights inside ``model.offload_folder`` (default: the
    run directory); :func:`release` removes it when the run ends."""
    parent = spec.folder if spec.folder is not None else (Path(run_dir) if run_dir is not None else Path(tempfile.gettempdir()))
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="offload.", dir=parent))


def release(model: nn.Module) -> None:
    """Remove the offloaded weights this process wrote for ``model`` (its folder)."""
    folder = getattr(model, "prunelab_offload_folder", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def placement(model: nn.Module) -> dict[str, int]:
    """Bytes of weights on every device of a dispatched model (``disk``: in the offload store)."""
    totals: dict[str, int] = {}
    seen: set[int] = set()
    for name, parameter in model.named_parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        device = str(device_of(name, model.hf_device_map))
        totals[device] = totals.get(device, 0) + parameter.numel() * parameter.element_size()
    return totals


# ---------------------------------------------------------------------- reading and writing back
def is_dispatched(model: nn.Module) -> bool:
    return getattr(model, "hf_device_map", None) is not None


def _offload_hook(module: nn.Module):
    """The accelerate hook that offloads ``module``'s own weights, or ``None``."""
    hook = getattr(module, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        if getattr(candidate, "weights_map", None) is not None and getattr(candidate, "offload", False):
            return candidate
    return None


def stored(module: nn.Module, name: str) -> torch.Tensor:
    """The value of ``module``'s own tensor ``name``: in memory, or read from the offload store."""
    tensor = getattr(module, name)
    if tensor is None or tensor.device.type != "meta":
        return tensor
    hook = _offload_hook(module)
    if hook is None:
        raise RuntimeError(f"{type(module).__name__}.{name} is on the meta device and no offload hook holds it")
    return hook.weights_map[name]


def weight_of(layer: nn.Module) -> torch.Tensor:
    """``layer.weight`` as it is, offloaded or not."""
    return stored(layer, "weight")


def named_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.named_parameters()`` with offloaded ones read from the store (one at a time)."""
    if not is_dispatched(model):
        yield from model.named_parameters()
        return
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            yield f"{module_name}.{name}" if module_name else name, stored(module, name)


def state_items(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``module.state_dict().items()``, offloaded (meta) tensors read from the store."""
    for name, tensor in module.state_dict().items():
        if tensor.device.type == "meta":
            owner_name, _, leaf = name.rpartition(".")
            tensor = stored(module.get_submodule(owner_name) if owner_name else module, leaf)
        yield name, tensor


class Holder:
    """Moves one block at a time to the work device and back.

    A model that is not dispatched: ``block.to(device)`` and back to where the model lives (what the
    walk always did). A dispatched one: each tensor of the block is materialised on ``device`` (read
    from the store where offloaded) with its hook's offloading paused, and on :meth:`give` written
    back (offloaded ones into the store, so later forwards see the pruned weights) and returned.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.dispatched = is_dispatched(model)
        self.home = None if self.dispatched else next(model.parameters()).device
        self._held: dict[int, list] = {}

    def take(self, block: nn.Module) -> nn.Module:
        if not self.dispatched:
            return block.to(self.device)
        from accelerate.utils import set_module_tensor_to_device

        record = []
        for module in block.modules():
            hook = _offload_hook(module)
            names = [n for n, _ in module.named_parameters(recurse=False)]
            if hook is not None:
                hook.offload = False
                for name in names:
                    set_module_tensor_to_device(module, name, self.device, value=hook.weights_map[name])
                record.append((module, hook, names))
            else:
                for name in names:
                    home = getattr(module, name).device
                    if home != self.device:
                        set_module_tensor_to_device(module, name, self.device)
                        record.append((module, home, [name]))
        self._held[id(block)] = record
        return block

    def give(self, block: nn.Module, write_back: bool = True) -> nn.Module:
        if not self.dispatched:
            return block.to(self.home)
        from accelerate.utils import save_offload_index, set_module_tensor_to_device

        folders: dict[str, dict] = {}
        for module, where, names in self._held.pop(id(block)):
            if isinstance(where, torch.device):
                for name in names:
                    set_module_tensor_to_device(module, name, where)
                continue
            hook, weights = where, where.weights_map
            loader, prefix = getattr(weights, "dataset", weights), getattr(weights, "prefix", "")
            for name in names:
                if write_back:
                    value = getattr(module, name).detach().to("cpu")
                    key = prefix + name
                    if key in getattr(loader, "state_dict", {}):
                        loader.state_dict[key] = value
                    else:
                        store(value, key, loader.save_folder, loader.index)
                        folders[loader.save_folder] = loader.index
                set_module_tensor_to_device(module, name, "meta")
            hook.offload = True
        for folder, index in folders.items():
            save_offload_index(index, folder)
        trim()
        return block
