"""Structured pruning: the units, each method's scores on matrices small enough to check by hand,
the physical shrink (equal to the masked model, bias compensation included), and save/reload."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from prunelab import assets, models, structure
from prunelab.checks import ConfigError
from prunelab.methods.flap import FLAP, fluctuation_metric, standardize
from prunelab.methods.mag_sp import MagnitudeSP
from prunelab.methods.wanda_sp import WandaSP
from prunelab.patterns import Unstructured
from prunelab.prune import PruneTarget, prune_model, prune_structured
from prunelab.stats import BlockIO, LayerStats
from prunelab.structure import BlockGeometry, Removal, Scope
from tests.conftest import build_method, compose_config, requires_embedded

CPU = torch.device("cpu")
SMOL = BlockGeometry(hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536)  # the embedded model


def ids(batch: int = 4, tokens: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1000, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def stats_from_norms(norms: list[float]) -> LayerStats:
    return LayerStats(tokens=1, sq_norm_sum=torch.tensor(norms).pow(2))


# --- units ------------------------------------------------------------------------------------
def test_a_kv_group_owns_its_query_heads_and_its_kv_head():
    # 4 query heads over 2 KV heads, head_dim 2: group 1 = query heads 2, 3 = channels 4..7; kv rows 2, 3
    geometry = BlockGeometry(hidden=8, heads=4, kv_heads=2, head_dim=2, intermediate=16)
    assert geometry.group_channels([1]).tolist() == [4, 5, 6, 7]
    assert geometry.kv_channels([1]).tolist() == [2, 3]
    assert geometry.group_params == 8 * 2 * (2 * 2 + 2)  # q rows + o cols of 2 heads, k and v rows
    assert geometry.channel_params == 24
    assert geometry.params == 2 * geometry.group_params + 16 * 24


@pytest.mark.parametrize("sparsity,groups,channels", [(0.2, 1, 239), (0.3, 1, 444), (0.5, 1, 853)])
def test_uniform_counts_on_the_embedded_shapes(sparsity, groups, channels):
    # 3 KV groups of 294,912 weights: the count nearest to 3s (ties: fewer); channels (1,728 weights
    # each) make the block's total nearest to s * 3,538,944.
    assert structure.uniform_counts(SMOL, sparsity, Scope((0,))) == (groups, channels)
    removed = groups * SMOL.group_params + channels * SMOL.channel_params
    assert abs(removed / SMOL.params - sparsity) <= SMOL.channel_params / 2 / SMOL.params


def test_uniform_counts_within_one_module():
    assert structure.uniform_counts(SMOL, 0.5, Scope((0,), attention=False)) == (0, 768)
    assert structure.uniform_counts(SMOL, 0.7, Scope((0,), mlp=False)) == (2, 0)


def test_every_head_or_channel_removed_is_rejected_with_the_limit():
    with pytest.raises(structure.ConfigError, match=r"sparsity=0.9 with method=x would remove every attention head "
                                                    r"of layers.0 .*3 KV head groups, 9 query heads.*sparsity < 0.8333"):
        structure.check_uniform([SMOL], 0.9, Scope((0,)), "x")
    structure.check_uniform([SMOL], 0.8, Scope((0,)), "x")


@pytest.mark.parametrize("sparsity,groups,channels,achieved", [(0.2, 0, 307, 0.1499), (0.3, 0, 460, 0.2246),
                                                               (0.5, 1, 768, 0.4583)])
def test_authors_count_rule_takes_int_of_p_times_each_module(sparsity, groups, channels, achieved):
    # The FLAP authors' prune_wanda_sp / prune_magnitude_sp / UL-UM: int(p * heads) heads and
    # int(p * channels) channels per block, each module by itself; our unit is a KV group, so int(p * 3).
    assert structure.uniform_counts(SMOL, sparsity, Scope((0,)), "authors") == (groups, channels)
    assert (groups * SMOL.group_params + channels * SMOL.channel_params) / SMOL.params == pytest.approx(achieved, abs=1e-4)
    assert structure.uniform_counts(SMOL, sparsity, Scope((0,), mlp=False), "authors") == (groups, 0)
    assert structure.unit_count(4.9, 1, 10, "authors") == 4 and structure.unit_count(4.9, 1, 10) == 5
    structure.check_uniform([SMOL], 0.99, Scope((0,)), "x", "authors")  # int(0.99 * 3) = 2 groups: allowed


@pytest.mark.parametrize("name", ["wanda_sp", "mag_sp", "flap"])
def test_authors_count_rule_on_the_tiny_model(tiny_model, tmp_path, monkeypatch, name):
    """Every block loses int(p * groups) groups and int(p * channels) channels; the run's own check
    (achieved sparsity = what the method planned) passes at the lower sparsity this gives."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    extra = ["method.structure=UL-UM"] if name == "flap" else []
    method = build_method("model=tiny_random", f"method={name}", "method.count_rule=authors", *extra)
    geometry = BlockGeometry.from_block(tiny_model.model.layers[0])  # 2 KV groups of 2 heads; 128 channels
    sparsity = 0.3  # int(0.6) = 0 groups, int(38.4) = 38 channels (exact: 1 group and 26 channels)
    assert structure.uniform_counts(geometry, sparsity, Scope((0,))) == (1, 26)
    report = prune_model(tiny_model, method, sparsity, Unstructured(), ids(), CPU, batch_size=2)
    for block in tiny_model.model.layers:
        assert block.self_attn.k_proj.out_features == 2 * geometry.head_dim
        assert block.mlp.down_proj.in_features == 128 - 38
    expected = 38 * geometry.channel_params / geometry.params
    assert report.achieved_sparsity == pytest.approx(expected, abs=1e-12)
    assert report.method_evidence["structured_planned_sparsity"] == pytest.approx(expected, abs=1e-12)


def test_a_bad_count_rule_is_named():
    with pytest.raises(structure.ConfigError, match="count_rule"):
        WandaSP(count_rule="nearest")


# --- scores by hand ---------------------------------------------------------------------------
# o_proj of a 2-head block (MHA, head_dim 2, hidden 2): columns 0-1 read head 0, columns 2-3 head 1.
O_PROJ = torch.tensor([[1.0, -2.0, 0.5, 0.0],
                       [3.0, 0.0, -0.5, 1.0]])
TWO_HEADS = BlockGeometry(hidden=2, heads=2, kv_heads=2, head_dim=2, intermediate=4)


def test_wanda_sp_sums_weight_times_input_norm_over_the_column():
    norms = [1.0, 2.0, 4.0, 8.0]
    layer = nn.Linear(4, 2, bias=False)
    layer.weight.data = O_PROJ.clone()
    scores = WandaSP().channel_scores(layer, stats_from_norms(norms))
    # column sums of |W|: [4, 2, 1, 1] times norms: [4, 4, 4, 8]
    assert scores.tolist() == [4.0, 4.0, 4.0, 8.0]
    assert structure.group_scores(scores, TWO_HEADS).tolist() == [8.0, 12.0]  # head 0 goes first


def test_mag_sp_is_the_column_norm():
    layer = nn.Linear(4, 2, bias=False)
    layer.weight.data = O_PROJ.clone()
    scores = MagnitudeSP().channel_scores(layer, LayerStats())
    assert torch.allclose(scores, torch.tensor([math.sqrt(10), 2.0, math.sqrt(0.5), 1.0]))
    assert structure.group_scores(scores, TWO_HEADS).argmin() == 1  # head 1: 0.707 + 1 < 3.162 + 2


def test_flap_metrics_by_hand():
    inputs = torch.tensor([[1.0, 0.0, 2.0, 1.0],
                           [3.0, 0.0, 2.0, -1.0],
                           [2.0, 3.0, 2.0, 0.0]])  # 3 tokens
    stats = LayerStats()
    stats.update(inputs, norms=True, hessian=False, moments=True)
    # sample variance per channel: [1, 3, 0, 1]; mean [2, 1, 2, 0]
    assert torch.allclose(stats.variance, torch.tensor([1.0, 3.0, 0.0, 1.0]))
    assert torch.allclose(stats.mean, torch.tensor([2.0, 1.0, 2.0, 0.0]))
    # sum_i W_ij^2 of O_PROJ: [10, 4, 0.5, 1]
    assert torch.allclose(fluctuation_metric("IFV", O_PROJ, stats), torch.tensor([1.0, 3.0, 0.0, 1.0]))
    assert torch.allclose(fluctuation_metric("WIFV", O_PROJ, stats), torch.tensor([10.0, 12.0, 0.0, 1.0]))
    norms = inputs.pow(2).sum(0).sqrt()  # ||X_j||
    expected = (O_PROJ.abs() * norms).mean(dim=0)
    assert torch.allclose(fluctuation_metric("WIFN", O_PROJ, stats), expected)


def test_flap_adaptive_structure_weighs_heads_by_their_weights():
    # Two blocks of the 2-head toy. Standardised per block, a head scores the mean of its channels.
    # Block 0: attention metric [0, 0, 10, 10] -> z [-.866, -.866, .866, .866]: head 0 at -0.866.
    # Block 1: [5, 5, 5, 6] -> z [-.5, -.5, -.5, 1.5]: head 0 at -0.5, head 1 at +0.5.
    # MLP channels (12 weights each; a head owns 2 * 2 * (2 + 2) = 16):
    # block 0 [1, 2, 3, 4] -> z [-1.16, -.39, .39, 1.16]; block 1 [4, 3, 2, 1] mirrored.
    summaries = [
        {"attention": torch.tensor([0.0, 0.0, 10.0, 10.0]), "mlp": torch.tensor([1.0, 2.0, 3.0, 4.0]),
         "attention_mean": torch.zeros(4), "mlp_mean": torch.zeros(4)},
        {"attention": torch.tensor([5.0, 5.0, 5.0, 6.0]), "mlp": torch.tensor([4.0, 3.0, 2.0, 1.0]),
         "attention_mean": torch.zeros(4), "mlp_mean": torch.zeros(4)},
    ]
    geometry = [TWO_HEADS, TWO_HEADS]
    # in all 2 * (32 + 48) = 160 weights
    method = FLAP(structure="AL-AM")
    # ascending: mlp0[0] -1.16 (12), mlp1[3] -1.16 (12), head0/0 -0.87 (16), ... target 0.25 * 160 = 40:
    # 12, 24, 40 -> exactly the two weakest channels and block 0's head 0. Each block keeps its best units.
    method.plan_removals(summaries, geometry, 0.25, Scope((0, 1)))
    assert method.planned[0].groups.tolist() == [0] and method.planned[0].channels.tolist() == [0]
    assert method.planned[1].groups.tolist() == [] and method.planned[1].channels.tolist() == [3]
    assert method.kept_groups == [1, 2] and method.kept_channels == [3, 3]
    assert torch.allclose(standardize(torch.tensor([1.0, 2.0, 3.0, 4.0])),
                          torch.tensor([-1.1619, -0.3873, 0.3873, 1.1619]), atol=1e-4)


def test_flap_uniform_structure_removes_the_same_share_of_every_block():
    summaries = [{"attention": torch.tensor([0.0, 0.0, 10.0, 10.0]), "mlp": torch.tensor([4.0, 3.0, 2.0, 1.0]),
                  "attention_mean": torch.zeros(4), "mlp_mean": torch.zeros(4)}] * 2
    method = FLAP(structure="UL-UM")
    method.plan_removals(summaries, [TWO_HEADS, TWO_HEADS], 0.5, Scope((0, 1)))
    # per block: 1 head (16 of 32) and the channels nearest to 40 - 16 = 24 weights: 2 (the weakest: 3, 2)
    assert [r.groups.tolist() for r in method.planned.values()] == [[0], [0]]
    assert [r.channels.tolist() for r in method.planned.values()] == [[2, 3], [2, 3]]
    # UL-MM: remove_heads // blocks = 1 head (16 weights) per block of 56, then MLP channels (6 weights) for
    # the rest of 0.48 * 56: 10.88 / 6 = 1.81 -> the authors round down (cal_remove_neuron), we take the nearest
    counts = {}
    for rule in ("authors", "exact"):
        method = FLAP(structure="UL-MM", remove_heads=2, count_rule=rule)
        method.plan_removals(summaries, [TWO_HEADS, TWO_HEADS], 0.48, Scope((0, 1)))
        counts[rule] = [(len(r.groups), len(r.channels)) for r in method.planned.values()]
    assert counts == {"authors": [(1, 1), (1, 1)], "exact": [(1, 2), (1, 2)]}


def test_block_influence_is_one_minus_the_mean_cosine():
    io = BlockIO(inputs=[torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])], outputs=[torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])])
    assert io.mean_cosine() == pytest.approx(0.5)  # cosines 1 and 0
    assert build_method("model=tiny_random", "method=shortgpt").summarize_dense_block({}, {}, io) == pytest.approx(0.5)


# --- surgery ----------------------------------------------------------------------------------
def test_bias_compensation_keeps_the_output_at_the_mean_input(tiny_model):
    mlp = tiny_model.model.layers[0].mlp
    mean = torch.randn(128, generator=torch.Generator().manual_seed(3))
    expected = mlp.down_proj(mean)
    geometry = BlockGeometry.from_block(tiny_model.model.layers[0])
    removed = torch.tensor([0, 5, 77])
    bias = structure.compensation(mlp.down_proj.weight.data, removed, mean)
    assert torch.allclose(bias, mlp.down_proj.weight.data[:, removed] @ mean[removed])
    structure.shrink_mlp(mlp, geometry, removed, bias)
    kept = [i for i in range(128) if i not in (0, 5, 77)]
    assert mlp.down_proj.weight.shape == (64, 125) and mlp.gate_proj.weight.shape == (125, 64)
    assert torch.allclose(mlp.down_proj(mean[kept]), expected, atol=1e-5)


@pytest.mark.parametrize("method,extra", [("flap", []), ("flap", ["method.structure=UL-UM"]), ("wanda_sp", []),
                                          ("mag_sp", []), ("shortgpt", [])])
def test_the_shrunk_model_computes_what_the_masked_model_computes(tiny_model, tmp_path, monkeypatch, method, extra):
    """Removing heads, channels or blocks for real gives the logits of the same model with those
    units zeroed, compensation biases included in both."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    masked = copy.deepcopy(tiny_model)
    sparsity = 0.5
    shrunk_report = prune_model(tiny_model, build_method("model=tiny_random", f"method={method}", *extra), sparsity,
                                Unstructured(), ids(), CPU, batch_size=2)
    masked_report = prune_structured(masked, build_method("model=tiny_random", f"method={method}", *extra), sparsity,
                                     ids(), CPU, batch_size=2, shrink=False)
    probe = ids(2, 24, seed=9)
    torch.testing.assert_close(tiny_model(input_ids=probe).logits, masked(input_ids=probe).logits, rtol=1e-4, atol=1e-4)
    assert shrunk_report.achieved_sparsity == pytest.approx(shrunk_report.method_evidence["structured_planned_sparsity"])
    assert shrunk_report.block_sparsity == pytest.approx(masked_report.block_sparsity, abs=1e-9)
    weights = sum(p.numel() for block in tiny_model.model.layers for n, p in block.named_parameters()
                  if n.endswith("weight") and "proj" in n)
    assert weights == shrunk_report.method_evidence["structured_weights_after"] < 73728
    compensated = method == "flap"
    for model in (tiny_model, masked):
        biases = [block.mlp.down_proj.bias for block in model.model.layers]
        assert all((b is not None) == compensated for b in biases)
        if compensated:
            assert all(float(b.detach().abs().sum()) > 0 for b in biases)  # removed channels had a non-zero mean


def test_gqa_group_removal_takes_the_groups_query_heads_along(tiny_model):
    # tiny model: 4 query heads over 2 KV heads (head_dim 16); group 0 = query heads 0, 1
    block = tiny_model.model.layers[0]
    q, k, o = block.self_attn.q_proj.weight.clone(), block.self_attn.k_proj.weight.clone(), block.self_attn.o_proj.weight.clone()
    structure.apply(block, Removal(groups=torch.tensor([0])))
    assert torch.equal(block.self_attn.q_proj.weight, q[32:]) and torch.equal(block.self_attn.k_proj.weight, k[16:])
    assert torch.equal(block.self_attn.o_proj.weight, o[:, 32:])
    assert block.self_attn.num_key_value_groups == 2  # every remaining group keeps its two query heads


def test_structured_target_scope_and_bad_targets():
    assert PruneTarget(("attention",), (1, 3)).scope(4) == Scope((1, 2), attention=True, mlp=False)
    with pytest.raises(structure.ConfigError, match="q_proj.*allowed: all, attention, mlp"):
        PruneTarget(("q_proj",)).scope(2)


# --- save and reload --------------------------------------------------------------------------
@pytest.mark.parametrize("method,extra,loader", [
    ("flap", [], "local (prunelab_layers)"),           # AL-AM: blocks differ -> per-layer shape map
    ("flap", ["method.structure=UL-UM"], "from_pretrained"),  # equal blocks with biases -> plain config
    ("shortgpt", [], "from_pretrained"),
])
def test_shrunk_model_saves_and_reloads_with_the_same_logits(tiny_model, tokenizer, tmp_path, monkeypatch, method,
                                                             extra, loader):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    prune_model(tiny_model, build_method("model=tiny_random", f"method={method}", *extra), 0.5, Unstructured(), ids(),
                CPU, batch_size=2)
    saved = models.save_pretrained(tiny_model, tokenizer, tmp_path / "model", {"method": method})
    assert saved["artifacts/model_loader"] == loader
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["prunelab_structure"]["bias_compensation"] is (method == "flap")
    assert ("prunelab_layers" in config) is (loader != "from_pretrained")
    assert not hasattr(tiny_model.config, "prunelab_layers")  # the model in memory is untouched
    probe = ids(2, 16, seed=5)
    reloaded = models.LocalSource(str(tmp_path / "model")).load(torch.float32)[0]
    torch.testing.assert_close(reloaded(input_ids=probe).logits, tiny_model(input_ids=probe).logits)
    if loader == "from_pretrained":
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
        torch.testing.assert_close(plain(input_ids=probe).logits, tiny_model(input_ids=probe).logits)
    skeleton = models.skeleton(models.LocalSource(str(tmp_path / "model")).hf_config())
    assert [tuple(b.mlp.down_proj.weight.shape) for b in skeleton.model.layers] == \
        [tuple(b.mlp.down_proj.weight.shape) for b in tiny_model.model.layers]


def test_structured_method_yaml_composes_and_plans():
    for name in ("wanda_sp", "mag_sp", "flap", "shortgpt"):
        cfg = compose_config("model=tiny_random", "logger=none", f"method={name}", "sparsity=0.5")
        from prunelab.plan import make_plan

        plan = make_plan(cfg)
        assert plan.method.structured and plan.method_label == name
        assert (plan.calibration is None) is (name == "mag_sp")


# --- the embedded model (slow tier) -------------------------------------------------------------
@requires_embedded
def test_embedded_flap_shrinks_saves_smaller_and_reloads_with_the_same_perplexity(tmp_path):
    from prunelab import pipeline

    small_eval = ["logger=none", "cache_calibration=false", "calib_data.nsamples=8", "eval.ppl_datasets=[wiki]", "eval.max_windows=4"]
    overrides = ["method=flap", "sparsity=0.2", "save_model=true", *small_eval]
    pipeline.main(compose_config(*overrides), output_dir=tmp_path / "pruned", overrides=overrides)
    pruned = json.loads((tmp_path / "pruned" / "metrics.json").read_text())["metrics"]
    assert pruned["prune/achieved_sparsity"] == pytest.approx(0.2, abs=0.002)
    assert pruned["artifacts/model_loader"] == "local (prunelab_layers)"  # AL-AM: blocks differ
    dense_dir = assets.paths().smollm2_dir
    dense_bytes = sum(f.stat().st_size for f in dense_dir.glob("*.safetensors"))
    dense_params = 134_515_008  # SmolLM2-135M, tied embeddings
    kept = dense_params - (pruned["prune/structured_weights_before"] - pruned["prune/structured_weights_after"])
    assert pruned["artifacts/model_bytes"] / dense_bytes == pytest.approx(kept / dense_params, rel=0.01)
    reload = ["model=local", f"model.path={tmp_path / 'pruned' / 'model'}", "model.dtype=float32",
              "model.seqlen=256", "method=dense", *small_eval]
    pipeline.main(compose_config(*reload), output_dir=tmp_path / "reloaded", overrides=reload)
    reloaded = json.loads((tmp_path / "reloaded" / "metrics.json").read_text())["metrics"]
    assert reloaded["eval/ppl_wiki"] == pytest.approx(pruned["eval/ppl_wiki"], rel=1e-5)


# --- GPU-friendly widths (method.channel_multiple) ---------------------------------------------
def test_aligned_removal_keeps_a_multiple_nearest_to_the_method_choice():
    # LLaMA-2-7B at 30%: 11,008 - 3,302 = 7,706 kept -> 7,680 (120 x 64); 5,504 is already a multiple of 64
    assert structure.aligned_removal(3302, 11008, 64) == 11008 - 7680
    assert structure.aligned_removal(5504, 11008, 64) == 5504
    assert structure.aligned_removal(3302, 11008, 1) == 3302  # off: the method's own count
    assert structure.aligned_removal(0, 100, 8) == 0  # nothing removed stays nothing removed
    assert structure.aligned_removal(99, 100, 8) == 92  # never below one multiple
    assert structure.aligned_removal(4, 100, 8) == 4  # 96 kept: ties and exact multiples keep more


@pytest.mark.parametrize("overrides", [["method=mag_sp"], ["method=wanda_sp"], ["method=flap"],
                                       ["method=flap", "method.structure=UL-UM"], ["method=mag_sp", "method.count_rule=authors"]])
def test_channel_multiple_gives_every_block_a_width_of_that_multiple(tiny_model, overrides):
    method = build_method("model=tiny_random", *overrides, "method.channel_multiple=16")
    widths = {}
    for multiple, candidate in ((1, build_method("model=tiny_random", *overrides)), (16, method)):
        model = copy.deepcopy(tiny_model)
        prune_model(model, candidate, 0.3, Unstructured(), ids(), torch.device("cpu"))
        widths[multiple] = [block.mlp.up_proj.out_features for block in model.model.layers]
    assert all(width % 16 == 0 for width in widths[16]), widths
    assert widths[1] != widths[16] and all(abs(a - b) <= 8 for a, b in zip(widths[1], widths[16])), widths


def test_channel_multiple_is_checked_before_pruning(tiny_model):
    with pytest.raises(ConfigError, match=r"channel_multiple=0 is outside \[1, "):
        build_method("model=tiny_random", "method=mag_sp", "method.channel_multiple=0")
    method = build_method("model=tiny_random", "method=wanda_sp", "method.channel_multiple=256")
    with pytest.raises(ConfigError, match=r"channel_multiple=256 is wider than the MLP of layers.0 \(128 channels\); allowed: 1 to 128"):
        method.check_structure([BlockGeometry.from_block(b) for b in tiny_model.model.layers], 0.3, Scope((0, 1)))
