"""The compression study (``+experiment=compression``): pruned models in several weight formats.

A sweep is a compression study when some job quantized (``quant/bits``). Per job (method, setting,
format): the GGUF file llama.cpp loads (``bench/file_bytes_pruned``) against the dense model's F16
file, our own packed count (``quant/bytes``) and its bitmask estimate (``quant/bytes_if_zeros_sparse``),
perplexity and zero-shot mean, and llama.cpp's speed: the speedup over the dense model *in the same
format* (timed interleaved in one process, with its ideal and efficiency) and over the dense F16
model: that speedup times the format's dense tokens/s over F16's (:func:`_versus_f16`; every job
times the dense model, so each format's rate is a mean over jobs, separate processes under
whatever load the machine had).
:func:`eight_x_sentence` says from these numbers which combination reaches the seeds' 8x;
:func:`pareto_front` marks the points no other point beats on both axes (figures and report).
"""

from __future__ import annotations

import math
import re

import pandas as pd

from prunelab.study.records import Sweep, headline_metrics, with_setting

CLAIM = 8.0  # "50% pruning + 4-bit -> 8-10x compression" (the seeds' claim): its lower end
FILE_BYTES = "bench/file_bytes_pruned"
FORMAT_ORDER = ("fp16", "RTN-8", "GPTQ-8", "RTN-4", "GPTQ-4")
PREFILL_TOKS = re.compile(r"^bench/prefill_(\d+)_tok_s_pruned$")
RATIO = "x vs dense F16"
SPEEDUP_F16 = "prefill vs dense F16"
DECODE_F16 = "decode vs dense F16"


def is_compression(frame: pd.DataFrame) -> bool:
    """Whether some job quantized its weights (the compression preset, or any ``quant=`` sweep)."""
    return "quant/bits" in frame.columns and bool(pd.to_numeric(frame["quant/bits"], errors="coerce").notna().any())


def format_label(row: pd.Series) -> str:
    """``fp16`` (not quantized), ``RTN-8``, ``GPTQ-4``; ``GPTQ-4 joint`` when pruned and quantized in one pass."""
    bits = pd.to_numeric(pd.Series([row.get("quant/bits")]), errors="coerce").iloc[0]
    if pd.isna(bits):
        return "fp16"
    name = str(row.get("quant/method") or "quant").upper()
    joint = " joint" if row.get("quant/joint_with_pruning") in (True, "True", 1) else ""
    return f"{name}-{int(bits)}{joint}"


def format_rank(label: str) -> tuple:
    base = label.removesuffix(" joint")
    return (FORMAT_ORDER.index(base) if base in FORMAT_ORDER else len(FORMAT_ORDER), label)


def prefill_tokens(frame: pd.DataFrame) -> int | None:
    """The longest prefill llama.cpp timed (the speed columns the study reports)."""
    found = [int(m.group(1)) for c in frame.columns if (m := PREFILL_TOKS.match(c)) and frame[c].notna().any()]
    return max(found) if found else None


def _versus_f16(frame: pd.DataFrame, speedup: str, rate: str) -> pd.Series:
    """A job's speed over the dense F16 model's: its speedup over the dense model in its own GGUF type
    (one process, interleaved) times that type's dense tokens/s over F16's, each the mean of every
    job's timing of the dense model in that type (``rate``: ``bench/..._tok_s_dense``)."""
    if speedup not in frame or rate not in frame or "bench/quant" not in frame:
        return pd.Series(math.nan, index=frame.index)
    types = frame["bench/quant"].astype(str)
    dense = pd.to_numeric(frame[rate], errors="coerce").groupby(types).mean()
    factor = types.map(dense / dense.get("F16", math.nan))
    return pd.to_numeric(frame[speedup], errors="coerce") * factor


def _dense_f16(frame: pd.DataFrame, column: str) -> float:
    """The dense model's F16 value of ``bench/..._dense``, from the jobs llama.cpp timed in F16."""
    if column not in frame or "bench/quant" not in frame:
        return math.nan
    values = pd.to_numeric(frame.loc[frame["bench/quant"].astype(str) == "F16", column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def points(sweep: Sweep) -> pd.DataFrame:
    """One row per completed job: method, setting, format and the study's numbers (see the module)."""
    frame = with_setting(sweep.completed)
    if frame.empty or not is_compression(frame):
        return pd.DataFrame()
    col = lambda name: pd.to_numeric(frame[name], errors="coerce") if name in frame else pd.Series(math.nan, index=frame.index)  # noqa: E731
    out = pd.DataFrame({"method": frame["method"].astype(str), "setting": frame["setting"],
                        "format": [format_label(row) for _, row in frame.iterrows()]}, index=frame.index)
    out["GGUF type"] = frame["bench/quant"].astype(str) if "bench/quant" in frame else ""
    dense_file = _dense_f16(frame, "bench/file_bytes_dense")
    out["GGUF bytes"] = col(FILE_BYTES)
    out[RATIO] = dense_file / out["GGUF bytes"]
    out["packed bytes (ours)"] = col("quant/bytes")
    out["packed x vs fp16"] = col("quant/compression_vs_fp16")
    out["x if zeros as bitmask"] = col("quant/compression_vs_fp16_if_zeros_sparse")
    for metric in headline_metrics(sweep):
        if metric.startswith("eval/ppl_") or metric.endswith("mean_acc"):
            out[metric] = col(metric)
    tokens = prefill_tokens(frame)
    if tokens is not None:
        for what in ("speedup", "ideal", "efficiency"):
            out[f"prefill {what}"] = col(f"bench/prefill_{what}_{tokens}")
        out[SPEEDUP_F16] = _versus_f16(frame, f"bench/prefill_speedup_{tokens}", f"bench/prefill_{tokens}_tok_s_dense")
    if "bench/decode_speedup_b1" in frame:
        for what in ("speedup", "ideal", "efficiency"):
            out[f"decode {what}"] = col(f"bench/decode_{what}_b1")
        out[DECODE_F16] = _versus_f16(frame, "bench/decode_speedup_b1", "bench/decode_b1_tok_s_dense")
    out.attrs["tokens"] = tokens
    out.attrs["dense_file_bytes"] = dense_file
    return out


def _ordered(found: pd.DataFrame) -> pd.DataFrame:
    methods = list(dict.fromkeys(found["method"]))
    key = [(methods.index(m), s != "dense", s, format_rank(f)) for m, s, f in zip(found["method"], found["setting"], found["format"])]
    return found.assign(_key=key).sort_values("_key").drop(columns="_key")


def bytes_table(sweep: Sweep) -> pd.DataFrame:
    """Every method x format: file bytes and their ratio to the dense F16 file, our packed bytes
    and ratio, the bitmask estimate, perplexities and zero-shot mean (mean over repeated configs)."""
    found = points(sweep)
    if found.empty:
        return found
    keep = ["GGUF type", "GGUF bytes", RATIO, "packed bytes (ours)", "packed x vs fp16", "x if zeros as bitmask",
            *(c for c in found.columns if c.startswith(("eval/", "zeroshot/")))]
    keep = [c for c in keep if c == "GGUF type" or found[c].notna().any()]
    numbers = [c for c in keep if c != "GGUF type"]
    grouped = _ordered(found).groupby(["method", "setting", "format"], sort=False)
    return grouped[numbers].mean().join(grouped[["GGUF type"]].first())[keep]


def speed_table(sweep: Sweep) -> pd.DataFrame:
    """Every method x format: llama.cpp's prefill and decode speedup over the dense model in the same
    format with ideal and efficiency, and over the dense F16 model."""
    found = points(sweep)
    speed = [c for c in found.columns if c.startswith(("prefill ", "decode "))]
    if found.empty or not speed:
        return pd.DataFrame()
    return _ordered(found).groupby(["method", "setting", "format"], sort=False)[speed].mean()


def _name(row: pd.Series) -> str:
    setting = "" if row["setting"] == "dense" or row["method"] == "dense" else f" {row['setting']}"
    return f"{row['method']}{setting} {row['format']}"


def _ppl(found: pd.DataFrame) -> str | None:
    return next((c for c in found.columns if c.startswith("eval/ppl_")), None)


def eight_x_sentence(sweep: Sweep) -> str:
    """Which combination's GGUF file is at least :data:`CLAIM` times smaller than the dense F16 file,
    at what perplexity; or that none is, the best ratio and its perplexity, and the bitmask estimate."""
    found = points(sweep).dropna(subset=[RATIO])
    if found.empty:
        return ""
    metric = _ppl(found)
    dense = found[(found["method"] == "dense") & (found["format"] == "fp16")]
    dense_ppl = float(dense[metric].mean()) if metric and len(dense) else math.nan
    name = metric.removeprefix("eval/ppl_") if metric else ""

    def at(row) -> str:
        if metric is None or pd.isna(row[metric]):
            return ""
        versus = f" against {dense_ppl:.2f} dense fp16" if not math.isnan(dense_ppl) else ""
        return f", {name} perplexity {row[metric]:.2f}{versus}"

    reach = found[found[RATIO] >= CLAIM]
    if len(reach):
        best = reach.loc[reach[metric].idxmin()] if metric and reach[metric].notna().any() else reach.iloc[0]
        names = ", ".join(f"{_name(r)} ({r[RATIO]:.2f}x)" for _, r in reach.iterrows())
        text = (f"{len(reach)} combination{'s' if len(reach) > 1 else ''} reach{'es' if len(reach) == 1 else ''} "
                f"{CLAIM:g}x smaller than the dense F16 file: {names}; the most accurate is {_name(best)}{at(best)}.")
    else:
        smallest = found[found[RATIO] == found[RATIO].max()]  # formats of one size (RTN-4, GPTQ-4): the most accurate
        best = smallest.loc[smallest[metric].idxmin()] if metric and smallest[metric].notna().any() else smallest.iloc[0]
        text = (f"No combination reaches {CLAIM:g}x: the smallest file is {_name(best)}, {best['GGUF bytes']:,.0f} bytes, "
                f"{best[RATIO]:.2f}x smaller than the dense F16 file ({found.attrs['dense_file_bytes']:,.0f} bytes){at(best)}.")
    bitmask = found.dropna(subset=["x if zeros as bitmask", "packed x vs fp16"])
    bitmask = bitmask[bitmask["x if zeros as bitmask"] > bitmask["packed x vs fp16"]]  # where a mask saves bytes
    if len(bitmask):
        top = bitmask.loc[bitmask["x if zeros as bitmask"].idxmax()]
        text += (f" Stored with the zeros as a bitmask (an estimate, `quant/bytes_if_zeros_sparse`), the best would be "
                 f"{_name(top)} at {top['x if zeros as bitmask']:.2f}x (dense-packed as we count it: {top['packed x vs fp16']:.2f}x).")
    return text


CLAIM_TEXT = (
    "**Why 50% pruning + 4-bit does not give 8-10x here.** The seeds' figure multiplies the two savings: 16 -> 4 bits "
    "(4x) times half the weights (2x). The second factor needs the zeros to cost nothing, but every file above stores "
    "a pruned weight like any other: llama.cpp's GGUF types and compressed-tensors' `pack-quantized` keep one code per "
    "weight, so a zero takes its 4 bits and an unstructured or 2:4 pruned model is exactly as large as the dense one in "
    "the same format (only structured pruning, which removes rows, columns or blocks, makes the file smaller). Scales add "
    "bits (llama.cpp's Q4_K is 4.5 bits per weight, and Q4_K_M keeps some tensors in Q6_K, 6.56); K-quants need rows "
    "that are multiples of 256 values, so llama.cpp stores narrower rows in a fallback type (Q5_0, 5.5 bits, for "
    "SmolLM2's width 576; F16 for widths that are not even multiples of 32, as structured pruning leaves them; "
    "`bench/tensor_types_pruned` lists each file's types); and what is not quantized stays at 16 bits or more (in "
    "SmolLM2-135M the tied embedding is a fifth of the parameters). Storing the zeros sparse "
    "(one mask bit per weight plus the non-zero codes, compressed-tensors' `sparse-bitmask` layout; our estimate "
    "`quant/bytes_if_zeros_sparse`) gives 1 + 0.5 x 4 = 3 bits per weight at 50%: about 5x on the linear layers, never "
    "8x; 8x needs 2 bits per weight, i.e. zeros that cost nothing to locate and no scales.")


def pareto_front(x: pd.Series, y: pd.Series, x_lower_better: bool = True, y_lower_better: bool = True) -> pd.Series:
    """True for the points no other point beats on both axes (at least as good on both, better on one)."""
    sx = x if x_lower_better else -x
    sy = y if y_lower_better else -y
    front = []
    for i in x.index:
        if pd.isna(x[i]) or pd.isna(y[i]):
            front.append(False)
            continue
        dominated = ((sx <= sx[i]) & (sy <= sy[i]) & ((sx < sx[i]) | (sy < sy[i]))).any()
        front.append(not bool(dominated))
    return pd.Series(front, index=x.index)


def lines(sweep: Sweep) -> list[str]:
    """The report's compression paragraphs: the 8x sentence, the Pareto fronts in words, the claim."""
    found = points(sweep)
    if found.empty:
        return []
    parts = []
    sentence = eight_x_sentence(sweep)
    if sentence:
        parts.append(sentence)
    metric = _ppl(found)
    if metric:
        speed = f"llama.cpp prefill speed ({found.attrs['tokens']} tokens)"
        for x, words in ((RATIO, "file size"), (SPEEDUP_F16, speed), (DECODE_F16, "llama.cpp decode speed (batch 1)")):
            if x not in found or found[x].notna().sum() < 2:
                continue
            data = found.dropna(subset=[x, metric])
            front = data[pareto_front(data[x], data[metric], x_lower_better=False)].sort_values(x)
            parts.append(f"Pareto front of {metric.removeprefix('eval/ppl_')} perplexity against {words} (vs dense F16): "
                         + "; ".join(f"{_name(r)} {r[x]:.2f}x at {r[metric]:.2f}" for _, r in front.iterrows()) + ".")
    parts.append(CLAIM_TEXT)
    return parts


def by_format(sweep: Sweep, columns: list[str]) -> pd.DataFrame:
    """``columns`` per method, setting and format (mean over repeated configs): the timing table of a
    compression study, whose jobs differ by format as well as by method."""
    frame = with_setting(sweep.completed)
    columns = [c for c in columns if c in frame]
    if frame.empty or not columns:
        return pd.DataFrame()
    frame = frame.assign(format=[format_label(row) for _, row in frame.iterrows()])
    return _ordered(frame).groupby(["method", "setting", "format"], sort=False)[columns].mean()


TABLE_NOTES = {
    "compression_bytes": "GGUF bytes: the file llama.cpp loads, of the type given (F16, Q8_0, Q4_K_M: llama.cpp's own "
                         "quantizer, applied to our weights), and how many times smaller it is than the dense model's F16 "
                         "file. Packed bytes (ours): our quantizer's codes at `bits` per weight, one fp16 scale per row and "
                         "group, everything else fp16 (`quant/bytes`), against the model's parameters in fp16; blank where "
                         "nothing was quantized. Bitmask: the same if the zeros were stored as a one-bit mask plus the "
                         "non-zero codes (an estimate; no file we write stores them so).",
    "compression_speed": "llama.cpp, one thread, medians of interleaved repeats. Speedup, ideal and efficiency: against the "
                         "dense model in the same GGUF type, timed in the same process (ideal: the FLOP ratio for prefill, "
                         "the byte ratio for decode, from the two shapes; zeros count as weights, llama.cpp has no sparse "
                         "kernels). vs dense F16: that speedup times the dense model's tokens/s in this GGUF type over "
                         "its tokens/s in F16 (each the mean over every job that timed the dense model in that type; "
                         "separate processes, each on its thread's CPU clock).",
}
TABLE_NAMES = {"compression_bytes": "Compression: file bytes against the dense F16 file, and accuracy",
               "compression_speed": "Compression: llama.cpp speedups (same format, and against dense F16)"}


def tables(sweep: Sweep) -> dict[str, pd.DataFrame]:
    """The study's two tables (empty when the sweep quantized nothing)."""
    if not is_compression(sweep.completed):
        return {}
    return {"compression_bytes": bytes_table(sweep), "compression_speed": speed_table(sweep)}
