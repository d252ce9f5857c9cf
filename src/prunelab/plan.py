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

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf

from prunelab import checks, data, exports, memory_plan, models, offload, zeroshot
from prunelab.bench.engines import Engine
from prunelab.config import POSITIVE, STUDY_KNOBS, between, build, finite_numbers, is_component, label, missing_keys, read
from prunelab.evaluate import PerplexitySpec
from prunelab.loggers import Logger
from prunelab.methods.base import PruningMethod, StructuredMethod
from prunelab.patterns import Pattern, check_sparsity, parse_pattern
from prunelab.prune import PruneTarget
from prunelab.quant import Quantization
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
    quant: Any = None  # absent with quant=none
    export: Any = None
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
    device_map: Any = None  # null, auto or {module: device}: accelerate's big-model dispatch (prunelab.offload)
    max_memory: Any = None  # {device: size}: the budget of device_map=auto and of the memory plan
    offload_folder: str | None = None
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
    dispatch: offload.DispatchSpec | None = None  # model.device_map set: loaded and evaluated through accelerate
    max_memory: dict | None = None  # model.max_memory in bytes per device (cpu, GPU index)


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
    quant: Quantization | None = None  # quant=rtn|gptq: after prune (and recover), before evaluate
    export: str = "none"  # export=<name> after save (prunelab.exports)
    memory: MemoryPlan | None = None  # estimated peak per stage and device (prunelab.memory_plan)
    export_settings: Any = None  # export=gguf: gguf_export.GGUFExport (its types, perplexity check, widths)

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
            "device": str(self.model.device), "dtype": str(self.model.dtype).removeprefix("torch."),
            **({"device_map": self.model.dispatch.summary()} if self.model.dispatch is not None else {}),
            **({"recover": _recovery_summary(self.recovery)} if self.recovery is not None else {}),
            **({"quant": self.quant.describe()} if self.quant is not None else {}),
            **({"export": self.export} if self.export != "none" else {}),
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

    quant = _component(cfg.quant, "quant", Quantization) if cfg.get("quant") is not None else None
    export = _export(cfg.get("export"), quant, method)
    if quant is not None:
        _check_quant_method(quant, method, recovery)

    calib = read(CalibSettings, cfg.calib_data, "calib_data")
    calibration = None
    if method.needs.any or (quant is not None and quant.needs_hessian):
        if calib.dataset in data.ONLINE_SETS and not models.hub_reachable():
            needs = f"method={label(cfg.method, method)}" if method.needs.any else f"quant={quant.name}"
            raise ConfigError(
                f"calib_data={calib.dataset} needs the Hugging Face hub, which is unreachable here ({needs} calibrates on it); "
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
    max_memory = _max_memory(settings.max_memory)
    dispatch = _dispatch(settings, max_memory, hf_config, root, method, engine, recovery, quant, export)
    model = ModelPlan(settings.name, source, dtype, device, models.context_length(hf_config), dispatch, max_memory)
    for key, seqlen in (("calib_data.seqlen", calib.seqlen), ("eval.seqlen", evaluation.perplexity.seqlen)):
        if model.context and seqlen > model.context:
            raise ConfigError(f"{key}={seqlen} exceeds the model's context of {model.context} tokens")
    problem = engine.context_problem(model.context) if engine is not None and model.context else None
    if problem:
        raise ConfigError(problem)
    if dispatch is None:  # a dispatched model never holds all its weights in host memory
        _check_model_memory(settings.name, hf_config, dtype)
    if calibration is not None:
        reserve = calibration_reserve(source, dtype, device, method, calibration) if dispatch is None else 0
        _check_calibration_memory(calib, hf_config, dtype, device, reserve)
    memory = memory_budget(source, dtype, device, method, calibration, evaluation, dispatch, max_memory)
    if dispatch is not None and memory.weights_budget is not None:
        dispatch = dataclasses.replace(dispatch, max_memory=memory.weights_budget)
        model = dataclasses.replace(model, dispatch=dispatch)
    where = f" at {source.location()}" if isinstance(source, models.LocalSource) else ""
    skeleton = models.skeleton(hf_config, where)
    _check_against_model(skeleton, target, pattern, method, sparsity)
    if recovery is not None:
        recovery.check_model(models.DecoderAdapter(skeleton), model.context)
    if quant is not None:
        _check_quant_widths(models.DecoderAdapter(skeleton), quant)
    export_settings = _gguf_export(cfg.get("export"), hf_config, source, evaluation) if export == "gguf" else None
    return RunPlan(model, method, label(cfg.method, method), sparsity, pattern, target, calibration, evaluation,
                   engine, logger, root.save_model, recovery, quant, export, memory, export_settings)


def _export(node: Any, quant: Quantization | None, method: PruningMethod) -> str:
    """``export.name``: one of :data:`prunelab.exports.EXPORTS` (or none), with what it needs."""
    name = node.get("name", "none") if isinstance(node, DictConfig) else "none"
    checks.choice(name, "export", ("none", "gguf", *exports.EXPORTS))
    if name == "compressed_tensors" and quant is None:
        raise ConfigError("export=compressed_tensors with quant=none: the format stores quantized weights (pack-quantized "
                          "W4A16/W8A16); allowed: quant=rtn or quant=gptq (save_model=true writes the unquantized model)")
    if name == "compressed_tensors" and not quant.sym:
        raise ConfigError("quant.sym=false with export=compressed_tensors: the format packs asymmetric zero points, which stock "
                          "transformers does not load back (size mismatch of weight_zero_point; vllm-project/llm-compressor"
                          "#1618); allowed: quant.sym=true")
    if name == "compressed_tensors" and isinstance(method, StructuredMethod) and not method.removes_blocks:
        raise ConfigError(f"export=compressed_tensors with method={method.name}: it shrinks every block to its own widths, "
                          "which a LLaMA config (one intermediate_size, one head count) cannot describe, so stock "
                          "transformers could not load the checkpoint; allowed: unstructured or N:M methods, or method=shortgpt")
    return name


def _check_quant_method(quant: Quantization, method: PruningMethod, recovery: Recovery | None) -> None:
    """What a quantizer cannot follow: a group size on layers whose widths the pruning decides, and
    a joint SparseGPT pass with a damping other than the method's."""
    if isinstance(method, StructuredMethod) and not method.removes_blocks and quant.group_size != -1:
        raise ConfigError(f"quant.group_size={quant.group_size} with method={method.name}: it shrinks layers to widths chosen "
                          "while pruning, which a group size may not divide; allowed: quant.group_size=-1 (per output "
                          "channel) with structured methods that shrink layers (method=shortgpt keeps the widths)")
    from prunelab.quant.stage import joint_method  # noqa: PLC0415 - the method classes import the plan's helpers

    joint = joint_method(method, quant, recovering=recovery is not None)
    if joint is not method and getattr(quant, "percdamp", None) != method.percdamp:
        raise ConfigError(f"quant.percdamp={quant.percdamp:g} with method=sparsegpt (method.percdamp={method.percdamp:g}): "
                          "method=sparsegpt quant=gptq prunes and quantizes in one OBS pass with one damping; allowed: "
                          f"quant.percdamp={method.percdamp:g}")


def _check_quant_widths(adapter: models.DecoderAdapter, quant: Quantization) -> None:
    """Every decoder linear layer's input width is a multiple of the group size."""
    widths: dict[int, str] = {}
    for index, block in enumerate(adapter.blocks):
        for name, layer in adapter.linear_layers(block).items():
            widths.setdefault(layer.in_features, f"layers.{index}.{name}")
    for width, where in widths.items():
        problem = quant.width_problem(width)
        if problem:
            common = sorted(d for d in range(1, min(widths) + 1) if all(w % d == 0 for w in widths) and d >= 16)
            raise ConfigError(f"quant.group_size={quant.group_size} does not divide the input width of {where} ({problem}); "
                              f"allowed: -1 (per output channel) or a divisor of every input width "
                              f"({', '.join(map(str, sorted(widths)))}): {', '.join(map(str, common)) or 'none from 16 up'}")


@dataclass(frozen=True)
class MemoryPlan:
    """The estimated peak of every stage on every device, the budgets it was checked against, this
    process's resident memory when it was made, and (``device_map=auto``) the weights' budget."""

    needs: tuple[memory_plan.Need, ...]
    budgets: dict
    baseline: int
    weights_budget: dict | None = None

    def report(self) -> str:
        text = memory_plan.table(list(self.needs), self.budgets, self.baseline)
        if self.weights_budget:
            text += "\n  device_map=auto places weights within " + ", ".join(
                f"{k}: {memory_plan.mib(v)}" for k, v in self.weights_budget.items()) + " (the budget less the working set)"
        return text

    def metrics(self) -> dict[str, float]:
        return {f"plan/memory_{need.stage.replace('+', '_')}_{need.device}_mb": need.total / 2**20 for need in self.needs}


def _workload(source, dtype: torch.dtype, device: torch.device, method: PruningMethod,
              calibration: CalibrationPlan | None, evaluation: EvalPlan, nsamples: int | None = None):
    """The model's config (a random model's vocabulary grown to its tokenizer), its sizes and the
    run's :class:`memory_plan.Workload` (``nsamples``: instead of the calibration's)."""
    config = source.hf_config()
    if isinstance(source, models.RandomSource):  # its embedding table grows to the borrowed tokenizer
        config.vocab_size = max(config.vocab_size, source.tokenizer_size())
    needs_stats = method.needs if method.prunes or method.needs.any else None
    spec = calibration.spec if calibration is not None else None
    work = memory_plan.Workload(
        dtype, str(device), (nsamples or spec.nsamples, spec.seqlen, calibration.batch_size) if spec is not None else None,
        bool(needs_stats and needs_stats.hessian), bool(needs_stats and (needs_stats.norms or needs_stats.dense_pass)),
        method.prunes, (evaluation.perplexity.seqlen, _eval_batch(evaluation.perplexity)) if evaluation.perplexity.datasets else None,
        mapped=not isinstance(source, models.RandomSource))
    return config, memory_plan.Sizes.from_config(config), work


def calibration_reserve(source, dtype: torch.dtype, device: torch.device, method: PruningMethod,
                        calibration: CalibrationPlan) -> int:
    """What calibrate+prune needs on the work device besides the block activations (weights, one
    mini-batch, statistics, pruning), so that the ``calib_data.nsamples`` bound leaves room for it."""
    batch = calibration.batch_size
    _, sizes, work = _workload(source, dtype, device, method, calibration, EvalPlan(PerplexitySpec((), 2, None, 1), None),
                               nsamples=batch)
    if sizes is None:
        return 0
    stage = [n for n in memory_plan.plan(sizes, work, None, sizes.block_params() * torch.finfo(dtype).bits // 8)
             if n.stage == "calibrate+prune" and n.device == str(device)]
    return stage[0].total - stage[0].parts.get("block inputs+outputs", 0) if stage else 0


def memory_budget(source, dtype: torch.dtype, device: torch.device, method: PruningMethod,
                  calibration: CalibrationPlan | None, evaluation: EvalPlan, dispatch: offload.DispatchSpec | None,
                  max_memory: dict | None) -> MemoryPlan:
    """Estimate every stage's peak from the config (:mod:`prunelab.memory_plan`) and refuse one that
    exceeds its device's budget (``model.max_memory``, else the device's memory)."""
    import psutil

    baseline = psutil.Process().memory_info().rss
    config, sizes, work = _workload(source, dtype, device, method, calibration, evaluation)
    if sizes is None:
        return MemoryPlan((), {}, baseline)
    budgets = {key: device_memory(torch.device("cpu" if key == "cpu" else f"cuda:{key}"))
               for key in {"cpu", memory_plan.budget_key(str(device))}}
    budgets = {k: v for k, v in budgets.items() if v}
    budgets.update(max_memory or {})
    block_bytes = sizes.block_params() * torch.finfo(dtype).bits // 8
    weights_budget = None
    resident = None
    if dispatch is not None:
        if dispatch.device_map == "auto" and max_memory:
            working = {}
            for need in memory_plan.working_sets(sizes, work):
                key = memory_plan.budget_key(need.device)
                working[key] = max(working.get(key, 0), need.total + block_bytes)
            weights_budget = {}
            for key, budget in max_memory.items():
                left = budget - working.get(key, 0)
                if left <= 0:
                    raise ConfigError(f"model.max_memory.{key}={memory_plan.mib(budget)} is less than the run's working set "
                                      f"on that device without any weight ({memory_plan.mib(working[key])}: one block, "
                                      "calibration activations, one evaluation batch); allowed: more than that, or fewer "
                                      "calib_data.nsamples / a smaller eval.batch_size")
                weights_budget[key] = left
            dispatch = dataclasses.replace(dispatch, max_memory=weights_budget)
        skeleton = offload.skeleton_of(config, dtype)
        device_map = offload.plan_device_map(skeleton, dispatch, dtype)
        resident = {}
        for name, parameter in skeleton.named_parameters():
            where = offload.device_of(name, device_map)
            where = "cpu" if where == "cpu" else "disk" if where == "disk" else f"cuda:{str(where).removeprefix('cuda:')}"
            resident[where] = resident.get(where, 0) + parameter.numel() * parameter.element_size()
    needs = memory_plan.plan(sizes, work, resident, block_bytes)
    result = MemoryPlan(tuple(needs), budgets, baseline, weights_budget)
    for need in needs:
        key = memory_plan.budget_key(need.device)
        budget = budgets.get(key)
        if budget and need.total > budget:
            given = f"model.max_memory.{key}=" if max_memory and key in max_memory else f"the memory of {need.device}, "
            hint = ("model.device_map=auto with model.max_memory (weights beyond the budget go to disk), "
                    if dispatch is None else "") + "fewer calib_data.nsamples or a smaller eval.batch_size"
            raise ConfigError(f"memory plan: {need.stage} needs about {memory_plan.mib(need.total)} on {need.device} "
                              f"({need.describe()}), more than {given}{memory_plan.mib(budget)}; allowed: a plan within "
                              f"it: {hint}")
    return result


def _eval_batch(spec: PerplexitySpec) -> int:
    """Windows per forward: ``eval.batch_size``, or fewer when ``eval.max_windows`` caps them."""
    return min(spec.batch_size, spec.max_windows) if spec.max_windows else spec.batch_size


MEMORY_SIZES = "a size such as 200MiB, 20GiB or a number of bytes"


def _max_memory(value: Any) -> dict | None:
    """``model.max_memory`` as ``{device: bytes}``: keys ``cpu`` or a visible GPU's index (``0``,
    ``cuda:0``), values sizes (``200MiB``, ``20GiB``, bytes)."""
    from accelerate.utils import convert_file_size_to_int

    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"model.max_memory={value!r} is not a map of device to size; allowed: e.g. {{cpu: 2GiB}} "
                          "or {0: 20GiB, cpu: 60GiB}")
    budget: dict = {}
    for key, size in value.items():
        device = str(key).removeprefix("cuda:")
        if device.isdigit():
            if int(device) >= torch.cuda.device_count():
                raise ConfigError(f"model.max_memory key {key!r} names GPU {device}, but {torch.cuda.device_count()} "
                                  "GPU(s) are visible; allowed: cpu" + (f" or 0 .. {torch.cuda.device_count() - 1}"
                                                                        if torch.cuda.device_count() else ""))
            device = int(device)
        elif device != "cpu":
            raise ConfigError(f"model.max_memory key {key!r} is not a device; allowed: cpu or a GPU index (0, 1, ...)")
        try:
            budget[device] = int(size) if isinstance(size, int) else convert_file_size_to_int(str(size))
        except ValueError:
            budget[device] = -1
        if isinstance(size, bool) or budget[device] <= 0:
            raise ConfigError(f"model.max_memory.{key}={size!r} is not a size; allowed: {MEMORY_SIZES}")
    return budget


def _dispatch(settings: ModelSettings, max_memory: dict | None, hf_config, root: RootSettings, method: PruningMethod,
              engine: Engine | None, recovery: Recovery | None, quant=None, export: str = "none") -> offload.DispatchSpec | None:
    """``model.device_map``: checked, and the combinations that cannot run on a dispatched model refused."""
    device_map = settings.device_map
    if device_map is None:
        if settings.offload_folder is not None:
            raise ConfigError(f"model.offload_folder={settings.offload_folder!r} without model.device_map: nothing is "
                              "offloaded; allowed: model.offload_folder=null, or set model.device_map=auto")
        return None
    shown = f"model.device_map={device_map if isinstance(device_map, str) else 'explicit map'}"
    if isinstance(device_map, dict):
        allowed_gpus = range(torch.cuda.device_count())
        for module, device in device_map.items():
            text = str(device).removeprefix("cuda:")
            if not (device in ("cpu", "disk") or (text.isdigit() and int(text) in allowed_gpus)):
                raise ConfigError(f"model.device_map.{module}={device!r} is not a device here; allowed: cpu, disk"
                                  + (f", 0 .. {len(allowed_gpus) - 1}" if len(allowed_gpus) else " (no GPU is visible)"))
        device_map = {str(k): (int(str(v).removeprefix("cuda:")) if str(v).removeprefix("cuda:").isdigit() else v)
                      for k, v in device_map.items()}
        offload.check_device_map(models.skeleton(hf_config), device_map)
    elif device_map != "auto":
        raise ConfigError(f"model.device_map={device_map!r} is not valid; allowed: null (the whole model on model.device), "
                          "auto (accelerate places it within model.max_memory, the rest on disk) or a map "
                          "{module: cpu|disk|<gpu index>}")
    refused = [("save_model=true", root.save_model, "the pruned weights live partly in the offload store; save from a "
                "run without model.device_map"),
               (f"engine={getattr(engine, 'name', '')}", engine is not None, "the engines cast and swap whole weight "
                "matrices in memory"),
               (f"recover={getattr(recovery, 'name', '')}", recovery is not None, "fine-tuning needs every weight "
                "resident for its backward pass"),
               (f"method={getattr(method, 'name', '')} (structured)", isinstance(method, StructuredMethod),
                "structured methods change the shapes of the offloaded weights"),
               ("a checkpoint with per-layer shapes", bool(getattr(hf_config, "prunelab_layers", None)),
                "its layers do not match the config's shapes"),
               (f"quant={getattr(quant, 'name', '')}", quant is not None, "the quantize stage rewrites whole weight "
                "matrices in memory and is not written for an offload store"),
               (f"export={export}", export != "none", "exports read every weight from memory")]
    for what, found, why in refused:
        if found:
            raise ConfigError(f"{shown} cannot run with {what}: {why}; allowed: model.device_map=null for this run")
    folder = settings.offload_folder
    if folder is not None:
        path = Path(str(folder)).expanduser()
        if path.exists() and not path.is_dir():
            raise ConfigError(f"model.offload_folder={folder!r} exists and is not a directory; allowed: a directory")
    return offload.DispatchSpec(device_map, max_memory, Path(str(folder)).expanduser() if folder is not None else None)


def _gguf_export(node: Any, hf_config, source: models.ModelSource, evaluation: EvalPlan) -> Any:
    """``export=gguf``: its settings, checked against the model's config and tokenizer (no weights)."""
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


def _check_calibration_memory(calib: CalibSettings, hf_config, dtype: torch.dtype, device: torch.device,
                              reserve: int = 0) -> None:
    """The sequential walk holds a block's inputs and outputs for every calibration token on the
    work device: ``2 x nsamples x seqlen x hidden`` values, beside ``reserve`` bytes for the rest of
    calibrate+prune (the memory plan's). A count that cannot fit that device's memory is rejected
    here instead of failing (or swapping) later."""
    hidden = int(getattr(hf_config, "hidden_size", 0) or 0)
    if not hidden:
        return
    per_sample = 2 * calib.seqlen * hidden * torch.finfo(dtype).bits // 8
    memory = device_memory(device)
    if memory and calib.nsamples * per_sample + reserve > memory:
        raise ConfigError(
            f"calib_data.nsamples={calib.nsamples} would hold {calib.nsamples * per_sample / 2**30:.1f} GiB of block "
            f"activations (2 x {calib.nsamples} x {calib.seqlen} tokens x {hidden} x {torch.finfo(dtype).bits // 8} "
            f"bytes) on {device.type}, beside {reserve / 2**30:.1f} GiB for the rest of calibrate+prune, more than its "
            f"{memory / 2**30:.1f} GiB; allowed: calib_data.nsamples <= {max(memory - reserve, 0) // per_sample}")


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
                          "see docs/ARCHITECTURE.md for the interface it must implement")
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
