"""From the composed config to objects: components by ``_target_``, plain sections as typed records.

Two mechanisms, no registry:

- :func:`build` instantiates a *component* (a method, a model source, a logger, an engine, a
  pattern) from its config node with Hydra's ``instantiate``. The node's ``_target_`` names the
  class; its other keys are the constructor's arguments, except ``name``, which is the label that
  tables and run names show. Errors come back as one :class:`ConfigError` naming the config key.
- :func:`read` turns a plain section (``calib_data``, ``eval``, ``target``...) into a frozen
  dataclass: each field's annotation is its type and ``field(metadata=...)`` its allowed range
  (:func:`between`, or ``{"allowed": (...)}``); unknown keys, wrong types and NaN/inf are rejected.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from prunelab import checks
from prunelab.checks import ConfigError
from prunelab.locations import CONF_DIR  # noqa: F401 - the config groups, re-exported for callers of compose

T = TypeVar("T")


LABEL = "name"  # a component's display label, never a constructor argument
# The root study knobs: plain numbers at the top of conf/config.yaml (so a sweep varies them as
# `ria_alpha=0,0.5,1`) that a method config takes by interpolation (`alpha: ${ria_alpha}`). Declared
# here once: the plan checks them, a dense baseline ignores them, a report's config diff leaves them
# out (the method knob they feed is shown instead).
STUDY_KNOBS = {
    "ria_alpha": "RIA: exponent a on the input-channel activation norm (method.alpha)",
    "owl_lambda": "OWL: block sparsities span [sparsity - lambda, sparsity + lambda] (method.lambda_)",
    "owl_m": "OWL: a score is an outlier above owl_m times the block's mean score (method.m)",
}
_KNOB = re.compile(r"^[A-Za-z_][\w.\[\]]*=")


def compose(*overrides: str, hydra_config: bool = False) -> DictConfig:
    """The project's config as ``python run.py <overrides>`` sees it (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)


# ------------------------------------------------------------------------------------ components
def is_component(node: Any) -> bool:
    return isinstance(node, (Mapping, DictConfig)) and "_target_" in node


def _without_labels(node: Any) -> Any:
    if isinstance(node, dict):
        drop = LABEL if "_target_" in node else None
        return {k: _without_labels(v) for k, v in node.items() if k != drop}
    if isinstance(node, list):
        return [_without_labels(v) for v in node]
    return node


def build(node: Any, key: str, **runtime: Any) -> Any:
    """Instantiate the component at config key ``key`` (``runtime`` adds constructor arguments)."""
    if not is_component(node):
        raise ConfigError(f"{key} must name its class with _target_ (got {_show(node)})")
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    rooted = OmegaConf.create({"root": _without_labels(plain)})
    try:
        from hydra.utils import instantiate

        return instantiate(rooted.root, _convert_="all", **runtime)
    except Exception as error:  # noqa: BLE001 - turned into one message in the user's words
        raise _component_error(error, key, plain) from error


def _component_error(error: Exception, key: str, plain: dict) -> ConfigError:
    cause = error.__cause__ or error
    found = re.search(r"full_key: (\S+)", str(error))
    where = key + found.group(1).removeprefix("root") if found else key
    if isinstance(cause, ConfigError) or isinstance(cause, ValueError):
        message = str(cause)
        return ConfigError(f"{where}.{message}" if _KNOB.match(message) else f"{where}: {message}")
    if isinstance(cause, ImportError) or "Error locating target" in str(error):
        return ConfigError(f"{where}._target_={_target_at(plain, where, key)!r} cannot be imported: "
                           f"{str(cause).splitlines()[0]}")
    if isinstance(cause, TypeError):
        target = _target_at(plain, where, key)
        allowed = _arguments(target)
        return ConfigError(f"{where}: {cause} (the keys of {target} are {', '.join(allowed) or 'none'})")
    return ConfigError(f"{where}: {type(cause).__name__}: {cause}")


def _target_at(plain: dict, where: str, key: str) -> str:
    node: Any = plain
    for part in where.removeprefix(key).strip(".").split("."):
        if part and isinstance(node, dict):
            node = node.get(part, {})
    return str(node.get("_target_")) if isinstance(node, dict) else "?"


def _arguments(target: str) -> list[str]:
    from hydra.utils import get_class

    try:
        signature = inspect.signature(get_class(target).__init__)
    except Exception:  # noqa: BLE001 - only for the hint
        return []
    return [name for name in signature.parameters if name not in ("self", "args", "kwargs")]


def label(node: Any, built: Any = None) -> str:
    """What tables call a component: its ``name``, else the object's ``name``, else its class."""
    if isinstance(node, (Mapping, DictConfig)) and node.get(LABEL):
        return str(node.get(LABEL))
    found = getattr(built, "name", None)
    return str(found) if isinstance(found, str) else type(built).__name__.lower()


# -------------------------------------------------------------------------------- typed sections
def between(low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False, what: str = "") -> dict:
    """Field metadata: a number in an interval."""
    return {"range": (low, high, low_open, high_open), "what": what}


POSITIVE = between(1)


def read(cls: type[T], node: Any, key: str, **extra: Any) -> T:
    """The section at ``key`` (``""``: the root) as a ``cls`` instance, every field typed and checked.

    ``extra`` supplies fields that are not in the section (computed by the caller).
    """
    values = _plain(node)
    if not isinstance(values, dict):
        raise ConfigError(f"{key} must be a mapping of settings (got {_show(values)})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(key, unknown[0])} is not a setting of {key or 'the config'}; "
                          f"allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, spec in fields.items():
        if name in extra:
            kwargs[name] = extra[name]
            continue
        if name not in values:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{_join(key, name)} is missing")
            continue
        kwargs[name] = _check(values[name], hints[name], _join(key, name), spec.metadata)
    return cls(**kwargs)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _check(value: Any, annotation: Any, key: str, metadata: Mapping) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _check(value, options[0], key, metadata)
        errors = []
        for option in options:
            try:
                return _check(value, option, key, metadata)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is Literal:
        return checks.choice(value, key, args)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list, e.g. {key}=[...]")
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, item, f"{key}[{i}]", metadata) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r} must be a list of {len(args)} values")
        return tuple(_check(v, a, f"{key}[{i}]", metadata) for i, (v, a) in enumerate(zip(value, args)))
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping, e.g. {key}={{a: 1}}")
        return value
    if annotation is Any:
        return value
    if annotation is bool:
        return checks.boolean(value, key)
    low, high, low_open, high_open = metadata.get("range", (None, None, False, False))
    what = metadata.get("what", "")
    if annotation is int:
        value = checks.integer(value, key, low=low, high=high, what=what)
    elif annotation is float:
        value = checks.number(value, key, low, high, low_open, high_open, what=what)
    elif annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
    if "allowed" in metadata:
        checks.choice(value, key, metadata["allowed"])
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys left as ``???`` (without resolving interpolations, which would fail on them)."""
    found = []
    for key in node.keys():
        full = _join(prefix, str(key))
        if OmegaConf.is_missing(node, key):
            found.append(full)
        else:
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not OmegaConf.is_interpolation(node, key):
                found.extend(missing_keys(child, full))
    return found


def finite_numbers(node: Any, key: str = "") -> None:
    """Reject NaN and infinities anywhere under ``node`` (a knob set to ``nan`` is never meant);
    the top-level knobs are checked first, so ``ria_alpha=nan`` is named as the user typed it."""
    value = _plain(node)
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: isinstance(item[1], (dict, list)))
        for k, v in items:
            finite_numbers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            finite_numbers(v, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
