"""Text for calibration and perplexity: offline sets from the asset cache, online sets via ``datasets``.

Every set is a list of documents split into a *calibration* part and an *evaluation* part that
never share a document, so calibration text never leaks into the perplexity measured on it:

=========  ==========================================  =========================================
set        calibration part                            evaluation part
=========  ==========================================  =========================================
wiki       first 2/3 of the unique BoolQ passages      last 1/3 (Wikipedia; WikiText-2 stand-in)
austen     the other five novels                       *Persuasion*
gsm8k      first 1,000 test problems (question+answer) last 319 problems
c4         first train shard, as the papers (online)   first validation shard (online)
wikitext2  WikiText-2 raw train (online)               WikiText-2 raw test, the papers' ppl set
math       GSM8K main train (online)                   GSM8K main test (online)
=========  ==========================================  =========================================
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

from prunelab import assets
from prunelab.checks import ConfigError

log = logging.getLogger(__name__)

C4_TRAIN_SHARD = "en/c4-train.00000-of-01024.json.gz"
C4_VALIDATION_SHARD = "en/c4-validation.00000-of-00008.json.gz"


class DataConfigError(ConfigError):
    """A dataset name or size that cannot be served."""


def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _split(documents: list[str], calibration_count: int) -> dict[str, list[str]]:
    return {"calibration": documents[:calibration_count], "evaluation": documents[calibration_count:]}


def _wiki() -> dict[str, list[str]]:
    passages = [row["text"] for row in _read_jsonl(assets.require(assets.paths().wiki_jsonl, "Wikipedia passages"))]
    return _split(passages, (2 * len(passages)) // 3)


AUSTEN_EVALUATION_NOVEL = "persuasion"


def _austen() -> dict[str, list[str]]:
    novels = _read_jsonl(assets.require(assets.paths().austen_jsonl, "Austen novels"))
    held_out = [n["text"] for n in novels if n["title"].lower() == AUSTEN_EVALUATION_NOVEL]
    return {"calibration": [n["text"] for n in novels if n["title"].lower() != AUSTEN_EVALUATION_NOVEL],
            "evaluation": held_out}


def _gsm8k() -> dict[str, list[str]]:
    rows = _read_jsonl(assets.require(assets.paths().gsm8k_jsonl, "GSM8K questions"))
    problems = [f"Question: {row['question']}\nAnswer: {row['answer']}" for row in rows]
    return _split(problems, 1000)


def _hub_dataset(*args, **kwargs):
    from datasets import load_dataset

    from prunelab.models import hub_reachable

    if not hub_reachable():
        raise DataConfigError(
            f"dataset {args[0]!r} needs the Hugging Face hub, which is unreachable here; offline sets: "
            f"{', '.join(OFFLINE_SETS)}"
        )
    return load_dataset(*args, **kwargs)


def _c4() -> dict[str, list[str]]:
    train = _hub_dataset("allenai/c4", data_files={"train": C4_TRAIN_SHARD}, split="train")
    validation = _hub_dataset("allenai/c4", data_files={"validation": C4_VALIDATION_SHARD}, split="validation")
    return {"calibration": train["text"], "evaluation": validation["text"][:1100]}


def _wikitext2() -> dict[str, list[str]]:
    train = _hub_dataset("wikitext", "wikitext-2-raw-v1", split="train")
    test = _hub_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    # The papers tokenize the whole split joined by blank lines: one document each.
    return {"calibration": ["\n\n".join(train["text"])], "evaluation": ["\n\n".join(test["text"])]}


def _math() -> dict[str, list[str]]:
    def problems(split: str) -> list[str]:
        rows = _hub_dataset("openai/gsm8k", "main", split=split)
        return [f"Question: {q}\nAnswer: {a}" for q, a in zip(rows["question"], rows["answer"])]

    return {"calibration": problems("train"), "evaluation": problems("test")}


OFFLINE_SETS: dict[str, Callable[[], dict[str, list[str]]]] = {"wiki": _wiki, "austen": _austen, "gsm8k": _gsm8k}
ONLINE_SETS: dict[str, Callable[[], dict[str, list[str]]]] = {"c4": _c4, "wikitext2": _wikitext2, "math": _math}
ALL_SETS = {**OFFLINE_SETS, **ONLINE_SETS}


def check_dataset_name(name: str, key: str) -> None:
    if name not in ALL_SETS:
        raise DataConfigError(f"{key}={name!r} is unknown; allowed: {', '.join(ALL_SETS)}")


@lru_cache(maxsize=None)
def _load(name: str) -> dict[str, list[str]]:
    """Both parts of a set, read once per process (a multirun's jobs share them); never mutated."""
    return ALL_SETS[name]()


def documents(name: str, part: str) -> list[str]:
    check_dataset_name(name, "dataset")
    return _load(name)[part]


@dataclass(frozen=True)
class CalibrationSpec:
    dataset: str
    nsamples: int
    seqlen: int
    seed: int


def calibration_tokens(spec: CalibrationSpec, tokenizer) -> torch.Tensor:
    """``[nsamples, seqlen]`` token windows drawn as in the papers.

    C4 follows the papers exactly: a random document longer than ``seqlen`` is drawn and a random
    window taken from it, with one seeded generator. The other sets are joined with blank lines
    into one stream (their documents are either short passages or whole novels) and random windows
    are taken from that stream with the same generator.
    """
    rng = random.Random(spec.seed)
    docs = documents(spec.dataset, "calibration")
    if spec.dataset != "c4":
        stream = _tokenize("\n\n".join(docs), tokenizer)
        _require_tokens(stream.numel(), spec)
        starts = [rng.randint(0, stream.numel() - spec.seqlen - 1) for _ in range(spec.nsamples)]
        return torch.stack([stream[s:s + spec.seqlen] for s in starts])
    windows = []
    attempts = 0
    while len(windows) < spec.nsamples:
        attempts += 1
        if attempts > 100 * spec.nsamples:
            raise DataConfigError(f"calib_data={spec.dataset}: too few documents longer than seqlen={spec.seqlen}")
        ids = _tokenize(docs[rng.randint(0, len(docs) - 1)], tokenizer)
        if ids.numel() <= spec.seqlen:
            continue
        start = rng.randint(0, ids.numel() - spec.seqlen - 1)
        windows.append(ids[start:start + spec.seqlen])
    return torch.stack(windows)


def _require_tokens(available: int, spec: CalibrationSpec) -> None:
    if available <= spec.seqlen + 1:
        raise DataConfigError(
            f"calib_data={spec.dataset} has {available} tokens, fewer than seqlen={spec.seqlen}"
        )


def evaluation_stream(name: str, tokenizer) -> torch.Tensor:
    """The evaluation part joined by blank lines and tokenized once, ``[1, tokens]``."""
    return _tokenize("\n\n".join(documents(name, "evaluation")), tokenizer).unsqueeze(0)


def _tokenize(text: str, tokenizer) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
