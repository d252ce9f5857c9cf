"""export=gguf and engine=llamacpp: GGUF files written from the model in memory, loaded and run by
llama.cpp (llama-cpp-python, built by `make setup`), logits and perplexity against ours."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import gguf
import pytest
import torch

from prunelab import gguf_export, pipeline, structure
from prunelab.checks import ConfigError
from prunelab.plan import make_plan
from tests.conftest import ROOT, TINY, compose_config, requires_embedded

needs_llama_cpp = pytest.mark.skipif(gguf_export.llama_cpp_problem() is not None,
                                     reason=f"llama.cpp unavailable: {gguf_export.llama_cpp_problem()}")
IDS = torch.randint(0, 49152, (48,), generator=torch.Generator().manual_seed(1))


def _ours(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids[None], use_cache=False).logits[0].float()


def _shrunk(model):
    """Block 0 loses a KV head group (2 query heads) and block 1 37 MLP channels, both with FLAP's
    compensation bias: per-block widths and output-projection biases, as FLAP leaves them."""
    model = copy.deepcopy(model)
    blocks = model.model.layers
    structure.apply(blocks[0], structure.Removal(groups=torch.tensor([1]), attention_mean=torch.randn(64)))
    structure.apply(blocks[1], structure.Removal(channels=torch.arange(0, 74, 2), mlp_mean=torch.randn(128)))
    return model


def _fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    big = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    return {key: field.contents() for key, field in reader.fields.items() if key not in big}, \
        {t.name: t for t in reader.tensors}


def test_writer_uses_llama_cpp_names_rope_order_and_tied_embeddings(tmp_path, tiny_model, tokenizer):
    path = tmp_path / "tiny.gguf"
    assert gguf_export.write_gguf(tiny_model, tokenizer, path, "F32")["arch"] == "llama"
    fields, tensors = _fields(path)
    assert fields["llama.block_count"] == 2 and fields["llama.feed_forward_length"] == 128
    assert (fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]) == (4, 2)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    q = tiny_model.model.layers[1].self_attn.q_proj.weight.detach()
    written = torch.from_numpy(tensors["blk.1.attn_q.weight"].data.copy()).reshape(q.shape)
    # within each head of 16 rows: HF's halves (0..7 | 8..15) become adjacent pairs (0, 8, 1, 9, ...)
    assert torch.equal(written[0::16], q[0::16]) and torch.equal(written[1::16], q[8::16])
    assert torch.equal(written, gguf_export.rope_permute(q, 16)) and not torch.equal(written, q)


def test_per_block_widths_are_written_as_arrays_of_the_deci_layout(tmp_path, tiny_model, tokenizer):
    path = tmp_path / "shrunk.gguf"
    assert gguf_export.write_gguf(_shrunk(tiny_model), tokenizer, path, "F16")["arch"] == "deci"
    fields, tensors = _fields(path)
    assert fields["deci.attention.head_count"] == [2, 4] and fields["deci.attention.head_count_kv"] == [1, 2]
    assert fields["deci.feed_forward_length"] == [128, 91]
    assert {"blk.0.attn_output.bias", "blk.1.ffn_down.bias"} <= set(tensors)
    assert tensors["blk.1.ffn_down.weight"].shape.tolist() == [91, 64]
    from prunelab.bench.llamacpp import shape_from_gguf
    from prunelab.bench.roofline import ModelShape

    assert shape_from_gguf(path) == ModelShape.from_model(_shrunk(tiny_model))  # what engine=llamacpp's ideal reads back


@needs_llama_cpp
@pytest.mark.parametrize("shape", ["dense", "per-block widths", "widths padded to 32", "one block removed"])
def test_llama_cpp_gives_our_logits(tmp_path, tiny_model, tokenizer, shape):
    model = {"dense": lambda m: m, "per-block widths": _shrunk, "widths padded to 32": _shrunk,
             "one block removed": lambda m: (structure.remove_blocks(m, [0]), m)[1]}[shape](tiny_model)
    path = tmp_path / "m.gguf"
    gguf_export.write_gguf(model, tokenizer, path, "F32", ffn_multiple=32 if "padded" in shape else 0)
    arch = "llama" if shape in ("dense", "one block removed") else "deci"
    fields = _fields(path)[0]
    assert fields[f"{arch}.block_count"] == len(model.model.layers)
    if "padded" in shape:
        assert fields["deci.feed_forward_length"] == [128, 96]  # 91 channels + 5 zero channels
    llm = gguf_export.load(path, 64, threads=2)
    try:
        theirs = gguf_export.logits(llm, IDS.tolist())
    finally:
        llm.close()
    ours = _ours(model, IDS)
    assert (theirs - ours).abs().max() < 2e-3 * ours.abs().max()  # llama.cpp keeps its KV cache in F16
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() > 0.95


@needs_llama_cpp
def test_llama_cpp_tokenizes_text_as_we_do(tmp_path, tiny_model, tokenizer):
    path = tmp_path / "m.gguf"
    gguf_export.write_gguf(tiny_model, tokenizer, path, "F16")
    llm = gguf_export.load(path, 64, threads=1)
    text = "The quick brown fox, it's said, jumped over 13 lazy dogs in 2024."
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(text)["input_ids"]
    finally:
        llm.close()


@needs_llama_cpp
def test_export_run_writes_each_type_and_matches_our_perplexity(tmp_path):
    overrides = ["method=magnitude", "export=gguf", "export.types=[F16,Q8_0]", "eval.max_windows=1"]
    pipeline.main(compose_config(*TINY, *overrides), output_dir=tmp_path, overrides=overrides)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    for name in ("F16", "Q8_0"):
        assert (tmp_path / "export" / "gguf" / f"model-{name}.gguf").stat().st_size == metrics[f"gguf/bytes_{name}"]
    assert metrics["gguf/bytes_Q8_0"] < 0.75 * metrics["gguf/bytes_F16"]
    assert abs(metrics["llamacpp/ppl_wiki_F16_rel_diff"]) < 0.005
    assert metrics["llamacpp/ppl_wiki_F16"] == pytest.approx(metrics["eval/ppl_wiki"], rel=0.005)
    assert "Q8_0" in metrics["gguf/tensor_types_Q8_0"]
    assert record["plan"]["export"] == "gguf"


@pytest.mark.parametrize("overrides,message", [
    (["export=gguf", "export.types=[Q3_K]"], "export.types[0]='Q3_K' is not valid; allowed: F32, F16, Q8_0"),
    (["export=gguf", "export.types=[F16,F16]"], "lists a type twice"),
    (["export=gguf", "+export.bits=4"], "export.bits is not a setting of export=gguf"),
    (["export=gguf", "+model.source.architecture.rope_scaling={rope_type: linear, factor: 2.0}"],
     "rope_type='linear' (RoPE scaling) is not written by this exporter; allowed: default"),
    (["export=gguf", "+model.source.architecture.attention_bias=true"], "attention_bias=true"),
])
def test_what_gguf_cannot_express_is_rejected_before_loading(overrides, message):
    with pytest.raises(ConfigError, match=None) as caught:
        make_plan(compose_config(*TINY, *overrides))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_tokenizer_that_is_not_byte_level_bpe_is_rejected():
    with pytest.raises(ConfigError, match="allowed: BPE \\+ ByteLevel"):
        gguf_export.tokenizer_kind({"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "Metaspace"}})
    assert gguf_export.tokenizer_kind({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}]}}) == "smollm"


def test_engine_llamacpp_is_refused_in_one_line_where_the_package_does_not_import(tmp_path):
    """A real interpreter in which ``import llama_cpp`` fails (``sys.modules[name] = None`` is Python's
    way to make a module unimportable), running the real command line."""
    code = ("import sys, runpy; sys.modules['llama_cpp'] = None; "
            f"sys.argv = ['run.py', *{[*TINY, 'engine=llamacpp', f'hydra.run.dir={tmp_path}']!r}]; "
            "runpy.run_path('run.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if "engine=llamacpp" in line]
    assert lines and "llama_cpp is not installed" in lines[0] and "engine=structured" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "time/load_s" not in json.loads((tmp_path / "metrics.json").read_text())["metrics"]


@needs_llama_cpp
def test_engine_llamacpp_times_dense_and_pruned_with_ideal_and_efficiency(tmp_path):
    overrides = ["method=wanda", "engine=llamacpp", "engine.quant=Q8_0", "engine.prefill_tokens=[32]",
                 "engine.decode_context=16", "engine.decode_steps=4", "engine.repeats=1", "engine.warmup=0"]
    pipeline.main(compose_config(*TINY, *overrides), output_dir=tmp_path, overrides=overrides)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    for key in ("prefill_speedup_32", "decode_speedup_b1"):
        assert metrics[f"bench/{key}"] > 0
    # unstructured: same shapes, so the ideal is 1 (llama.cpp multiplies the zeros)
    assert metrics["bench/prefill_ideal_32"] == pytest.approx(1.0) and metrics["bench/decode_ideal_b1"] == pytest.approx(1.0)
    assert metrics["bench/file_bytes_ratio"] == pytest.approx(1.0, abs=0.01)
    assert (tmp_path / "bench" / "llamacpp.csv").exists()


@requires_embedded
@needs_llama_cpp
@pytest.mark.slow
def test_flap_on_the_embedded_model_exports_and_llama_cpp_reproduces_its_perplexity(tmp_path):
    overrides = ["model=smollm2_135m", "method=flap", "sparsity=0.3", "calib_data.nsamples=8", "eval.max_windows=2",
                 "eval.ppl_datasets=[wiki]", "export=gguf", "export.types=[F16,Q4_K_M]", "logger=none"]
    pipeline.main(compose_config(*overrides), output_dir=tmp_path, overrides=overrides)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert metrics["gguf/arch"] == "deci"  # FLAP's adaptive structure leaves blocks of different widths
    assert abs(metrics["llamacpp/ppl_wiki_F16_rel_diff"]) < 0.005
    assert metrics["gguf/bytes_Q4_K_M"] < 0.5 * metrics["gguf/bytes_F16"]  # measured 0.47
    assert "F16" in metrics["gguf/tensor_types_Q4_K_M"]  # ffn_down widths 32 does not divide stay F16 (ffn_multiple=0)
