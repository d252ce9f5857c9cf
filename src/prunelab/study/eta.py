"""How long the rest of a sweep will take: a cost model of every job, fitted on the jobs that ran.

A sweep's jobs cost very different amounts: a magnitude job only evaluates, a Wanda job first
walks the calibration windows through every block, SparseGPT also updates every weight column,
zero-shot evaluation adds lm-eval requests. A mean over the finished jobs is therefore wrong
whenever the cheap jobs run first (the headline grid runs its four magnitude jobs first). Each
job gets a *work* estimate in token-forwards of the whole model, from its composed config
(:func:`job_cost`, no weights loaded):

- the *rest*: what no token pays for, timed outside calibration and evaluation: a part per job
  (process, plan, record) and a part that grows with the weights (load, pruning every matrix,
  the pruned copies and their sparsity; SparseGPT's per-column updates),
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
engine) once a job of that kind finished. A job of a kind not seen yet is costed in two parts,
each at its own rate fitted on the finished jobs, from their recorded stage times: its token work
at the seconds per token the finished jobs took to calibrate and evaluate (``time/calibration_s``,
``time/eval_s``, ``time/zeroshot_s``, ``time/recover_s``), its rest at the seconds the rest of the
finished jobs took per unit of rest. The two rates differ with the machine: on an idle one the rest
of a magnitude job is 3.4 s of 37.9 s, on a loaded one whose memory is short it was 156-209 s of
259-326 s (:func:`remaining_seconds`). Without stage times (another launcher) one rate fits both.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

COSTS_VARIABLE = "PRUNELAB_SWEEP_COSTS"  # the sweeper's cost of every job, in job order (JSON)

# Relative costs, in token-forwards of the whole model. From the README's measured headline grid
# (embedded model, 2 idle cores): Wanda's calibration of 32 x 256 = 8,192 tokens took 14 s while
# perplexity ran at ~820 tokens/s: 1.4 token-forwards per calibration token (a forward with
# statistics hooks, then the recompute with the pruned weights).
CALIBRATION_PER_TOKEN = 1.4
DENSE_PASS_PER_TOKEN = 0.7  # one forward of the windows without the recompute: half the walk
# The rest of a job, in the same unit (token-forwards on the embedded model). The headline sweep's
# first job on the idle machine (`python run.py +experiment=sparsity_curve logger=none`, 16:37 UTC,
# load 0.5-1.1; magnitude 30%) took 37.9 s, 34.5 s of it perplexity on 2 x 32 x 256 = 16,384 tokens
# (2.1 ms a token-forward); the other 3.4 s (load 0.3 s, pruning 1.7 s, the rest 1.4 s) are ~1,600
# token-forwards. How that rest divides, from the loaded sweeps (the rates differ there, the shares
# hold): a dense job's rest was 8% of a magnitude job's (14.5 s vs 175 s on average, load 10-25),
# a Wanda or RIA job's 60% (106 s; and pruning 10 s vs magnitude's 16 s at load 6-12): Wanda and
# RIA sort each row, magnitude every whole matrix. JOB_WORK is what every job pays whatever its
# model; the load and the pruning pass grow with the model's weights (WEIGHT_WORK, embedded model).
JOB_WORK = 100.0
WEIGHT_WORK = {"dense": 30.0, "magnitude": 1_500.0}  # the load only; load + sorting every whole matrix
ROW_WISE_WORK = 860.0  # load + scoring and sorting every row (Wanda, RIA and any other method)
FIXED_WORK = JOB_WORK + WEIGHT_WORK["magnitude"]  # a job whose config cannot be costed
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
# Quantization and the llama.cpp benchmark (the compression preset), part of the rest: measured in
# the compression grid's 8-bit and GPTQ-4 sweeps (docs/compression.md; embedded model, 8 wiki
# windows, 16 calibration windows, engine.repeats=3, one 256-token prefill, 16 decode steps). Dense
# RTN-8 at load 1.2: quantization 7.6 s, the benchmark 52.2 s (both models converted to GGUF and
# quantized by llama.cpp, then timed) of 101.5 s, at 2.1 ms a token-forward: ~3,600 and ~24,800.
# Dense GPTQ-4 at load 3.9: quantization 23.4 s plus its calibration 40.0 s, ~20,000 at idle speed
# (per column, like SparseGPT: it scales with ``out x in^2``). Without these terms a compression
# sweep's ETA after its first job (the dense model, whose rest is the benchmark) was 32x too long.
QUANT_WORK = {"rtn": 3_600.0}
GPTQ_WORK = 20_000.0
ENGINE_WORK = {"llamacpp": 24_800.0}


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
    """A job's kind (jobs of one kind share their seconds per unit of work), its work, and the part
    of it that is the rest (:data:`JOB_WORK`, :data:`WEIGHT_WORK`): not calibration or evaluation."""

    kind: str
    work: float
    rest: float = 0.0

    @property
    def tokens(self) -> float:
        return self.work - self.rest


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
    quant = _get(config, "quant.name") if _get(config, "quant") else None
    quant = None if quant in (None, "none") else str(quant)
    kind = "|".join(str(p) for p in (method, recover or "", engine or "", *([quant] if quant else [])))
    shape = model_shape(config)
    token = (shape.blocks + shape.head) / (EMBEDDED.blocks + EMBEDDED.head)  # a token through the model
    walk = shape.blocks / EMBEDDED.blocks  # a token through the blocks only (calibration); also the weights pruned
    needs = _needs(config)
    rest = JOB_WORK + walk * WEIGHT_WORK.get(method, ROW_WISE_WORK)
    if needs is not None and needs.hessian:
        rest += SPARSEGPT_EXTRA * shape.obs / EMBEDDED.obs  # timed as pruning, not calibration
    if quant is not None:
        rest += GPTQ_WORK * shape.obs / EMBEDDED.obs if quant == "gptq" else walk * QUANT_WORK.get(quant, QUANT_WORK["rtn"])
    rest += walk * ENGINE_WORK.get(str(engine), 0.0)
    work = rest
    calibration_tokens = float(_get(config, "calib_data.nsamples", 0)) * float(_get(config, "calib_data.seqlen", 0) or
                                                                            _get(config, "model.seqlen", 0))
    if needs is not None and needs.per_block:
        work += CALIBRATION_PER_TOKEN * walk * calibration_tokens
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
    return JobCost(kind, work, rest)


Finished = tuple  # (JobCost, seconds taken) or (JobCost, seconds taken, seconds of token work)


# How fast the fit forgets: a finished job's weight halves with every HALF_LIFE_JOBS jobs that
# finished after it (0.5: it is quartered by each later job). With every job weighing the same
# (the rule before) the ETA followed a change of load slowly: the headline sweep whose jobs 2-3 ran
# loaded said +143% after job 3 and still +107% after job 4, the first idle one; replayed with
# half-lives of 0.5, 1, 1.5, 2 and 3 jobs on the four recorded sweeps of tests/test_eta.py, 0.5
# followed the load best (+47% after job 4, +12% after job 5) and left the idle sweep as it was.
HALF_LIFE_JOBS = 0.5


def recency_weights(count: int, half_life: float | None = HALF_LIFE_JOBS) -> list[float]:
    """Weights of ``count`` finished jobs in the order they finished: 1 for the last, halving every
    ``half_life`` jobs before it (all 1 with ``half_life=None``)."""
    return [1.0 if half_life is None else 0.5 ** ((count - 1 - i) / half_life) for i in range(count)]


def remaining_seconds(finished: Iterable[Finished], remaining: Sequence[JobCost],
                      half_life: float | None = HALF_LIFE_JOBS) -> float | None:
    """Seconds the ``remaining`` jobs will take, from the ``finished`` ones in the order they
    finished (cost, seconds taken and, where the job recorded its stage times, the seconds it
    calibrated and evaluated): a job of a kind that finished takes that kind's seconds per unit of
    work; any other job its token work at the finished jobs' seconds per token plus its rest at
    their seconds per unit of rest (:func:`split_rates`), or, without stage times, its work at the
    rate over all finished jobs. Every rate is a weighted fit that favours recent jobs
    (:func:`recency_weights`, half-life ``half_life`` jobs; ``None``: all alike), so the ETA follows
    a change of load within a job or two. ``None`` before any job finished."""
    items = [(item[0], item[1], item[2] if len(item) > 2 else None) for item in finished]
    done = [(cost, seconds, tokens, weight) for (cost, seconds, tokens), weight in zip(items, recency_weights(len(items), half_life))
            if cost.work > 0 and seconds >= 0]
    if not done:
        return None
    overall = sum(w * s for _, s, _, w in done) / sum(w * c.work for c, _, _, w in done)
    by_kind: dict[str, tuple[float, float]] = {}
    for cost, seconds, _, weight in done:
        taken, work = by_kind.get(cost.kind, (0.0, 0.0))
        by_kind[cost.kind] = (taken + weight * seconds, work + weight * cost.work)
    rates = {kind: taken / work for kind, (taken, work) in by_kind.items()}
    split = split_rates(done)

    def unseen(cost: JobCost) -> float:
        if split is None:
            return cost.work * overall
        return cost.tokens * split[0] + cost.rest * split[1]

    return sum(cost.work * rates[cost.kind] if cost.kind in rates else unseen(cost) for cost in remaining)


def split_rates(done: Sequence[tuple]) -> tuple[float, float] | None:
    """Seconds per unit of token work and per unit of rest, over the finished jobs that recorded
    their stage times (cost, seconds, token seconds and, optionally, the job's weight); ``None``
    when they give no token work or no rest to fit on."""
    timed = [(cost, seconds, min(tokens, seconds), weight[0] if weight else 1.0)
             for cost, seconds, tokens, *weight in done if tokens is not None and tokens >= 0]
    token_work = sum(w * cost.tokens for cost, _, _, w in timed)
    rest_work = sum(w * cost.rest for cost, _, _, w in timed)
    if token_work <= 0 or rest_work <= 0:
        return None
    return sum(w * t for _, _, t, w in timed) / token_work, sum(w * (s - t) for _, s, t, w in timed) / rest_work


TOKEN_STAGES = ("time/calibration_s", "time/eval_s", "time/zeroshot_s", "time/recover_s")


def token_seconds(metrics: dict) -> float | None:
    """The seconds a finished job spent on token work (calibration, perplexity, zero-shot,
    recovery), from its record's metrics; ``None`` when it recorded none of them."""
    found = [float(metrics[key]) for key in TOKEN_STAGES if isinstance(metrics.get(key), (int, float))]
    return sum(found) if found else None


def publish(costs: Sequence[JobCost]) -> None:
    """Hand the jobs' costs to :class:`prunelab.study.callbacks.SweepProgress` (the same process for
    the basic launcher, child processes for joblib or submitit)."""
    os.environ[COSTS_VARIABLE] = json.dumps([[c.kind, round(c.work, 1), round(c.rest, 1)] for c in costs])


def published() -> list[JobCost] | None:
    text = os.environ.get(COSTS_VARIABLE)
    if not text:
        return None
    try:
        costs = [JobCost(str(kind), float(work), float(rest[0]) if rest else 0.0) for kind, work, *rest in json.loads(text)]
        return [c for c in costs if math.isfinite(c.work) and math.isfinite(c.rest)]
    except (ValueError, TypeError):
        return None
