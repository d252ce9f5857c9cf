"""The compression preset (issue 17): six pruned models x four weight formats compose into runs the
plan accepts, each timed in llama.cpp on the GGUF type that matches its format."""
from __future__ import annotations

from hydra import compose, initialize_config_dir

from prunelab.plan import make_plan
from prunelab.study.sweeper import baseline_jobs
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


TINY = ["model=tiny_random", "model.source.architecture.num_hidden_layers=5",  # shortgpt 30% of 5 blocks
        "model.source.architecture.max_position_embeddings=1024"]  # llama.cpp: 512-token prefill + context
SHORT = ["engine.repeats=3", "engine.prefill_tokens=[256]", "engine.decode_steps=16"]  # plain overrides, no ++


def sweeper_jobs(params: dict[str, str], arguments: list[str]) -> list[list[str]]:
    """A sweep's jobs as Hydra's basic sweeper writes their overrides: the preset's swept keys first
    (with the command line's values where it gives them), then the rest of the command line."""
    given = dict(a.split("=", 1) for a in arguments)
    swept = {key: given.pop(key, value) for key, value in params.items()}
    return [[*job, *(f"{k}={v}" for k, v in given.items())] for job in grid(swept)]


def test_plain_engine_overrides_reach_every_job_of_the_preset():
    """The preset selects engine=llamacpp itself: `engine.repeats=3` (no ++) composes the sweep's own
    config and every job, in the order the sweeper gives the overrides (swept keys before the preset)."""
    arguments = ["+experiment=compression", *TINY, *SHORT]
    cfg = compose_with_hydra(*arguments)
    assert cfg.engine.name == "llamacpp" and cfg.engine.repeats == 3
    jobs = sweeper_jobs(dict(cfg.hydra.sweeper.params), arguments)
    assert len(jobs) == 24 and all(job[0].startswith("+experiment/compression=") for job in jobs)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        composed = {tuple(job): compose(config_name="config", overrides=job) for job in jobs}
        assert baseline_jobs(jobs, is_dense=lambda job: composed[tuple(job)].method.name == "dense") == []  # dense is swept
        seen = set()
        for job_cfg in composed.values():
            plan = make_plan(job_cfg)
            assert (plan.engine.repeats, list(plan.engine.prefill_tokens), plan.engine.decode_steps) == (3, [256], 16)
            seen.add((plan.quant.name if plan.quant is not None else None, plan.engine.quant))
    assert seen == {(None, "F16"), ("rtn", "Q8_0"), ("rtn", "Q4_K_M"), ("gptq", "Q4_K_M")}


def test_a_sweep_without_the_dense_model_gets_it_in_each_format_with_the_engine_overrides():
    """Sweeping some methods only, the sweeper adds the dense model, once per weight format (the format
    is what a dense model sees of the setting), timed in llama.cpp in that format's GGUF type."""
    arguments = ["+experiment=compression", "+experiment/compression=wanda_50,flap_30",
                 "+experiment/compression_bits=gptq4,fp16", *TINY, *SHORT]
    params = dict(compose_with_hydra("+experiment=compression", *TINY).hydra.sweeper.params)
    jobs = sweeper_jobs(params, arguments)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dense = baseline_jobs(jobs, is_dense=lambda job: compose(config_name="config", overrides=job).method.name == "dense")
        assert [[o for o in job if o.startswith(("method=", "+experiment/"))] for job in dense] == \
            [["method=dense", "+experiment/compression_bits=gptq4"], ["method=dense", "+experiment/compression_bits=fp16"]]
        plans = [make_plan(compose(config_name="config", overrides=job)) for job in dense]
    assert [(p.method_label, p.quant.name if p.quant else None, p.engine.quant, p.engine.repeats) for p in plans] == \
        [("dense", "gptq", "Q4_K_M", 3), ("dense", None, "F16", 3)]
