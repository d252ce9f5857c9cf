"""The recover stage: LoRA fine-tuning of the pruned model (``recover=lora``), merged back so the
sparsity the plan gave it is kept; ``recover=none`` (the default) adds nothing to a run.

Training text is the *calibration* part of a set (``prunelab.data``), windows drawn so that none
shares a ``SHINGLE``-token span with the evaluation part of any evaluated set (BoolQ passages
repeat sentences across the wiki split, so this is more than the document split), and checked
again by hashing before the first step. After training the adapter is measured unmerged, merged
(``W + BA``) and, for unstructured/N:M models, merged and re-masked (``(W + BA) * M`` on every
pruned layer): the re-masked model is the one the eval stage measures. A structured model's merge
is exact (its layers shrank; nothing is masked). Checkpoints (adapter, optimizer, scheduler, RNG,
step) are written every ``checkpoint_every`` steps into the run directory: re-running the same
config into it resumes from the last one with the same final weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab import checks, data
from prunelab.checks import ConfigError
from prunelab.evaluate import PerplexitySpec, evaluate_perplexity
from prunelab.models import DecoderAdapter
from prunelab.outcome import OutcomeError, check_sparsity
from prunelab.prune import MODULE_GROUPS, PruneReport, layer_sparsity, overall_sparsity

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "linear", "cosine")
SHINGLE = 32  # tokens: a training window may share no span this long with any evaluation text
CHECKPOINT = "checkpoint.pt"


class Recovery:
    """The interface of a recover component (``conf/recover/<name>.yaml``, ``_target_``)."""

    name = "recover"  # run names get ``+<name>``
    dataset: str

    def check_model(self, adapter: DecoderAdapter, context: int) -> None:
        """Reject, from a meta-device skeleton, what the model cannot take (before any weights load)."""

    def settings(self) -> dict[str, Any]:
        """The knobs, for the plan's summary and the checkpoint's key."""
        return {}

    def recover(self, model: nn.Module, tokenizer, report: PruneReport, evaluation: PerplexitySpec,
                device: torch.device, work_dir: Path, logger=None, zeroshot=None) -> dict[str, Any]:
        """Fine-tune ``model`` in place and leave the merged model in it; return ``recover/*`` metrics
        (``zeroshot``: the run's ``ZeroShotSpec``; with tasks, they are scored before training too)."""
        raise NotImplementedError


class LoraRecovery(Recovery):
    """LoRA (peft) on the decoder's linear layers, ``steps`` optimizer steps of ``batch_size`` windows."""

    name = "lora"

    def __init__(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.05,
                 target_modules: list[str] | tuple[str, ...] = ("all",), steps: int = 100, lr: float = 5e-4,
                 schedule: str = "cosine", warmup_steps: int = 10, batch_size: int = 4, seqlen: int = 256,
                 dataset: str = "wiki", weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                 checkpoint_every: int = 25, seed: int = 0) -> None:
        self.rank = checks.positive_int(rank, "rank", what="LoRA rank; at most the narrowest targeted layer")
        self.alpha = checks.number(alpha, "alpha", low=0, low_open=True, what="LoRA scale is alpha / rank")
        self.dropout = checks.number(dropout, "dropout", 0, 1, high_open=True)
        if isinstance(target_modules, str):
            target_modules = [target_modules]
        if not target_modules or not all(isinstance(m, str) for m in target_modules):
            raise ConfigError(f"target_modules={target_modules!r} must list layer names or groups "
                              f"(all, {', '.join(MODULE_GROUPS)}, q_proj, ...)")
        self.target_modules = tuple(target_modules)
        self.steps = checks.positive_int(steps, "steps", what="optimizer steps")
        self.lr = checks.number(lr, "lr", low=0, low_open=True, what="the peak learning rate")
        self.schedule = checks.choice(schedule, "schedule", SCHEDULES)
        self.warmup_steps = checks.integer(warmup_steps, "warmup_steps", low=0, high=self.steps - 1,
                                           what="linear warm-up, fewer than steps")
        self.batch_size = checks.positive_int(batch_size, "batch_size", what="windows per step")
        self.seqlen = checks.integer(seqlen, "seqlen", low=2, what="tokens per training window")
        self.dataset = checks.choice(dataset, "dataset", data.ALL_SETS)
        self.weight_decay = checks.number(weight_decay, "weight_decay", low=0)
        self.max_grad_norm = (None if max_grad_norm is None
                              else checks.number(max_grad_norm, "max_grad_norm", low=0, low_open=True))
        self.checkpoint_every = checks.positive_int(checkpoint_every, "checkpoint_every", what="steps between checkpoints")
        self.seed = checks.integer(seed, "seed")

    # ------------------------------------------------------------------------ before the weights load
    def layer_names(self, adapter: DecoderAdapter) -> list[str]:
        """The leaf names (``q_proj``...) the adapter goes on; unknown names are a ConfigError."""
        names = list(adapter.linear_layers(adapter.blocks[0]))
        leaves = sorted({n.split(".")[-1] for n in names})
        chosen: list[str] = []
        for spec in self.target_modules:
            if spec == "all":
                picked = [n.split(".")[-1] for n in names]
            elif spec in MODULE_GROUPS:
                picked = [n.split(".")[-1] for n in names if n.startswith(MODULE_GROUPS[spec])]
            elif spec in leaves:
                picked = [spec]
            else:
                raise ConfigError(f"recover.target_modules entry {spec!r} is not a layer of this model's blocks; "
                                  f"allowed: all, {', '.join(MODULE_GROUPS)}, {', '.join(leaves)}")
            chosen.extend(p for p in picked if p not in chosen)
        return chosen

    def check_model(self, adapter: DecoderAdapter, context: int) -> None:
        chosen = set(self.layer_names(adapter))
        narrowest = min(((min(layer.in_features, layer.out_features), f"layers.{i}.{name}")
                         for i, block in enumerate(adapter.blocks)
                         for name, layer in adapter.linear_layers(block).items() if name.split(".")[-1] in chosen),
                        default=None)
        if narrowest is not None and self.rank > narrowest[0]:
            raise ConfigError(f"recover.rank={self.rank} exceeds the width of {narrowest[1]} ({narrowest[0]}); "
                              f"allowed: 1..{narrowest[0]}")
        if context and self.seqlen > context:
            raise ConfigError(f"recover.seqlen={self.seqlen} exceeds the model's context of {context} tokens")

    def settings(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if not k.startswith("_")}

    # ------------------------------------------------------------------------------------- the stage
    def recover(self, model: nn.Module, tokenizer, report: PruneReport, evaluation: PerplexitySpec,
                device: torch.device, work_dir: Path, logger=None, zeroshot=None) -> dict[str, Any]:
        from peft import LoraConfig, get_peft_model

        adapter = DecoderAdapter(model)
        metrics: dict[str, Any] = {"recover/method": "lora", "recover/steps": self.steps, "recover/rank": self.rank}
        masks = pruning_masks(adapter, report)
        metrics.update(_perplexities(model, tokenizer, evaluation, device, "before"))
        if zeroshot is not None and zeroshot.tasks:
            metrics.update(zeroshot_before(model, tokenizer, zeroshot, device, work_dir / "lm_eval_before"))

        windows = training_windows(self.dataset, self.steps * self.batch_size, self.seqlen, self.seed, tokenizer,
                                   evaluation.datasets)
        key = _run_key({k: v for k, v in self.settings().items() if k != "checkpoint_every"}, adapter, windows)
        torch.manual_seed(self.seed)
        peft_model = get_peft_model(model, LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none",
            target_modules=self.layer_names(adapter)))
        metrics["recover/trainable_params"] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        result = self._train(peft_model, windows, device, work_dir, key)
        metrics.update(result.metrics())
        if logger is not None and result.loss_curve:
            import pandas as pd

            frame = pd.DataFrame({"step": range(1, len(result.loss_curve) + 1), "loss": result.loss_curve})
            logger.log_line_chart("recover/loss_curve", frame, x="step", y="loss", stroke=None,
                                  title="recovery fine-tuning loss")
        peft_model.save_pretrained(str(work_dir / "adapter"))

        peft_model.eval()
        metrics.update(_perplexities(peft_model, tokenizer, evaluation, device, "adapter"))
        merged = peft_model.merge_and_unload()
        if merged is not model:
            raise OutcomeError("peft's merge returned a new model object; the pipeline holds the original")
        if masks:
            metrics.update(_perplexities(model, tokenizer, evaluation, device, "merged_dense"))
            remask(adapter, masks)
        metrics["recover/remasked_layers"] = len(masks)
        metrics["recover/achieved_sparsity"] = check_sparsity_kept(report, model)
        return metrics

    def _train(self, model: nn.Module, windows: torch.Tensor, device: torch.device, work_dir: Path,
               key: str) -> TrainResult:
        model.to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(self.schedule, self.warmup_steps, self.steps))
        result = TrainResult(steps=self.steps)
        checkpoint = work_dir / CHECKPOINT
        state = _read_checkpoint(checkpoint, key)
        if state is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, state["adapter"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng(state["rng"])
            result.loss_curve = list(state["loss_curve"])
            result.resumed_from = int(state["step"])
            log.info("recover: resumed from %s at step %d of %d", checkpoint, result.resumed_from, self.steps)
        model.train()
        start, cpu_start = time.perf_counter(), time.process_time()
        tokens = 0
        with torch.enable_grad(), tqdm(total=self.steps, initial=result.resumed_from, desc="recover (lora)",
                                       unit="step", dynamic_ncols=True) as progress:
            for step in range(result.resumed_from, self.steps):
                batch = windows[step * self.batch_size:(step + 1) * self.batch_size].to(device)
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                loss.backward()
                if self.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, self.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss = loss.detach()
                if not math.isfinite(float(loss)):
                    raise OutcomeError(f"recovery loss is not finite at step {step + 1}: {float(loss)} "
                                       f"(recover.lr={self.lr} too high?)")
                result.loss_curve.append(float(loss))
                tokens += batch.numel()
                elapsed = time.perf_counter() - start
                progress.set_postfix(loss=f"{float(loss):.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}")
                progress.update(1)
                if (step + 1) % self.checkpoint_every == 0 and step + 1 < self.steps:
                    _write_checkpoint(checkpoint, key, step + 1, model, optimizer, scheduler, result.loss_curve)
        result.seconds = time.perf_counter() - start
        result.cpu_seconds = time.process_time() - cpu_start
        result.threads = torch.get_num_threads()
        result.tokens = tokens
        model.eval()
        checkpoint.unlink(missing_ok=True)  # finished: the adapter is saved; the sweep skips a completed job
        return result


# --------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    steps: int
    loss_curve: list[float] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the process's CPU time while training (all threads; on a shared machine wall time lies)
    threads: int = 1
    tokens: int = 0  # trained in this process (after a resume: since the checkpoint)

    def metrics(self) -> dict[str, Any]:
        return {"recover/loss_curve": self.loss_curve, "recover/loss_first": self.loss_curve[0],
                "recover/loss_last": self.loss_curve[-1], "recover/resumed_from_step": self.resumed_from,
                "recover/train_s": self.seconds, "recover/train_tokens": self.tokens,
                "recover/train_cpu_s": self.cpu_seconds, "recover/train_threads": self.threads,
                # what the training would take on ``threads`` idle cores: CPU time / threads
                "recover/train_idle_s": self.cpu_seconds / max(self.threads, 1),
                "recover/tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else 0.0}


def lr_factor(schedule: str, warmup: int, steps: int):
    """The learning-rate multiplier after ``step`` optimizer steps: linear warm-up, then flat, linear or cosine decay."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_checkpoint(path: Path, key: str, step: int, model, optimizer, scheduler, loss_curve: list[float]) -> None:
    from peft import get_peft_model_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"key": key, "step": step, "adapter": get_peft_model_state_dict(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                "loss_curve": list(loss_curve)}, partial)
    os.replace(partial, path)  # a run killed while writing keeps the previous checkpoint


def _read_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    """The checkpoint of this very run (same settings, same pruned weights, same windows), else None."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - an unreadable checkpoint is started over, said in the log
        log.warning("recover: checkpoint %s is unreadable (%s); starting from step 0", path, error)
        return None
    if state.get("key") != key:
        log.warning("recover: checkpoint %s belongs to another config or pruned model; starting from step 0", path)
        return None
    return state


def _run_key(settings: dict[str, Any], adapter: DecoderAdapter, windows: torch.Tensor) -> str:
    """What a checkpoint must match to be resumed: the knobs, the pruned weights, the training windows."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for block in adapter.blocks:
        for layer in adapter.linear_layers(block).values():
            digest.update(layer.weight.detach().cpu().contiguous().numpy().tobytes())
    digest.update(windows.numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ data, disjointness
def _coefficients(length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(20240601)
    return torch.randint(1, 2 ** 40, (length,), generator=generator, dtype=torch.int64)


def span_hashes(ids: torch.Tensor, length: int = SHINGLE) -> torch.Tensor:
    """A hash of every ``length``-token span of a 1-D token tensor (no overflow: ids < 2^20, weights < 2^40)."""
    if ids.numel() < length:
        return torch.empty(0, dtype=torch.int64)
    return (ids.to(torch.int64).unfold(0, length, 1) * _coefficients(length)).sum(1)


def evaluation_hashes(datasets: tuple[str, ...] | list[str], tokenizer, length: int = SHINGLE) -> torch.Tensor:
    """The span hashes of the whole evaluation part of each set (every window any eval could take)."""
    found = [span_hashes(data.evaluation_stream(name, tokenizer)[0], length) for name in dict.fromkeys(datasets)]
    return torch.unique(torch.cat(found)) if found else torch.empty(0, dtype=torch.int64)


def _allowed_starts(ids: torch.Tensor, seqlen: int, forbidden: torch.Tensor, length: int) -> torch.Tensor:
    """Start positions of ``seqlen`` windows of ``ids`` that contain no forbidden span."""
    if ids.numel() <= seqlen:
        return torch.empty(0, dtype=torch.int64)
    bad = torch.isin(span_hashes(ids, length), forbidden).to(torch.int64)
    seen = torch.cat([torch.zeros(1, dtype=torch.int64), bad.cumsum(0)])
    starts = torch.arange(0, ids.numel() - seqlen)
    spans_per_window = seqlen - length + 1
    return starts[(seen[starts + spans_per_window] - seen[starts]) == 0]


def training_windows(dataset: str, count: int, seqlen: int, seed: int, tokenizer,
                     evaluated: tuple[str, ...] | list[str]) -> torch.Tensor:
    """``[count, seqlen]`` random windows of the calibration part of ``dataset`` that share no
    ``SHINGLE``-token span with the evaluation part of ``dataset`` or of any evaluated set; checked
    again by :func:`check_disjoint`. The generator is seeded with ``seed + 1`` (a different draw
    than calibration's)."""
    length = min(SHINGLE, seqlen)
    forbidden = evaluation_hashes([dataset, *evaluated], tokenizer, length)
    rng = random.Random(seed + 1)
    docs = data.documents(dataset, "calibration")
    if dataset != "c4":  # one stream of the joined documents, as calibration draws from
        stream = tokenizer("\n\n".join(docs), return_tensors="pt", verbose=False).input_ids[0]
        allowed = _allowed_starts(stream, seqlen, forbidden, length)
        if allowed.numel() == 0:
            raise OutcomeError(f"recover.dataset={dataset}: no window of {seqlen} tokens in its calibration part "
                               "is disjoint from the evaluation text")
        starts = [int(allowed[rng.randrange(allowed.numel())]) for _ in range(count)]
        windows = torch.stack([stream[s:s + seqlen] for s in starts])
    else:  # C4 as the papers draw it: a random long-enough document, a random window in it
        picked = []
        for _ in range(100 * count):
            ids = tokenizer(docs[rng.randrange(len(docs))], return_tensors="pt", verbose=False).input_ids[0]
            allowed = _allowed_starts(ids, seqlen, forbidden, length)
            if allowed.numel():
                start = int(allowed[rng.randrange(allowed.numel())])
                picked.append(ids[start:start + seqlen])
            if len(picked) == count:
                break
        if len(picked) < count:
            raise OutcomeError(f"recover.dataset={dataset}: too few documents longer than seqlen={seqlen}")
        windows = torch.stack(picked)
    check_disjoint(windows, forbidden, length, [dataset, *evaluated])
    return windows


def check_disjoint(windows: torch.Tensor, forbidden: torch.Tensor, length: int, sets: list[str]) -> None:
    """Fail the run if any training window shares a ``length``-token span with evaluation text."""
    hits = [i for i, window in enumerate(windows) if bool(torch.isin(span_hashes(window, length), forbidden).any())]
    if hits:
        raise OutcomeError(f"{len(hits)} recovery training window(s) (first: {hits[0]}) share a {length}-token span "
                           f"with the evaluation text of {', '.join(dict.fromkeys(sets))}: training must not see it")


# --------------------------------------------------------------------------------- masks, merging
def pruning_masks(adapter: DecoderAdapter, report: PruneReport) -> dict[str, torch.Tensor]:
    """The keep-mask ``W != 0`` of every layer the plan pruned (unstructured, N:M); none for a
    structured model (its layers shrank) or a dense one."""
    masks = {}
    for index, block in enumerate(adapter.blocks):
        for name, layer in adapter.linear_layers(block).items():
            if report.layer_plan.get(f"layers.{index}.{name}", 0.0) > 0:
                masks[f"layers.{index}.{name}"] = layer.weight.detach() != 0
    return masks


@torch.no_grad()
def remask(adapter: DecoderAdapter, masks: dict[str, torch.Tensor]) -> None:
    """``W <- W * M`` on every pruned layer (after the merge filled its zeros)."""
    for index, block in enumerate(adapter.blocks):
        for name, layer in adapter.linear_layers(block).items():
            mask = masks.get(f"layers.{index}.{name}")
            if mask is not None:
                layer.weight.mul_(mask.to(layer.weight.device))


def check_sparsity_kept(report: PruneReport, model: nn.Module) -> float:
    """The achieved sparsity after recovery equals the plan (the prune stage's check, measured
    again); for a structured model, the linear weights left are still the count pruning left."""
    adapter = DecoderAdapter(model)
    if report.pattern == "structured":
        kept = sum(layer.weight.numel() for block in adapter.blocks for layer in adapter.linear_layers(block).values())
        planned = report.method_evidence.get("structured_weights_after", kept)
        if kept != planned:
            raise OutcomeError(f"after recovery the model has {kept} linear weights, pruning left {planned}")
        return report.achieved_sparsity
    now = layer_sparsity(adapter)
    pruned = {name: plan for name, plan in report.layer_plan.items() if plan > 0}
    check_sparsity(dataclasses.replace(report, layer_sparsity=now, layer_plan=pruned))
    return overall_sparsity(adapter)


# -------------------------------------------------------------------------------------- metrics
def _perplexities(model, tokenizer, spec: PerplexitySpec, device: torch.device, label: str) -> dict[str, float]:
    found = {}
    for result in evaluate_perplexity(model, tokenizer, spec, device):
        found[f"recover/ppl_{result.dataset}_{label}"] = result.perplexity
        log.info("recover: perplexity %s %s: %.3f", result.dataset, label, result.perplexity)
    return found


def zeroshot_before(model, tokenizer, spec, device: torch.device, output_dir: Path) -> dict[str, float]:
    """The eval stage's zero-shot tasks on the pruned model before training: ``zeroshot/<task>/<metric>``
    as ``recover/zeroshot_before/<task>/<metric>`` (the eval stage's ``zeroshot/*`` are the after);
    lm-eval's outputs in ``<run dir>/recover/lm_eval_before``."""
    from prunelab.zeroshot import evaluate_zeroshot

    found = evaluate_zeroshot(model, tokenizer, spec, device, output_dir=output_dir)
    out = {f"recover/zeroshot_before/{key.removeprefix('zeroshot/')}": value
           for key, value in found.items() if key.startswith("zeroshot/")}
    out["time/recover_zeroshot_before_s"] = found.get("time/zeroshot_s", 0.0)
    return out


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """After the eval stage: the final (re-masked, or exactly merged) perplexity under ``recover/``,
    the cost of re-masking ``log ppl_remasked - log ppl_merged_dense`` and the gain over the pruned
    model ``log ppl_before - log ppl_final``."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if not (key.startswith("eval/ppl_") and not key.endswith("_tokens")):
            continue
        name = key.removeprefix("eval/ppl_")
        dense = metrics.get(f"recover/ppl_{name}_merged_dense")
        out[f"recover/ppl_{name}_{'remasked' if dense is not None else 'merged'}"] = value
        if dense is not None:
            out[f"recover/remask_cost_{name}"] = math.log(value) - math.log(dense)
        before = metrics.get(f"recover/ppl_{name}_before")
        if before is not None:
            out[f"recover/log_gain_{name}"] = math.log(before) - math.log(value)
    before, after = metrics.get("recover/zeroshot_before/mean_acc"), metrics.get("zeroshot/mean_acc")
    if before is not None and after is not None:
        out["recover/zeroshot_gain"] = after - before
    return out


def recovered_fraction(ppl_pruned: float, ppl_recovered: float, ppl_dense: float) -> float:
    """The fraction of the log-perplexity gap that recovery closed:
    ``(log ppl_pruned - log ppl_recovered) / (log ppl_pruned - log ppl_dense)`` (1: back to dense)."""
    gap = math.log(ppl_pruned) - math.log(ppl_dense)
    return (math.log(ppl_pruned) - math.log(ppl_recovered)) / gap if gap else math.nan
