"""The analytic roofline, checked by hand against REFERENCE.md ("2:4 acceleration facts", "Roofline")."""

from __future__ import annotations

import pytest

from prunelab.bench import roofline
from prunelab.bench.roofline import GPUS, ModelShape, Phase, RooflineError, predict
from prunelab.models import DecoderAdapter

H100 = GPUS["H100"]


@pytest.fixture(scope="module")
def llama7b() -> ModelShape:
    return roofline.load_model_shape("llama2_7b_shapes")


def test_compressed_weight_is_nine_sixteenths_and_decode_bound_sixteen_ninths():
    # fp16 2:4: per 4 weights, 2 values x 16 bits + 2 indices x 2 bits = 36 of 64 bits.
    assert roofline.sparse_weight_fraction(16) == 9 / 16
    assert 1 / roofline.sparse_weight_fraction(16) == pytest.approx(1.78, abs=0.005)
    assert roofline.sparse_weight_fraction(8) == 10 / 16  # int8: 4 + 1 bits of 8


def test_gpu_table_and_ridge_points():
    assert H100.ridge == pytest.approx(295, abs=1)  # REFERENCE: ~295 FLOP/byte
    assert GPUS["H200"].dense_tflops == H100.dense_tflops and GPUS["H200"].bandwidth_tbs == 4.8
    assert GPUS["A100"].ridge == pytest.approx(312 / 2.039, rel=1e-9)
    assert set(GPUS) == {"A100", "A6000", "L40S", "H100", "H200"}
    assert roofline.get_gpu("h100") is H100
    with pytest.raises(RooflineError, match="allowed: A100, A6000, L40S, H100, H200"):
        roofline.get_gpu("V100")


@pytest.mark.parametrize("device,expected", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA RTX A6000", "A6000"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA H200", "H200"), ("NVIDIA L40", None), ("Tesla T4", None),
])
def test_cuda_device_names_map_to_table_rows(device, expected):
    found = roofline.match_gpu(device)
    assert (found.name if found else None) == expected


def test_llama7b_shapes_are_enumerated(llama7b):
    shapes = {s.name: (s.out_features, s.in_features) for s in llama7b.linear_shapes()}
    assert shapes == {
        "self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 4096), "self_attn.v_proj": (4096, 4096),
        "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (11008, 4096), "mlp.up_proj": (11008, 4096),
        "mlp.down_proj": (4096, 11008),
    }
    assert llama7b.layers == 32 and llama7b.vocab == 32000
    assert llama7b.prunable_parameters() == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # 6.48 B


def test_shapes_match_a_real_model_with_grouped_query_attention(tiny_model):
    shape = ModelShape.from_hf_config(tiny_model.config)
    assert shape.kv_heads < shape.heads  # tiny_random: 4 heads, 2 KV heads
    block = DecoderAdapter(tiny_model).blocks[0]
    real = {name: tuple(layer.weight.shape) for name, layer in DecoderAdapter.linear_layers(block).items()}
    assert {s.name: (s.out_features, s.in_features) for s in shape.linear_shapes()} == real


def test_one_linear_layer_by_hand(llama7b):
    ops = {o.name: o for o in roofline.operators(llama7b, Phase.decode(1, 128))}
    q = ops["self_attn.q_proj"]
    assert q.ops == 2 * 4096 * 4096 * 1
    assert q.bytes() == 4096 * 4096 * 2 + (4096 + 4096) * 2
    assert q.bytes(sparse=True) == 4096 * 4096 * 2 * 9 / 16 + (4096 + 4096) * 2
    assert q.bound(H100) == q.bound(H100, sparse=True) == "memory"
    assert q.time_s(H100) == pytest.approx(q.bytes() / 3.35e12)
    assert q.time_s(H100) / q.time_s(H100, sparse=True) == pytest.approx(16 / 9, rel=2e-3)
    # Prefill at 2048 tokens: compute-bound; the 2:4 ceiling is twice the dense one.
    q = {o.name: o for o in roofline.operators(llama7b, Phase.prefill(2048))}["self_attn.q_proj"]
    assert q.intensity() > H100.ridge and q.intensity(True) > 2 * H100.ridge
    assert q.time_s(H100) == pytest.approx(q.ops / 989.4e12)
    assert q.time_s(H100) / q.time_s(H100, sparse=True) == pytest.approx(2.0)


def test_attention_reads_the_kv_cache_and_is_unchanged_by_sparsity(llama7b):
    ops = {o.name: o for o in roofline.operators(llama7b, Phase.decode(4, 4096))}
    qk, av = ops["attn.qk"], ops["attn.av"]
    kv_bytes = 4 * 4097 * 4096 * 2  # batch 4, 4096 cached + 1 new token, K (or V) of one block
    assert qk.activation_bytes == kv_bytes + 4 * 4096 * 2
    assert qk.ops == av.ops == 2 * 4 * 32 * 128 * 4097
    assert not qk.sparse_capable and qk.time_s(H100) == qk.time_s(H100, sparse=True)
    assert ops["lm_head"].time_s(H100) == ops["lm_head"].time_s(H100, sparse=True)  # never pruned
    # Causal prefill: query i sees i + 1 keys.
    prefill = {o.name: o for o in roofline.operators(llama7b, Phase.prefill(512))}
    assert prefill["attn.qk"].ops == 2 * 32 * 128 * (512 * 513 // 2)


def test_decode_bounds_match_reference(llama7b):
    # Everything is memory-bound at batch 1: the bound is the ratio of bytes moved.
    linear = llama7b.prunable_parameters() * 2
    rest = 32000 * 4096 * 2  # lm_head, dense
    for context, published in ((128, 1.74), (4096, 1.58)):
        kv = 32 * 2 * (context + 1) * 4096 * 2
        by_hand = (linear + rest + kv) / (linear * 9 / 16 + rest + kv)
        prediction = predict(llama7b, Phase.decode(1, context), H100)
        assert prediction.speedup == pytest.approx(by_hand, abs=0.005)
        assert prediction.speedup == pytest.approx(published, abs=0.01)
    assert predict(llama7b, Phase.decode(1, 128), H100).linear_speedup() == pytest.approx(16 / 9, abs=0.005)
    # Larger batches read more KV cache and activations: a lower bound.
    bounds = [predict(llama7b, Phase.decode(b, 128), H100).speedup for b in (1, 8, 32)]
    assert bounds[0] > bounds[1] > bounds[2] > 1.5


def test_prefill_bound_and_linear_flop_share_match_reference(llama7b):
    for tokens in (512, 2048):
        prediction = predict(llama7b, Phase.prefill(tokens), H100)
        assert 0.94 <= prediction.linear_flop_fraction() <= 0.975  # REFERENCE: 94-97 %
        assert prediction.speedup == pytest.approx(1.9, abs=0.05)  # REFERENCE: ~1.9x
        assert prediction.linear_speedup() == pytest.approx(2.0)
    # Unfused element-wise ops (eager HF) add memory traffic that 2:4 does not shrink.
    eager = predict(llama7b, Phase.prefill(2048), H100, fused_elementwise=False)
    assert 1.0 < eager.speedup < predict(llama7b, Phase.prefill(2048), H100).speedup
    norm = {o.name: o for o in eager.operators}["input_layernorm"]
    assert norm.bound(H100) == "memory" and norm.bytes() == 2048 * 4096 * 2 * 2 + 4096 * 2
    fused = {o.name: o for o in roofline.operators(llama7b, Phase.prefill(2048))}["mlp.act_mul"]
    assert fused.bound(H100) == "fused" and fused.bytes() == 0
    # Decode times only depend on bandwidth: H200 is 4.8 / 3.35 times faster than H100.
    h100 = predict(llama7b, Phase.decode(1, 128), H100)
    h200 = predict(llama7b, Phase.decode(1, 128), GPUS["H200"])
    assert h100.dense_s / h200.dense_s == pytest.approx(4.8 / 3.35, rel=1e-6)


def test_gemm_bound_moves_from_memory_to_compute(llama7b):
    assert roofline.gemm_bound(llama7b, 1, H100) == pytest.approx(16 / 9, abs=0.01)
    assert roofline.gemm_bound(llama7b, 4096, H100) == pytest.approx(2.0)
    assert roofline.gemm_bound(llama7b, 1, H100) < roofline.gemm_bound(llama7b, 2048, H100)


def test_phase_specs():
    assert roofline.parse_phase("prefill:2048") == Phase.prefill(2048)
    assert roofline.parse_phase("prefill:512x4") == Phase.prefill(512, 4)
    assert roofline.parse_phase("decode:8", context=64) == Phase.decode(8, 64)
    assert roofline.parse_phase("decode:1@4096") == Phase.decode(1, 4096)
    with pytest.raises(RooflineError, match="prefill:TOKENS"):
        roofline.parse_phase("generate:3")


def test_cli_prints_the_tables(tmp_path, capsys):
    text = roofline.main(["--model", "llama2_7b_shapes", "--gpu", "H100", "--csv", str(tmp_path / "r.csv")])
    assert "ridge 295 FLOP/byte" in text and "TOTAL (all blocks)" in text
    assert "decode b1 @ctx 4096" in text and "| H100 |" in text
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("phase,gpu,layer") and len(rows) > 7 * 15
    with pytest.raises(RooflineError, match="allowed:"):
        roofline.load_model_shape("no_such_model")
