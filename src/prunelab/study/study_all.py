"""Every offline study of the assignment, resumably, then one report: ``make study-all``.

Runs each offline preset of ``conf/experiment/`` as its own ``python run.py +experiment=<preset>``
multirun (each lands in a fixed sweep directory and skips the jobs that already completed there,
so an interrupted study-all resumes), one dense baseline job that every study's report compares
against, and then :mod:`prunelab.study.report_all` on the model's directory.

The full variant runs every preset exactly as the README's commands do (no extra overrides), so
the jobs a user already ran by hand are found completed and skipped: the headline
``python run.py +experiment=sparsity_curve`` is study-all's sparsity curve, and its zero-shot
half is ``+experiment=sparsity_curve_zeroshot`` (zero-shot only, nothing measured twice). The
sweeps' dense jobs of one evaluation are measured once (:mod:`prunelab.baselines`).

``--quick`` (14 minutes measured on 2 idle cores; :data:`QUICK` says exactly what is reduced) writes
to ``multirun/<model>_quick/`` so it never mixes with the full results.

    python -m prunelab.study.study_all [--quick] [--model smollm2_135m] [--dry-run] [-- extra overrides]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the checkout: run.py and conf/ live here
# The offline presets in the assignment's order (calibration_online needs the Hugging Face hub).
PRESETS = ("sparsity_curve", "sparsity_curve_zeroshot", "patterns", "ria_alpha", "ria_alpha_optuna", "owl_lambda",
           "owl_lambda_optuna", "module_sensitivity", "calibration_offline")
BASELINE = "dense"  # not a preset: one dense job in multirun/<model>/dense, the reports' 0% point

# Full variant: the presets as they are (the same jobs as the README's commands, so those are
# reused); the assignment's "sparsity curves with zero-shot accuracy" are sparsity_curve
# (perplexity) and sparsity_curve_zeroshot (accuracy). The dense job measures every metric any
# preset reports, on the same evaluation sizes.
FULL: dict[str, list[str]] = {
    BASELINE: ["method=dense", "eval=zeroshot", "eval.ppl_datasets=[wiki,austen,gsm8k]",
               "eval.tasks=[boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa,piqa,"
               "prunelab_basic_arithmetic,prunelab_mmlu_math]",
               "eval.limit_per_task={prunelab_basic_arithmetic:1000,prunelab_mmlu_math:null}"],
}

# Quick variant, against the full one: calibration 8 windows instead of 32; perplexity on 8 windows
# instead of 32, of wiki only (calibration study: wiki, austen, gsm8k); zero-shot on the sparsity
# curve ARC-Easy and PIQA, 40 questions each (full: 8 tasks x 100); math tasks 100 questions each
# (full: 1,000 and 1,064); grids thinned as listed; the two Optuna searches left out (their grid
# twins ria_alpha and owl_lambda stay).
QUICK_COMMON = ["calib_data.nsamples=8", "eval.max_windows=8"]
QUICK: dict[str, list[str] | None] = {
    "sparsity_curve": ["eval.ppl_datasets=[wiki]", "eval.tasks=[arc_easy,piqa]", "eval.limit=40",
                       "sparsity=0.3,0.5,0.7,0.9"],
    "sparsity_curve_zeroshot": None,  # the quick curve above measures both in one sweep
    "patterns": ["eval.ppl_datasets=[wiki]"],
    "ria_alpha": ["eval.ppl_datasets=[wiki]", "ria_alpha=0.0,0.5,1.0"],
    "ria_alpha_optuna": None,
    "owl_lambda": ["eval.ppl_datasets=[wiki]", "owl_lambda=0.0,0.04,0.08,0.16"],
    "owl_lambda_optuna": None,
    "module_sensitivity": ["eval.ppl_datasets=[wiki]", "+experiment/setting=unstructured_50,nm_2_4"],
    "calibration_offline": ["eval.limit=100", "eval.limit_per_task={prunelab_basic_arithmetic:100}"],
    BASELINE: ["method=dense", "eval.ppl_datasets=[wiki,austen,gsm8k]",
               "eval.tasks=[arc_easy,piqa,prunelab_basic_arithmetic,prunelab_mmlu_math]", "eval.limit=40",
               "eval.limit_per_task={prunelab_basic_arithmetic:100,prunelab_mmlu_math:100}"],  # eval=default: null before
}


def model_dir(model: str, quick: bool) -> str:
    return f"multirun/{model}{'_quick' if quick else ''}"


def commands(quick: bool = False, model: str = "smollm2_135m", extra: list[str] | None = None) -> list[list[str]]:
    """The ``run.py`` argument lists study-all runs, in order (the baseline first)."""
    extra = list(extra or [])
    runs = []
    for preset in (BASELINE, *PRESETS):
        overrides = (QUICK if quick else FULL).get(preset, [])
        if overrides is None:
            continue
        common = QUICK_COMMON if quick else []
        where = [f"hydra.sweep.dir={model_dir(model, quick)}/{preset}"] if quick or preset == BASELINE else []
        if preset == BASELINE:
            runs.append(["-m", f"model={model}", *common, *overrides, *where, "hydra.sweep.subdir=0", *extra])
        else:
            runs.append([f"+experiment={preset}", f"model={model}", *common, *overrides, *where, *extra])
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run every study, then the report; 1 if any study's sweep did not complete (the report still
    gathers what did), else 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the reduced variant, ~15 min on 2 cores (multirun/<model>_quick)")
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("extra", nargs="*", help="overrides added to every run, e.g. logger=none")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    failed = []
    for arguments in commands(args.quick, args.model, args.extra):
        command = [sys.executable, "run.py", *arguments]
        print(f"$ {shlex.join(command[1:])}", flush=True)
        if not args.dry_run:
            step = time.perf_counter()
            result = subprocess.run(command, cwd=ROOT)
            print(f"  -> exit {result.returncode} after {time.perf_counter() - step:.0f} s", flush=True)
            if result.returncode != 0:
                failed.append(f"exit {result.returncode}: {shlex.join(command[1:])}")
    report = [sys.executable, "-m", "prunelab.study.report_all", model_dir(args.model, args.quick)]
    print(f"$ {shlex.join(report[1:])}", flush=True)
    if args.dry_run:
        return 0
    subprocess.run(report, cwd=ROOT, check=True)
    print(f"study-all done in {(time.perf_counter() - started) / 60:.1f} min: "
          f"{ROOT / model_dir(args.model, args.quick) / 'report.pdf'}")
    if failed:
        print(f"{len(failed)} stud{'y' if len(failed) == 1 else 'ies'} did not complete (the report has what did; "
              "the same command again redoes only what is missing):\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
