"""The compression preset (issue 17): six pruned models x four weight formats compose into runs the
plan accepts, each timed in llama.cpp on the GGUF type that matches its format."""
from __future__ import annotations

from hydra import compose, initialize_config_dir

from prunelab.plan import make_plan
from tests.conftest import CONF_DIR
from tests.test_study import compose_with_hydra, grid


def test_compression_preset_is_every_method_in_every_format_and_each_job_plans():
    cfg = compose_with_hydra("+experiment=compression", "model=tiny_random")
    jobs = grid(dict(cfg.hydra.sweeper.params))
    assert len(jobs) == 24 and cfg.hydra.sweep.dir == "multirun/tiny_random/compression"
    seen = {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for job in jobs:
            job_cfg = compose(config_name="config", overrides=["+experiment=compression", "model=tiny_random",
                                                                "model.source.architecture.num_hidden_layers=5",
                                                                "model.source.architecture.max_position_embeddings=1024", *job])
            plan = make_plan(job_cfg)  # every combination is accepted before any weights load
            quant = (plan.quant.name, plan.quant.bits, plan.quant.group_size) if plan.quant is not None else None
            seen[(plan.method_label, plan.summary()["pattern"], plan.sparsity, quant)] = plan.engine.quant
    methods = {(m, p, s) for m, p, s, _ in seen}
    assert methods == {("dense", "unstructured", 0.0), ("wanda", "unstructured", 0.5), ("wanda", "2:4", 0.5),
                       ("flap", "structured", 0.3), ("shortgpt", "structured", 0.3), ("sparsegpt", "unstructured", 0.5)}
    formats = {q: t for (_, _, _, q), t in seen.items()}
    assert formats == {None: "F16", ("rtn", 8, -1): "Q8_0", ("rtn", 4, -1): "Q4_K_M", ("gptq", 4, -1): "Q4_K_M"}
