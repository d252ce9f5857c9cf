"""The composed config and the errors a user gets for bad input, before any heavy work."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from prunelab.settings import ConfigError, validate
from tests.conftest import compose_config, requires_embedded


def test_default_config_composes_with_every_group():
    cfg = compose_config()
    assert cfg.model.name == "smollm2_135m"
    assert cfg.method.name == "wanda"
    assert cfg.calib_data.dataset == "wiki"
    assert cfg.sparsity == 0.5 and cfg.pattern == "unstructured"
    assert cfg.ria_alpha == 0.5 and cfg.owl_lambda == 0.08
    assert cfg.calib_data.seqlen == cfg.model.seqlen == cfg.eval.seqlen


@pytest.mark.parametrize("value", [0.0, 0.1, 0.37, 0.5, 0.999])
def test_any_float_sparsity_in_unit_interval_is_accepted(value):
    spec = validate(compose_config("model=tiny_random", f"sparsity={value}"))
    assert spec.sparsity == pytest.approx(value)


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4)])
def test_nm_pattern_from_the_command_line(pattern, n, m):
    sparsity = 1 - n / m
    spec = validate(compose_config("model=tiny_random", f"pattern={pattern}", f"sparsity={sparsity}"))
    assert (spec.pattern.n, spec.pattern.m) == (n, m)


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as error:
        compose_config("method=wandaa")
    assert "wanda" in str(error.value) and "magnitude" in str(error.value)


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["sparsity=1.0"], ["sparsity=1.0", "[0, 1)"]),
        (["sparsity=-0.1"], ["sparsity=-0.1", "[0, 1)"]),
        (["pattern=2:4", "sparsity=0.7"], ["pattern=2:4", "sparsity=0.5"]),
        (["pattern=4:4"], ["0 < N < M"]),
        (["pattern=5:4"], ["0 < N < M"]),
        (["pattern=two:four"], ["unstructured", "N:M"]),
        (["calib_data.nsamples=0"], ["calib_data.nsamples=0", "positive"]),
        (["calib_data.seqlen=-5"], ["calib_data.seqlen=-5", "positive"]),
        (["calib_data.seqlen=100000"], ["calib_data.seqlen=100000", "context"]),
        (["eval.ppl_datasets=[wikipedia]"], ["wikipedia", "wiki", "austen"]),
        (["model.dtype=float8"], ["model.dtype", "float32"]),
    ],
)
def test_bad_input_names_key_value_and_what_is_allowed(overrides, words):
    with pytest.raises(ConfigError) as error:
        validate(compose_config("model=tiny_random", *overrides))
    for word in words:
        assert word in str(error.value)


def test_missing_local_model_path_is_reported():
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        validate(compose_config("model=local", "model.path=/does/not/exist"))


def test_hub_id_while_offline_points_to_offline_configs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from prunelab import models

    models.hub_reachable.cache_clear()
    try:
        with pytest.raises(ConfigError) as error:
            validate(compose_config("model=llama2_7b"))
    finally:
        models.hub_reachable.cache_clear()
    assert "meta-llama/Llama-2-7b-hf" in str(error.value) and "model=smollm2_135m" in str(error.value)


def test_online_calibration_set_while_offline_is_reported(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from prunelab import models

    models.hub_reachable.cache_clear()
    try:
        with pytest.raises(ConfigError, match="calib_data=c4.*offline calibration sets: wiki, austen, gsm8k"):
            validate(compose_config("model=tiny_random", "calib_data=c4"))
    finally:
        models.hub_reachable.cache_clear()


@requires_embedded
def test_embedded_default_validates():
    spec = validate(compose_config())
    assert spec.method == "wanda" and spec.needs_calibration
