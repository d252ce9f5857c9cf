"""Every study of a model directory as one paper: ``make report`` (``multirun/<model>/report.md|pdf``).

``python -m prunelab.study.report_all multirun/smollm2_135m`` finds each sweep under the directory
(``<preset>/`` or ``<preset>/<method>/``), aggregates it (its own results.csv, tables, figures,
report and dashboard spec) and writes one document in the model directory:

1. Introduction, and the setup: the machine and its load, then one row per study with *its own*
   calibration and evaluation sizes (read from its jobs' records), and each method's rule once.
2. One section per homework part, in the assignment's order (:data:`describe.STUDY_TITLES`):
   sparsity curves (perplexity and zero-shot accuracy), N:M patterns, α, λ, attention vs MLP,
   calibration data (with the math tasks), recovery. Sweeps of the same kind evaluated the same
   way are one section and one curve: their jobs are pooled, a config measured twice (the same
   fingerprint) counts once; a sweep comparing unstructured methods at one sparsity joins the
   sparsity curves evaluated the same way (its points are on them). Findings state noise (:mod:`.noise`) and the papers' orderings are
   checked as reproduced or not (:mod:`.orderings`).
3. Speed: prefill vs decode with the roofline explanation, and what the jobs measured.
4. Discussion: the orderings reproduced, not reproduced and inconclusive; what the noise allows.
5. Appendices: configs (what varies), timings (with the machine's load), and the sweeps that did
   not complete, which appear nowhere else (not in the title, not in findings).

A sweep made of dense jobs only (``<model dir>/dense``, which ``study_all`` runs) is the baseline:
it joins every study that has no dense job of its own, for the metrics it measured on the same
evaluation size (same predicted tokens, same examples per task).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from prunelab.study import compression, noise
from prunelab.study.aggregate import aggregate, aggregate_sweep, tables
from prunelab.study.describe import STUDY_TITLES, method_paragraphs, setup_lines, study_kind
from prunelab.study.figures import Figure, draw_all
from prunelab.study.orderings import Verdict, verdicts
from prunelab.study.records import Sweep, _ordered, collect, is_baseline, prunes_nothing, speed_table, with_baseline
from prunelab.study.report import (
    WIDEST,
    _diff_table,
    _failed_jobs,
    _ppl_columns,
    column_chunks,
    findings,
    load_sentence,
    markdown_table,
    timing_table,
    write_pdf,
)

log = logging.getLogger(__name__)
ORDER = list(STUDY_TITLES)
QUESTIONS = {  # what each kind of study asks, for the introduction
    "sparsity": "how perplexity and zero-shot accuracy fall with sparsity",
    "pattern": "what the N:M patterns cost against unstructured sparsity",
    "method.alpha": "how RIA's exponent α matters",
    "method.lambda_": "whether OWL's layerwise sparsity beats uniform sparsity",
    "modules": "which layers (attention or MLP) tolerate pruning",
    "calib_data": "how the calibration data matters, on a math task too",
    "recovery": "how much a short LoRA fine-tune recovers",
    "compression": "what pruning and quantization together save in bytes and llama.cpp time, at what accuracy",
    "method": "how the methods compare",
}


def find_sweeps(model_dir: Path) -> list[Path]:
    """Directories whose job subdirectories hold ``metrics.json`` (a job's parent is its sweep)."""
    return sorted({path.parent.parent for path in model_dir.rglob("metrics.json")})


@dataclass
class Study:
    """One section of the paper: one or more sweeps of the same kind, evaluated the same way."""

    kind: str
    sweeps: list[Sweep]           # as collected (without the baseline)
    sweep: Sweep                  # pooled, deduplicated, with the baseline joined
    figures: dict[str, Figure]
    duplicates: int = 0           # completed configs measured in two sweeps, counted once
    label: str = ""               # set when a kind has several evaluation setups
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def title(self) -> str:
        return STUDY_TITLES[self.kind] + (f" ({self.label})" if self.label else "")


def has_results(sweep: Sweep) -> bool:
    """A sweep with at least one completed job that pruned something (a sweep's own dense job
    alone, beside failed pruned jobs, is no result)."""
    done = sweep.completed
    return not done.empty and not bool(prunes_nothing(done).all())


def choose_baseline(sweeps: list[Sweep]) -> Sweep | None:
    """The dense baseline: a sweep of dense jobs only, all completed (``<model dir>/dense`` first)."""
    candidates = [s for s in sweeps if is_baseline(s) and bool(prunes_nothing(s.results).all())]
    return next((s for s in candidates if s.directory.name == "dense"), candidates[0] if candidates else None)


def _evaluation_signature(sweep: Sweep) -> tuple:
    """How a sweep measured: the predicted tokens of each perplexity and the examples of each task."""
    done = sweep.completed
    sizes = [c for c in done.columns if (c.startswith("eval/ppl_") and c.endswith("_tokens"))]
    return tuple((c, tuple(sorted(set(pd.to_numeric(done[c], errors="coerce").dropna())))) for c in sorted(sizes))


def merge(sweeps: list[Sweep], model_dir: Path, directory: Path) -> tuple[Sweep, int]:
    """The jobs of several sweeps as one sweep (job names prefixed with their sweep's directory);
    a completed config (fingerprint) found in more than one keeps its first measurement."""
    frames, blocks, records = [], [], {}
    for sweep in sweeps:
        prefix = sweep.directory.relative_to(model_dir).as_posix()
        own = sweep.own_results
        frames.append(own.assign(job=[f"{prefix}/{job}" for job in own["job"]]))
        if not sweep.block_sparsity.empty:
            blocks.append(sweep.block_sparsity.assign(job=[f"{prefix}/{job}" for job in sweep.block_sparsity["job"]]))
        records.update({f"{prefix}/{job}": record for job, record in sweep.records.items()})
    results = pd.concat(frames, ignore_index=True)
    done = results["status"].isin(["completed", "skipped"]) & results["fingerprint"].fillna("").astype(bool)
    repeated = pd.Series(False, index=results.index)
    repeated[done] = results.loc[done, "fingerprint"].duplicated()
    dropped = set(results.loc[repeated, "job"])
    results = _ordered(results[~repeated].reset_index(drop=True))
    block_frame = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame()
    if not block_frame.empty:
        block_frame = block_frame[~block_frame["job"].isin(dropped)]
    records = {job: record for job, record in records.items() if job not in dropped}
    return Sweep(directory, results, block_frame, records), len(dropped)


def gather(model_dir: Path, figures: bool = True) -> tuple[list[Study], Sweep | None, list[Sweep]]:
    """Aggregate every sweep (its own report), then group them into the paper's studies; also the
    baseline and the sweeps with no completed job (the appendix's list)."""
    sweeps = [collect(path) for path in find_sweeps(model_dir)]
    baseline = choose_baseline(sweeps)
    made: dict[Path, tuple[Sweep, dict]] = {}
    for sweep in sweeps:
        if sweep is baseline:
            aggregate(sweep.directory, figures=False, report=False)
        elif has_results(sweep):
            joined, _, drawn = aggregate_sweep(sweep.directory, figures=figures, baseline=baseline)
            made[sweep.directory] = (joined, drawn)
        else:  # nothing to show: its results.csv and failed-jobs report only
            aggregate(sweep.directory, figures=False)
    empty = [s for s in sweeps if s is not baseline and not has_results(s)]
    groups: dict[tuple, list[Sweep]] = {}
    for sweep in sweeps:
        if sweep is not baseline and has_results(sweep):
            groups.setdefault((study_kind(sweep), _evaluation_signature(sweep)), []).append(sweep)
    for (kind, signature) in list(groups):  # methods compared at one sparsity: points of the curve evaluated alike
        if kind == "method" and ("sparsity", signature) in groups and all(_unstructured(s) for s in groups[(kind, signature)]):
            groups[("sparsity", signature)] += groups.pop((kind, signature))
    kinds = pd.Series([kind for kind, _ in groups]).value_counts().to_dict()
    studies = []
    for (kind, signature), members in groups.items():
        if len(members) == 1:
            joined, drawn = made[members[0].directory]
            study = Study(kind, members, joined, drawn)
        else:
            slug = re.sub(r"[^a-z0-9]+", "_", STUDY_TITLES[kind].lower()).strip("_")
            directory = model_dir / "report_figures" / f"{slug}_{len(studies)}"
            directory.mkdir(parents=True, exist_ok=True)
            pooled, duplicates = merge(members, model_dir, directory)
            pooled = with_baseline(pooled, baseline)
            study = Study(kind, members, pooled, draw_all(pooled, directory / "figures") if figures else {}, duplicates)
        if kinds[kind] > 1:
            study.label = _evaluation_text(study.sweep)
        if kind != "compression":  # the papers' orderings compare methods in one format, not across formats
            study.verdicts = verdicts(study.sweep.completed, _ppl_columns(study.sweep))
        studies.append(study)
    studies.sort(key=lambda s: (ORDER.index(s.kind), str(s.sweeps[0].directory)))
    return studies, baseline, empty


def _unstructured(sweep: Sweep) -> bool:
    patterns = set(sweep.completed["pattern"].dropna().astype(str)) if "pattern" in sweep.completed else set()
    return patterns <= {"unstructured"}


def _evaluation_text(sweep: Sweep) -> str:
    lines = [line for line in setup_lines(sweep) if line.startswith("- **Perplexity**")]
    return lines[0].removeprefix("- **Perplexity**: ") if lines else "no perplexity"


# ------------------------------------------------------------------------------------ sections
ROOFLINE = (
    "Why 2:4 and structured pruning speed up the two phases differently (roofline; numbers from "
    "`/work/shared/REFERENCE.md`). **Prefill** processes many tokens at once: its linear layers are matrix-matrix "
    "products with high arithmetic intensity, so they are *compute-bound* (94–97% of FLOPs at 512–2,048 tokens). "
    "Sparse tensor cores run 2:4 matmuls at up to 2× the dense math rate, so prefill can gain up to ~1.9×; "
    "measured kernels give 1.3–1.6× (A100) and ~1.24× end to end (Wanda paper). **Decode** produces one token per "
    "step: matrix-vector products read every weight once per token, so it is *memory-bound*; a compressed 2:4 "
    "fp16 weight stores half the values plus 2-bit indices (9/16 of the bytes), so decode gains at most "
    "16/9 = 1.78× (≈1.2× observed at batch 1). Unstructured sparsity gives neither on a GPU without a sparse "
    "kernel: the zeros are still multiplied and read. **Structured** pruning (removed channels, heads or blocks) "
    "makes the matrices smaller, so dense kernels run faster in both phases, roughly in proportion to the "
    "parameters removed, at a larger cost in accuracy. `make roofline` prints the analytic bounds for LLaMA-2-7B "
    "shapes; the granularity preset measures dense vs pruned on this CPU (`engine=structured`).")


def _jobs(count: int) -> str:
    return f"{count} job{'' if count == 1 else 's'}"


def _study_setup(study: Study, model_dir: Path) -> list[str]:
    sweeps = ", ".join(f"`{s.directory.relative_to(model_dir)}/` ({_jobs(len(s.own_results))})" for s in study.sweeps)
    pooled = ""
    if len(study.sweeps) > 1:
        twice = f"{study.duplicates} config{'s' if study.duplicates > 1 else ''} measured in two sweeps"
        pooled = " pooled into one curve" + (f"; {twice} counted once" if study.duplicates else "")
    lines = [f"Sweeps: {sweeps}{pooled}.", ""]
    keep = ("- **Methods", "- **Calibration", "- **Perplexity", "- **Zero-shot")
    return lines + [line for line in setup_lines(study.sweep) if line.startswith(keep)] + [""]


def _figure_lines(figures: dict[str, Figure], root: Path, start: int) -> tuple[list[str], int]:
    lines = []
    for name, figure in figures.items():
        path = Path(figure.path)
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        lines += [f"![{name}]({shown})", "", f"*Figure {start}. {figure.caption}*", ""]
        start += 1
    return lines, start


TABLE_NAMES = {"summary": "All headline metrics per setting", "recovery": "Recovery: perplexity before and after",
               **compression.TABLE_NAMES}


def _table_name(name: str) -> str:
    if name in TABLE_NAMES:
        return TABLE_NAMES[name]
    from prunelab.study.report import header
    return f"{header(name)} by setting"


def study_section(number: int, study: Study, model_dir: Path, figure_number: int) -> tuple[list[str], int]:
    sweep = study.sweep
    parts = [f"## {number}. {study.title}", "", *_study_setup(study, model_dir)]
    sentences = compression.lines(sweep) if study.kind == "compression" else findings(sweep.results, sizes=False)
    parts += ["**Findings.**", "", *(f"- {s}" for s in sentences or ["(too few completed jobs to compare)"]), ""]
    if study.verdicts:
        parts += ["**The papers' orderings on these numbers** (paired over the same windows; beyond noise: above 2 SE, "
                  "or Student's 95% value with few windows):", "",
                  *(f"- {v.text()}" for v in study.verdicts), ""]
    for name, table in tables(sweep).items():
        note = [compression.TABLE_NOTES[name], ""] if name in compression.TABLE_NOTES else []
        parts += [f"*Table: {_table_name(name)}.*", "", *note, markdown_table(table, name), ""]
    lines, figure_number = _figure_lines(study.figures, model_dir, figure_number)
    return parts + lines, figure_number


def _machine(records: list[dict]) -> str:
    loads = [v for r in records for k in ("machine/load_1m_start", "machine/load_1m_end")
             if isinstance(v := (r.get("metrics") or {}).get(k), (int, float))]
    cpus = sorted({(r.get("metrics") or {}).get("machine/cpus") for r in records} - {None})
    models = sorted({str(m) for r in records if (m := (r.get("metrics") or {}).get("machine/cpu_model"))})
    model = f" ({' / '.join(models)})" if models else ""
    plan = next((r.get("plan") for r in records if r.get("plan")), {}) or {}
    device = f"{plan.get('dtype', '?')} on {plan.get('device', '?')}"
    if not loads:
        return f"{device}; machine load not recorded (jobs written before it was)"
    median, cores = float(pd.Series(loads).median()), max(cpus or [1])
    # a job's own threads make a load of about one per core: only more than that is someone else's work
    state = ("a machine running only these jobs (their own threads make a load of about one per core)"
             if median <= cores + 0.5 else "a shared, loaded machine: slower than on an idle one")
    return (f"{device}, {'/'.join(str(c) for c in cpus)} CPUs{model}, 1-minute load average {min(loads):.1f}–{max(loads):.1f} "
            f"while the jobs ran (median {median:.1f}): timings are those of {state}")


def _noise_summary(studies: list[Study]) -> str:
    """The noise in words a reader can use: one standard error of log-perplexity (nats) is a factor
    ``exp(SE)`` on the perplexity, i.e. ``exp(SE) - 1`` of its value (:func:`noise.share_of_value`)."""
    se = pd.concat([pd.to_numeric(s.sweep.completed[c], errors="coerce") for s in studies
                    for c in s.sweep.completed.columns if noise.is_se_column(c)], ignore_index=True) \
        if any(noise.is_se_column(c) for s in studies for c in s.sweep.completed.columns) else pd.Series(dtype=float)
    se = se.dropna()
    paired = [v.comparison.se for s in studies for v in s.verdicts if v.comparison and v.comparison.windows]
    if se.empty:
        return "No run recorded per-window losses, so no perplexity difference is called beyond noise."
    text = (f"One standard error of a run's perplexity is {_shares(se)} of its value: the spread of its windows' "
            f"losses gives its log-perplexity a standard error (SE) of {_nats(se)}, and one SE multiplies or divides "
            f"the perplexity by exp(SE) = {_factors(se)}")
    if paired:
        paired_se = pd.Series(paired)
        text += (f"; paired over the same windows, the ratio of two runs' perplexities has a standard error of "
                 f"{_shares(paired_se)} of the ratio ({_nats(paired_se)} in log-ratio)")
        text += (", smaller because the windows' own difficulty cancels" if paired_se.median() < se.median() else
                 ", no smaller: the runs compared differ window by window as much as the windows differ")
    return text + ". Differences smaller than two of those are reported as within noise; seeds were not repeated, " \
                  "so the variation from calibration sampling is not included."


def _shares(se: pd.Series) -> str:
    """"10–232% (median 12%)": ``exp(SE) - 1`` of the standard errors of log-perplexity, in percent."""
    low, high, median = (noise.share_of_value(float(x)) for x in (se.min(), se.max(), se.median()))
    return f"{_percent(low)}–{_percent(high)}% (median {_percent(median)}%)"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}" if value < 0.1 else f"{100 * value:,.0f}"


def _factors(se: pd.Series) -> str:
    return f"{math.exp(se.min()):.2f}–{math.exp(se.max()):.2f}"


def _nats(se: pd.Series) -> str:
    return f"{se.min():.3g}–{se.max():.3g} nats (median {se.median():.3g})"


def discussion(studies: list[Study]) -> list[str]:
    seen, found = set(), []
    for study in studies:
        for v in study.verdicts:
            key = (v.ordering.claim, v.setting, v.where, v.metric)
            if key not in seen:
                seen.add(key)
                found.append(v)
    parts = ["## Discussion", ""]
    if found:
        groups = {"Reproduced": [v for v in found if v.outcome == "reproduced"],
                  "Not reproduced (the opposite, beyond noise)": [v for v in found if v.outcome.startswith("not")],
                  "Inconclusive (within noise)": [v for v in found if v.outcome == "inconclusive"],
                  "No noise estimate": [v for v in found if "no noise" in v.outcome]}
        parts += ["The papers' orderings (`/work/shared/REFERENCE.md`), checked on our numbers:", ""]
        for name, members in groups.items():
            if members:
                parts += [f"**{name}** ({len(members)}):", "", *(f"- {v.text()}" for v in members), ""]
    else:
        parts += ["No study ran two methods or settings that a paper orders, so no published ordering is checked.", ""]
    parts += [f"**Noise.** {_noise_summary(studies)}", "",
              "**Caveats.** The papers measure 7–13B models on WikiText-2 with 128 C4 calibration sequences; a "
              "135M-parameter model has far less redundancy, so absolute perplexities rise much faster with sparsity "
              "and an ordering that holds at 7B need not hold here. The evaluation and calibration sizes are those "
              "stated in each study's setup; small ones widen the noise above.", ""]
    return parts


def _appendix_failed(empty: list[Sweep], studies: list[Study], model_dir: Path) -> list[str]:
    failed = [(s, _failed_jobs(s)) for study in studies for s in study.sweeps]
    failed = [(s, t) for s, t in failed if not t.empty]
    if not empty and not failed:
        return []
    parts = ["## Appendix C. Sweeps and jobs that did not complete", "",
             "They appear nowhere else in this report (not in the title, the findings or the figures).", ""]
    if empty:
        parts += ["Sweeps with no completed job that pruned anything:", ""]
        for sweep in empty:
            counts = sweep.results["status"].value_counts().to_dict() if not sweep.results.empty else {}
            errors = [e for e in sweep.results.get("error", pd.Series(dtype=str)).astype(str) if e]
            first = f"; first error: {errors[0][:200]}" if errors else ""
            parts.append(f"- `{sweep.directory.relative_to(model_dir)}/`: {_jobs(len(sweep.results))} "
                         f"({', '.join(f'{v} {k}' for k, v in counts.items())}){first}")
        parts.append("")
    for sweep, table in failed:
        parts += [f"Failed jobs of `{sweep.directory.relative_to(model_dir)}/`:", "", markdown_table(table), ""]
    return parts


def document(model_dir: Path, studies: list[Study], baseline: Sweep | None, empty: list[Sweep] | None = None) -> str:
    empty = empty or []
    models = sorted({m for s in studies for m in s.sweep.completed["model"].dropna().astype(str)})
    ran = list(dict.fromkeys(s.title.split(" (")[0] for s in studies))
    methods = list(dict.fromkeys(m for s in studies for m in s.sweep.completed["method"].dropna().astype(str) if m != "dense"))
    records = [r for s in studies for r in s.sweep.records.values()] + \
              (list(baseline.records.values()) if baseline is not None else [])
    parts = [f"# Pruning {', '.join(models) or model_dir.name}: {'; '.join(ran) or 'no completed study'}", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by `prunelab.study.report_all` from "
             f"`{model_dir}` (re-run: `make report` or `python -m prunelab.study.report_all {model_dir}`). Every number "
             "is read from the jobs' `metrics.json`; each sweep's own report, tables and figures are in its directory.",
             "", "## Introduction", "",
             f"This report prunes a LLaMA-family language model ({', '.join(models) or '-'}) without retraining — "
             f"{', '.join(methods) or 'no method completed'} — and measures "
             f"{'; '.join(dict.fromkeys(QUESTIONS.get(s.kind, QUESTIONS['method']) for s in studies)) or 'nothing yet'}, "
             "and explains what speed a sparsity pattern can buy. Each section below is one part of the assignment that was run "
             f"({len(studies)} of them); comparisons state their noise, and \"best\" is said only of a difference "
             "beyond two standard errors. The published orderings are checked in the discussion.", ""]
    if not studies:
        return "\n".join(parts + _appendix_failed(empty, studies, model_dir))
    jobs = sum(len(s.sweep.own_results) for s in studies) + (len(baseline.results) if baseline is not None else 0)
    seconds = sum(pd.to_numeric(s.sweep.own_results.get("time/total_s", pd.Series(dtype=float)), errors="coerce").sum()
                  for s in studies)
    commits = sorted({str(r.get("git_commit")) for r in records if r.get("git_commit")})
    versions = next((r.get("versions") for r in records if r.get("versions")), {}) or {}
    parts += ["## 1. Setup", "",
              f"- **Model**: {', '.join(models)}; {_machine(records)}.",
              f"- **Jobs**: {jobs} in {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}"
              + (" and the dense baseline" if baseline is not None else "") + f", {seconds / 60:.0f} min of compute summed over jobs.",
              "- **Dense baseline**: " + (f"`{baseline.directory.name}/`, joined to every study without a dense job "
                                          "where it was evaluated on the same windows and questions" if baseline
                                          else "none (a study's own dense job where it has one)"),
              f"- **Code**: {', '.join(f'`{c}`' for c in commits) or 'unknown'}; "
              + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
              "Each study was calibrated and evaluated as its own sweeps were (read from their records):", ""]
    rows = []
    for number, study in enumerate(studies, start=2):
        lines = {line.split("**")[1]: line.split(": ", 1)[-1] for line in setup_lines(study.sweep) if line.startswith("- **")}
        rows.append({"Section": f"{number}. {study.title}", "Jobs": len(study.sweep.own_results),
                     "Calibration": lines.get("Calibration", ""), "Perplexity": lines.get("Perplexity", ""),
                     "Zero-shot": next((v for k, v in lines.items() if k.startswith("Zero-shot")), "—")})
    parts += [markdown_table(pd.DataFrame(rows).set_index("Section")), "",
              "**Methods.** Each method's rule, and where we deviate from the reference code on purpose:", "",
              *(p + "\n" for p in method_paragraphs(records))]
    figure_number = 1
    for number, study in enumerate(studies, start=2):
        section, figure_number = study_section(number, study, model_dir, figure_number)
        parts += section
    number = len(studies) + 2
    parts += [f"## {number}. Speed: prefill vs decode", "", ROOFLINE, ""]
    speed = [(s, compression.speed_table(s.sweep) if s.kind == "compression" else speed_table(s.sweep)) for s in studies]
    speed = [(s, t) for s, t in speed if not t.empty]
    for study, table in speed:
        parts += [f"*Table: accuracy beside speed, {study.title}; {load_sentence(study.sweep.completed)}.*", "",
                  markdown_table(table, "speed"), ""]
    if not speed:
        parts += ["No job of these studies ran an engine benchmark (`engine=cpu|structured|roofline|torch_sparse`), "
                  "so no speed is measured here; stage times are in Appendix B.", ""]
    parts += discussion(studies)
    parts += ["## Appendix A. Configs: what varies between jobs", ""]
    for study in studies:
        diff, shared = _diff_table(study.sweep)
        if not diff.empty:
            parts += [f"*{study.title}*: {shared} config keys are identical in every job; the keys below differ "
                      "(blank: the job's method has no such knob; full configs in `<job>/.hydra/config.yaml`).", ""]
            for chunk in column_chunks(diff, ["job", "status"], WIDEST):  # a page is only so wide
                parts += [markdown_table(chunk), ""]
    parts += ["## Appendix B. Timings", ""]
    for study in studies:
        table = timing_table(study.sweep)
        if not table.empty:
            parts += [f"*{study.title}*: seconds per stage and peak resident memory (MiB), mean over repeated "
                      f"settings; {load_sentence(study.sweep.completed)}.", "", markdown_table(table, "timing"), ""]
    parts += _appendix_failed(empty, studies, model_dir)
    return "\n".join(parts)


def report_all(model_dir: Path | str, figures: bool = True) -> tuple[Path, Path]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} does not exist; run a study first (make study-all)")
    studies, baseline, empty = gather(model_dir, figures)
    text = document(model_dir, studies, baseline, empty)
    md_path = model_dir / "report.md"
    md_path.write_text(text)
    pdf_path = write_pdf(text, model_dir, model_dir / "report.pdf", title=text.splitlines()[0].lstrip("# "),
                         page_per_section=True)
    return md_path, pdf_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="e.g. multirun/smollm2_135m")
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    md_path, pdf_path = report_all(args.model_dir, figures=not args.no_figures)
    print(f"report: {pdf_path.resolve()} (and {md_path.name})")


if __name__ == "__main__":
    main()
