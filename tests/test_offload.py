"""Models larger than one device (``model.device_map``): an offloaded run measures what the run in
memory measures, pruned weights land in accelerate's offload store, and the combinations that
cannot run are refused before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunelab import offload, pipeline
from prunelab.checks import ConfigError
from prunelab.config import build
from prunelab.models import DecoderAdapter
from prunelab.plan import make_plan
from prunelab.prune import overall_sparsity
from tests.conftest import TINY, compose_config, requires_embedded
from tests.test_zeroshot import requires_bundled_data

ALL_ON_DISK = "model.device_map={model: disk, lm_head: disk}"
MIXED = ("model.device_map={model.embed_tokens: cpu, lm_head: cpu, model.rotary_emb: cpu, model.layers.0: cpu, "
         "model.layers.1: disk, model.norm: disk}")


def run(tmp_path: Path, *overrides: str, base: tuple[str, ...] = tuple(TINY)) -> dict:
    cfg = compose_config(*base, *overrides)
    pipeline.main(cfg, output_dir=tmp_path, overrides=list(overrides))
    return json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize("method,placement", [
    ("wanda", (ALL_ON_DISK,)),
    ("magnitude", (MIXED,)),
    ("sparsegpt", (ALL_ON_DISK,)),
])
def test_offloaded_run_measures_what_the_run_in_memory_measures(tmp_path, method, placement):
    in_memory = run(tmp_path / "memory", f"method={method}")
    offloaded = run(tmp_path / "offload", f"method={method}", *placement)
    assert offloaded["status"] == "completed", offloaded.get("error")
    assert offloaded["metrics"]["model/weights_disk_mb"] > 0
    for key in ("eval/ppl_wiki", "prune/achieved_sparsity", "prune/layer_sparsity"):
        assert offloaded["metrics"][key] == in_memory["metrics"][key], key  # bitwise: the same float
    assert not list((tmp_path / "offload").glob("offload.*")), "the offload store outlives its run"


def test_pruned_weights_are_written_into_the_offload_store(tmp_path, tiny_model):
    cfg = compose_config(*TINY, "method=magnitude")
    source = build(cfg.model.source, "model.source")
    model, _ = source.load_dispatched(torch.float32, offload.DispatchSpec("auto", {"cpu": 2**20}), tmp_path)
    layer = model.model.layers[1].mlp.down_proj
    assert layer.weight.device.type == "meta"  # offloaded: only the store holds it
    plan = make_plan(cfg)
    from prunelab.prune import prune_model

    prune_model(model, plan.method, 0.5, plan.pattern, None, torch.device("cpu"))
    index = json.loads((tmp_path / "index.json").read_text())
    key = "model.layers.1.mlp.down_proj.weight"
    stored = torch.from_numpy(__import__("numpy").fromfile(tmp_path / f"{key}.dat", dtype=index[key]["dtype"]))
    assert float((stored == 0).float().mean()) == 0.5
    expected = tiny_model.model.layers[1].mlp.down_proj.weight.detach().clone()
    prune_model(tiny_model, plan.method, 0.5, plan.pattern, None, torch.device("cpu"))
    assert torch.equal(stored.reshape(expected.shape), tiny_model.model.layers[1].mlp.down_proj.weight)
    assert layer.weight.device.type == "meta"  # given back to the store, not left in memory
    assert overall_sparsity(DecoderAdapter(model)) == overall_sparsity(DecoderAdapter(tiny_model))
    assert not torch.equal(expected, tiny_model.model.layers[1].mlp.down_proj.weight)


@pytest.mark.parametrize("override,message", [
    ("save_model=true", "model.device_map=auto cannot run with save_model=true"),
    ("method=wanda_sp", "structured methods change the shapes"),
    ("engine=cpu", "cannot run with engine=cpu"),
    ("recover=lora", "cannot run with recover=lora"),
    ("quant=rtn", "cannot run with quant=rtn"),
])
def test_combinations_that_cannot_run_offloaded_are_refused_before_loading(override, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(compose_config(*TINY, "model.device_map=auto", override))


@pytest.mark.parametrize("overrides,message", [
    (("model.device_map=everywhere",), r"model.device_map='everywhere' is not valid; allowed: null .*, auto"),
    (("model.device_map={model: tpu, lm_head: cpu}",), r"model.device_map.model='tpu' is not a device here; allowed: cpu, disk"),
    (("model.device_map={model: cpu, lm_head: cpu, model.layers.0.mlp: disk}",), r"places 'model.layers.0.mlp', a part of decoder block 0"),
    (("model.device_map={model.embed_tokens: cpu}",), r"gives no device to model.layers.0"),
    (("model.device_map=auto", "model.max_memory={cpu: lots}"), r"model.max_memory.cpu='lots' is not a size"),
    (("model.device_map=auto", "model.max_memory={7: 1GiB}"), r"names GPU 7, but \d+ GPU\(s\) are visible"),
    (("model.offload_folder=/tmp/x",), r"without model.device_map: nothing is offloaded"),
])
def test_bad_placement_settings_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(compose_config(*TINY, *overrides))


@requires_embedded
def test_embedded_model_offloaded_to_disk_stays_under_its_own_size_and_measures_the_same(tmp_path):
    """SmolLM2-135M (513 MiB of fp32 weights) pruned and evaluated within model.max_memory={cpu: 200MiB}:
    the run's resident memory grows by less than the model's bytes, and perplexity is bitwise the same."""
    settings = ("method=magnitude", "eval.max_windows=2", "eval.batch_size=1", "eval.ppl_datasets=[wiki]", "logger=none")
    in_memory = run(tmp_path / "memory", base=settings)
    offloaded = run(tmp_path / "offload", "model.device_map=auto", "model.max_memory={cpu: 200MiB}", base=settings)
    assert offloaded["status"] == "completed", offloaded.get("error")
    assert offloaded["metrics"]["eval/ppl_wiki"] == in_memory["metrics"]["eval/ppl_wiki"]
    model_bytes = sum(offloaded["metrics"][key] for key in offloaded["metrics"] if key.startswith("model/weights_"))
    grown = offloaded["metrics"]["memory/peak_rss_mb"] - offloaded["metrics"]["memory/start_rss_mb"]
    assert model_bytes > 500 and grown < model_bytes, (grown, model_bytes)


@requires_bundled_data
def test_zeroshot_scores_the_dispatched_model_as_it_scores_the_model_in_memory(tmp_path):
    """lm-eval gets the dispatched model as it is (never moved to one device): every answer's
    log-likelihood equals the one of the model in memory."""
    settings = ("eval=zeroshot_only", "eval.tasks=[piqa]", "eval.limit=4", "method=magnitude")
    in_memory = run(tmp_path / "memory", *settings)
    offloaded = run(tmp_path / "offload", *settings, ALL_ON_DISK)
    assert offloaded["status"] == "completed", offloaded.get("error")

    def answers(directory: Path) -> list:
        lines = (directory / "lm_eval" / "samples_piqa.jsonl").read_text().splitlines()
        return [json.loads(line)["filtered_resps"] for line in lines]

    assert answers(tmp_path / "offload") == answers(tmp_path / "memory") != []
    assert offloaded["metrics"]["zeroshot/piqa/acc"] == in_memory["metrics"]["zeroshot/piqa/acc"]
