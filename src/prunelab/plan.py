"""One validated run plan from the composed config: every check that needs no weights, done once.

:func:`make_plan` builds the components (method, pattern, model source, engine, logger) and reads
the plain sections into typed records; then, from the model's config alone (a meta-device
skeleton, no weights read), it checks the target blocks and modules, the N:M divisibility of
every pruned layer, what a structured method would remove (never every head, channel or block)
and the sequence lengths. The stages of :mod:`prunelab.pipeline` consume the
frozen :class:`RunPlan` and rebuild nothing. Every failure is a :class:`ConfigError` naming the
key, the value and what is allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf

from prunelab import checks, data, models, zeroshot
from prunelab.bench.engines import Engine
from prunelab.config import POSITIVE, STUDY_KNOBS, between, build, finite_numbers, is_component, label, missing_keys, read
from prunelab.evaluate import PerplexitySpec
from prunelab.loggers import Logger
from prunelab.methods.base import PruningMethod, StructuredMethod
from prunelab.patterns import Pattern, check_sparsity, parse_pattern
from prunelab.prune import PruneTarget
from prunelab.recover import Recovery
from prunelab.structure import BlockGeometry

ConfigError = checks.ConfigError
MODEL_NAME_WHY = "sweeps are written under multirun/<model.name>/"
MAX_FEWSHOT = 25


# ---------------------------------------------------------------------- schemas of the sections
@dataclass(frozen=True)
class RootSettings:
    """The top level of ``conf/config.yaml`` (groups are read by their own schemas; the study knobs,
    ``config.STUDY_KNOBS``, are numbers checked by :func:`make_plan`)."""

    model: Any
    method: Any
    calib_data: Any
    eval: Any
    logger: Any
    target: Any
    engine: Any = None
    export: Any = None  # conf/export/<name>.yaml; read by _export
    recover: Any = None  # absent with recover=none
    local: Any = None  # conf/local/default.yaml, machine-specific and optional
    sparsity: float = field(default=0.5, metadata=between(0, 1, high_open=True, what="the fraction of weights removed"))
    pattern: Any = "unstructured"
    save_model: bool = False
    seed: int = 0
    run_name: str | None = None
    group: str | None = None
    force: bool = False
    cache_calibration: bool = True


@dataclass(frozen=True)
class ModelSettings:
    name: str
    seqlen: int = field(metadata=POSITIVE)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"
    path: str | None = None
    source: Any = None


@dataclass(frozen=True)
class CalibSettings:
    dataset: str = field(metadata={"allowed": tuple(data.ALL_SETS)})
    nsamples: int = field(metadata=POSITIVE)
    seqlen: int = field(metadata=POSITIVE)
    seed: int = 0
    batch_size: int = field(default=8, metadata=POSITIVE)


@dataclass(frozen=True)
class EvalSettings:
    ppl_datasets: tuple[str, ...] = field(default=(), metadata={"allowed": tuple(data.ALL_SETS)})
    seqlen: int = field(default=256, metadata=between(2, what="tokens per window; each predicts the next"))
    max_windows: int | None = field(default=None, metadata=POSITIVE)
    batch_size: int = field(default=4, metadata=POSITIVE)
    tasks: tuple[str, ...] = ()
    limit: int | float | None = None
    limit_per_task: dict | None = None
    # at most 25: the most any standard protocol shows (ARC 25-shot); lm-eval draws the shots from the
    # task's own split, and a count beyond it (num_fewshot=100000) failed after pruning
    num_fewshot: int | None = field(default=0, metadata=between(0, MAX_FEWSHOT, what="examples shown before each question"))
    zeroshot_batch_size: int = field(default=16, metadata=POSITIVE)
    zeroshot_data: Literal["auto", "offline", "online"] = "auto"


@dataclass(frozen=True)
class TargetSettings:
    modules: tuple[str, ...] = ("all",)
    blocks: tuple[int, int] | None = None


# ----------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class ModelPlan:
    name: str
    source: models.ModelSource
    dtype: torch.dtype
    device: torch.device
    context: int  # tokens; 0 when the config does not say


@dataclass(frozen=True)
class CalibrationPlan:
    spec: data.CalibrationSpec
    batch_size: int
    cache: bool  # reuse token windows and dense-pass summaries across runs


@dataclass(frozen=True)
class EvalPlan:
    perplexity: PerplexitySpec
    zeroshot: zeroshot.ZeroShotSpec


@dataclass(frozen=True)
class RunPlan:
    """Everything one run does, checked; the stages read only this."""

    model: ModelPlan
    method: PruningMethod
    method_label: str
    sparsity: float  # 0 for methods that prune nothing
    pattern: Pattern
    target: PruneTarget
    calibration: CalibrationPlan | None  # None: the method needs no calibration data
    evaluation: EvalPlan
    engine: Engine | None
    logger: Logger
    save_model: bool
    recovery: Recovery | None = None  # recover=lora: fine-tuning between prune and evaluate
    export: Any = None  # export=gguf: gguf_export.GGUFExport; None for export=none

    def summary(self) -> dict[str, Any]:
        """The plan in a few scalars, recorded in metrics.json and printed at the start."""
        return {
            "model": self.model.name, "method": self.method_label, "sparsity": self.sparsity,
            "pattern": "structured" if self.method.structured else self.pattern.name,
            "target_modules": list(self.target.modules),
            "target_blocks": list(self.target.blocks) if self.target.blocks else None,
            "calibration": (f"{self.calibration.spec.dataset} {self.calibration.spec.nsamples}x"
                            f"{self.calibration.spec.seqlen} seed {self.calibration.spec.seed}"
                            if self.calibration else None),
            "perplexity": list(self.evaluation.perplexity.datasets),
            "zeroshot_tasks": list(self.evaluation.zeroshot.tasks),
            "engine": getattr(self.engine, "name", type(self.engine).__name__) if self.engine is not None else None,
            **({"export": self.export.name} if self.export is not None else {}),
            "device": str(self.model.device), "dtype": str(self.model.dtype).removeprefix("torch."),
            **({"recover": _recovery_summary(self.recovery)} if self.recovery is not None else {}),
        }


def make_plan(cfg: DictConfig) -> RunPlan:
    """Check the composed config without loading weights; raise :class:`ConfigError`."""
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(f"{missing[0]} must be set (its config leaves it as ???), e.g. {missing[0]}=...")
    finite_numbers(cfg)
    cfg = models.settle_saved_settings(cfg)  # model.dtype/seqlen=auto: from the checkpoint
    settings = OmegaConf.to_container(cfg, resolve=True)
    for knob, meaning in STUDY_KNOBS.items():
        if knob in settings:
            checks.number(settings.pop(knob), knob, what=meaning)
    root = read(RootSettings, settings, "")
    method = _component(cfg.method, "method", PruningMethod)
    pattern = build(cfg.pattern, "pattern") if is_component(cfg.pattern) else parse_pattern(root.pattern)
    sparsity = root.sparsity if method.prunes else 0.0
    if method.prunes:
        check_sparsity(pattern, sparsity)
        method.check_pattern(pattern)
        method.check_sparsity(sparsity, pattern)
    engine = _component(cfg.get("engine"), "engine", Engine) if cfg.get("engine") is not None else None
    if engine is not None:
        engine.check(pattern, method)
    logger = _component(cfg.logger, "logger", Logger)
    recovery = _component(cfg.recover, "recover", Recovery) if cfg.get("recover") is not None else None
    if recovery is not None and recovery.dataset in data.ONLINE_SETS and not models.hub_reachable():
        raise ConfigError(f"recover.dataset={recovery.dataset} needs the Hugging Face hub, which is unreachable here; "
                          f"offline sets: {', '.join(data.OFFLINE_SETS)}")

    calib = read(CalibSettings, cfg.calib_data, "calib_data")
    calibration = None
    if method.needs.any:
        if calib.dataset in data.ONLINE_SETS and not models.hub_reachable():
            raise ConfigError(
                f"calib_data={calib.dataset} needs the Hugging Face hub, which is unreachable here; "
                f"offline calibration sets: {', '.join(data.OFFLINE_SETS)}"
            )
        calibration = CalibrationPlan(data.CalibrationSpec(calib.dataset, calib.nsamples, calib.seqlen, calib.seed),
                                      calib.batch_size, root.cache_calibration)
    evaluation = _evaluation(read(EvalSettings, cfg.eval, "eval"))
    target = _target(read(TargetSettings, _target_node(cfg.target), "target"))

    settings = read(ModelSettings, cfg.model, "model", source=None)
    checks.file_name(settings.name, "model.name", MODEL_NAME_WHY)
    source = _component(cfg.model.source, "model.source", models.ModelSource)
    dtype, device = models.resolve_dtype(settings.dtype), models.resolve_device(settings.device)
    hf_config = source.hf_config()
    model = ModelPlan(settings.name, source, dtype, device, models.context_length(hf_config))
    for key, seqlen in (("calib_data.seqlen", calib.seqlen), ("eval.seqlen", evaluation.perplexity.seqlen)):
        if model.context and seqlen > model.context:
            raise ConfigError(f"{key}={seqlen} exceeds the model's context of {model.context} tokens")
    problem = engine.context_problem(model.context) if engine is not None and model.context else None
    if problem:
        raise ConfigError(problem)
    if calibration is not None:
        _check_calibration_memory(calib, hf_config, dtype, device)
    _check_model_memory(settings.name, hf_config, dtype)
    where = f" at {source.location()}" if isinstance(source, models.LocalSource) else ""
    skeleton = models.skeleton(hf_config, where)
    _check_against_model(skeleton, target, pattern, method, sparsity)
    if recovery is not None:
        recovery.check_model(models.DecoderAdapter(skeleton), model.context)
    export = _export(cfg.get("export"), hf_config, source, evaluation)
    return RunPlan(model, method, label(cfg.method, method), sparsity, pattern, target, calibration, evaluation,
                   engine, logger, root.save_model, recovery, export)


EXPORTS = ("none", "gguf")


def _export(node: Any, hf_config, source: models.ModelSource, evaluation: EvalPlan) -> Any:
    """``export=<name>``: its settings, checked against the model's config and tokenizer (no weights)."""
    name = node.get("name") if isinstance(node, DictConfig) else None
    if node is None or name == "none":
        return None
    if name != "gguf":
        raise ConfigError(f"export.name={name!r} is not an export; allowed: {', '.join(EXPORTS)}")
    from prunelab import gguf_export

    settings = gguf_export.read_settings(node)
    try:
        tokenizer_dir = source.tokenizer_location()
    except ConfigError:
        tokenizer_dir = None
    gguf_export.check_model(hf_config, tokenizer_dir)
    needs_llama_cpp = settings.perplexity or any(t in gguf_export.QUANT_TYPES for t in settings.types)
    problem = gguf_export.llama_cpp_problem() if needs_llama_cpp else None
    if problem:
        raise ConfigError(f"export=gguf with types={list(settings.types)} needs llama.cpp: {problem}; "
                          "allowed without it: export.types=[F16] export.perplexity=false")
    if settings.perplexity and not evaluation.perplexity.datasets:
        raise ConfigError("export.perplexity=true compares llama.cpp's perplexity with ours, but eval.ppl_datasets=[]; "
                          "allowed: a perplexity set in eval.ppl_datasets, or export.perplexity=false")
    return settings


def _recovery_summary(recovery: Recovery) -> str:
    knobs = recovery.settings()
    shown = ", ".join(f"{k}={knobs[k]}" for k in ("rank", "steps", "lr", "dataset") if k in knobs)
    return f"{type(recovery).__name__}({shown})"


def _check_calibration_memory(calib: CalibSettings, hf_config, dtype: torch.dtype, device: torch.device) -> None:
    """The sequential walk holds a block's inputs and outputs for every calibration token on the
    work device: ``2 x nsamples x seqlen x hidden`` values. A count whose activations alone exceed
    that device's memory cannot run; it is rejected here instead of failing (or swapping) later."""
    hidden = int(getattr(hf_config, "hidden_size", 0) or 0)
    if not hidden:
        return
    per_sample = 2 * calib.seqlen * hidden * torch.finfo(dtype).bits // 8
    memory = device_memory(device)
    if memory and calib.nsamples * per_sample > memory:
        raise ConfigError(
            f"calib_data.nsamples={calib.nsamples} would hold {calib.nsamples * per_sample / 2**30:.1f} GiB of block "
            f"activations (2 x {calib.nsamples} x {calib.seqlen} tokens x {hidden} x {torch.finfo(dtype).bits // 8} "
            f"bytes) on {device.type}, more than its {memory / 2**30:.1f} GiB; allowed: calib_data.nsamples <= "
            f"{memory // per_sample}")


def _check_model_memory(name: str, hf_config, dtype: torch.dtype) -> None:
    """The weights are read into host memory first (blocks then move to the work device one by
    one), so a model larger than this machine's memory cannot load; estimated from the config's
    sizes (LLaMA layout) before even the meta-device skeleton is built."""
    sizes = [getattr(hf_config, key, None) for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                       "num_attention_heads", "vocab_size")]
    if not all(isinstance(v, int) and v > 0 for v in sizes):
        return
    hidden, intermediate, layers, heads, vocab = sizes
    head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    per_block = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if getattr(hf_config, "tie_word_embeddings", False) else 2)
    weight_bytes = (layers * per_block + embeddings) * torch.finfo(dtype).bits // 8
    memory = device_memory(torch.device("cpu"))
    if memory and weight_bytes > memory:
        raise ConfigError(f"model={name} has {weight_bytes / 2**30:.1f} GiB of weights in {str(dtype).removeprefix('torch.')} "
                          f"({layers} blocks of hidden size {hidden}), more than this machine's {memory / 2**30:.1f} GiB "
                          "of memory; allowed: a model that fits (or model.dtype=float16)")


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device`` (0 when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _component(node: Any, key: str, kind: type) -> Any:
    built = build(node, key)
    if not isinstance(built, kind):
        raise ConfigError(f"{key}._target_={node.get('_target_')!r} is not a {kind.__module__}.{kind.__qualname__}; "
                          "see README 'Architecture' for the interface it must implement")
    return built


def _evaluation(settings: EvalSettings) -> EvalPlan:
    for name in settings.ppl_datasets:
        if name in data.ONLINE_SETS and not models.hub_reachable():
            raise ConfigError(
                f"eval.ppl_datasets entry {name!r} needs the Hugging Face hub, which is unreachable here; "
                f"offline sets: {', '.join(data.OFFLINE_SETS)}"
            )
    perplexity = PerplexitySpec(settings.ppl_datasets, settings.seqlen, settings.max_windows, settings.batch_size)
    if not settings.ppl_datasets and not settings.tasks:
        raise ConfigError("eval.ppl_datasets=[] with no eval.tasks: the run would measure nothing; allowed: at least "
                          f"one perplexity set ({', '.join(data.OFFLINE_SETS)}, ...) or zero-shot task (eval=zeroshot_only)")
    tasks = zeroshot.resolve(settings.tasks, settings.limit, settings.limit_per_task, settings.num_fewshot,
                             settings.zeroshot_batch_size, settings.zeroshot_data)
    return EvalPlan(perplexity, tasks)


def _target_node(node: Any) -> Any:
    """``target.modules=attention`` (one name, not a list) means ``[attention]``."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if isinstance(plain, dict) and isinstance(plain.get("modules"), str):
        plain["modules"] = [plain["modules"]]
    return plain


def _target(settings: TargetSettings) -> PruneTarget:
    if not settings.modules:
        raise ConfigError("target.modules=[] selects no layer; allowed: all, attention, mlp or layer names "
                          "(a dense run is method=dense)")
    if settings.blocks is not None:
        start, stop = settings.blocks
        if not 0 <= start < stop:
            raise ConfigError(f"target.blocks={list(settings.blocks)} must be [start, stop) with 0 <= start < stop")
    return PruneTarget(settings.modules, settings.blocks)


def _check_against_model(skeleton, target: PruneTarget, pattern: Pattern, method: PruningMethod,
                         sparsity: float) -> None:
    """Targets exist, every layer that will be pruned fits the pattern, and a structured method's
    removal leaves every block something (from shapes alone)."""
    adapter = models.DecoderAdapter(skeleton)
    target.validate(adapter)
    if not method.prunes:
        return
    if isinstance(method, StructuredMethod):
        geometries = [BlockGeometry.from_block(block) for block in adapter.blocks]
        method.check_structure(geometries, sparsity, target.scope(adapter.num_blocks))
        return
    width_problem = getattr(pattern, "width_problem", None)
    for index, block in enumerate(adapter.blocks):
        if not target.selects_block(index):
            continue
        for name, layer in adapter.linear_layers(block).items():
            problem = width_problem(layer.in_features) if width_problem and target.selects_layer(name) else None
            if problem:
                raise ConfigError(f"pattern={pattern.name} cannot prune layers.{index}.{name}: {problem}")
