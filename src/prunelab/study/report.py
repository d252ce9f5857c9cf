"""A sweep's report: ``report.md`` and ``report.pdf`` with setup, tables, checks, figures and every config.

Published WikiText-2 perplexities (``/work/shared/REFERENCE.md``: Wanda README and paper, OWL and
RIA READMEs) are shown beside ours where model, method, sparsity/pattern and evaluation set match;
the qualitative orderings those tables show are checked on whatever the sweep contains. The PDF
is the Markdown typeset by ``markdown-pdf`` (PyMuPDF), figures and all.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from markdown_pdf import MarkdownPdf, Section

from prunelab.study.records import GENERIC, KNOB_FIGURE, Sweep, knob_columns, knob_label, with_setting


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
        data = frame.dropna(subset=[metric]).assign(**{c: frame[c].astype(str) for c in context})
        varying = [c for c in context if data[c].nunique() > 1]
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


# ---------------------------------------------------------------------------- setup and captions
def _setup(sweep: Sweep) -> list[str]:
    frame = sweep.results
    counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    varying = sweep.varying_knobs()
    done = sweep.completed
    constant = {name: done[name].dropna().astype(str).unique() for name in knob_columns(done) if name not in varying}
    first = next(iter(sweep.records.values()), {})
    config = first.get("config") or {}
    evaluation = config.get("eval") or {}
    lines = [
        f"- Sweep directory: `{sweep.directory}`",
        f"- Jobs: {len(frame)} ({', '.join(f'{v} {k}' for k, v in counts.items())})",
        f"- Varying: {', '.join(f'{k} ∈ {{{_values(frame, k)}}}' for k in varying) or 'nothing'}",
        f"- Fixed: {', '.join(f'{k}={v[0]}' for k, v in constant.items() if len(v) == 1)}",
        f"- Evaluation: perplexity on {', '.join(evaluation.get('ppl_datasets') or [])}, windows of "
        f"{evaluation.get('seqlen')} tokens, at most {evaluation.get('max_windows') or 'all'} windows per set",
    ]
    if "time/total_s" in frame:
        lines.append(f"- Compute: {frame['time/total_s'].sum():.0f} s summed over jobs "
                     f"(median {frame['time/total_s'].median():.0f} s per job)")
    if first:
        versions = first.get("versions") or {}
        lines.append(f"- Code: `{first.get('git_commit', 'unknown')}`; "
                     + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines


def _values(frame: pd.DataFrame, column: str) -> str:
    return ", ".join(dict.fromkeys(frame[column].dropna().astype(str)))


CAPTIONS = {
    "ppl_vs_sparsity": "Perplexity (log scale) against sparsity, one line per method.",
    "zeroshot_vs_sparsity": "Zero-shot mean accuracy against sparsity.",
    "patterns": "Perplexity per method: unstructured vs N:M at the same sparsity.",
    "owl_block_sparsity": "OWL: sparsity assigned to each decoder block.",
    "module_sensitivity": "Perplexity when only attention, only the MLP, or every linear layer is pruned.",
    "calibration": "Perplexity of each domain by the calibration set used for pruning.",
    "pareto": "Accuracy against speedup (prefill): measured dense vs pruned in one process where a job measured it, "
              "the roofline prediction (engine.roofline_gpu) for 2:4; the dashed line is the Pareto front.",
}


def caption(name: str) -> str:
    if name.startswith(KNOB_FIGURE):
        knob = name.removeprefix(KNOB_FIGURE)
        return f"Perplexity against {knob_label(knob)} (`{knob}`), over the jobs whose method has this knob."
    return CAPTIONS.get(name, name)


# ------------------------------------------------------------------------------------- tables
def markdown_table(table: pd.DataFrame, metric: str = "") -> str:
    """A table as Markdown through ``DataFrame.to_markdown``: index levels as named columns, pivot
    columns as ``<knob>=<value>``, 4 decimals for accuracies, 2 for other numbers, none for large ones."""
    shown = table.reset_index() if any(name is not None for name in table.index.names) else table
    across = table.columns.name
    labels = [f"{across}={c}" if across and c in table.columns else str(c) for c in shown.columns]
    cells = pd.DataFrame({label: [_number(v, 4 if "acc" in metric + label else 2) for v in shown[column]]
                          for label, column in zip(labels, shown.columns)})
    numeric = [pd.api.types.is_numeric_dtype(shown[c]) and not pd.api.types.is_bool_dtype(shown[c])
               for c in shown.columns]
    return cells.to_markdown(index=False, disable_numparse=True,
                             colalign=["right" if n else "left" for n in numeric])


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
def markdown(sweep: Sweep, tables: dict[str, pd.DataFrame], figures: dict[str, Path]) -> str:
    parts = [f"# Study report: {sweep.directory.name}", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} from `{sweep.directory}` "
             "by `prunelab.study.aggregate` (the multirun callback, or `python -m prunelab.study.aggregate <dir>`).",
             "", "## Setup", "", *_setup(sweep), "", "## Results", ""]
    for metric, table in tables.items():
        parts += [f"### {metric}", "", markdown_table(table, metric), ""]
    parts += ["## Published numbers", ""]
    reference = reference_table(sweep)
    if reference.empty:
        models = ", ".join(sorted({p.model for p in PUBLISHED}))
        parts += [f"No published number matches this sweep's setting: they are WikiText-2 (`{REFERENCE_METRIC}`) "
                  f"perplexities of {models}. The orderings they show are checked below.", ""]
    else:
        parts += [markdown_table(reference), ""]
    checks = qualitative_checks(sweep)
    parts += ["### Orderings of the published tables, on our numbers", "",
              *(f"- {line}" for line in checks or ["(no setting of this sweep allows a check)"]), ""]
    if figures:
        parts += ["## Figures", ""]
        for name, path in figures.items():
            parts += [f"![{name}]({path.relative_to(sweep.directory).as_posix()})", "", f"*{caption(name)}*", ""]
    failed = _failed_jobs(sweep)
    if not failed.empty:
        parts += ["## Jobs that did not complete", "", markdown_table(failed), ""]
    parts += ["## Runs and their configs", ""]
    for job, record in sweep.records.items():
        parts += [f"<details><summary>job {job}: {record.get('status')} — <code>{' '.join(record.get('overrides') or [])}</code>"
                  "</summary>", "", "```yaml", yaml.safe_dump(record.get("config") or {}, sort_keys=False).rstrip(),
                  "```", "</details>", ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ PDF
PDF_CSS = """
body { font-family: sans-serif; font-size: 9pt; }
h1 { font-size: 16pt; } h2 { font-size: 13pt; } h3 { font-size: 11pt; }
table { border-collapse: collapse; margin-bottom: 6pt; }
th, td { border: 0.5pt solid #999999; padding: 1pt 4pt; font-size: 8pt; }
img { width: 100%; }
pre, code { font-size: 7pt; }
"""


def write_pdf(text: str, root: Path, path: Path, title: str = "") -> Path:
    """Typeset Markdown as a PDF; relative image paths resolve against ``root``."""
    pdf = MarkdownPdf(toc_level=2)
    pdf.meta = {**pdf.meta, "title": title}  # the class holds the defaults; leave them alone
    pdf.add_section(Section(text, root=str(root)), user_css=PDF_CSS)
    pdf.save(path)
    return path


def write_report(sweep: Sweep, tables: dict[str, pd.DataFrame], figures: dict[str, Path]) -> tuple[Path, Path]:
    """``report.md`` and ``report.pdf`` in the sweep directory."""
    text = markdown(sweep, tables, figures)
    md_path = sweep.directory / "report.md"
    md_path.write_text(text)
    pdf_path = write_pdf(text, sweep.directory, sweep.directory / "report.pdf",
                         title=f"Study report: {sweep.directory.name}")
    return md_path, pdf_path
