"""The composed config and the run plan: every check that needs no weights, with errors that name
the key, the value and what is allowed, raised before any model loads."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from prunelab import models
from prunelab.checks import ConfigError
from prunelab.methods.owl import OWL
from prunelab.methods.ria import RIA
from prunelab.methods.wanda import Wanda
from prunelab.plan import make_plan
from tests.conftest import compose_config, requires_embedded


@pytest.fixture(autouse=True)
def no_weights_are_loaded(monkeypatch):
    """Planning must never read weights: every source's ``load`` fails loudly here."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the plan loaded weights")

    monkeypatch.setattr(models.ModelSource, "load", refuse)
    monkeypatch.setattr(models.RandomSource, "load", refuse)


def plan(*overrides: str):
    return make_plan(compose_config("model=tiny_random", "logger=none", *overrides))


def test_default_config_composes_with_every_group():
    cfg = compose_config()
    assert cfg.model.name == "smollm2_135m"
    assert cfg.method.name == "wanda" and cfg.method._target_ == "prunelab.methods.wanda.Wanda"
    assert cfg.calib_data.dataset == "wiki"
    assert cfg.sparsity == 0.5 and cfg.pattern == "unstructured"
    assert cfg.ria_alpha == 0.5 and cfg.owl_lambda == 0.08
    assert cfg.calib_data.seqlen == cfg.model.seqlen == cfg.eval.seqlen


def test_plan_holds_built_components_and_typed_sections():
    run = plan("method=owl_ria", "ria_alpha=0.25", "owl_lambda=0.1", "target.modules=[mlp]", "target.blocks=[0,1]")
    assert isinstance(run.method, OWL) and isinstance(run.method.base, RIA)
    assert run.method_label == "owl_ria" and run.method.base.alpha == 0.25 and run.method.lambda_ == 0.1
    assert run.method.needs.dense_pass and run.method.needs.norms
    assert run.target.modules == ("mlp",) and run.target.blocks == (0, 1)
    assert run.calibration is not None and run.calibration.spec.nsamples == 32
    assert run.evaluation.perplexity.datasets == ("wiki", "austen")
    assert run.summary()["method"] == "owl_ria"


@pytest.mark.parametrize("method,calibrates", [("dense", False), ("magnitude", False), ("owl_magnitude", True),
                                               ("wanda", True), ("sparsegpt", True)])
def test_calibration_is_planned_exactly_when_the_method_needs_statistics(method, calibrates):
    assert (plan(f"method={method}").calibration is not None) is calibrates


def test_owl_takes_any_method_as_its_base():
    run = plan("method=owl", "method@method.base=magnitude")
    assert run.method_label == "owl_magnitude" and not run.method.needs.norms


@pytest.mark.parametrize("value", [0.0, 0.1, 0.37, 0.5, 0.999])
def test_any_float_sparsity_in_unit_interval_is_accepted(value):
    assert plan(f"sparsity={value}").sparsity == pytest.approx(value)


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4)])
def test_nm_pattern_from_the_command_line(pattern, n, m):
    run = plan(f"pattern={pattern}", f"sparsity={1 - n / m}")
    assert (run.pattern.n, run.pattern.m) == (n, m)


def test_dense_plans_zero_sparsity_whatever_the_knob_says():
    run = plan("method=dense", "sparsity=0.7", "pattern=2:4")
    assert run.sparsity == 0.0 and not run.method.prunes


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as error:
        compose_config("method=wandaa")
    assert "wanda" in str(error.value) and "magnitude" in str(error.value)


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["sparsity=1.0"], ["sparsity=1.0", "[0, 1)"]),
        (["sparsity=-0.1"], ["sparsity=-0.1", "[0, 1)"]),
        (["sparsity=nan"], ["sparsity=nan", "finite"]),
        (["pattern=2:4", "sparsity=0.7"], ["pattern=2:4", "sparsity=0.5"]),
        (["pattern=4:4"], ["0 < N < M"]),
        (["pattern=5:4"], ["0 < N < M"]),
        (["pattern=two:four"], ["unstructured", "N:M"]),
        (["pattern=2:3", "sparsity=0.33333333333333337"], ["pattern=2:3", "layers.0.self_attn.q_proj", "multiple of 3"]),
        (["calib_data.nsamples=0"], ["calib_data.nsamples=0", "positive"]),
        (["calib_data.seqlen=-5"], ["calib_data.seqlen=-5", "positive"]),
        (["calib_data.seqlen=100000"], ["calib_data.seqlen=100000", "context"]),
        (["eval.ppl_datasets=[wikipedia]"], ["wikipedia", "wiki", "austen"]),
        (["eval.seqlen=1"], ["eval.seqlen=1", "[2, inf)"]),
        (["model.dtype=float8"], ["model.dtype", "float32"]),
        (["seed=abc"], ["seed='abc'", "integer"]),
        (["+foo=1"], ["foo is not a setting of the config", "sparsity"]),
        (["ria_alpha=nan", "method=ria"], ["ria_alpha=nan", "finite"]),
        (["method=ria", "ria_alpha=-1"], ["method.alpha=-1", "[0, inf"]),
        (["method.comparison=bogus"], ["method.comparison='bogus'", "row", "layer"]),
        (["method=sparsegpt", "method.blocksize=0"], ["method.blocksize=0", "positive"]),
        (["method=owl_sparsegpt", "method.base.percdamp=0"], ["method.base.percdamp=0", "(0, inf"]),
        (["method=owl_wanda", "owl_lambda=1.5"], ["method.lambda_=1.5", "[0, 1)"]),
        (["+method.bogus=1"], ["method", "bogus", "comparison"]),
        (["target.modules=[]"], ["target.modules=[]", "selects no layer"]),
        (["target.modules=[qproj]"], ["qproj", "q_proj", "attention"]),
        (["target.blocks=[0,5]"], ["target.blocks=[0, 5]", "<= 2"]),
        (["target.blocks=5"], ["target.blocks=5", "list"]),
        (["logger=wandb", "logger.mode=sometimes"], ["logger.mode='sometimes'", "offline"]),
        # structured pruning: the tiny model has 2 blocks of 2 KV head groups (4 query heads)
        (["method=wanda_sp", "pattern=2:4"], ["pattern=2:4", "method=wanda_sp", "allowed: pattern=unstructured"]),
        (["method=flap", "pattern=4:8"], ["pattern=4:8", "method=flap", "allowed: pattern=unstructured"]),
        (["method=wanda_sp", "sparsity=0.9"], ["sparsity=0.9", "every attention head of layers.0",
                                               "allowed: sparsity < 0.7500 or target.modules=mlp"]),
        (["method=mag_sp", "sparsity=0.8", "target.modules=attention"], ["sparsity=0.8", "every attention head"]),
        (["method=flap", "method.structure=AL-MM", "method.remove_heads=3"],
         ["method.remove_heads=3", "every attention head", "allowed: method.remove_heads <= 2"]),
        (["method=shortgpt", "sparsity=0.8"], ["sparsity=0.8", "all 2 decoder blocks", "allowed: sparsity < 0.7500"]),
        (["method=shortgpt", "sparsity=0.8", "target.blocks=[1,2]"], ["target.blocks leaves 1 block", "at least 2 blocks"]),
        (["method=shortgpt", "target.modules=mlp"], ["target.modules", "allowed: target.modules=all"]),
        (["method=wanda_sp", "target.modules=[q_proj]"], ["'q_proj'", "allowed: all, attention, mlp"]),
        (["method=flap", "method.metric=XX"], ["method.metric='XX'", "IFV, WIFV, WIFN"]),
        (["method=flap", "method.structure=AL-XX"], ["method.structure='AL-XX'", "UL-UM, UL-MM, AL-MM, AL-AM"]),
    ],
)
def test_bad_input_names_key_value_and_what_is_allowed(overrides, words):
    with pytest.raises(ConfigError) as error:
        plan(*overrides)
    for word in words:
        assert word in str(error.value), str(error.value)


def test_one_module_name_is_a_list_of_one():
    assert plan("target.modules=attention").target.modules == ("attention",)


def test_a_target_that_cannot_be_imported_is_named():
    with pytest.raises(ConfigError, match=r"method._target_='nowhere.Method' cannot be imported"):
        plan("method._target_=nowhere.Method")


def test_missing_local_model_path_is_reported():
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        make_plan(compose_config("model=local", "model.path=/does/not/exist", "logger=none"))


def test_local_model_without_a_path_says_which_key_to_set():
    with pytest.raises(ConfigError, match=r"model.path.*must be set"):
        make_plan(compose_config("model=local", "logger=none"))


def test_hub_id_while_offline_points_to_offline_configs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.hub_reachable.cache_clear()
    try:
        with pytest.raises(ConfigError) as error:
            make_plan(compose_config("model=llama2_7b", "logger=none"))
    finally:
        models.hub_reachable.cache_clear()
    assert "meta-llama/Llama-2-7b-hf" in str(error.value) and "model=smollm2_135m" in str(error.value)


def test_online_calibration_set_while_offline_is_reported(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.hub_reachable.cache_clear()
    try:
        with pytest.raises(ConfigError, match="calib_data=c4.*offline calibration sets: wiki, austen, gsm8k"):
            plan("calib_data=c4")
    finally:
        models.hub_reachable.cache_clear()


@requires_embedded
def test_embedded_default_plans_and_checks_every_layer_width():
    run = make_plan(compose_config("logger=none"))
    assert run.method_label == "wanda" and isinstance(run.method, Wanda) and run.calibration is not None
    assert run.model.context == 8192
    with pytest.raises(ConfigError, match=r"pattern=1:5 cannot prune layers.0.self_attn.q_proj: .*576.*5"):
        make_plan(compose_config("logger=none", "pattern=1:5", "sparsity=0.8"))


@pytest.mark.network
def test_a_hub_model_is_planned_from_its_config_alone():
    run = make_plan(compose_config("model=tinyllama", "logger=none", "pattern=2:4"))
    assert run.model.context == 2048 and run.calibration.spec.seqlen == 2048
