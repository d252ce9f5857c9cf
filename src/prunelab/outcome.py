"""A run checks its own outcome before it says ``completed``.

Three checks, each failing with :class:`OutcomeError` that names what was wrong and where:
the weights are finite (after loading and after pruning: a corrupt checkpoint or a NaN in the
statistics is caught here, not as a NaN perplexity), every layer ended with the sparsity the plan
gave it (nothing silently skipped, nothing pruned that was not targeted), and every metric that
will be reported is a finite number.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from prunelab import offload

UPPER_SLACK = 0.01  # extra zeros tolerated above the plan (e.g. SparseGPT zeroes dead input channels)


class OutcomeError(RuntimeError):
    """A run's result failed a check; the message says which check and where."""


def check_finite_weights(model: nn.Module, when: str) -> None:
    """Every parameter of ``model`` is finite (``when``: "after loading", "after pruning")."""
    bad = []
    for name, parameter in offload.named_parameters(model):  # offloaded ones read from their store
        finite = torch.isfinite(parameter.detach())
        if not bool(finite.all()):
            bad.append(f"{name} ({int((~finite).sum())} of {finite.numel()})")
    if bad:
        hint = " — the checkpoint is corrupt? (`make setup` re-prepares the embedded model)" if when == "after loading" else ""
        raise OutcomeError(f"weights are not finite {when}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}{hint}")


def check_sparsity(report) -> None:
    """Each layer's zeros match its planned sparsity (a :class:`prunelab.prune.PruneReport`).

    A pruned layer ends with at least ``plan - 1/in`` zeros (rounding: a row loses ``floor(in * s)``)
    and at most ``max(plan, zeros before) + 1%``; a layer the plan leaves alone keeps exactly the
    zeros it had.
    """
    problems = []
    for name, planned in report.layer_plan.items():
        achieved = report.layer_sparsity[name]
        before = report.layer_zeros_before.get(name, 0.0)
        if planned <= 0:
            if abs(achieved - before) > 1e-12:
                problems.append(f"{name}: not targeted, but its zeros went from {before:.4f} to {achieved:.4f}")
            continue
        low = planned - 1.0 / report.layer_inputs.get(name, 1) - 1e-9
        high = max(planned, before) + UPPER_SLACK
        if not low <= achieved <= high:
            problems.append(f"{name}: sparsity {achieved:.4f}, planned {planned:.4f}")
    if problems:
        raise OutcomeError(f"achieved sparsity does not match the plan in {len(problems)} layer(s): "
                           f"{'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}")


def check_finite_metrics(metrics: dict[str, Any]) -> None:
    """Every reported number is finite (perplexities, accuracies, their standard errors, ...)."""
    bad = [key for key, value in metrics.items()
           if isinstance(value, float) and not isinstance(value, bool) and not math.isfinite(value)]
    if bad:
        raise OutcomeError(f"metrics are not finite: {', '.join(f'{k}={metrics[k]}' for k in bad[:8])}")


def check_quantized(errors: dict) -> None:
    """Quantization kept every pruned zero: each layer's ``pruned_lost`` (positions that were 0 before
    the quantize stage, or that a joint pass pruned, and are not 0 after it) is 0
    (``errors``: :attr:`prunelab.quant.stage.QuantReport.errors`). Rounding may add zeros (a small
    surviving weight on a 4-bit grid); it may never take one away."""
    lost = {name: e.pruned_lost for name, e in errors.items() if e.pruned_lost}
    if lost:
        shown = "; ".join(f"{name}: {count}" for name, count in list(lost.items())[:5])
        raise OutcomeError(f"quantization lost pruned zeros in {len(lost)} layer(s) (non-zero count): {shown}"
                           f"{' ...' if len(lost) > 5 else ''}")
