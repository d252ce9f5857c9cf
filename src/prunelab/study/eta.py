"""How long the rest of a sweep will take: a cost model of every job, fitted on the jobs that ran.

A sweep's jobs cost very different amounts: a magnitude job only evaluates, a Wanda job first
walks the calibration windows through every block, SparseGPT also updates every weight column,
zero-shot evaluation adds lm-eval requests. A mean over the finished jobs is therefore wrong
whenever the cheap jobs run first (the headline grid runs its four magnitude jobs first). Each
job gets a *work* estimate in token-forwards of the whole model, from its composed config
(:func:`job_cost`, no weights loaded):

- a fixed part per job (load, hashing, record),
- calibration: ``nsamples x seqlen`` tokens through the sequential walk (statistics, then the
  outputs recomputed with the pruned weights), plus one dense pass where the method needs one
  (OWL, FLAP, ShortGPT), plus SparseGPT's per-column updates,
- perplexity: ``windows x seqlen`` tokens per evaluation set,
- zero-shot: examples per task x the tokens of its scored choices,
- recovery: training tokens, forward and backward.

The constants are relative costs measured on the embedded SmolLM2-135M (see each one); for
another model they are scaled by its shapes (:class:`Shape`, from its config: the weights a token
meets in the decoder blocks and in the output layer, which calibration never runs, and
SparseGPT's ``out x in^2`` per layer). The unit of work is one token through the embedded model.
The seconds per unit of work are fitted on the finished jobs: per *kind* of job (method, recovery,
engine) once a job of that kind finished, else over all finished jobs (:func:`remaining_seconds`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

COSTS_VARIABLE = "PRUNELAB_SWEEP_COSTS"  # the sweeper's cost of every job, in job order (JSON)

# Relative costs, in token-forwards of the whole model. From the README's measured headline grid
# (embedded model, 2 idle cores): a magnitude job took ~22 s of which 20 s were perplexity on
# 2 x 32 x 256 = 16,384 tokens, so the rest of a job is ~2 s = ~1,600 token-forwards; Wanda's
# calibration of 32 x 256 = 8,192 tokens took 14 s = 1.4 token-forwards per calibration token
# (a forward with statistics hooks, then the recompute with the pruned weights).
FIXED_WORK = 1_600.0
CALIBRATION_PER_TOKEN = 1.4
DENSE_PASS_PER_TOKEN = 0.7  # one forward of the windows without the recompute: half the walk
# SparseGPT's column-by-column updates on top of the walk, for the embedded model: measured with
# `python run.py method=sparsegpt calib_data.nsamples=2 'target.blocks=[0,3]' eval.max_windows=8
# 'eval.ppl_datasets=[wiki]' logger=none` at load ~16: pruning 79.2 s for 3 blocks (x 30 blocks =
# 792 s) while perplexity ran at 26 tokens/s in the same process: ~20,600 token-forwards. Other
# models scale differently (in^2 x out per layer); their first SparseGPT job sets the rate.
SPARSEGPT_EXTRA = 20_000.0
# Zero-shot: token-forwards per scored example (all of its choices), from the README's quick
# sparsity curve: ARC-Easy + PIQA, 40 examples each, added 152 s over 13 jobs (~11.7 s per job)
# at ~820 perplexity tokens/s: ~9,600 token-forwards for 80 examples.
ZEROSHOT_PER_EXAMPLE = 120.0
WHOLE_SPLIT = 1_000  # examples assumed for a task evaluated on its whole split (eval.limit=null)
UNLIMITED_WINDOWS = 128  # perplexity windows assumed for eval.max_windows=null
TRAIN_PER_TOKEN = 3.0  # recovery: a training token costs a forward and a backward (~2 forwards)


@dataclass(frozen=True)
class Shape:
    """What a token costs in a model: the weights of its decoder blocks, of its output layer, and
    SparseGPT's work ``sum(out x in^2)`` over the blocks' linear layers."""

    blocks: float
    head: float
    obs: float

    @classmethod
    def of(cls, hf_config) -> Shape:
        hidden, layers = hf_config.hidden_size, hf_config.num_hidden_layers
        heads = hf_config.num_attention_heads
        kv = getattr(hf_config, "num_key_value_heads", None) or heads
        head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
        inter = hf_config.intermediate_size
        linears = [(heads * head_dim, hidden), (kv * head_dim, hidden), (kv * head_dim, hidden),
                   (hidden, heads * head_dim), (inter, hidden), (inter, hidden), (hidden, inter)]  # (out, in)
        return cls(blocks=float(layers * sum(o * i for o, i in linears)), head=float(hf_config.vocab_size * hidden),
                   obs=float(layers * sum(o * i * i for o, i in linears)))


def _embedded() -> Shape:
    """SmolLM2-135M, the model the constants were measured on (its architecture, as in its config.json)."""
    from types import SimpleNamespace

    return Shape.of(SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                    head_dim=64, intermediate_size=1536, vocab_size=49152))


EMBEDDED = _embedded()
_shapes: dict[str, Shape] = {}


def model_shape(config) -> Shape:
    """The shape of the job's model from its config (no weights; the embedded model's when the
    model's config cannot be read here, e.g. a hub model offline); remembered per model."""
    model = _get(config, "model")
    key = json.dumps(_plain(model), sort_keys=True, default=str)
    if key not in _shapes:
        try:
            from prunelab.config import build

            _shapes[key] = Shape.of(build(model.source, "model.source").hf_config())
        except Exception:  # noqa: BLE001 - the plan reports a model that cannot be had; the estimate just knows less
            _shapes[key] = EMBEDDED
    return _shapes[key]


def _plain(node):
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    except Exception:  # noqa: BLE001
        return str(node)


@dataclass(frozen=True)
class JobCost:
    """A job's kind (jobs of one kind share their seconds per unit of work) and its work."""

    kind: str
    work: float


def _get(config, dotted: str, default=None):
    node = config
    for part in dotted.split("."):
        if node is None or not hasattr(node, "get"):
            return default
        node = node.get(part)
    return default if node is None else node


def _needs(config):
    """The method's declared statistics (``StatsNeeds``), or ``None`` if it cannot be built here."""
    try:
        from prunelab.config import build

        return build(config.method, "method").needs
    except Exception:  # noqa: BLE001 - a bad method is the plan's to report; the estimate just knows less
        return None


def job_cost(config) -> JobCost:
    """The cost of one job from its composed config (no weights, no data read)."""
    method = str(_get(config, "method.name", "?"))
    recover = _get(config, "recover.name") if _get(config, "recover") else None
    engine = _get(config, "engine.name") if _get(config, "engine") else None
    kind = "|".join(str(p) for p in (method, recover or "", engine or ""))
    shape = model_shape(config)
    token = (shape.blocks + shape.head) / (EMBEDDED.blocks + EMBEDDED.head)  # a token through the model
    walk = shape.blocks / EMBEDDED.blocks  # a token through the blocks only (calibration)
    work = FIXED_WORK
    needs = _needs(config)
    calibration_tokens = float(_get(config, "calib_data.nsamples", 0)) * float(_get(config, "calib_data.seqlen", 0) or
                                                                            _get(config, "model.seqlen", 0))
    if needs is not None and needs.per_block:
        work += CALIBRATION_PER_TOKEN * walk * calibration_tokens
        if needs.hessian:
            work += SPARSEGPT_EXTRA * shape.obs / EMBEDDED.obs
    if needs is not None and needs.dense_pass:
        work += DENSE_PASS_PER_TOKEN * walk * calibration_tokens
    seqlen = float(_get(config, "eval.seqlen", 0) or _get(config, "model.seqlen", 0) or 0)
    windows = _get(config, "eval.max_windows")
    sets = list(_get(config, "eval.ppl_datasets", []) or [])
    work += token * len(sets) * float(UNLIMITED_WINDOWS if windows is None else windows) * seqlen
    tasks = list(_get(config, "eval.tasks", []) or [])
    per_task = dict(_get(config, "eval.limit_per_task", {}) or {})
    for task in tasks:
        limit = per_task.get(task, _get(config, "eval.limit"))
        examples = WHOLE_SPLIT if limit is None else (limit * WHOLE_SPLIT if 0 < float(limit) < 1 else float(limit))
        work += token * ZEROSHOT_PER_EXAMPLE * examples
    if recover:
        work += token * TRAIN_PER_TOKEN * float(_get(config, "recover.steps", 0)) \
            * float(_get(config, "recover.batch_size", 0)) * float(_get(config, "recover.seqlen", 0))
    return JobCost(kind, work)


def remaining_seconds(finished: Iterable[tuple[JobCost, float]], remaining: Sequence[JobCost]) -> float | None:
    """Seconds the ``remaining`` jobs will take, from the ``finished`` ones (cost, seconds taken):
    a job of a kind that finished takes that kind's seconds per unit of work, any other job the
    rate over all finished jobs. ``None`` before any job finished."""
    done = [(cost, seconds) for cost, seconds in finished if cost.work > 0 and seconds >= 0]
    if not done:
        return None
    overall = sum(s for _, s in done) / sum(c.work for c, _ in done)
    by_kind: dict[str, tuple[float, float]] = {}
    for cost, seconds in done:
        taken, work = by_kind.get(cost.kind, (0.0, 0.0))
        by_kind[cost.kind] = (taken + seconds, work + cost.work)
    rates = {kind: taken / work for kind, (taken, work) in by_kind.items()}
    return sum(cost.work * rates.get(cost.kind, overall) for cost in remaining)


def publish(costs: Sequence[JobCost]) -> None:
    """Hand the jobs' costs to :class:`prunelab.study.callbacks.SweepProgress` (the same process for
    the basic launcher, child processes for joblib or submitit)."""
    os.environ[COSTS_VARIABLE] = json.dumps([[c.kind, round(c.work, 1)] for c in costs])


def published() -> list[JobCost] | None:
    text = os.environ.get(COSTS_VARIABLE)
    if not text:
        return None
    try:
        return [JobCost(str(kind), float(work)) for kind, work in json.loads(text) if math.isfinite(float(work))]
    except (ValueError, TypeError):
        return None
