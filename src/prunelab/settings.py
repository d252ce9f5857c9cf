"""Validation of a composed config before any heavy work, with errors in the user's words."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from prunelab import data, methods, models, zeroshot
from prunelab.patterns import Pattern, check_sparsity, parse_pattern


class ConfigError(ValueError):
    """A config value that cannot work: says which key, what value, and what is allowed."""


@dataclass(frozen=True)
class RunSpec:
    """The parsed, checked knobs of one run."""

    method: str
    sparsity: float
    pattern: Pattern
    needs_calibration: bool


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return value


def check_sparsity_value(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"sparsity={value!r} must be a number in [0, 1)")
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"sparsity={value!r} is outside [0, 1); it is the fraction of weights removed")
    return float(value)


def validate(cfg: DictConfig) -> RunSpec:
    """Check every knob that can be checked without loading weights; raise ``ConfigError``."""
    try:
        return _validate(cfg)
    except (ValueError, models.ModelConfigError, data.DataConfigError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(str(error)) from error


def _validate(cfg: DictConfig) -> RunSpec:
    method_name = cfg.method.name
    if method_name not in methods.available():
        raise ConfigError(f"method.name={method_name!r} is unknown; allowed: {', '.join(methods.available())}")
    sparsity = check_sparsity_value(cfg.sparsity)
    pattern = parse_pattern(cfg.pattern)
    if method_name != "dense":
        check_sparsity(pattern, sparsity)
    method = methods.build_method(cfg.method)
    needs_calibration = method.needs.any or method_name.startswith("owl_")
    if cfg.get("engine") is not None:  # before any heavy work: 2:4 pattern, CUDA, tensorrt_llm
        from prunelab.bench.engines import check_engine_config

        check_engine_config(cfg.engine, pattern, method_name)

    calib = cfg.calib_data
    data.check_dataset_name(calib.dataset, "calib_data.dataset")
    _positive_int(calib.nsamples, "calib_data.nsamples")
    calib_seqlen = _positive_int(calib.seqlen, "calib_data.seqlen")
    _positive_int(calib.batch_size, "calib_data.batch_size")
    if needs_calibration and calib.dataset in data.ONLINE_SETS and not models.hub_reachable():
        raise ConfigError(
            f"calib_data={calib.dataset} needs the Hugging Face hub, which is unreachable here; "
            f"offline calibration sets: {', '.join(data.OFFLINE_SETS)}"
        )

    ev = cfg.eval
    for name in ev.ppl_datasets:
        data.check_dataset_name(name, "eval.ppl_datasets entry")
        if name in data.ONLINE_SETS and not models.hub_reachable():
            raise ConfigError(
                f"eval.ppl_datasets entry {name!r} needs the Hugging Face hub, which is unreachable here; "
                f"offline sets: {', '.join(data.OFFLINE_SETS)}"
            )
    eval_seqlen = _positive_int(ev.seqlen, "eval.seqlen")
    if ev.max_windows is not None:
        _positive_int(ev.max_windows, "eval.max_windows")
    _positive_int(ev.batch_size, "eval.batch_size")
    zeroshot.resolve(ev)  # task names (bundled offline or on the hub), limits, few-shot count

    models.resolve_dtype(cfg.model.dtype)
    models.resolve_device(cfg.model.device)
    context = models.context_length(models.load_config(cfg.model))
    for key, seqlen in (("calib_data.seqlen", calib_seqlen), ("eval.seqlen", eval_seqlen)):
        if context and seqlen > context:
            raise ConfigError(f"{key}={seqlen} exceeds the model's context of {context} tokens")
    return RunSpec(method_name, sparsity if method_name != "dense" else 0.0, pattern, needs_calibration)
