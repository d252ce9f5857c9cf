"""A sweep's report: ``report.md`` and ``report.pdf``, one document to hand in.

Title and setup (model, calibration, evaluation sizes), each method's rule with our deliberate
deviations from the reference code, findings generated from the numbers (:mod:`.findings`), the
typeset tables (accuracies with lm-eval's standard errors), the published WikiText-2 numbers of
``/work/shared/REFERENCE.md`` beside ours where model, method, setting and evaluation set match and
the orderings they show checked on ours, figures with captions that state the evaluation size,
speed, and the configs as a diff of what varies between jobs. :func:`sections` is shared with
:mod:`.report_all`, which gathers every study of a model directory into one document. The PDF is
the Markdown typeset by ``markdown-pdf`` (PyMuPDF).
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from markdown_pdf import MarkdownPdf, Section

from prunelab.study.describe import config_diff, method_paragraphs, setup_lines, short_key, title
from prunelab.study.figures import Figure
from prunelab.study.findings import findings
from prunelab.study.records import (
    GENERIC,
    STDERR,
    Sweep,
    knob_label,
    speed_metrics,
    speed_table,
    summary_table,
    with_setting,
)


@dataclass(frozen=True)
class Published:
    model: str       # conf/model/<name>.yaml
    method: str
    setting: str     # "dense", "unstructured 50%", "2:4" (as ``with_setting`` labels it)
    ppl_wikitext2: float
    source: str


PUBLISHED: tuple[Published, ...] = (
    Published("llama2_7b", "dense", "dense", 5.12, "Wanda README"),
    *(Published("llama2_7b", m, s, v, "Wanda README") for m, s, v in (
        ("magnitude", "unstructured 50%", 14.89), ("sparsegpt", "unstructured 50%", 6.51), ("wanda", "unstructured 50%", 6.42),
        ("magnitude", "4:8", 16.48), ("sparsegpt", "4:8", 8.12), ("wanda", "4:8", 7.97),
        ("magnitude", "2:4", 54.59), ("sparsegpt", "2:4", 10.17), ("wanda", "2:4", 11.02))),
    Published("llama2_13b", "dense", "dense", 4.57, "Wanda README"),
    *(Published("llama2_13b", m, s, v, "Wanda README") for m, s, v in (
        ("magnitude", "unstructured 50%", 6.37), ("sparsegpt", "unstructured 50%", 5.63), ("wanda", "unstructured 50%", 5.56),
        ("magnitude", "4:8", 6.76), ("sparsegpt", "4:8", 6.60), ("wanda", "4:8", 6.55),
        ("magnitude", "2:4", 8.33), ("sparsegpt", "2:4", 8.32), ("wanda", "2:4", 8.27))),
    Published("llama_7b", "dense", "dense", 5.68, "Wanda paper"),
    *(Published("llama_7b", m, s, v, "Wanda paper") for m, s, v in (
        ("magnitude", "unstructured 50%", 17.29), ("sparsegpt", "unstructured 50%", 7.22), ("wanda", "unstructured 50%", 7.26),
        ("magnitude", "2:4", 42.13), ("sparsegpt", "2:4", 11.00), ("wanda", "2:4", 11.53))),
    Published("llama_7b", "wanda", "unstructured 70%", 85.77, "OWL README"),
    Published("llama_7b", "owl_wanda", "unstructured 70%", 24.55, "OWL README"),
    Published("llama3_8b", "wanda", "unstructured 50%", 10.82, "RIA README"),
    Published("llama3_8b", "sparsegpt", "unstructured 50%", 9.40, "RIA README"),
    Published("llama3_8b", "ria", "unstructured 50%", 9.34, "RIA README"),
)
REFERENCE_METRIC = "eval/ppl_wikitext2"
LARGE = 1e4  # from here on a number is shown without decimals, with thousands separators


def _number(value, digits: int) -> str:
    """A number for a reader: ``digits`` decimals, or none (with thousands separators) when large."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "" if value is None else str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}" if abs(value) >= LARGE else str(value)
    if math.isnan(value):
        return ""
    return f"{value:,.0f}" if abs(value) >= LARGE else f"{value:.{digits}f}"


def reference_table(sweep: Sweep) -> pd.DataFrame:
    """Our WikiText-2 perplexity beside the published one, for every matching setting."""
    if REFERENCE_METRIC not in sweep.results or sweep.completed.empty:
        return pd.DataFrame()
    frame = with_setting(sweep.completed.dropna(subset=[REFERENCE_METRIC]))
    rows = []
    for ref in PUBLISHED:
        match = frame[(frame["model"] == ref.model) & (frame["method"] == ref.method) & (frame["setting"] == ref.setting)]
        for _, row in match.iterrows():
            rows.append({"model": ref.model, "method": ref.method, "setting": ref.setting,
                         "calibration": f"{row['calib_data']} x{row['calib_nsamples']} @ {row['calib_seqlen']}",
                         "ours": row[REFERENCE_METRIC], "published": ref.ppl_wikitext2, "source": ref.source})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- qualitative checks
def _ppl_columns(sweep: Sweep) -> list[str]:
    return [c for c in sweep.results.columns if c.startswith("eval/ppl_") and not c.endswith("_tokens")]


def _context_columns(frame: pd.DataFrame, exclude: tuple[str, ...]) -> list[str]:
    """Generic knobs to compare within; method knobs differ between methods by nature, never context."""
    return [name for name in GENERIC if name in frame.columns and name not in exclude]


def qualitative_checks(sweep: Sweep) -> list[str]:
    """The orderings every published table shows, checked on this sweep's numbers (✓ holds, ✗ not)."""
    frame = with_setting(sweep.completed)
    if frame.empty:
        return []
    lines: list[str] = []
    context = _context_columns(frame, ("method", "sparsity", "pattern"))
    for metric in _ppl_columns(sweep):
        data = frame.dropna(subset=[metric])
        varying = [c for c in context if data[c].dropna().astype(str).nunique() > 1]  # blank: knob not used
        data = data.assign(**{c: data[c].astype(str) for c in varying})
        for key, group in data.groupby(varying, sort=False) if varying else [((), data)]:
            by = group.groupby(["method", "setting"])[metric].mean()
            where = ", ".join([metric, *(f"{c}={v}" for c, v in zip(varying, key))])
            for better in ("wanda", "ria", "sparsegpt"):
                if ("magnitude", "unstructured 50%") in by and (better, "unstructured 50%") in by:
                    ours, mag = by[(better, "unstructured 50%")], by[("magnitude", "unstructured 50%")]
                    lines.append(f"{'✓' if ours < mag else '✗'} {better} below magnitude at 50%: "
                                 f"{_number(ours, 2)} vs {_number(mag, 2)} ({where})")
            for method in by.index.get_level_values(0).unique():
                chain = [s for s in ("unstructured 50%", "4:8", "2:4") if (method, s) in by]
                if len(chain) >= 2:
                    values = [by[(method, s)] for s in chain]
                    holds = all(a < b for a, b in zip(values, values[1:]))
                    shown = " < ".join(f"{s} {_number(v, 2)}" for s, v in zip(chain, values))
                    lines.append(f"{'✓' if holds else '✗'} {method}: {shown} ({where})")
            if ("wanda", "unstructured 70%") in by and ("owl_wanda", "unstructured 70%") in by:
                owl, uniform = by[("owl_wanda", "unstructured 70%")], by[("wanda", "unstructured 70%")]
                lines.append(f"{'✓' if owl < uniform else '✗'} OWL-Wanda below uniform Wanda at 70%: "
                             f"{_number(owl, 2)} vs {_number(uniform, 2)} ({where})")
            lines += _structured_checks(by, where)
            at_70 = group[(group["method"] == "owl_wanda") & (group["setting"] == "unstructured 70%")]
            by_lambda = (at_70.groupby(at_70["method.lambda_"].astype(float))[metric].mean()
                         if "method.lambda_" in at_70 else pd.Series(dtype=float))
            if 0.0 in by_lambda.index and len(by_lambda) > 1:  # λ = 0 is uniform Wanda
                best = by_lambda.drop(0.0).idxmin()
                lines.append(f"{'✓' if by_lambda[best] < by_lambda[0.0] else '✗'} OWL-Wanda below uniform Wanda "
                             f"(λ=0) at 70%: λ={best:g} {_number(by_lambda[best], 2)} vs {_number(by_lambda[0.0], 2)} "
                             f"({where})")
            unstructured = group[group["pattern"] == "unstructured"]
            for method, curve in unstructured.groupby("method"):
                curve = curve.groupby(curve["sparsity"].astype(float))[metric].mean().sort_index()
                if len(curve) >= 3:
                    holds = bool((curve.diff().dropna() > 0).all())
                    shown = ", ".join(f"{s:g}: {_number(v, 2)}" for s, v in curve.items())
                    lines.append(f"{'✓' if holds else '✗'} {method}: perplexity rises with sparsity ({shown}) ({where})")
    return lines


def _structured_checks(by: pd.Series, where: str) -> list[str]:
    """FLAP paper: FLAP below Wanda-sp at every ratio; any structured 50% far above unstructured 50%."""
    lines = []
    for setting in sorted({s for _, s in by.index if str(s).startswith("structured ")}):
        if ("flap", setting) in by and ("wanda_sp", setting) in by:
            flap, wanda_sp = by[("flap", setting)], by[("wanda_sp", setting)]
            lines.append(f"{'✓' if flap < wanda_sp else '✗'} flap below wanda_sp at {setting}: "
                         f"{_number(flap, 2)} vs {_number(wanda_sp, 2)} ({where})")
    unstructured = [by[(m, s)] for m, s in by.index if s == "unstructured 50%"]
    if unstructured:
        best = min(unstructured)
        for (method, setting), value in by.items():
            if setting == "structured 50%":
                lines.append(f"{'✓' if value > best else '✗'} {method} structured 50% above the best unstructured 50%: "
                             f"{_number(value, 2)} vs {_number(best, 2)} ({where})")
    return lines


# ------------------------------------------------------------------------------------- tables
def markdown_table(table: pd.DataFrame, metric: str = "") -> str:
    """A table as Markdown through ``DataFrame.to_markdown``: index levels as named columns, pivot
    columns as ``<knob>=<value>``, 4 decimals for accuracies, 2 for other numbers, none for large ones."""
    table = _with_stderr(table)
    shown = table.reset_index() if any(name is not None for name in table.index.names) else table
    across = knob_label(table.columns.name) if isinstance(table.columns.name, str) else table.columns.name
    headers = [f"{across}={c}" if across and c in table.columns else knob_label(str(c)) for c in shown.columns]
    cells = pd.DataFrame({header: [_number(v, 4 if "acc" in metric + header else 2) for v in shown[column]]
                          for header, column in zip(headers, shown.columns)})
    numeric = [pd.api.types.is_numeric_dtype(shown[c]) and not pd.api.types.is_bool_dtype(shown[c])
               for c in shown.columns]
    return cells.to_markdown(index=False, disable_numparse=True,
                             colalign=["right" if n else "left" for n in numeric])


def _with_stderr(table: pd.DataFrame) -> pd.DataFrame:
    """``acc`` and ``acc_stderr`` columns as one ``acc ± se`` column (text)."""
    pairs = [c for c in table.columns if isinstance(c, str) and f"{c}{STDERR}" in table.columns]
    if not pairs:
        return table
    merged = table.copy()
    for column in pairs:
        se = merged.pop(f"{column}{STDERR}")
        merged[column] = [_number(v, 4) + (f" ± {_number(s, 4)}" if isinstance(s, numbers.Real) and not math.isnan(s)
                                           else "") for v, s in zip(merged[column], se)]
    return merged


def _one_line(text) -> str:
    """A table cell: no line breaks, no ``|`` (Markdown tables cannot hold them)."""
    return " ".join(str(text).replace("|", "/").split())


def _failed_jobs(sweep: Sweep) -> pd.DataFrame:
    results = sweep.results
    failed = results[~results["status"].isin(["completed", "skipped"])] if not results.empty else results
    return pd.DataFrame({"job": failed["job"].astype(str), "status": failed["status"].astype(str),
                         "overrides": [f"`{_one_line(o)}`" for o in failed["overrides"]],
                         "error": [_one_line(e)[:300] for e in failed["error"]]}) if not failed.empty else failed


# ------------------------------------------------------------------------------------- markdown
def timing_table(sweep: Sweep) -> pd.DataFrame:
    """Stage times, peak memory and any ``bench/*`` measurement, per setting of the varying knobs."""
    return summary_table(sweep, speed_metrics(with_setting(sweep.completed)))


def _diff_table(sweep: Sweep) -> tuple[pd.DataFrame, int]:
    table, shared = config_diff(sweep)
    return table.rename(columns={c: short_key(c) for c in table.columns}), shared


def sections(sweep: Sweep, tables: dict[str, pd.DataFrame], figures: dict[str, Figure], level: int = 2,
             root: Path | None = None, what: tuple[str, ...] = ("setup", "methods", "findings", "results",
                                                                 "figures", "speed", "configs", "failed")) -> list[str]:
    """The report's sections for one sweep, headings at ``level``; image paths relative to ``root``."""
    root = root or sweep.directory
    h = "#" * level
    parts: list[str] = []
    if "setup" in what:
        parts += [f"{h} Setup", "", *setup_lines(sweep), ""]
    if "methods" in what:
        parts += [f"{h} Methods", "", *(p + "\n" for p in method_paragraphs(list(sweep.records.values())))]
    if "findings" in what:
        sentences = findings(sweep.results)
        checks = qualitative_checks(sweep)
        parts += [f"{h} Findings", "", *(f"- {s}" for s in sentences or ["(too few completed jobs to compare)"]), ""]
        if checks:
            parts += ["Orderings the published tables show, checked on these numbers (✓ holds, ✗ does not):", "",
                      *(f"- {line}" for line in checks), ""]
    if "results" in what:
        parts += [f"{h} Results", ""]
        for name, table in tables.items():
            heading = "All headline metrics per setting" if name == "summary" else name
            parts += [f"{h}# {heading}", "", markdown_table(table, name), ""]
        reference = reference_table(sweep)
        if not reference.empty:
            parts += [f"{h}# Published numbers beside ours", "", markdown_table(reference), ""]
    if "figures" in what and figures:
        parts += [f"{h} Figures", ""]
        for name, figure in figures.items():
            path = Path(figure.path)
            shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
            parts += [f"![{name}]({shown})", "", f"*{figure.caption}*", ""]
    if "speed" in what:
        speed, timing = speed_table(sweep), timing_table(sweep)
        if not speed.empty or not timing.empty:
            parts += [f"{h} Speed and memory", ""]
        if not speed.empty:
            parts += ["Accuracy beside speed: each measured speedup (dense and pruned timed in one process), its "
                      "ideal ratio from FLOPs and bytes and the efficiency measured / ideal, and roofline bounds.", "",
                      markdown_table(speed, "speed"), ""]
        if not timing.empty:
            parts += ["Seconds per stage, peak resident memory (MB) and every `bench/*` measurement of the jobs "
                      "(mean over repeated settings).", "", markdown_table(timing, "timing"), ""]
    if "configs" in what:
        diff, shared = _diff_table(sweep)
        if not diff.empty:
            first = next(iter(sweep.records), "0")
            parts += [f"{h} Configs: what varies between jobs", "",
                      f"{shared} config keys are identical in every job; the keys below differ (blank: the job's "
                      f"method has no such knob). Each job's full resolved config is in `<job>/.hydra/config.yaml` "
                      f"and `<job>/metrics.json` (e.g. `{first}/`).", "", markdown_table(diff), ""]
    if "failed" in what:
        failed = _failed_jobs(sweep)
        if not failed.empty:
            parts += [f"{h} Jobs that did not complete", "", markdown_table(failed), ""]
    return parts


def markdown(sweep: Sweep, tables: dict[str, pd.DataFrame], figures: dict[str, Figure]) -> str:
    parts = [f"# {title(sweep)}", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by `prunelab.study.aggregate` "
             f"from the {len(sweep.own_results)} jobs in `{sweep.directory.name}/` (re-run: "
             f"`python -m prunelab.study.aggregate {sweep.directory}`).", "", *sections(sweep, tables, figures)]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ PDF
PDF_CSS = """
body { font-family: sans-serif; font-size: 9pt; }
h1 { font-size: 16pt; } h2 { font-size: 13pt; } h3 { font-size: 11pt; }
table { border-collapse: collapse; margin-bottom: 6pt; }
th, td { border: 0.5pt solid #999999; padding: 1pt 3pt; font-size: 7pt; }
img { width: 85%; }
pre, code { font-size: 7pt; }
"""


def write_pdf(text: str, root: Path, path: Path, title: str = "") -> Path:
    """Typeset Markdown as a PDF; relative image paths resolve against ``root``."""
    pdf = MarkdownPdf(toc_level=2)
    pdf.meta = {**pdf.meta, "title": title}  # the class holds the defaults; leave them alone
    pdf.add_section(Section(text, root=str(root)), user_css=PDF_CSS)
    pdf.save(path)
    return path


def write_report(sweep: Sweep, tables: dict[str, pd.DataFrame], figures: dict[str, Figure]) -> tuple[Path, Path]:
    """``report.md`` and ``report.pdf`` in the sweep directory."""
    text = markdown(sweep, tables, figures)
    md_path = sweep.directory / "report.md"
    md_path.write_text(text)
    pdf_path = write_pdf(text, sweep.directory, sweep.directory / "report.pdf", title=title(sweep))
    return md_path, pdf_path
