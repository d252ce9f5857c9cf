"""Quantization after pruning: the min-max grid by hand, GPTQ and SparseGPT's joint pass against
literal transcriptions of the authors' code, pruned zeros kept, plan rejections, and the
compressed-tensors checkpoint loaded back by stock transformers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prunelab.checks import ConfigError
from prunelab.data import calibration_tokens
from prunelab.outcome import OutcomeError, check_quantized
from prunelab.patterns import NM
from prunelab.plan import make_plan
from prunelab.prune import prune_model
from prunelab.quant.gptq import obs_quantize
from prunelab.quant.rtn import rtn_quantize
from prunelab.quant.stage import LayerError, quantize_model
from tests.conftest import TINY, compose_config, requires_embedded

# ----------------------------------------------------------------- the authors' code, transcribed
# IST-DASLab/gptq quant.py (Quantizer.configure / find_params with weight=True, perchannel=True,
# mse=False; quantize) and gptq.py (GPTQ.fasterquant, static_groups=False); IST-DASLab/sparsegpt
# sparsegpt.py (SparseGPT.fasterprune with a quantizer, i.e. --wbits). Kept literal, line for line,
# except: the threshold of the unstructured mask prunes exactly int(n*s) weights (our documented
# exact-k deviation; the reference's `tmp <= sorted[int(n*s)]` prunes one more plus ties).


def _ref_quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class _RefQuantizer:
    def configure(self, bits, perchannel=True, sym=True):
        self.maxq = torch.tensor(2 ** bits - 1)
        self.perchannel = perchannel
        self.sym = sym

    def find_params(self, x, weight=False):
        shape = x.shape
        x = x.flatten(1)
        tmp = torch.zeros(x.shape[0])
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            tmp = xmin < 0
            if torch.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1
        self.scale = (xmax - xmin) / self.maxq
        if self.sym:
            self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = torch.round(-xmin / self.scale)
        shape = [-1] + [1] * (len(shape) - 1)
        self.scale = self.scale.reshape(shape)
        self.zero = self.zero.reshape(shape)


def _ref_fasterquant(W, H, bits, sym, blocksize=128, percdamp=.01, groupsize=-1, actorder=False):
    quantizer = _RefQuantizer()
    quantizer.configure(bits, perchannel=True, sym=sym)
    W = W.clone().float()
    columns = W.shape[1]
    quantizer.find_params(W, weight=True)
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1:
                if (i1 + i) % groupsize == 0:
                    quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)], weight=True)
            q = _ref_quantize(w.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, torch.argsort(perm)]
    return Q


def _ref_fasterprune(W, H, bits, sym, sparsity=0.0, prunen=0, prunem=0, blocksize=128, percdamp=.01, mask=None):
    quantizer = _RefQuantizer()
    quantizer.configure(bits, perchannel=True, sym=sym)
    W = W.clone().float()
    columns = W.shape[1]
    quantizer.find_params(W, weight=True)
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            if mask is not None:
                mask1 = mask[:, i1:i2]
            else:
                tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                k = int(tmp.numel() * sparsity)  # exact-k (see above)
                mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
                mask1[torch.topk(tmp.flatten(), k, largest=False)[1]] = True
                mask1 = mask1.reshape(tmp.shape)
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            q = _ref_quantize(q.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def _inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, 16, generator=generator) @ torch.randn(16, features, generator=generator)
    inputs = latent + 0.3 * torch.randn(tokens, features, generator=generator)
    inputs[:, 3] = 0  # a dead input channel
    return inputs


def _layer(rows: int = 40, cols: int = 320, seed: int = 1):
    inputs = _inputs(1024, cols)
    hessian = 2 / inputs.shape[0] * inputs.T @ inputs
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    return weight, hessian


# ------------------------------------------------------------------------------------- the grid
def test_rtn_grid_by_hand():
    row = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    sym = rtn_quantize(row, bits=4, group_size=-1, sym=True)
    # xmax = 2, xmin = -2, scale = 4/15, zero 8: -1 -> round(-3.75)=-4 -> code 4; 0.5 -> round(1.875)=2 -> 10;
    # 2 -> round(7.5)=8 (half to even) -> 16, clamped to 15 -> 7 * 4/15
    assert sym.codes.tolist() == [[4, 8, 10, 15]]
    assert sym.scales.tolist() == [[pytest.approx(4 / 15)]] and sym.zeros.tolist() == [[8.0]]
    assert torch.allclose(sym.weight, torch.tensor([[-16 / 15, 0.0, 8 / 15, 28 / 15]]))
    asym = rtn_quantize(row, bits=4, group_size=-1, sym=False)
    # xmin = -1, xmax = 2: scale 3/15 = 0.2, zero = round(1 / 0.2) = 5; 0.5 -> round(2.5)=2 -> 7 -> 0.4
    assert asym.codes.tolist() == [[0, 5, 7, 15]] and asym.zeros.tolist() == [[5.0]]
    assert torch.allclose(asym.weight, torch.tensor([[-1.0, 0.0, 0.4, 2.0]]))
    grouped = rtn_quantize(row, bits=4, group_size=2, sym=False)
    # group [-1, 0]: scale 1/15, zero 15; group [0.5, 2]: xmin widened to 0, scale 2/15, zero 0
    assert grouped.codes.tolist() == [[0, 15, 4, 15]] and grouped.zeros.tolist() == [[15.0, 0.0]]
    assert torch.allclose(grouped.weight, torch.tensor([[-1.0, 0.0, 8 / 15, 2.0]]))
    assert torch.equal(grouped.dequantize(), grouped.weight)
    assert grouped.packed_bytes() == 2 + 2 * 2 + 1  # 4 codes of 4 bits, 2 fp16 scales, 2 zero points of 4 bits


def test_the_grid_holds_zero_so_pruned_weights_stay_zero():
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) + 0.7  # mostly positive rows
    pruned = torch.rand(64, 128, generator=torch.Generator().manual_seed(1)) < 0.5
    weight[pruned] = 0
    for sym in (True, False):
        result = rtn_quantize(weight, 4, 32, sym, pruned)
        assert bool((result.weight[pruned] == 0).all())
        assert torch.equal(result.dequantize().masked_fill(pruned, 0), result.weight)


# ------------------------------------------------------------------------- against the authors
@pytest.mark.parametrize("bits,sym,group,act_order", [(4, True, -1, False), (4, False, 64, False), (4, True, 32, False),
                                                       (8, True, 64, False), (4, True, -1, True)])
def test_gptq_equals_the_authors_fasterquant(bits, sym, group, act_order):
    weight, hessian = _layer()
    ours = obs_quantize(weight, hessian, bits, group, sym, percdamp=0.01, blocksize=128, act_order=act_order)
    theirs = _ref_fasterquant(weight, hessian, bits, sym, blocksize=128, percdamp=0.01, groupsize=group, actorder=act_order)
    assert (ours.weight - theirs).abs().max() <= 1e-6
    assert torch.equal(ours.weight, theirs)  # the same operations in the same order: bitwise
    assert torch.equal(ours.dequantize(), ours.weight)  # the stored codes, scales and zeros give the weight back


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_joint_sparsegpt_equals_the_authors_fasterprune_with_wbits(pattern):
    weight, hessian = _layer(rows=32, cols=256)
    nm = NM(2, 4) if pattern == "2:4" else None
    ours = obs_quantize(weight, hessian, 4, -1, True, sparsity=0.0 if nm else 0.5, nm=nm)
    theirs = _ref_fasterprune(weight, hessian, 4, True, sparsity=0.5, prunen=2 if nm else 0, prunem=4 if nm else 0)
    assert torch.equal(ours.weight, theirs)
    assert bool((theirs[ours.pruned] == 0).all())  # the same mask (theirs also has zeros from rounding)
    assert float(ours.pruned.float().mean()) == 0.5
    assert bool((ours.weight[ours.pruned] == 0).all())


def test_gptq_on_a_pruned_layer_keeps_the_mask_and_equals_sparsegpt_with_that_mask():
    weight, hessian = _layer(rows=32, cols=256)
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(5)) < 0.5
    weight = weight.masked_fill(mask, 0.0)
    ours = obs_quantize(weight, hessian, 4, -1, False, pruned=mask)
    theirs = _ref_fasterprune(weight, hessian, 4, False, mask=mask)
    assert torch.equal(ours.weight, theirs)
    assert bool((ours.weight[mask] == 0).all())


def test_gptq_beats_rtn_on_the_layer_output():
    weight, hessian = _layer()

    def output_error(q):
        delta = q - weight
        return float(((delta @ hessian) * delta).sum())

    assert output_error(obs_quantize(weight, hessian, 4, 64, True).weight) < 0.7 * output_error(
        rtn_quantize(weight, 4, 64, True).weight)


# ----------------------------------------------------------------------------- on the tiny model
@pytest.mark.parametrize("overrides", [["quant=rtn"], ["quant=gptq"], ["quant=gptq", "method=magnitude", "quant.sym=false"]])
def test_quantizing_a_pruned_model_keeps_every_pruned_zero(tiny_model, tokenizer, overrides):
    plan = make_plan(compose_config(*TINY, "quant.group_size=32", *overrides))
    ids = calibration_tokens(plan.calibration.spec, tokenizer)
    prune_model(tiny_model, plan.method, 0.5, plan.pattern, ids, torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters() if "proj" in name}
    report = quantize_model(tiny_model, plan.quant, ids, torch.device("cpu"))
    check_quantized(report.errors)
    after = dict(tiny_model.named_parameters())
    assert len(report.layers) == len(before) == 14
    for name, old in before.items():
        assert bool((after[name][old == 0] == 0).all())
        assert not torch.equal(after[name], old)
    metrics = report.metrics(tiny_model)
    assert metrics["quant/zeros_after"] >= metrics["quant/zeros_before"] == 0.5


def test_the_outcome_check_fails_when_a_pruned_zero_is_lost():
    error = LayerError("layers.0.mlp.up_proj", 64, 128, 0.1, None, 0.5, 0.49, 3)
    with pytest.raises(OutcomeError, match="layers.0.mlp.up_proj: 3"):
        check_quantized({error.layer: error})


def test_quant_none_leaves_the_config_and_plan_as_they_were():
    cfg = compose_config(*TINY)
    assert "quant" not in cfg and cfg.export.name == "none"
    plan = make_plan(cfg)
    assert plan.quant is None and plan.export == "none" and "quant" not in plan.summary()


@pytest.mark.parametrize("overrides,message", [
    (["quant=rtn", "quant.bits=3"], "quant.bits=3 is not valid; allowed: 4, 8"),
    (["quant=rtn", "quant.group_size=48"], "quant.group_size=48 does not divide the input width of layers.0.self_attn.q_proj"),
    (["quant=rtn", "quant.group_size=0"], "quant.group_size=0 is not valid"),
    (["export=compressed_tensors"], "export=compressed_tensors with quant=none"),
    (["quant=rtn", "quant.group_size=32", "quant.sym=false", "export=compressed_tensors"], "quant.sym=false with export"),
    (["quant=gptq", "quant.group_size=32", "quant.percdamp=-1"], "quant.percdamp=-1 is outside"),
    (["quant=gptq", "quant.group_size=32", "quant.percdamp=2"], "quant.percdamp=2 is outside (0, 1]"),
    (["quant=gptq", "quant.group_size=32", "quant.blocksize=0"], "quant.blocksize=0 must be a positive integer"),
    (["quant=gptq", "quant.group_size=32", "quant.act_order=true"], "quant.act_order=true with group_size=32"),
    (["quant=gptq", "quant.group_size=32", "method=sparsegpt", "quant.percdamp=0.1"], "quant.percdamp=0.1 with method=sparsegpt"),
    (["quant=rtn", "quant.group_size=32", "method=flap"], "quant.group_size=32 with method=flap"),
    (["quant=rtn", "quant.group_size=-1", "method=flap", "export=compressed_tensors"], "export=compressed_tensors with method=flap"),
    (["export.name=bogus"], "export='bogus' is not valid; allowed: none, gguf, compressed_tensors"),
])
def test_bad_quant_and_export_settings_are_rejected_before_load(overrides, message):
    with pytest.raises(ConfigError) as error:
        make_plan(compose_config(*TINY, *overrides))
    assert message in str(error.value)


def test_gptq_calibrates_even_after_a_method_that_needs_no_data():
    plan = make_plan(compose_config(*TINY, "method=magnitude", "quant=gptq", "quant.group_size=32"))
    assert plan.calibration is not None
    assert make_plan(compose_config(*TINY, "method=magnitude", "quant=rtn", "quant.group_size=32")).calibration is None


# ---------------------------------------------------------------------------- the whole run + export
def _run(tmp_path, *overrides):
    from prunelab.pipeline import _run as run_job

    cfg = compose_config(*overrides)
    run_job(cfg, tmp_path, list(overrides), multirun=False)
    return json.loads((tmp_path / "metrics.json").read_text())


def test_sparsegpt_with_quant_joint_false_prunes_first_then_gptq_quantizes_the_pruned_weights(tmp_path):
    runs = {joint: _run(tmp_path / joint, *TINY, "method=sparsegpt", "quant=gptq", "quant.group_size=32", f"quant.joint={joint}")
            for joint in ("true", "false")}
    assert all(r["status"] == "completed" and r["metrics"]["prune/achieved_sparsity"] == 0.5 for r in runs.values())
    assert runs["true"]["metrics"]["quant/joint_with_pruning"] is True
    assert runs["false"]["metrics"]["quant/joint_with_pruning"] is False
    references = {joint: {line.rsplit(",", 1)[1] for line in (tmp_path / joint / "quant_errors.csv").read_text().splitlines()[1:]}
                  for joint in runs}
    assert references == {"true": {"dense"}, "false": {"pruned"}}  # the joint pass's error includes the pruning
    assert runs["true"]["metrics"]["eval/ppl_wiki"] != runs["false"]["metrics"]["eval/ppl_wiki"]


def _ppl_loaded(directory, spec):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunelab.evaluate import evaluate_perplexity

    model = AutoModelForCausalLM.from_pretrained(directory)  # stock transformers, on the CPU
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return {r.dataset: r.perplexity for r in evaluate_perplexity(model, tokenizer, spec, torch.device("cpu"))}


@pytest.mark.parametrize("overrides", [["method=sparsegpt", "quant=gptq", "quant.group_size=32"],
                                       ["quant=rtn", "quant.group_size=-1", "quant.bits=8"]])
def test_compressed_tensors_checkpoint_loads_in_stock_transformers_with_the_same_perplexity(tmp_path, overrides):
    from prunelab.evaluate import PerplexitySpec

    record = _run(tmp_path, *TINY, *overrides, "export=compressed_tensors")
    assert record["status"] == "completed"
    metrics = record["metrics"]
    directory = tmp_path / "export" / "compressed_tensors"
    config = json.loads((directory / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert metrics["export/bytes"] == sum(f.stat().st_size for f in directory.iterdir())
    assert (tmp_path / "quant_errors.csv").read_text().count("\n") == 15
    assert metrics["prune/achieved_sparsity"] == 0.5
    loaded = _ppl_loaded(directory, PerplexitySpec(("wiki",), 64, 2, 4))
    assert math.isclose(loaded["wiki"], metrics["eval/ppl_wiki"], rel_tol=1e-3)


@requires_embedded
def test_embedded_wanda_gptq4_compressed_tensors_matches_in_pipeline_perplexity(tmp_path):
    from prunelab.evaluate import PerplexitySpec

    record = _run(tmp_path, "logger=none", "quant=gptq", "quant.group_size=64", "calib_data.nsamples=16",
                  "eval.max_windows=4", "eval.ppl_datasets=[wiki]", "export=compressed_tensors")
    metrics = record["metrics"]
    assert record["status"] == "completed" and metrics["export/bytes"] < metrics["quant/bytes_dense_fp16"] * 2
    loaded = _ppl_loaded(tmp_path / "export" / "compressed_tensors", PerplexitySpec(("wiki",), 256, 4, 4))
    assert math.isclose(loaded["wiki"], metrics["eval/ppl_wiki"], rel_tol=1e-3)
