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
import io
import logging
import math
import numbers
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from markdown_pdf import MarkdownPdf, Section

from prunelab.study import compression
from prunelab.study.describe import config_diff, method_paragraphs, setup_lines, short_key, title
from prunelab.study.figures import Figure
from prunelab.study.findings import TASK_NAMES, findings
from prunelab.study.orderings import verdicts
from prunelab.study.records import (
    MISSING,
    STDERR,
    Sweep,
    knob_label,
    speed_metrics,
    speed_table,
    summary_table,
    with_setting,
)

log = logging.getLogger(__name__)


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
TABLE_NOTES = {  # a paragraph above a results table that needs its columns explained
    "recovery": ["Perplexity per evaluated set: pruned (before training), merged with its zeros filled "
                 "(`W + BA`; unstructured and N:M only), recovered (the final model: re-masked `(W + BA) * M`, or "
                 "merged exactly for a structured or dense model). Re-mask cost: log recovered - log merged. "
                 "Gap closed: (log pruned - log recovered) / (log pruned - log reference), against the dense "
                 "model and against the dense model after the same fine-tune (dense+LoRA, the control: "
                 "what the fine-tune gains without pruning). 1 = back to the reference.", ""],
    "recovery_jobs": ["Training CPU minutes (idle cores): the training's process CPU time divided by its threads, "
                      "what it takes on idle cores of this machine. Zero-shot: mean accuracy over the tasks "
                      "(examples per task), before training and after (the final model); SE of the mean after.", ""],
}
LARGE = 1e4  # from here on a number is shown without decimals, with thousands separators


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


# ---------------------------------------------------------------------------- the papers' orderings
def _ppl_columns(sweep: Sweep) -> list[str]:
    return [c for c in sweep.results.columns if c.startswith("eval/ppl_") and not c.endswith("_tokens")]


def qualitative_checks(sweep: Sweep) -> list[str]:
    """The orderings the papers report (:mod:`.orderings`), each checked on this sweep's numbers
    with the paired noise of the difference: reproduced, not reproduced, or inconclusive."""
    return [v.text() for v in verdicts(sweep.completed, _ppl_columns(sweep))]


# ------------------------------------------------------------------------------------- tables
def is_accuracy(name: str) -> bool:
    """An accuracy column (shown in percent): lm-eval's ``acc``, ``mean_acc``, ``exact_match``."""
    return name.startswith("zeroshot/") and ("acc" in name.rsplit("/", 1)[-1] or "exact_match" in name)


SPEED_WORDS = {"prefill": "Prefill", "decode": "Decode", "speedup": "speedup", "ideal": "ideal ratio",
               "efficiency": "efficiency", "roofline": "Roofline"}


def header(column) -> str:
    """A column as a reader names it: ``eval/ppl_wiki`` -> "Perplexity (wiki)", ``time/prune_s`` ->
    "Prune time (s)", ``memory/peak_rss_mb`` -> "Peak RSS (MiB)", ``method.lambda_`` -> "lambda"."""
    name = str(column)
    if name.startswith("eval/ppl_"):
        return f"Perplexity ({name.removeprefix('eval/ppl_')})"
    if name.startswith("zeroshot/"):
        parts = name.split("/")
        if name.endswith("mean_acc"):
            return "Zero-shot mean accuracy (%)"
        task = TASK_NAMES.get(parts[1], parts[1])
        return f"{task} {parts[-1].replace('_', ' ')} (%)" if is_accuracy(name) else f"{task} {parts[-1].replace('_', ' ')}"
    if name.startswith("time/"):
        stage = name.removeprefix("time/").removesuffix("_s").replace("_", " ")
        return f"{stage.capitalize()} time (s)"
    if name.startswith("memory/"):
        what = name.removeprefix("memory/").removesuffix("_mb").replace("peak_rss", "peak RSS").replace("peak_cuda", "peak CUDA")
        what = what.replace("start_rss", "RSS at start")
        return f"{what[0].upper()}{what[1:]} (MiB)".replace("_", " ")
    if name.startswith("bench/"):
        words = name.removeprefix("bench/").split("_")
        text = " ".join(SPEED_WORDS.get(w, w) for w in words)
        if words[-1].isdigit():
            text = f"{' '.join(SPEED_WORDS.get(w, w) for w in words[:-1])} ({int(words[-1]):,} tokens)"
        return text[0].upper() + text[1:]
    if name.startswith("machine/"):
        return {"machine/load_1m_start": "Load at start", "machine/load_1m_end": "Load at end",
                "machine/cpus": "CPUs", "machine/cpu_model": "CPU"}.get(name, name.removeprefix("machine/"))
    if name.startswith("recover/"):
        return name.removeprefix("recover/").replace("_", " ")
    if name == "calib_nsamples":
        return "calibration windows"
    if name == "calib_seqlen":
        return "calibration tokens per window"
    if name == "calib_data":
        return "calibration set"
    if name == "sparsity":
        return "target sparsity"
    return knob_label(name).replace("_", " ")  # words can wrap in a narrow column


def number(value, accuracy: bool = False) -> str:
    """The report's one number format: an accuracy in percent with one decimal; any other number
    with two decimals, or none (with thousands separators) from 10,000 on; an integer as it is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "" if value is None else str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}" if abs(value) >= LARGE else str(value)
    if math.isnan(value):
        return ""
    if accuracy:
        return f"{100 * value:.1f}"
    return f"{value:,.0f}" if abs(value) >= LARGE else f"{value:.2f}"


def markdown_table(table: pd.DataFrame, metric: str = "") -> str:
    """A table as Markdown through ``DataFrame.to_markdown``: index levels as named columns, pivot
    columns as ``<knob>=<value>``, headers in words (:func:`header`), numbers in :func:`number`'s format."""
    table = _with_stderr(table)
    shown = table.reset_index() if any(name is not None for name in table.index.names) else table
    across = header(table.columns.name) if isinstance(table.columns.name, str) else table.columns.name
    headers = [(f"no {across}" if c == MISSING else f"{across} {c}") if across and c in table.columns else header(c)
               for c in shown.columns]
    pivot_accuracy = is_accuracy(metric)
    cells = pd.DataFrame({title: [number(v, is_accuracy(str(column)) or (pivot_accuracy and column in table.columns))
                                  for v in shown[column]]
                          for title, column in zip(headers, shown.columns)})
    numeric = [pd.api.types.is_numeric_dtype(shown[c]) and not pd.api.types.is_bool_dtype(shown[c])
               for c in shown.columns]
    align = dict(zip(cells.columns, ["right" if n else "left" for n in numeric]))
    if len(cells.columns) <= WIDEST_TABLE:
        return cells.to_markdown(index=False, disable_numparse=True, colalign=list(align.values()))
    # wider than a page: several tables, each led by the columns that name a row (the text ones before the first number)
    keep = list(cells.columns[:min(next((i for i, n in enumerate(numeric) if n), 0), 4)])
    rest = len(cells.columns) - len(keep)
    width = math.ceil(rest / math.ceil(rest / (WIDEST_TABLE - len(keep))))  # parts of equal width, no stub of one column
    return "\n\n".join(chunk.to_markdown(index=False, disable_numparse=True, colalign=[align[c] for c in chunk.columns])
                        for chunk in column_chunks(cells, keep, width))


WIDEST_TABLE = 13  # columns a table may have on an A4 page (headers wrap); a wider one is cut into several


def _with_stderr(table: pd.DataFrame) -> pd.DataFrame:
    """``acc`` and ``acc_stderr`` columns as one ``acc ± se`` column (text, in percent)."""
    pairs = [c for c in table.columns if isinstance(c, str) and f"{c}{STDERR}" in table.columns]
    if not pairs:
        return table
    merged = table.copy()
    for column in pairs:
        se = merged.pop(f"{column}{STDERR}")
        accuracy = is_accuracy(column)
        merged[column] = [number(v, accuracy) + (f" ± {number(s, accuracy)}" if isinstance(s, numbers.Real) and not math.isnan(s)
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
    """Stage times, peak memory and any ``bench/*`` measurement, per setting of the varying knobs
    (and per weight format in a compression study)."""
    if compression.is_compression(sweep.completed):
        return compression.by_format(sweep, speed_metrics(with_setting(sweep.completed)))
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
    if "findings" in what and compression.is_compression(sweep.completed):  # findings of one format each: its own
        parts += [f"{h} Findings", "", *(f"- {s}" for s in compression.lines(sweep)), ""]
    elif "findings" in what:
        sentences = findings(sweep.results, sizes=False)
        checks = qualitative_checks(sweep)
        parts += [f"{h} Findings", "", *(f"- {s}" for s in sentences or ["(too few completed jobs to compare)"]), ""]
        if checks:
            parts += ["The papers' orderings on these numbers (paired over the same windows; beyond noise: above 2 SE, "
                      "or Student's 95% value with few windows):", "",
                      *(f"- {line}" for line in checks), ""]
    if "results" in what:
        parts += [f"{h} Results", ""]
        for name, table in tables.items():
            heading = {"summary": "All headline metrics per setting", "recovery": "Recovery",
                       "recovery_jobs": "Recovery: training budget and zero-shot before/after",
                       **compression.TABLE_NAMES}.get(name, f"{header(name)} by setting")
            note = [compression.TABLE_NOTES[name], ""] if name in compression.TABLE_NOTES else TABLE_NOTES.get(name, [])
            parts += [f"{h}# {heading}", "", *note, markdown_table(table, name), ""]
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
        speed = pd.DataFrame() if compression.is_compression(sweep.completed) else speed_table(sweep)  # its own table
        timing = timing_table(sweep)
        if not speed.empty or not timing.empty:
            parts += [f"{h} Speed and memory", ""]
        if not speed.empty:
            parts += ["Accuracy beside speed: each measured speedup (dense and pruned timed in one process), its "
                      "ideal ratio from FLOPs and bytes and the efficiency measured / ideal, and roofline bounds.", "",
                      markdown_table(speed, "speed"), ""]
        if not timing.empty:
            parts += [f"Seconds per stage, peak resident memory (MiB) and every `bench/*` measurement of the jobs "
                      f"(mean over repeated settings), {load_sentence(sweep.completed)}", "", markdown_table(timing, "timing"), ""]
    if "configs" in what:
        diff, shared = _diff_table(sweep)
        if not diff.empty:
            first = next(iter(sweep.records), "0")
            parts += [f"{h} Configs: what varies between jobs", "",
                      f"{shared} config keys are identical in every job; the keys below differ (blank: the job's "
                      f"method has no such knob). Each job's full resolved config is in `<job>/.hydra/config.yaml` "
                      f"and `<job>/metrics.json` (e.g. `{first}/`).", ""]
            for chunk in column_chunks(diff, ["job", "status"], WIDEST):  # a page is only so wide
                parts += [markdown_table(chunk), ""]
    if "failed" in what:
        failed = _failed_jobs(sweep)
        if not failed.empty:
            parts += [f"{h} Jobs that did not complete", "", markdown_table(failed), ""]
    return parts


WIDEST = 7  # columns of a table beside the ones repeated in each part


def column_chunks(table: pd.DataFrame, keep: list[str], width: int) -> list[pd.DataFrame]:
    """A wide table as several of at most ``width`` columns, each with the ``keep`` columns first."""
    keep = [c for c in keep if c in table.columns]
    rest = [c for c in table.columns if c not in keep]
    return [table[keep + rest[i:i + width]] for i in range(0, len(rest), width)] or [table]


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


def write_pdf(text: str, root: Path, path: Path, title: str = "", page_per_section: bool = False,
              breaks: re.Pattern | None = None) -> Path:
    """Typeset Markdown as a PDF; relative image paths resolve against ``root``. With
    ``page_per_section`` every heading that ``breaks`` matches (default :data:`PAGE_BREAK`) starts a
    page (a PDF section of its own). ``markdown-pdf`` cannot keep a heading with what follows it, so
    the PDF is then read back: a page that ends with a heading, or with a caption or line that
    introduces a table, figure or list (:func:`keeps_with_next`), or with the head of one, is cut
    before it, and a figure whose caption (or the tail of it) begins the next page is cut before
    its image, so the image moves with its caption; the document is typeset again
    (:func:`stranded`) until no page ends so (at most :data:`PASSES` times)."""
    parts = split_sections(text, breaks or PAGE_BREAK) if page_per_section else [text]
    for attempt in range(PASSES):
        counts = _typeset(parts, root, path, title)
        missing = lost(path, parts, counts)
        cuts = missing or stranded(path, parts, counts)
        if not cuts or attempt == PASSES - 1:  # the last pass's PDF is the one written: no cut after it
            break
        parts = [piece for index, part in enumerate(parts) for piece in _cut(part, cuts.get(index, []))]
    if missing:
        log.error("%s: the PDF lacks part of the report from %s on (report.md has it all)", path,
                  "; ".join(parts[i].splitlines()[lines[0]][:60] for i, lines in missing.items()))
    return path


def lost(path: Path, parts: list[str], counts: list[int]) -> dict[int, list[int]]:
    """Per part with a line missing from its pages of the PDF, the line at which to cut it: the
    first line not typeset, taken back to the start of its table and the keep-with-next lines above.
    ``markdown-pdf`` (MuPDF's Story) can drop the rest of a section where a table crosses a page: the
    quick study-all's report lost Figure 3 and half a table so, and rows of its config appendix."""
    import pymupdf

    cuts: dict[int, list[int]] = {}
    with pymupdf.open(path) as document:
        first = 0
        for index, (part, count) in enumerate(zip(parts, counts)):
            typeset = _plain("".join(document[n].get_text() for n in range(first, min(first + count, document.page_count))))
            first += count
            lines = part.splitlines()
            line = _first_missing(lines, typeset)
            if line is None:
                continue
            while line > 0 and lines[line].lstrip().startswith("|") and lines[line - 1].lstrip().startswith("|"):
                line -= 1  # a table moves whole
            keep = keeps_with_next(lines)
            while True:
                above = max((i for i in range(line) if lines[i].strip()), default=None)
                if above is None or above not in keep or above == 0:
                    break
                line = above
            if line > 0 and any(lines[i].strip() for i in range(line)):
                cuts[index] = [line]
    return cuts


def _first_missing(lines: list[str], typeset: str) -> int | None:
    """The first line (not an image) whose text is nowhere in ``typeset``; ``None`` when every line is there."""
    return next((i for i, line in enumerate(lines) if not line.lstrip().startswith("![")
                 and len(text := _plain(line)) >= 3 and text not in typeset), None)


PASSES = 8


def _typeset(parts: list[str], root: Path, path: Path, title: str) -> list[int]:
    """The PDF of ``parts``, each starting a page; the number of pages of each. Each part is typeset
    as a document of its own and the documents joined: ``markdown-pdf`` (MuPDF's Story) dropped the
    rest of a section after a document's first where a table crossed a page (the quick study-all's
    report lost Figure 3 and half a table so); what it still drops, :func:`lost` finds."""
    import pymupdf

    joined, toc, counts = pymupdf.open(), [], []
    for part in parts:
        pdf = MarkdownPdf(toc_level=2)
        section = Section(part, root=str(root))
        pdf.add_section(section, user_css=PDF_CSS)
        toc += [[level, text, joined.page_count + page] for level, text, page, _ in pdf.toc]
        pdf.toc_level = 0  # its own outline would have to begin at level 1; the joined one is set below
        buffer = io.BytesIO()
        pdf.save_bytes(buffer)
        with pymupdf.open(stream=buffer.getvalue(), filetype="pdf") as document:
            joined.insert_pdf(document)
        counts.append(section.page_count)
    joined.set_metadata({**MarkdownPdf.meta, "title": title})
    if toc and toc[0][0] == 1:
        joined.set_toc(toc)
    joined.save(path, garbage=3, deflate=True)
    joined.close()
    return counts


def _plain(text: str) -> str:
    """Letters and digits only, lower case, ligatures (``ﬁ``) undone: a Markdown line and its
    typeset text compare equal."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link or image: its text
    return "".join(c for c in text.lower() if c.isalnum())


def keeps_with_next(lines: list[str]) -> list[int]:
    """Indices of the lines that must not end a page: headings, and a paragraph followed by a table,
    an image or a list (a table's caption, "**Findings.**", "Failed jobs of ...:"); not a figure's
    caption, which follows its image."""
    found = []
    filled = [i for i, line in enumerate(lines) if line.strip()]
    for position, i in enumerate(filled):
        line = lines[i].lstrip()
        following = lines[filled[position + 1]].lstrip() if position + 1 < len(filled) else ""
        previous = lines[filled[position - 1]].lstrip() if position else ""
        if line.startswith("#"):
            found.append(i)
        elif not line.startswith(("|", "- ", "![")) and not previous.startswith("![") \
                and following.startswith(("|", "- ", "![")):
            found.append(i)
    return found


def figure_captions(lines: list[str]) -> dict[int, int]:
    """Each figure caption's line and its image's: the paragraph right below an image."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return {i: image for image, i in zip(filled, filled[1:])
            if lines[image].lstrip().startswith("![") and not lines[i].lstrip().startswith(("![", "#", "|", "- "))}


SHORTEST_HEAD = 20  # letters: a page's last block shorter than this is matched whole, not as the head of a line


def _kept_line(lines: list[str], keep: list[int], last: str) -> int | None:
    """The keep-with-next line a page's last block is, or the head of (it wrapped onto the next page)."""
    if not last:
        return None
    exact = next((i for i in keep if i > 0 and _plain(lines[i]) == last), None)
    if exact is not None or len(last) < SHORTEST_HEAD:
        return exact
    return next((i for i in keep if i > 0 and _plain(lines[i]).startswith(last)), None)


def _parted_figure(lines: list[str], captions: dict[int, int], last: dict | None, first: dict | None) -> int | None:
    """The image line of the figure parted from its caption across a page break: the page ended
    with the image and the next begins with the whole caption, or the page ended with the caption's
    head and the next begins with its tail (head and tail make the caption)."""
    if last is None or first is None or first.get("type") == 1:
        return None
    head, tail = _text(last), _text(first)
    return next((image for caption, image in captions.items() if tail and _plain(lines[caption]) == head + tail), None)


def stranded(path: Path, parts: list[str], counts: list[int]) -> dict[int, list[int]]:
    """Per part, the lines at which to cut it: where a page of the PDF ends with a line that keeps
    with the next (its last text or image block is that line, or the head of it), the cut goes
    before that line; where the next page begins with a figure's caption or the tail of one, before
    the figure's image; either way with the keep-with-next lines right above it (a heading over its
    table's caption)."""
    import pymupdf

    cuts: dict[int, list[int]] = {}
    with pymupdf.open(path) as document:
        first = 0
        for index, (part, count) in enumerate(zip(parts, counts)):
            lines = part.splitlines()
            keep = keeps_with_next(lines)
            captions = figure_captions(lines)
            for number in range(first, first + count - 1):  # a part's last page ends the part
                line = _kept_line(lines, keep, _last_block(document[number]))
                if line is None:
                    line = _parted_figure(lines, captions, _lowest(document[number]), _highest(document[number + 1]))
                if line is None:
                    continue
                while True:  # take the keep-with-next lines above it along
                    above = max((i for i in range(line) if lines[i].strip()), default=None)
                    if above is None or above not in keep or above == 0:
                        break
                    line = above
                if line > 0 and any(lines[i].strip() for i in range(line)):
                    cuts.setdefault(index, []).append(line)
            first += count
    return cuts


def _blocks(page) -> list[dict]:
    """The page's image blocks and text blocks with any text."""
    return [b for b in page.get_text("dict")["blocks"]
            if b.get("type") == 1 or any(s["text"].strip() for line in b.get("lines", []) for s in line["spans"])]


def _text(block: dict) -> str:
    """The plain text of a block (an image: empty)."""
    if block.get("type") == 1:
        return ""
    return _plain(" ".join(s["text"] for line in block["lines"] for s in line["spans"]))


def _lowest(page) -> dict | None:
    blocks = _blocks(page)
    return max(blocks, key=lambda b: (b["bbox"][3], b["bbox"][1])) if blocks else None


def _highest(page) -> dict | None:
    blocks = _blocks(page)
    return min(blocks, key=lambda b: (b["bbox"][1], b["bbox"][3])) if blocks else None


def _last_block(page) -> str:
    """The plain text of the lowest block of a page (an image: empty)."""
    block = _lowest(page)
    return _text(block) if block else ""


def _first_block(page) -> str:
    """The plain text of the highest block of a page (an image: empty)."""
    block = _highest(page)
    return _text(block) if block else ""


def _cut(part: str, lines: list[int]) -> list[str]:
    rows = part.splitlines()
    edges = [0, *sorted(set(lines)), len(rows)]
    return ["\n".join(rows[a:b]) for a, b in zip(edges, edges[1:]) if b > a]


PAGE_BREAK = re.compile(r"^## ([2-9]\.|\d\d+\.|Discussion|Appendix A)")  # these sections start a page
SWEEP_PAGE_BREAK = re.compile(r"^## (?!Setup$|Methods$)")  # a sweep's report: every section after setup and methods


def split_sections(text: str, breaks: re.Pattern = PAGE_BREAK) -> list[str]:
    """Markdown cut before every heading ``breaks`` matches (the paper's: every numbered ``## ``
    heading from 2 on, the discussion and the appendices; title, introduction and setup stay
    together on the first pages)."""
    parts: list[list[str]] = [[]]
    for line in text.splitlines():
        if breaks.match(line) and any(x.strip() for x in parts[-1]):
            parts.append([])
        parts[-1].append(line)
    return ["\n".join(lines) for lines in parts]


def load_sentence(frame: pd.DataFrame) -> str:
    """"measured under a 1-minute load average of 3.1–9.8 on 2 CPUs" from the jobs' records."""
    columns = [c for c in ("machine/load_1m_start", "machine/load_1m_end") if c in frame]
    loads = pd.concat([pd.to_numeric(frame[c], errors="coerce") for c in columns]).dropna() if columns else pd.Series(dtype=float)
    if loads.empty:
        return "machine load not recorded (jobs written before it was)"
    cpus = sorted({int(c) for c in pd.to_numeric(frame.get("machine/cpus", pd.Series(dtype=float)), errors="coerce").dropna()})
    models = sorted({str(m) for m in frame.get("machine/cpu_model", pd.Series(dtype=object)).dropna()})
    on = f" on {'/'.join(map(str, cpus))} CPUs" if cpus else ""
    on += f" ({' / '.join(models)})" if models else ""
    return f"measured under a 1-minute load average of {loads.min():.1f}–{loads.max():.1f}{on}"


def write_report(sweep: Sweep, tables: dict[str, pd.DataFrame], figures: dict[str, Figure]) -> tuple[Path, Path]:
    """``report.md`` and ``report.pdf`` in the sweep directory."""
    text = markdown(sweep, tables, figures)
    md_path = sweep.directory / "report.md"
    md_path.write_text(text)
    pdf_path = write_pdf(text, sweep.directory, sweep.directory / "report.pdf", title=title(sweep), page_per_section=True,
                         breaks=SWEEP_PAGE_BREAK)
    return md_path, pdf_path
