"""Every study of a model directory in one document: ``make report`` (``multirun/<model>/report.pdf``).

``python -m prunelab.study.report_all multirun/smollm2_135m`` finds each sweep under the directory
(``<preset>/`` or ``<preset>/<method>/``), aggregates it (its own results.csv, tables, figures,
report and dashboard spec) and gathers them into ``report.md`` / ``report.pdf`` in the model
directory, one section per study in the assignment's order: sparsity curves (with zero-shot
accuracy), patterns, alpha, lambda, attention vs MLP, calibration data, then speed. A sweep made
of dense jobs only (``<model dir>/dense``, which ``study_all`` runs) is the baseline: it joins
every study that has no dense job of its own, for the metrics it measured on the same
evaluation size (same predicted tokens, same examples per task).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from pathlib import Path

from prunelab.study.aggregate import aggregate, aggregate_sweep, tables
from prunelab.study.describe import STUDY_TITLES, method_paragraphs, setup_lines, study_kind, title
from prunelab.study.records import Sweep, collect, is_baseline
from prunelab.study.report import _failed_jobs, markdown_table, sections, timing_table, write_pdf

log = logging.getLogger(__name__)


def find_sweeps(model_dir: Path) -> list[Path]:
    """Directories whose job subdirectories hold ``metrics.json`` (a job's parent is its sweep)."""
    return sorted({path.parent.parent for path in model_dir.rglob("metrics.json")})


def gather(model_dir: Path, figures: bool = True) -> tuple[list[tuple[Sweep, dict]], Sweep | None]:
    """Aggregate every sweep (the baseline joined) and return them with their figures."""
    sweeps = [collect(path) for path in find_sweeps(model_dir)]
    baseline = next((s for s in sweeps if is_baseline(s)), None)
    studies = []
    for sweep in sweeps:
        if sweep is baseline:
            aggregate(sweep.directory, figures=False, report=False)
            continue
        joined, _, made = aggregate_sweep(sweep.directory, figures=figures, baseline=baseline)
        studies.append((joined, made))
    return studies, baseline


ORDER = list(STUDY_TITLES)


def document(model_dir: Path, studies: list[tuple[Sweep, dict]], baseline: Sweep | None) -> str:
    studies = sorted(studies, key=lambda item: (ORDER.index(study_kind(item[0])), str(item[0].directory)))
    models = sorted({m for sweep, _ in studies for m in sweep.completed["model"].dropna().astype(str)})
    parts = [f"# Pruning {', '.join(models) or model_dir.name}: sparsity, patterns, α, λ, modules, calibration, speed",
             "", f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by `prunelab.study.report_all` "
             f"from {len(studies)} studies in `{model_dir}`; each study's own report, tables, figures and W&B "
             "dashboard spec (`dashboard.json`) are in its directory.", ""]
    if studies:
        first = studies[0][0]
        parts += ["## Setup", "", *[line for line in setup_lines(first) if not line.startswith(("- **Jobs", "- **Compute",
                                                                                                   "- **Directory"))]]
        own = [s.own_results for s, _ in studies] + ([baseline.results] if baseline is not None else [])
        jobs = sum(len(frame) for frame in own)
        minutes = sum(frame["time/total_s"].sum() for frame in own if "time/total_s" in frame) / 60
        with_dense = " and the dense baseline" if baseline is not None else ""
        parts += [f"- **Jobs**: {jobs} in {len(studies)} studies{with_dense}, {minutes:.0f} min of compute summed over jobs",
                  "- **Dense baseline**: " + (f"`{baseline.directory.name}/`, joined to every study without a dense job"
                                              if baseline else "none"),
                  "- Each study's setup below says what it varies; evaluation sizes are in every figure caption.", ""]
        records = [r for s, _ in studies for r in s.records.values()]
        parts += ["## Methods", "", *(p + "\n" for p in method_paragraphs(records))]
    for number, (sweep, made) in enumerate(studies, start=1):
        search = " (Optuna search)" if "optuna" in sweep.directory.name else ""
        parts += [f"## {number}. {title(sweep)}{search}", "", f"`{sweep.directory.relative_to(model_dir)}/`: "
                  f"{len(sweep.own_results)} jobs.", ""]
        parts += sections(sweep, tables(sweep), made, level=3, root=model_dir,
                          what=("findings", "results", "figures", "configs"))
    speed = [(sweep, timing_table(sweep)) for sweep, _ in studies]
    if any(not table.empty for _, table in speed):
        parts += ["## Speed and memory", "", "Seconds per stage and peak resident memory (MB) per setting, and every "
                  "`bench/*` measurement (engines: `engine=cpu|torch_sparse|tensorrt_llm`).", ""]
        for sweep, table in speed:
            if not table.empty:
                parts += [f"### {STUDY_TITLES[study_kind(sweep)]} (`{sweep.directory.relative_to(model_dir)}`)", "",
                          markdown_table(table, "speed"), ""]
    failed = [(sweep, _failed_jobs(sweep)) for sweep, _ in studies]
    if any(not table.empty for _, table in failed):
        parts += ["## Jobs that did not complete", ""]
        for sweep, table in failed:
            if not table.empty:
                parts += [f"`{sweep.directory.relative_to(model_dir)}`", "", markdown_table(table), ""]
    return "\n".join(parts)


def report_all(model_dir: Path | str, figures: bool = True) -> tuple[Path, Path]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} does not exist; run a study first (make study-all)")
    studies, baseline = gather(model_dir, figures)
    text = document(model_dir, studies, baseline)
    md_path = model_dir / "report.md"
    md_path.write_text(text)
    pdf_path = write_pdf(text, model_dir, model_dir / "report.pdf", title=text.splitlines()[0].lstrip("# "))
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
