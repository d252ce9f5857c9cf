"""Hardening of the plan and the model load (issue 16): hostile input is rejected in one line,
before the weights load where the config alone decides, and a checkpoint that does not match its
config fails the run before pruning instead of completing with random or dropped weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prunelab import models, pipeline, structure
from prunelab.checks import ConfigError
from prunelab.plan import make_plan
from tests.conftest import ROOT, TINY, compose_config
from tests.test_faults import run_cli

LOCAL = ["model=local", "model.dtype=float32", "model.seqlen=64", "model.device=cpu"]


# ------------------------------------------------------------- checkpoints that disagree with their config
def _checkpoint(tmp_path: Path, tiny_model_and_tokenizer, name: str = "ckpt") -> Path:
    model, tokenizer = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / name)
    tokenizer.save_pretrained(tmp_path / name)
    return tmp_path / name


def _edit_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    weights = load_file(path)
    edit(weights)
    save_file(weights, path, metadata={"format": "pt"})


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


DAMAGE = {
    "missing": (lambda d: _edit_weights(d, lambda w: w.pop("model.layers.0.mlp.up_proj.weight")),
                "1 weight(s) missing from the checkpoint (model.layers.0.mlp.up_proj.weight)"),
    "unexpected": (lambda d: _edit_weights(d, lambda w: w.update({"model.layers.2.mlp.up_proj.weight": torch.zeros(128, 64)})),
                   "1 unexpected weight(s) in it (model.layers.2.mlp.up_proj.weight)"),
    "config_fewer_blocks": (lambda d: _edit_config(d, num_hidden_layers=1),
                            "9 unexpected weight(s) in it (model.layers.1.input_layernorm.weight"),
    "config_more_blocks": (lambda d: _edit_config(d, num_hidden_layers=3),
                           "9 weight(s) missing from the checkpoint (model.layers.2.input_layernorm.weight"),
    "other_shape": (lambda d: _edit_weights(d, lambda w: w.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(64, 64)})),
                    "1 weight(s) of another shape (model.layers.0.mlp.up_proj.weight)"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_checkpoint_that_disagrees_with_its_config_fails_before_pruning(tmp_path, tiny_model_and_tokenizer, damage):
    checkpoint = _checkpoint(tmp_path, tiny_model_and_tokenizer)
    edit, message = DAMAGE[damage]
    edit(checkpoint)
    overrides = [*LOCAL, f"model.path={checkpoint}"]
    with pytest.raises(models.ModelLoadError, match=r"does not match its config"):
        pipeline.main(compose_config(*TINY[1:], *overrides), output_dir=tmp_path / "run", overrides=overrides)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed" and f"the checkpoint at {checkpoint}" in record["error"]
    assert message in record["error"], record["error"]
    assert "prune/achieved_sparsity" not in record["metrics"]  # nothing was pruned


def test_a_checkpoint_with_a_tied_lm_head_and_rotary_buffers_loads(tmp_path, tiny_model_and_tokenizer):
    checkpoint = _checkpoint(tmp_path, tiny_model_and_tokenizer)
    assert "lm_head.weight" not in load_file(checkpoint / "model.safetensors")  # tied: legitimately absent
    model, _ = models.LocalSource(str(checkpoint)).load(torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_a_shrunk_checkpoint_missing_a_weight_names_it(tmp_path, tiny_model, tokenizer):
    from prunelab.structure import BlockGeometry, Removal

    structure.apply(tiny_model.model.layers[0], Removal(groups=torch.tensor([1]), channels=torch.arange(10)))
    saved = models.save_pretrained(tiny_model, tokenizer, tmp_path / "shrunk")
    assert saved["artifacts/model_loader"] == "local (prunelab_layers)"
    assert BlockGeometry.from_block(models.LocalSource(str(tmp_path / "shrunk")).load(torch.float32)[0].model.layers[0]).groups == 1
    _edit_weights(tmp_path / "shrunk", lambda w: w.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(models.ModelLoadError, match=r"does not match its config and per-layer shape map: 1 weight\(s\) "
                                                    r"missing from the checkpoint \(model.layers.1.mlp.down_proj.weight\)"):
        models.LocalSource(str(tmp_path / "shrunk")).load(torch.float32)


# ------------------------------------------------------------------ rejected by the plan, in process
def _reject(*overrides: str) -> str:
    """The plan's one-line error for ``TINY + overrides`` (a ConfigError, never another exception)."""
    with pytest.raises(ConfigError) as caught:
        make_plan(compose_config(*TINY, *overrides))
    assert "\n" not in str(caught.value)
    return str(caught.value)


PLAN_REJECTS = [
    (["model.device=bogus"], "model.device='bogus' is not a device; allowed: auto, cpu, cuda or cuda:<index>"),
    (["model.device=meta"], "model.device='meta' is not supported (the model runs on the CPU or a CUDA GPU)"),
    (["model.source.architecture.num_hidden_layers=0"], "model.source.architecture.num_hidden_layers=0 must be a positive integer"),
    (["model.source.architecture.hidden_size=-64"], "model.source.architecture.hidden_size=-64 must be a positive integer"),
    (["model.source.architecture.hidden_size=63"], "model.source.architecture.hidden_size=63 is not a multiple of "
                                                   "architecture.num_attention_heads=4; allowed: a multiple of 4"),
    (["model.source.architecture.num_key_value_heads=3"], "num_key_value_heads=3 does not divide architecture.num_attention_heads=4"),
    (["model.source.seed=abc"], "model.source.seed='abc' must be an integer"),
    (["method=sparsegpt", "method.percdamp=1e308"], "method.percdamp=1e+308 is outside (0, 1]"),
    (["method=ria", "ria_alpha=1e308"], "method.alpha=1e+308 is outside [0, 4] (ria_alpha"),
    (["engine=roofline", "engine.roofline_gpu=B200"], "engine.roofline_gpu='B200' is not in the roofline table; "
                                                      "allowed: auto, A100, A6000, L40S, H100, H200"),
    (["engine=structured", "engine.prefill_tokens=[100000]"], "engine.prefill_tokens=[100000] runs 100000-token "
                                                              "sequences, beyond the model's context of 256; allowed: at most 256"),
    (["engine=structured", "engine.prefill_tokens=[16]", "engine.decode_context=250"],
     "engine.decode_context=250 + engine.decode_steps=16 runs 266-token sequences"),
    (["logger=wandb", "logger.project=bad/name"], "logger.project='bad/name' contains /, which W&B does not allow"),
    (["logger=wandb", "logger.project="], "logger.project='' must be a non-empty name"),
    (["logger=wandb", "logger.tags=[ok,'']"], "logger.tags[1]='' must be a string of 1 to 64 characters"),
    (["calib_data.nsamples=10000000000"], "calib_data.nsamples=10000000000 would hold 305175.8 GiB of block activations"),
    (["model.name=../../escape"], "model.name='../../escape' must be a plain file name"),
    (["model.name=a/b"], "allowed: letters, digits, '.', '_' and '-'"),
    (["eval.ppl_datasets=[]"], "eval.ppl_datasets=[] with no eval.tasks: the run would measure nothing"),
    (["engine=cpu", "engine.sparsities=[]"], "engine.sparsities=[] must list at least one sparsity"),
    (["engine=cpu", "engine.tokens=[1000000000000]"], "engine.tokens=[1000000000000] multiplies 1000000000000 token "
                                                      "rows, beyond the model's context of 256"),
    (["engine=cpu", "engine.min_sample_ms=1e308"], "engine.min_sample_ms=1e+308 is outside [0, 10000]"),
    (["engine=structured", "engine.decode_batches=[100000000]"], "engine.decode_batches[0]=100000000 is outside [1, 4096]"),
    (["engine=structured", "engine.repeats=1000000000"], "engine.repeats=1000000000 is outside [1, 1000]"),
    (["engine=structured", "engine.warmup=100000"], "engine.warmup=100000 is outside [0, 1000]"),
    (["model.source.architecture.num_hidden_layers=100000000"], "model=tiny_random has 13732.9 GiB of weights in float32 "
                                                                "(100000000 blocks of hidden size 64), more than this machine's"),
    (["+model.source.architecture.hidden_act=bogus"], "the model config (model_type llama) does not build a model: KeyError"),
    (["model.source.architecture.tie_word_embeddings=maybe"], "model.source.architecture is not a valid LlamaConfig"),
    (["eval.tasks=[piqa]", "eval.num_fewshot=100000"], "eval.num_fewshot=100000 is outside [0, 25]"),
    (["method=shortgpt", "sparsity=0.9", "target.blocks=[0,1]"], "target.blocks leaves 1 block in scope; allowed: a "
                                                                 "target.blocks range of at least 2 blocks"),
]


@pytest.mark.parametrize("overrides,message", PLAN_REJECTS, ids=[" ".join(o) for o, _ in PLAN_REJECTS])
def test_hostile_config_is_rejected_by_the_plan_in_one_line(overrides, message):
    assert message in _reject(*overrides)


@pytest.mark.parametrize("config,message", [
    ("{not json", "is not a valid JSON file"),
    ("{}", "Should have a `model_type` key"),
    (json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4}),
     "(model_type gpt2, GPT2LMHeadModel) is not a LLaMA-family decoder"),
])
def test_a_local_config_that_is_no_llama_is_rejected_before_the_weights_load(tmp_path, config, message):
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ConfigError) as caught:
        make_plan(compose_config(*TINY[1:], *LOCAL, f"model.path={tmp_path}"))
    assert message in str(caught.value) and str(tmp_path) in str(caught.value)


# --------------------------------------------------------------------------- FLAP's reachable sparsity
@pytest.mark.parametrize("overrides,most", [
    (["method=flap", "sparsity=0.95"], "0.8281"),  # each block keeps 1 of 2 head groups and 1 of 128 channels
    (["method=flap", "sparsity=0.995", "target.modules=mlp"], "0.9921"),
    (["method=flap", "method.structure=AL-MM", "method.remove_heads=1", "sparsity=0.9"], "0.7447"),
    (["method=flap", "method.structure=UL-MM", "method.remove_heads=2", "sparsity=0.9"], "0.8281"),
])
def test_flap_rejects_a_sparsity_it_cannot_reach_and_says_the_most(overrides, most):
    message = _reject(*overrides)
    assert "cannot be reached" in message and message.endswith(f"allowed: sparsity <= {most}"), message


def test_flap_accepts_its_most():
    make_plan(compose_config(*TINY, "method=flap", "sparsity=0.8281"))


def test_the_calibration_bound_says_the_most_samples_allowed():
    message = _reject("calib_data.nsamples=10000000000")
    most = int(message.rsplit("<= ", 1)[1])
    make_plan(compose_config(*TINY, f"calib_data.nsamples={most}"))  # the bound itself plans


@pytest.mark.parametrize("overrides", [
    ["eval.ppl_datasets=[]", "eval.tasks=[arc_easy]"],  # zero-shot only is a legitimate run
    ["method=ria", "ria_alpha=4"], ["method=sparsegpt", "method.percdamp=1"],
    ["engine=roofline", "engine.roofline_gpu=h200"],  # the roofline engine runs no sequence through the model
    ["engine=roofline", "engine.prefill_tokens=[100000]"],
    ["logger=wandb", "logger.project=my-project_2"],
])
def test_values_at_the_edge_of_the_allowed_range_still_plan(overrides):
    make_plan(compose_config(*TINY, *overrides))


# --------------------------------------------------------------------- on the command line: one line, exit 2
CLI_REJECTS = [
    (["method=flap", "sparsity=0.95"], "sparsity=0.95 with method=flap (method.structure=AL-AM) cannot be reached"),
    (["method=sparsegpt", "method.percdamp=1e308"], "method.percdamp=1e+308 is outside (0, 1]"),
    (["engine=roofline", "engine.roofline_gpu=B200"], "engine.roofline_gpu='B200' is not in the roofline table"),
    (["model.device=bogus"], "model.device='bogus' is not a device"),
    (["model.source.architecture.hidden_size=63"], "model.source.architecture.hidden_size=63 is not a multiple"),
    (["logger=wandb", "logger.project=bad/name"], "logger.project='bad/name' contains /"),
    (["model.name=../../escape"], "model.name='../../escape' must be a plain file name"),
    (["eval.ppl_datasets=[]"], "the run would measure nothing"),
]


@pytest.mark.slow  # one Python start-up per case
@pytest.mark.parametrize("overrides,message", CLI_REJECTS, ids=[" ".join(o) for o, _ in CLI_REJECTS])
def test_hostile_input_is_rejected_on_the_command_line_before_the_model_loads(tmp_path, overrides, message):
    result = run_cli(tmp_path, *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed" and message in record["error"]
    assert "plan" not in record and "time/load_s" not in record["metrics"]  # nothing was loaded


@pytest.mark.slow
def test_a_checkpoint_missing_a_weight_fails_on_the_command_line_in_one_line(tmp_path, tiny_model_and_tokenizer):
    checkpoint = _checkpoint(tmp_path, tiny_model_and_tokenizer)
    DAMAGE["missing"][0](checkpoint)
    result = run_cli(tmp_path, *LOCAL, f"model.path={checkpoint}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"the checkpoint at {checkpoint} does not match its config" in result.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed" and "prune/achieved_sparsity" not in record["metrics"]


@pytest.mark.slow  # one Python start-up
def test_a_sweep_with_a_model_name_that_leaves_multirun_writes_nothing(tmp_path):
    """The sweep directory (multirun/<model.name>/...) is made before any job's plan runs: the
    name is checked when the multirun starts, so nothing is written outside multirun/."""
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "model=tiny_random", "model.name=../escape",
                             "logger=none", "method=magnitude"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model.name='../escape' must be a plain file name" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]
