"""The benchmark stage: engine checks and errors, 2:4 weight handling, TensorRT-LLM command lines,
timing, the CPU CSR benchmark, the end-to-end loops (on the CPU) and ``engine=cpu`` in the pipeline."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from prunelab import pipeline
from prunelab.bench import cpu_sparse, e2e, engines, roofline, trtllm
from prunelab.bench.engines import EngineError
from prunelab.bench.timing import time_call, time_interleaved
from prunelab.checks import ConfigError
from prunelab.config import build
from prunelab.patterns import NM
from prunelab.plan import make_plan
from prunelab.prune import prune_model
from tests.conftest import TINY, build_method, compose_config

CUDA = torch.cuda.is_available()
TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None


def validate(cfg):
    return make_plan(cfg)


def engine(*overrides: str):
    """The engine object of a composed config (``engine=cpu`` ...)."""
    return build(compose_config(*overrides).engine, "engine")


def prune_two_four(model) -> None:
    prune_model(model, build_method("method=magnitude"), 0.5, NM(2, 4), None, torch.device("cpu"))


# ------------------------------------------------------------------------------ engine checks
def test_sparse_engines_need_a_two_four_pruned_model():
    for engine in ("torch_sparse", "tensorrt_llm"):
        with pytest.raises(ConfigError, match="pattern=2:4.*engine=cpu"):
            validate(compose_config(engine_override(engine), "pattern=unstructured"))
        with pytest.raises(ConfigError, match="pattern=2:4"):
            validate(compose_config(engine_override(engine), "method=dense", "pattern=2:4"))


def engine_override(name: str) -> str:
    return f"engine={name}"


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
def test_torch_sparse_without_cuda_names_the_cpu_engine():
    with pytest.raises(ConfigError) as error:
        validate(compose_config("engine=torch_sparse", "method=magnitude", "pattern=2:4"))
    message = str(error.value)
    assert "no CUDA GPU" in message and "compute capability >= 8.0" in message and "engine=cpu" in message
    with pytest.raises(EngineError, match="engine=cpu"):
        engines.require_sparse_kernels("cusparselt")


@pytest.mark.skipif(TRTLLM, reason="checks the error on a machine without tensorrt_llm")
def test_tensorrt_llm_missing_says_what_to_install():
    with pytest.raises(ConfigError) as error:
        validate(compose_config("engine=tensorrt_llm", "method=magnitude", "pattern=2:4"))
    message = str(error.value)
    assert "pip install -e .[tensorrt]" in message and "Linux x86-64 with CUDA" in message
    assert "engine.examples_dir" in message and "trtllm-build" in message


def test_cpu_engine_validates_here_and_rejects_bad_values():
    validate(compose_config(*TINY, "engine=cpu"))  # runs on any machine, any pattern
    with pytest.raises(ConfigError, match=r"engine.sparsities\[1\]=1.5 is outside \(0, 1\)"):
        validate(compose_config(*TINY, "engine=cpu", "engine.sparsities=[0.5,1.5]"))
    with pytest.raises(ConfigError, match=r"engine.tokens\[0\]=0 must be a positive integer"):
        validate(compose_config(*TINY, "engine=cpu", "engine.tokens=[0]"))
    with pytest.raises(ConfigError, match=r"engine.clock='gpu' is not valid; allowed: cpu, wall"):
        validate(compose_config(*TINY, "engine=cpu", "engine.clock=gpu"))
    with pytest.raises(ConfigError, match=r"logger._target_='prunelab.models.EmbeddedSource' is not a prunelab.loggers.Logger"):
        validate(compose_config(*TINY, "logger._target_=prunelab.models.EmbeddedSource"))


def test_engine_defaults_to_null():
    assert compose_config().get("engine") is None


# ------------------------------------------------------------------------------- 2:4 weights
def test_two_four_detection():
    scores = torch.randn(8, 16)
    weight = scores * NM(2, 4).mask(scores.abs())
    assert engines.is_two_four(weight)
    assert not engines.is_two_four(scores)
    weight[0, :3] = 1.0  # three non-zeros in the first group of four
    assert not engines.is_two_four(weight)
    assert not engines.is_two_four(torch.zeros(4, 6))  # input size not a multiple of 4


def test_shape_rules_of_the_kernels():
    assert engines.shape_problem((11008, 4096), torch.float16, "cusparselt") is None
    assert engines.shape_problem((4096, 11008), torch.bfloat16, "cusparselt") is None
    assert "multiple of (16, 16)" in engines.shape_problem((4096, 4100), torch.float16, "cusparselt")
    assert "not supported" in engines.shape_problem((64, 64), torch.float32, "cusparselt")
    assert "multiple of (32, 64)" in engines.shape_problem((64, 96), torch.float16, "cutlass")


def test_swap_candidates_are_the_two_four_layers(tiny_model):
    tiny_model.to(torch.float16)
    ok, skipped = engines.swap_candidates(tiny_model)
    assert not ok and all("not 2:4" in why for why in skipped.values())  # not pruned yet
    prune_two_four(tiny_model)
    ok, skipped = engines.swap_candidates(tiny_model)
    assert len(ok) == 2 * 7 and not skipped  # 2 blocks x 7 linears, all shapes multiples of 16
    assert "layers.1.mlp.down_proj" in ok


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
def test_weight_swap_refuses_without_cuda(tiny_model):
    with pytest.raises(EngineError, match="no CUDA GPU"):
        with engines.semi_structured_weights(tiny_model):
            pass


def test_versions_name_the_device():
    found = engines.versions()
    assert found["bench/torch"] == torch.__version__ and found["bench/device"]


# ---------------------------------------------------------------------------- TensorRT-LLM
@pytest.mark.parametrize("layout", engines.CONVERT_SCRIPTS)
def test_tensorrt_llm_command_lines(tmp_path, layout):
    examples = tmp_path / "examples"
    (examples / layout).parent.mkdir(parents=True)
    (examples / layout).write_text("# convert_checkpoint.py of a TensorRT-LLM checkout\n")
    cfg = engine("engine=tensorrt_llm", f"engine.examples_dir={examples}")
    script = engines.find_convert_script(engines.trtllm_examples_dir(cfg))
    assert script == examples / layout
    commands = trtllm.plan(cfg, tmp_path / "work", script)
    assert list(commands) == ["convert", "build_dense", "build_2to4"]

    convert = commands["convert"]
    assert convert[1] == str(script)
    assert convert[convert.index("--dtype") + 1] == "float16"
    assert convert[convert.index("--model_dir") + 1] == str(tmp_path / "work" / "hf")

    dense, sparse = commands["build_dense"], commands["build_2to4"]
    assert dense[0] == sparse[0] == "trtllm-build"
    assert "--weight_sparsity" in sparse and "--weight_sparsity" not in dense
    assert sparse[sparse.index("--gemm_plugin") + 1] == "disable"
    for command in (dense, sparse):
        assert command[command.index("--checkpoint_dir") + 1] == str(tmp_path / "work" / "checkpoint")
        assert command[command.index("--max_batch_size") + 1] == "32"  # largest decode batch
        assert command[command.index("--max_input_len") + 1] == "2048"
        assert command[command.index("--max_seq_len") + 1] == str(2048 + 64 + 1)
    assert dense[dense.index("--output_dir") + 1] != sparse[sparse.index("--output_dir") + 1]


def test_sparse_engine_keeps_gemm_plugin_off_whatever_the_dense_one_uses(tmp_path):
    dense = trtllm.build_command(tmp_path, tmp_path / "d", False, 8, 512, 1024, dense_gemm_plugin="auto")
    sparse = trtllm.build_command(tmp_path, tmp_path / "s", True, 8, 512, 1024, dense_gemm_plugin="auto")
    assert dense[dense.index("--gemm_plugin") + 1] == "auto"
    assert sparse[sparse.index("--gemm_plugin") + 1] == "disable"


def test_missing_examples_dir_is_explained(tmp_path):
    with pytest.raises(EngineError, match="git clone --branch v1.2.1"):
        engines.find_convert_script(None)
    with pytest.raises(EngineError, match="holds none of"):
        engines.find_convert_script(tmp_path)


def test_failed_command_reports_its_log(tmp_path):
    with pytest.raises(EngineError, match="exit code 3") as error:
        trtllm.run_logged(["python", "-c", "print('building...'); raise SystemExit(3)"], tmp_path / "b.log")
    assert "building..." in str(error.value)
    assert trtllm.run_logged(["python", "-c", "print('ok')"], tmp_path / "ok.log") >= 0


# -------------------------------------------------------------------------------------- timing
def test_time_call_returns_median_of_repeats():
    timing = time_call(lambda: time.sleep(0.002), "cpu", warmup=1, repeats=5)
    assert len(timing.samples) == 5 and sorted(timing.samples)[2] == timing.median_ms
    assert timing.median_ms >= 2.0


def test_interleaved_timing_repeats_short_calls():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.003)

    timings = time_interleaved({"fast": fast, "slow": slow}, "cpu", warmup=2, repeats=3, min_sample_ms=2.0)
    assert timings["slow"].median_ms >= 3.0 > timings["fast"].median_ms
    assert calls["fast"] > 10 * calls["slow"]  # short calls are repeated inside each sample


# --------------------------------------------------------------------------------- CPU CSR
def test_distinct_shapes_of_llama7b():
    shape = roofline.load_model_shape("llama2_7b_shapes")
    groups = {(s.in_features, s.out_features): (names, count) for names, count, s in
              cpu_sparse.distinct_shapes(shape.linear_shapes())}
    assert groups == {(4096, 4096): ("q_proj+k_proj+v_proj+o_proj", 4), (4096, 11008): ("gate_proj+up_proj", 2),
                      (11008, 4096): ("down_proj", 1)}


def test_csr_benchmark_returns_medians_for_every_shape_sparsity_and_token_count(tiny_model):
    shape = roofline.ModelShape.from_hf_config(tiny_model.config)
    from prunelab.models import DecoderAdapter

    block = DecoderAdapter(tiny_model).blocks[0]
    weights = {n: layer.weight for n, layer in DecoderAdapter.linear_layers(block).items()}
    results = cpu_sparse.benchmark_csr(weights, shape.linear_shapes(), [0.5, 0.9], [1, 8], warmup=1, repeats=3,
                                       min_sample_ms=0.5, threads=1)
    assert len(results) == 4 * 2 * 2  # distinct shapes (q/o, k/v, gate/up, down) x tokens x sparsities
    assert sum(r.count for r in results if r.tokens == 1 and r.sparsity == 0.5) == 7
    assert all(r.dense_ms > 0 and r.csr_ms > 0 and r.threads == 1 for r in results)
    found = cpu_sparse.metrics(results)
    assert set(k for k in found if "speedup" in k) == {f"bench/cpu_csr_speedup_s{s}_t{t}" for s in (50, 90) for t in (1, 8)}
    assert len(found["bench/cpu_csr"]) == len(results)
    assert torch.get_num_threads() >= 1


def test_magnitude_prune_hits_the_sparsity():
    weight = torch.randn(16, 100)
    assert float((cpu_sparse.magnitude_prune(weight, 0.7) == 0).float().mean()) == pytest.approx(0.7)


# --------------------------------------------------------------------------- end-to-end loops
def test_kv_cache_decode_matches_greedy_recompute(tiny_model):
    prompt = e2e.random_ids(2, 6, 1000, torch.device("cpu"))
    with torch.no_grad():
        cache, first = e2e.prefill_cache(tiny_model, prompt)
        fed = e2e.decode_steps(tiny_model, cache, first, 4)
        sequence = prompt
        expected = []
        for _ in range(4):
            token = tiny_model(input_ids=sequence, use_cache=False).logits[:, -1:].argmax(-1)
            expected.append(token)
            sequence = torch.cat([sequence, token], dim=1)
    assert torch.equal(fed, torch.cat(expected, dim=1))


def test_prefill_and_decode_measurements_on_cpu(tiny_model):
    dense = e2e.measure(tiny_model, [8, 16], [1, 2], decode_context=4, decode_steps=3, vocab=1000,
                        device=torch.device("cpu"), warmup=1, repeats=2)
    assert set(dense.prefill) == {8, 16} and set(dense.decode) == {1, 2}
    decode = dense.decode[2]
    assert decode.tokens_per_s == pytest.approx(2 * 3 / (decode.loop.median_ms / 1e3))
    halved = e2e.EndToEnd({n: e2e.Timing(t.median_ms / 2, t.samples) for n, t in dense.prefill.items()},
                          {b: e2e.DecodeTiming(d.batch, d.context, d.steps, e2e.Timing(d.loop.median_ms / 2, d.loop.samples))
                           for b, d in dense.decode.items()})
    found = e2e.compare(dense, halved)
    assert found["bench/prefill_speedup_16"] == pytest.approx(2.0)
    assert found["bench/decode_speedup_b1"] == pytest.approx(2.0)
    assert found["bench/decode_tok_s_2to4_b2"] == pytest.approx(2 * found["bench/decode_tok_s_dense_b2"])


def test_logits_check(tiny_model):
    logits = e2e.reference_logits(tiny_model, 1000, torch.device("cpu"), tokens=8)
    assert e2e.compare_logits(logits, logits.clone(), 1e-6)["bench/logits_match"]
    noisy = logits + 0.1 * logits.abs().max()
    result = e2e.compare_logits(logits, noisy, 0.05)
    assert not result["bench/logits_match"] and result["bench/logits_rel_max_diff"] == pytest.approx(0.1, rel=1e-3)


# ------------------------------------------------------------------------------ the stage
def test_cpu_engine_in_the_pipeline(tmp_path):
    overrides = ["engine=cpu", "engine.tokens=[1,16]", "engine.repeats=3", "engine.min_sample_ms=0.5",
                 "engine.threads=1"]
    cfg = compose_config(*TINY, "method=magnitude", *overrides)
    pipeline.main(cfg, output_dir=tmp_path, overrides=overrides)
    record = json.loads((tmp_path / "metrics.json").read_text())
    metrics = record["metrics"]
    assert record["status"] == "completed"
    assert metrics["bench/engine"] == "cpu" and metrics["bench/roofline_gpu"] == "H100"
    for s in (50, 70, 90):
        for t in (1, 16):
            assert metrics[f"bench/cpu_csr_speedup_s{s}_t{t}"] > 0
    assert metrics["bench/roofline_decode_bound"] == metrics["bench/roofline_decode_bound_b1"]
    assert 1.0 < metrics["bench/roofline_decode_bound"] <= 16 / 9
    assert metrics["bench/roofline_linear_decode_bound"] == pytest.approx(16 / 9)
    assert {"bench/roofline_prefill_bound_128", "bench/roofline_decode_bound_b32"} <= set(metrics)
    bench_dir = Path(metrics["artifacts/bench_dir"])
    assert (bench_dir / "cpu_csr.csv").read_text().startswith("layers,count,in_features")
    assert "TOTAL (all blocks)" in (bench_dir / "roofline.csv").read_text()
    assert metrics["eval/ppl_wiki"] > 1  # the benchmark ran after evaluation


def test_measured_speedups_sit_beside_their_bounds():
    from prunelab.bench import stage

    metrics = {"bench/roofline_prefill_bound_512": 1.9, "bench/prefill_speedup_512": 1.3,
               "bench/roofline_decode_bound_b1": 1.74, "bench/roofline_decode_bound": 1.74,
               "bench/roofline_gemm_bound_t2048": 2.0, "bench/gemm_speedup_t2048": 1.5, "bench/roofline_ridge": 295.0}
    rows = {r["measurement"]: (r["roofline_bound"], r["measured"]) for r in stage.comparison_rows(metrics)}
    assert rows["prefill_512"] == (1.9, 1.3) and rows["gemm_t2048"] == (2.0, 1.5)
    assert rows["decode_b1"][0] == 1.74 and rows["decode_b1"][1] != rows["decode_b1"][1]  # nan: not measured
    assert set(rows) == {"prefill_512", "decode_b1", "gemm_t2048"}


@pytest.mark.skipif(CUDA, reason="without CUDA, auto falls back to the H100 row")
def test_roofline_gpu_auto_without_cuda():
    from prunelab.bench import stage

    assert stage.roofline_gpu(engine("engine=torch_sparse")).name == "H100"
    assert stage.roofline_gpu(engine("engine=cpu", "engine.roofline_gpu=A100")).name == "A100"


@pytest.mark.skipif(CUDA or TRTLLM, reason="checks the errors on a machine without CUDA and tensorrt_llm")
def test_gpu_engines_refuse_to_fake_results(tmp_path, tiny_model, tokenizer):
    from prunelab.bench import stage

    shape = roofline.ModelShape.from_hf_config(tiny_model.config)
    with pytest.raises(EngineError, match="engine=cpu"):
        engine("engine=torch_sparse").run(tiny_model, None, shape, None, tmp_path, {})
    with pytest.raises(EngineError, match=r"pip install -e \.\[tensorrt\]"):
        engine("engine=tensorrt_llm").run(tiny_model, tokenizer, shape, None, tmp_path, {})
    metrics: dict = {}
    with pytest.raises(EngineError):
        stage.bench_stage(engine("engine=torch_sparse"), tiny_model, tokenizer,
                          torch.device("cpu"), tmp_path, into=metrics)
    assert metrics["bench/roofline_decode_bound"] > 1  # what was computed before the failure is kept


@pytest.mark.gpu
def test_torch_sparse_engine_measures_the_tiny_model_on_cuda(tmp_path):
    overrides = ["method=magnitude", "pattern=2:4", "model.device=cuda", "engine=torch_sparse",
                 "engine.gemm_tokens=[16,64]", "engine.prefill_tokens=[32]", "engine.decode_batches=[1]",
                 "engine.decode_context=16", "engine.decode_steps=4", "engine.warmup=1", "engine.repeats=2"]
    pipeline.main(compose_config(*TINY, *overrides), output_dir=tmp_path, overrides=overrides)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["bench/sparse_layers"] == 2 * 7 and metrics["bench/logits_match"]
    assert metrics["bench/prefill_speedup_32"] > 0 and metrics["bench/decode_speedup_b1"] > 0


def test_gemm_weights_come_from_two_four_layers_only(tiny_model):
    from prunelab.bench.torch_sparse import two_four_weights
    from prunelab.models import DecoderAdapter
    from prunelab.prune import PruneTarget

    assert two_four_weights(tiny_model) == {}
    prune_model(tiny_model, build_method("method=magnitude"), 0.5, NM(2, 4), None, torch.device("cpu"),
                PruneTarget(("mlp",), (1, 2)))
    found = two_four_weights(tiny_model)
    assert set(found) == {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    assert found["mlp.down_proj"] is DecoderAdapter(tiny_model).blocks[1].mlp.down_proj.weight


def test_swapped_linear_sees_a_two_dimensional_input():
    """A decode step's ``[batch, 1, in]`` input reaches a 2:4 weight as ``[tokens, in]`` (cuSPARSELt
    tensors cannot be ``expand``ed by a batched matmul: the H200 run of the prepared check failed so)."""
    import types

    layer = torch.nn.Linear(8, 4)
    seen = []
    linear = torch.nn.functional.linear

    def recording(x, weight, bias=None):
        seen.append(tuple(x.shape))
        return linear(x, weight, bias)

    x = torch.randn(3, 1, 8)
    expected = layer(x)
    layer.forward = types.MethodType(engines._two_dimensional_linear, layer)
    torch.nn.functional.linear = recording
    try:
        got = layer(x)
    finally:
        torch.nn.functional.linear = linear
    assert seen == [(3, 8)] and got.shape == (3, 1, 4) and torch.equal(got, expected)



def test_graph_speedups_come_from_graph_times_and_skip_uncaptured_token_counts():
    from prunelab.bench.gemm import GemmResult, block_speedups, metrics

    rows = [GemmResult("q", 4, 64, 64, 16, dense_ms=1.0, sparse_ms=4.0, max_abs_diff=0.0, dense_graph_ms=1.0, sparse_graph_ms=0.5),
            GemmResult("down", 1, 64, 64, 16, dense_ms=2.0, sparse_ms=4.0, max_abs_diff=0.0, dense_graph_ms=2.0, sparse_graph_ms=2.0),
            GemmResult("q", 4, 64, 64, 512, dense_ms=1.0, sparse_ms=1.0, max_abs_diff=0.0)]  # not captured
    assert block_speedups(rows) == {16: 6.0 / 20.0, 512: 1.0}  # eager: host set-up makes 2:4 slower
    assert block_speedups(rows, graph=True) == {16: 6.0 / 4.0}
    found = {k: v for k, v in metrics(rows, None, None).items() if k != "bench/gemm"}
    assert found == {"bench/gemm_speedup_t16": 0.3, "bench/gemm_speedup_t512": 1.0, "bench/gemm_graph_speedup_t16": 1.5}
    assert rows[2].graph_speedup is None and rows[0].row()["graph_speedup"] == 2.0


def test_graph_prefill_comparison_and_cpu_refusal():
    from prunelab.bench.timing import Timing, cuda_graph

    dense, sparse = {128: Timing(10.0, (10.0,)), 512: Timing(30.0, (30.0,))}, {128: Timing(8.0, (8.0,))}
    assert e2e.compare_graphed(dense, sparse) == {"bench/prefill_graph_ms_dense_128": 10.0,
                                                  "bench/prefill_graph_ms_2to4_128": 8.0,
                                                  "bench/prefill_graph_speedup_128": 1.25}
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        cuda_graph(lambda: None, "cpu")
