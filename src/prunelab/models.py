"""Loading LLaMA-family models and the one adapter that knows where their parts live.

Sources (``model.source``, a component with a ``_target_``): :class:`EmbeddedSource` (the offline
SmolLM2-135M prepared by ``make setup``), :class:`HubSource` (a Hugging Face id, online),
:class:`LocalSource` (any HF directory) and :class:`RandomSource` (a LLaMA of a configured shape
with random weights, for tests and for speed measurements without a download).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import socket
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from prunelab import assets, checks, identity, structure
from prunelab.checks import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HUB_HOST = ("huggingface.co", 443)


class ModelConfigError(ConfigError):
    """The model config points at something that cannot be loaded here."""


class ModelLoadError(RuntimeError):
    """The weights or tokenizer could not be read (a truncated or corrupt file): names the path."""


class SaveError(RuntimeError):
    """The pruned model cannot be saved where it should go, or did not read back as written."""


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub answers; False offline or with HF_HUB_OFFLINE=1."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


DEVICE_TYPES = ("cpu", "cuda")  # where the weights can live and run; ``meta`` has no data


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:<index>`` of a visible GPU."""
    allowed = "auto, cpu, cuda or cuda:<index>"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ModelConfigError(f"model.device={name!r} is not a device; allowed: {allowed}") from None
    if device.type not in DEVICE_TYPES:
        raise ModelConfigError(f"model.device={name!r} is not supported (the model runs on the CPU or a CUDA GPU); "
                               f"allowed: {allowed}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError(f"model.device={name!r} but CUDA is not available here; use model.device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelConfigError(f"model.device={name!r} but {torch.cuda.device_count()} CUDA device(s) are visible; "
                               f"allowed: cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelConfigError(f"model.dtype={name!r} is not valid; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


class ModelSource(ABC):
    """Where a model's weights and tokenizer come from (``model.source``, built from its ``_target_``).

    ``location`` and ``hf_config`` are cheap and raise :class:`ModelConfigError` with what to do
    when the model cannot be had here; ``load`` reads the weights.
    """

    @abstractmethod
    def location(self) -> str:
        """Directory or hub id to load from."""

    def tokenizer_location(self) -> str:
        return self.location()

    def hf_config(self):
        """The model's HF config without loading weights (used to validate before heavy work)."""
        from transformers import AutoConfig

        location = self.location()
        try:
            return AutoConfig.from_pretrained(location)
        except Exception as error:  # noqa: BLE001 - invalid JSON, no model_type, an unknown architecture
            raise ModelConfigError(f"the model config at {location} cannot be read: {type(error).__name__}: "
                                   f"{_first_line(error)}; allowed: a LLaMA-family config.json "
                                   f"(model_type llama, mistral, qwen2, ...)") from error

    def identity(self) -> str:
        """A hash of the content the model and tokenizer are read from (part of a sweep job's
        fingerprint: changed files re-run the job); here every checkpoint file's SHA-256."""
        return identity.directory_identity(Path(self.location()))

    def saved_settings(self) -> dict:
        """What a model saved by prunelab recorded about the run that measured it (``{}``: none)."""
        return {}

    def load(self, dtype: torch.dtype):
        """``(model, tokenizer)`` on the CPU in ``dtype``, in eval mode, no KV cache."""
        from transformers import AutoTokenizer

        location, tokenizer_location = self.location(), self.tokenizer_location()  # a missing asset says `make setup`
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_location)
            model = load_pretrained(location, dtype)
        except (ModelLoadError, ModelConfigError):
            raise
        except Exception as error:  # noqa: BLE001 - safetensors, tokenizers, torch: any read failure, with the path
            raise ModelLoadError(f"cannot load the model from {location}: {type(error).__name__}: {error} "
                                 "(a truncated or corrupt checkpoint?)") from error
        return _ready(model, tokenizer)

    def checkpoint_directory(self) -> str:
        """The local directory holding the ``*.safetensors`` files (what :meth:`load_dispatched` streams)."""
        return self.location()

    def load_dispatched(self, dtype: torch.dtype, spec, folder: Path):
        """``(model, tokenizer)`` placed by ``spec`` (:class:`prunelab.offload.DispatchSpec`) through
        accelerate's hooks, the weights streamed one tensor at a time (``disk`` ones into ``folder``)."""
        from transformers import AutoConfig, AutoTokenizer

        from prunelab import offload

        location = self.checkpoint_directory()
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_location())
            model = offload.load(AutoConfig.from_pretrained(location), offload.checkpoint_tensors(location), dtype, spec, folder)
        except (ModelLoadError, ModelConfigError):
            raise
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load the model from {location} with model.device_map: {type(error).__name__}: "
                                 f"{error}") from error
        return _ready(model, tokenizer)


class EmbeddedSource(ModelSource):
    """The offline SmolLM2-135M that ``make setup`` prepares in the asset cache."""

    def location(self) -> str:
        return str(assets.require(assets.paths().smollm2_dir, "The embedded SmolLM2-135M model"))

    def identity(self) -> str:
        return _embedded_identity(self.location())


class LocalSource(ModelSource):
    """Any Hugging Face model directory (``model=local model.path=/dir``)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def location(self) -> str:
        if not self.path:
            raise ModelConfigError("model=local needs model.path=/path/to/hf_model_dir")
        path = Path(str(self.path)).expanduser()
        if not (path / "config.json").exists():
            raise ModelConfigError(
                f"model.path={self.path!r} is not a Hugging Face model directory (no config.json at {path})"
            )
        return str(path)

    def saved_settings(self) -> dict:
        import json

        try:
            note = json.loads((Path(self.location()) / "config.json").read_text()).get(structure.STRUCTURE_KEY)
        except (OSError, ValueError, AttributeError):
            return {}  # the load says what is wrong with it
        return note if isinstance(note, dict) else {}


class HubSource(ModelSource):
    """A Hugging Face hub id (online, or already in the local HF cache)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def identity(self) -> str:
        """The cached snapshot's files; ``hub:<id>`` when it is not cached (the hub's newest)."""
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(self.path, "config.json")
        return identity.directory_identity(Path(config).parent) if isinstance(config, str) else f"hub:{self.path}"

    def checkpoint_directory(self) -> str:
        from huggingface_hub import snapshot_download

        return snapshot_download(self.location(), allow_patterns=["*.json", "*.safetensors", "tokenizer*"])

    def location(self) -> str:
        if not hub_reachable() and not _hub_cached(self.path):
            raise ModelConfigError(
                f"model.path={self.path!r} is a hub id, but the Hugging Face hub is unreachable (offline) "
                f"and the model is not in the local HF cache. Offline, use model=smollm2_135m (embedded), "
                f"model=tiny_random, or model=local model.path=/dir/with/checkpoint"
            )
        return self.path


class RandomSource(ModelSource):
    """A LLaMA of a configured shape with random weights (tests; speed without a download).

    The tokenizer is the embedded model's; token ids of the borrowed tokenizer must fit the
    embedding table, so ``vocab_size`` grows to the tokenizer's size when it is smaller.
    """

    SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "max_position_embeddings", "vocab_size")

    def __init__(self, architecture: dict, seed: int = 0) -> None:
        if not isinstance(architecture, dict):
            raise ConfigError(f"architecture={architecture!r} must be a mapping of LlamaConfig settings")
        self.architecture = dict(architecture)
        for key in self.SIZES:
            if key in self.architecture:
                checks.positive_int(self.architecture[key], f"architecture.{key}")
        hidden, heads = self.architecture.get("hidden_size"), self.architecture.get("num_attention_heads")
        kv_heads = self.architecture.get("num_key_value_heads", heads)
        if hidden and heads and hidden % heads and "head_dim" not in self.architecture:
            raise ConfigError(f"architecture.hidden_size={hidden} is not a multiple of architecture.num_attention_heads="
                              f"{heads}; allowed: a multiple of {heads} (each head gets hidden_size / heads channels)")
        if heads and kv_heads and heads % kv_heads:
            raise ConfigError(f"architecture.num_key_value_heads={kv_heads} does not divide architecture."
                              f"num_attention_heads={heads}; allowed: a divisor of {heads}")
        self.seed = checks.integer(seed, "seed", low=0)
        if self.seed >= 2**63:
            raise ConfigError(f"seed={seed} is too large for torch.manual_seed; allowed: 0 <= seed < 2**63")

    def identity(self) -> str:
        """The weights follow from ``seed`` and ``architecture`` (in the config); the tokenizer is the embedded one."""
        return _embedded_identity(self.location(), prefixes=("tokenizer",))

    def hf_config(self):
        from transformers import LlamaConfig

        try:
            return LlamaConfig(**self.architecture)
        except Exception as error:  # noqa: BLE001 - transformers' own validation of the sizes
            raise ModelConfigError(f"model.source.architecture is not a valid LlamaConfig: {type(error).__name__}: "
                                   f"{_first_line(error)}") from error

    def location(self) -> str:
        return str(assets.require(assets.paths().smollm2_dir, "The tokenizer of the embedded model"))

    def load(self, dtype: torch.dtype):
        from transformers import AutoTokenizer, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(self.location())
        torch.manual_seed(int(self.seed))
        config = self.hf_config()
        config.vocab_size = max(config.vocab_size, len(tokenizer))
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build in the target dtype: a 7B-shaped model in fp32 needs 27 GB
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
        return _ready(model, tokenizer)

    def tokenizer_size(self) -> int:
        """Entries of the borrowed tokenizer (the embedding table grows to it)."""
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(self.location()))

    def load_dispatched(self, dtype: torch.dtype, spec, folder: Path):
        """The random model is built in memory (its weights come from the seed), then placed by ``spec``."""
        from prunelab import offload

        model, tokenizer = self.load(dtype)
        state = model.state_dict()
        config = model.config
        del model
        dispatched = offload.load(config, iter(list(state.items())), dtype, spec, folder)
        del state
        return _ready(dispatched, tokenizer)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines[:2])[:300]


def _embedded_identity(location: str, prefixes: tuple[str, ...] = ()) -> str:
    """The embedded model's files as ``make setup`` recorded them (checked against the files by
    ``assets.require``), without hashing 0.5 GB again; its files' own hashes if there is no record."""
    directory = Path(location).resolve()
    root = assets.path_root(directory)
    for entries in assets.Manifest(root).load().values():
        files = {name: record.get("sha256") for name, record in entries.items()
                 if (root / name).resolve().parent == directory
                 and (not prefixes or Path(name).name.startswith(prefixes))}
        if files:
            return identity.digest(files)
    return identity.directory_identity(directory, prefixes)


def _ready(model, tokenizer):
    model.eval()
    model.config.use_cache = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


AUTO = "auto"
LOCAL_FALLBACK = {"dtype": "float16", "seqlen": 2048}  # model=local without a note or a dtype in its config
EVAL_WINDOWS = ("ppl_datasets", "seqlen", "max_windows")


def settle_saved_settings(cfg):
    """``model.dtype`` / ``model.seqlen`` set to ``auto``: the dtype and evaluation window the
    checkpoint was measured with (its ``prunelab_structure`` note), else its HF config's dtype and
    context (float16 and 2,048 tokens where it says nothing). When the evaluation then differs from
    the one the saved model was measured with, a warning states both. Returns the settled config."""
    from omegaconf import OmegaConf

    from prunelab.config import build

    model = cfg.model
    auto = [key for key in ("dtype", "seqlen") if OmegaConf.is_config(model) and model.get(key) == AUTO]
    if "source" not in model or not OmegaConf.is_config(model.source) or "_target_" not in model.source:
        return cfg
    source = build(model.source, "model.source")
    if not isinstance(source, ModelSource):
        return cfg
    note = source.saved_settings() if auto or isinstance(source, LocalSource) else {}
    measured = note.get("eval") if isinstance(note.get("eval"), dict) else {}
    if auto:
        cfg = copy.deepcopy(cfg)  # the caller's config (recorded as given) stays as it is
        hf_config = source.hf_config()
        if "dtype" in auto:
            declared = str(getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)).removeprefix("torch.")
            cfg.model.dtype = note.get("dtype") or (declared if declared in DTYPES else LOCAL_FALLBACK["dtype"])
        if "seqlen" in auto:
            context = context_length(hf_config)
            cfg.model.seqlen = measured.get("seqlen") or min(LOCAL_FALLBACK["seqlen"], context or LOCAL_FALLBACK["seqlen"])
        log.info("model.%s=auto: %s", "/".join(auto), ", ".join(f"{k}={cfg.model[k]}" for k in auto))
    if measured:
        now = OmegaConf.to_container(cfg.eval, resolve=True)
        now = {k: list(now[k]) if isinstance(now.get(k), list) else now.get(k) for k in EVAL_WINDOWS}
        then = {k: measured.get(k) for k in EVAL_WINDOWS}
        if note.get("dtype"):
            now["dtype"], then["dtype"] = str(cfg.model.get("dtype")), note["dtype"]
        if now != then:
            show = lambda values: ", ".join(f"{k}={v}" for k, v in values.items())  # noqa: E731
            log.warning("model.path=%s was measured with %s; this run evaluates with %s: its perplexity is not "
                        "comparable with the one recorded when it was saved", source.location(), show(then), show(now))
    return cfg


def skeleton(hf_config, where: str = "") -> nn.Module:
    """The model's modules with their shapes on the meta device (no memory, no weights read):
    what the plan checks targets and N:M widths against before anything loads. A shrunk model's
    per-layer shape map (``prunelab_layers`` in its config) is applied. A config that builds no
    LLaMA-style decoder is a :class:`ModelConfigError` (``where``: `` at /its/path``)."""
    from transformers import AutoModelForCausalLM

    kind = getattr(hf_config, "model_type", "?")
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
            shapes = getattr(hf_config, structure.SHAPE_MAP_KEY, None)
            if shapes:
                structure.reshape_to(model, shapes)
    except Exception as error:  # noqa: BLE001 - sizes transformers cannot build (negative, zero, a bad shape map)
        raise ModelConfigError(f"the model config{where} (model_type {kind}) does not build a model: "
                               f"{type(error).__name__}: {_first_line(error)}") from error
    problem = DecoderAdapter.layout_problem(model)
    if problem:
        raise ModelConfigError(f"the model config{where} (model_type {kind}, {type(model).__name__}) is not a LLaMA-family "
                               f"decoder: {problem}; allowed: LLaMA-style models (llama, mistral, qwen2, ...)")
    return model


# ----------------------------------------------------------------------- shrunk checkpoints
def load_pretrained(location: str, dtype: torch.dtype) -> nn.Module:
    """``from_pretrained``, or, where a structured method left layers of different shapes (the
    config's ``prunelab_layers``), the model built layer by layer to those shapes and the
    safetensors loaded into it (every weight must match; only a tied ``lm_head`` may be absent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(location)
    shapes = getattr(config, structure.SHAPE_MAP_KEY, None)
    if not shapes:
        model, info = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, low_cpu_mem_usage=True,
                                                           output_loading_info=True, ignore_mismatched_sizes=True)
        check_weight_names(location, info.get("missing_keys", ()), info.get("unexpected_keys", ()),
                           [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ())])
        return model
    from safetensors.torch import load_file

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    structure.reshape_to(model, shapes)
    files = sorted(Path(location).glob("*.safetensors"))
    if not files:
        raise ModelConfigError(f"model.path={location!r} has a per-layer shape map but no *.safetensors weights")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    check_weight_names(location, set(missing) - tied, unexpected, what="its config and per-layer shape map")
    if tied:
        model.tie_weights()
    return model


def check_weight_names(location: str, missing, unexpected, mismatched=(), what: str = "its config") -> None:
    """A checkpoint must hold exactly the weights its config builds: a missing one (or one of
    another shape) would stay randomly initialised and an unexpected one (e.g. a block the config
    does not have) be dropped. Tied ``lm_head`` weights and non-persistent buffers (rotary) are
    never listed by the loaders."""
    missing, unexpected, mismatched = sorted(missing), sorted(unexpected), sorted(mismatched)
    if not missing and not unexpected and not mismatched:
        return
    found = []
    if mismatched:
        found.append(f"{len(mismatched)} weight(s) of another shape ({', '.join(mismatched[:3])}"
                     f"{', ...' if len(mismatched) > 3 else ''})")
    if missing:
        found.append(f"{len(missing)} weight(s) missing from the checkpoint ({', '.join(missing[:3])}"
                     f"{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        found.append(f"{len(unexpected)} unexpected weight(s) in it ({', '.join(unexpected[:3])}"
                     f"{', ...' if len(unexpected) > 3 else ''})")
    raise ModelLoadError(f"the checkpoint at {location} does not match {what}: {'; '.join(found)}; a config whose "
                         "num_hidden_layers or sizes disagree with the weights, or an incomplete checkpoint")


def save_pretrained(model: nn.Module, tokenizer, directory: Path, note: dict | None = None) -> dict:
    """Save as safetensors so that the shrunk model reloads: with equal layers, a plain HF config
    (head counts, ``head_dim``, MLP width, block count; with compensation biases,
    ``attention_bias``/``mlp_bias`` and zero biases where none were added) that ``from_pretrained``
    reads; with layers that differ, the per-layer shape map ``prunelab_layers`` that
    :func:`load_pretrained` reads (``model=local model.path=...``). ``prunelab_structure`` records
    what was pruned. The model in memory is not changed."""
    config = model.config
    shapes = structure.layer_shapes(model)
    first = shapes[0]
    head_dim = int(model.model.layers[0].self_attn.head_dim)
    dense = {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
             "intermediate_size": config.intermediate_size}
    biased = any(s["o_proj_bias"] or s["down_proj_bias"] for s in shapes)
    shrunk = biased or any({k: s[k] for k in dense} != dense for s in shapes)
    saved = {k: getattr(config, k, None) for k in (*dense, "head_dim", "attention_bias", "mlp_bias",
                                                   structure.SHAPE_MAP_KEY, structure.STRUCTURE_KEY)}
    state = None
    uniform = all(s == first for s in shapes)
    try:
        if shrunk and uniform:
            for key in dense:
                setattr(config, key, first[key])
            config.head_dim = head_dim
            if biased:
                config.attention_bias, config.mlp_bias = True, True
                state = _with_zero_biases(model)
        elif shrunk:
            setattr(config, structure.SHAPE_MAP_KEY, shapes)
        if shrunk or getattr(config, structure.STRUCTURE_KEY, None) is not None or note:
            setattr(config, structure.STRUCTURE_KEY, {**(note or {}), "bias_compensation": biased,
                                                      "layers_differ": not uniform, "blocks": len(shapes)})
        model.save_pretrained(directory, safe_serialization=True, state_dict=state)
    finally:
        for key, value in saved.items():
            if value is None and hasattr(config, key) and key in (structure.SHAPE_MAP_KEY, structure.STRUCTURE_KEY):
                delattr(config, key)
            elif value is not None:
                setattr(config, key, value)
    tokenizer.save_pretrained(directory)
    size = sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))
    return {"artifacts/model_dir": str(directory), "artifacts/model_bytes": size,
            "artifacts/model_loader": "local (prunelab_layers)" if shrunk and not uniform else "from_pretrained"}


def save_into_run(model: nn.Module, tokenizer, run_dir: Path, note: dict | None = None, name: str = "model") -> dict:
    """:func:`save_pretrained` into ``<run_dir>/<name>`` so that the directory is whole or absent.

    The model is written to a temporary directory inside the run directory, flushed, read back
    (:func:`verify_saved`) and only then renamed into place; a model saved before is replaced only
    after the new one is complete. A symbolic link or a file at ``<run_dir>/<name>`` is refused,
    never followed or silently kept. A failure or a signal during the save leaves the old state.
    """
    run_dir = Path(run_dir)
    target = run_dir / name
    if target.is_symlink():
        raise SaveError(f"cannot save the model: {target} is a symbolic link (to {os.readlink(target)}); "
                        "a run writes only inside its own directory. Remove the link and run again")
    if target.exists() and not target.is_dir():
        raise SaveError(f"cannot save the model: {target} exists and is not a directory; move it away and run again")
    for stale in run_dir.glob(f".{name}.*.partial"):  # left by a save whose process was killed
        if not _alive(stale.name.split(".")[2]):
            shutil.rmtree(stale, ignore_errors=True)
    prefix = f".{name}.{os.getpid()}."
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=run_dir))
    previous = None
    try:
        saved = save_pretrained(model, tokenizer, staging, note)
        saved.update(verify_saved(staging, model))
        _fsync_tree(staging)
        if target.is_dir():
            previous = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=run_dir))
            os.replace(target, previous / name)
        os.replace(staging, target)
        _fsync_dir(run_dir)
    except BaseException:
        if previous is not None and not target.exists():  # stopped between the two renames: put it back
            os.replace(previous / name, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    saved["artifacts/model_dir"] = str(target)
    return saved


def verify_saved(directory: Path, model: nn.Module) -> dict:
    """Read back what :func:`save_pretrained` wrote: every safetensors file whole (its tensors
    fill it exactly), every tensor equal to the model's (or a zero bias it added), nothing of the
    model missing but a tied ``lm_head``; the config and tokenizer load. Raises :class:`SaveError`."""
    import json
    import struct

    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    expected = model.state_dict()
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    found, count = set(), 0
    files = sorted(Path(directory).glob("*.safetensors"))
    try:
        if not files:
            raise ValueError("no *.safetensors file was written")
        for file in files:
            with open(file, "rb") as handle:
                header_size = struct.unpack("<Q", handle.read(8))[0]
                header = json.loads(handle.read(header_size))
            payload = sum(end - start for key, item in header.items() if key != "__metadata__"
                          for start, end in [item["data_offsets"]])
            if 8 + header_size + payload != file.stat().st_size:
                raise ValueError(f"{file.name} holds {file.stat().st_size} bytes, its tensors {8 + header_size + payload}")
            with safe_open(str(file), framework="pt") as tensors:
                for key in tensors.keys():
                    tensor = tensors.get_tensor(key)
                    reference = expected.get(key)
                    if reference is None:
                        if not (key.endswith(".bias") and not tensor.any()):
                            raise ValueError(f"{file.name}: unexpected tensor {key}")
                    elif not torch.equal(tensor, reference.detach().cpu()):
                        raise ValueError(f"{file.name}: {key} differs from the model's")
                    found.add(key)
                    count += 1
        missing = sorted(set(expected) - found - tied)
        if missing:
            raise ValueError(f"{len(missing)} tensor(s) of the model are missing, e.g. {missing[:3]}")
        AutoConfig.from_pretrained(directory)
        AutoTokenizer.from_pretrained(directory)
    except Exception as error:  # noqa: BLE001 - any read-back failure means the save is not usable
        raise SaveError(f"the saved model in {directory} does not read back as written: "
                        f"{type(error).__name__}: {error}") from error
    return {"artifacts/model_tensors": count}


def _alive(pid: str) -> bool:
    """Whether the process that staged a save still runs (then its staging is not stale)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(directory: Path) -> None:
    for file in sorted(Path(directory).rglob("*")):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _with_zero_biases(model: nn.Module) -> dict:
    """The state dict with a zero bias for every decoder linear layer that has none (what
    ``attention_bias=True, mlp_bias=True`` makes ``from_pretrained`` expect)."""
    state = dict(model.state_dict())
    for index, block in enumerate(model.model.layers):
        for name, layer in DecoderAdapter.linear_layers(block).items():
            if layer.bias is None:
                state[f"model.layers.{index}.{name}.bias"] = torch.zeros(layer.out_features, dtype=layer.weight.dtype)
    return state


def context_length(config) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 0)


@dataclass
class DecoderAdapter:
    """Where the parts of a LLaMA-style decoder live (LLaMA, Mistral, Qwen2 share this layout)."""

    model: nn.Module

    @property
    def backbone(self) -> nn.Module:
        return self.model.model

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.layers

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    BLOCK_PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

    @classmethod
    def layout_problem(cls, model: nn.Module) -> str | None:
        """Why ``model`` does not have the layout this adapter reads (``None`` when it does)."""
        backbone = getattr(model, "model", None)
        layers = getattr(backbone, "layers", None)
        if backbone is None or getattr(backbone, "embed_tokens", None) is None or not isinstance(layers, nn.ModuleList):
            return "no model.embed_tokens and model.layers"
        if len(layers) == 0:
            return "it has no decoder blocks (num_hidden_layers=0)"
        names = {name for name, module in layers[0].named_modules() if isinstance(module, nn.Linear)}
        absent = [part for part in cls.BLOCK_PARTS if part not in names]
        return f"its blocks have no {', '.join(absent)}" if absent else None

    def entry_modules(self) -> list[nn.Module]:
        """Modules that run before the first block (moved to the work device for capture)."""
        return [m for m in (self.backbone.embed_tokens, getattr(self.backbone, "rotary_emb", None)) if m is not None]

    @staticmethod
    def linear_layers(block: nn.Module) -> dict[str, nn.Linear]:
        """Every linear layer of one block by its name inside the block (``self_attn.q_proj``...)."""
        return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}

    def prunable_parameters(self) -> int:
        return sum(
            layer.weight.numel() for block in self.blocks for layer in self.linear_layers(block).values()
        )
