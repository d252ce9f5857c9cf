"""A sweep's report: ``report.md`` and ``report.pdf`` with setup, tables, checks, figures and every config.

Published WikiText-2 perplexities (``/work/shared/REFERENCE.md``: Wanda README and paper, OWL and
RIA READMEs) are shown beside ours where model, method, sparsity/pattern and evaluation set match;
the qualitative orderings those tables show are checked on whatever the sweep contains.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from prunelab.study.aggregate import KNOBS, Sweep, format_markdown, with_setting


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


def _settings(frame: pd.DataFrame) -> pd.DataFrame:
    return with_setting(frame)


def reference_table(sweep: Sweep) -> pd.DataFrame:
    """Our WikiText-2 perplexity beside the published one, for every matching setting."""
    if REFERENCE_METRIC not in sweep.results or sweep.completed.empty:
        return pd.DataFrame()
    frame = _settings(sweep.completed.dropna(subset=[REFERENCE_METRIC]))
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
    return [name for name, _ in KNOBS if name in frame.columns and name not in exclude]


def qualitative_checks(sweep: Sweep) -> list[str]:
    """The orderings every published table shows, checked on this sweep's numbers (✓ holds, ✗ not)."""
    frame = _settings(sweep.completed)
    if frame.empty:
        return []
    lines: list[str] = []
    context = _context_columns(frame, ("method", "sparsity", "pattern", "ria_alpha", "owl_lambda"))
    for metric in _ppl_columns(sweep):
        data = frame.dropna(subset=[metric]).assign(**{c: frame[c].astype(str) for c in context})
        varying = [c for c in context if data[c].nunique() > 1]
        for key, group in data.groupby(varying, sort=False) if varying else [((), data)]:
            by = group.groupby(["method", "setting"])[metric].mean()
            where = ", ".join([metric, *(f"{c}={v}" for c, v in zip(varying, key))])
            for better in ("wanda", "ria", "sparsegpt"):
                if ("magnitude", "unstructured 50%") in by and (better, "unstructured 50%") in by:
                    ours, mag = by[(better, "unstructured 50%")], by[("magnitude", "unstructured 50%")]
                    lines.append(f"{'✓' if ours < mag else '✗'} {better} below magnitude at 50%: {ours:.2f} vs {mag:.2f} ({where})")
            for method in by.index.get_level_values(0).unique():
                chain = [s for s in ("unstructured 50%", "4:8", "2:4") if (method, s) in by]
                if len(chain) >= 2:
                    values = [by[(method, s)] for s in chain]
                    holds = all(a < b for a, b in zip(values, values[1:]))
                    shown = " < ".join(f"{s} {v:.2f}" for s, v in zip(chain, values))
                    lines.append(f"{'✓' if holds else '✗'} {method}: {shown} ({where})")
            if ("wanda", "unstructured 70%") in by and ("owl_wanda", "unstructured 70%") in by:
                owl, uniform = by[("owl_wanda", "unstructured 70%")], by[("wanda", "unstructured 70%")]
                lines.append(f"{'✓' if owl < uniform else '✗'} OWL-Wanda below uniform Wanda at 70%: {owl:.2f} vs {uniform:.2f} ({where})")
            unstructured = group[group["pattern"] == "unstructured"]
            for method, curve in unstructured.groupby("method"):
                curve = curve.groupby(curve["sparsity"].astype(float))[metric].mean().sort_index()
                if len(curve) >= 3:
                    holds = bool((curve.diff().dropna() > 0).all())
                    shown = ", ".join(f"{s:g}: {v:.4g}" for s, v in curve.items())
                    lines.append(f"{'✓' if holds else '✗'} {method}: perplexity rises with sparsity ({shown}) ({where})")
    return lines


# ------------------------------------------------------------------------------------- markdown
def _setup(sweep: Sweep) -> list[str]:
    frame = sweep.results
    counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    varying = sweep.varying_knobs()
    constant = {name: frame[name].dropna().astype(str).unique() for name, _ in KNOBS if name in frame and name not in varying}
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
    "ria_alpha": "RIA: perplexity against the exponent alpha on the activation norm.",
    "owl_lambda": "OWL: perplexity against lambda (0 = uniform sparsity).",
    "owl_block_sparsity": "OWL: sparsity assigned to each decoder block.",
    "module_sensitivity": "Perplexity when only attention, only the MLP, or every linear layer is pruned.",
    "calibration": "Perplexity of each domain by the calibration set used for pruning.",
}


def markdown(sweep: Sweep, tables: dict[str, pd.DataFrame], figures: dict[str, Path]) -> str:
    parts = [f"# Study report: {sweep.directory.name}", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} from `{sweep.directory}` "
             "by `prunelab.study.aggregate` (the multirun callback, or `python -m prunelab.study.aggregate <dir>`).", "", "## Setup", "", *_setup(sweep), "", "## Results", ""]
    for metric, table in tables.items():
        parts += [f"### {metric}", "", format_markdown(table, metric), ""]
    parts += ["## Published numbers", ""]
    reference = reference_table(sweep)
    if reference.empty:
        models = ", ".join(sorted({p.model for p in PUBLISHED}))
        parts += [f"No published number matches this sweep's setting: they are WikiText-2 (`{REFERENCE_METRIC}`) "
                  f"perplexities of {models}. The orderings they show are checked below.", ""]
    else:
        parts += [reference.to_markdown(index=False, floatfmt=".2f"), ""]
    checks = qualitative_checks(sweep)
    parts += ["### Orderings of the published tables, on our numbers", "",
              *(f"- {line}" for line in checks or ["(no setting of this sweep allows a check)"]), ""]
    if figures:
        parts += ["## Figures", ""]
        for name, path in figures.items():
            parts += [f"![{name}]({path.relative_to(sweep.directory)})", "", f"*{CAPTIONS.get(name, name)}*", ""]
    failed = sweep.results[~sweep.results["status"].isin(["completed", "skipped"])] if not sweep.results.empty else sweep.results
    if not failed.empty:
        parts += ["## Jobs that did not complete", "", "| job | status | overrides | error |", "|---|---|---|---|"]
        parts += [f"| {r.job} | {r.status} | `{r.overrides}` | {str(r.error).replace('|', '/')[:300]} |"
                  for r in failed.itertuples()]
        parts.append("")
    parts += ["## Runs and their configs", ""]
    for job, record in sweep.records.items():
        parts += [f"<details><summary>job {job}: {record.get('status')} — <code>{' '.join(record.get('overrides') or [])}</code>"
                  "</summary>", "", "```yaml", yaml.safe_dump(record.get("config") or {}, sort_keys=False).rstrip(),
                  "```", "</details>", ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ PDF
def format_text(table: pd.DataFrame, metric: str) -> str:
    """A pivot table as aligned monospace text (4 digits for accuracies, 2 otherwise)."""
    digits = 4 if "acc" in metric else 2
    return table.to_string(float_format=lambda v: f"{v:.{digits}f}", na_rep="", sparsify=False)


PAGE = (8.27, 11.69)  # A4 portrait, inches
LINES_PER_PAGE = 70


def _text_pages(pdf, title: str, lines: list[str], size: float = 7.0) -> None:
    import matplotlib.pyplot as plt

    wrapped = [piece for line in lines
               for piece in (textwrap.wrap(line, 120, subsequent_indent="    ", replace_whitespace=False,
                                           drop_whitespace=False) or [""])]
    for start in range(0, max(len(wrapped), 1), LINES_PER_PAGE):
        figure = plt.figure(figsize=PAGE)
        figure.text(0.06, 0.97, title if start == 0 else f"{title} (cont.)", fontsize=12, weight="bold", va="top")
        figure.text(0.06, 0.94, "\n".join(wrapped[start:start + LINES_PER_PAGE]), fontsize=size,
                    family="monospace", va="top")
        pdf.savefig(figure)
        plt.close(figure)


def write_pdf(sweep: Sweep, tables: dict[str, pd.DataFrame], figures: dict[str, Path], path: Path) -> Path:
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path) as pdf:
        setup = [line.replace("`", "") for line in _setup(sweep)]
        table_lines = []
        for metric, table in tables.items():
            table_lines += [metric, *format_text(table, metric).splitlines(), ""]
        reference = reference_table(sweep)
        checks = ["Published numbers:", *(reference.to_string(index=False).splitlines() if not reference.empty
                                          else ["(no published number matches this sweep's setting)"]),
                  "", "Orderings of the published tables, on our numbers:", *qualitative_checks(sweep)]
        _text_pages(pdf, f"Study report: {sweep.directory.name}", setup + [""] + table_lines + checks)
        for name, image in figures.items():
            figure = plt.figure(figsize=PAGE)
            axis = figure.add_axes((0.04, 0.1, 0.92, 0.8))
            axis.imshow(mpimg.imread(image))
            axis.axis("off")
            figure.text(0.06, 0.95, CAPTIONS.get(name, name), fontsize=11)
            pdf.savefig(figure)
            plt.close(figure)
        failed = sweep.results[~sweep.results["status"].isin(["completed", "skipped"])] if not sweep.results.empty else sweep.results
        if not failed.empty:
            _text_pages(pdf, "Jobs that did not complete",
                        [f"job {r.job} [{r.status}] {r.overrides}\n    {r.error}" for r in failed.itertuples()])
        config_lines = []
        for job, record in sweep.records.items():
            config_lines += [f"job {job}: {record.get('status')}  {' '.join(record.get('overrides') or [])}",
                             *yaml.safe_dump(record.get("config") or {}, sort_keys=False).splitlines(), ""]
        _text_pages(pdf, "Runs and their configs", config_lines, size=6.0)
    return path


def write_report(sweep: Sweep, tables: dict[str, pd.DataFrame], figures: dict[str, Path]) -> tuple[Path, Path]:
    """``report.md`` and ``report.pdf`` in the sweep directory."""
    md_path = sweep.directory / "report.md"
    md_path.write_text(markdown(sweep, tables, figures))
    pdf_path = write_pdf(sweep, tables, figures, sweep.directory / "report.pdf")
    return md_path, pdf_path
