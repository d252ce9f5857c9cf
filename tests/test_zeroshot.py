"""Zero-shot accuracy through the real lm-eval: offline task files, metrics, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from prunelab import assets, data, models, pipeline, zeroshot
from prunelab.checks import ConfigError
from prunelab.plan import make_plan
from tests.conftest import compose_config, requires_embedded


def validate(cfg):
    return make_plan(cfg)


def zeroshot_spec(*overrides: str) -> zeroshot.ZeroShotSpec:
    """The zero-shot part of the run plan of ``python run.py model=tiny_random <overrides>``."""
    return make_plan(compose_config("model=tiny_random", "logger=none", *overrides)).evaluation.zeroshot

OFFLINE = not models.hub_reachable()
requires_offline = pytest.mark.skipif(not OFFLINE, reason="checks the offline path; the hub is reachable here")
requires_bundled_data = pytest.mark.skipif(
    not (assets.paths().hf_datasets_dir / "piqa").exists(), reason="benchmark data not prepared: run `make setup`"
)

# What an offline task may change relative to the stock task it includes: where the data comes
# from and which splits exist. Everything else (prompt, choices, target, metrics, generation) stays.
DATA_KEYS = {"dataset_path", "dataset_name", "dataset_kwargs", "training_split", "test_split"}
EXTRA_OVERRIDES = {
    "boolq": {"doc_to_target"},  # bundled copy has google/boolq's boolean `answer`, not `label`
    "gsm8k": {"fewshot_split", "process_docs", "fewshot_config"},  # evaluation part, "#### n" answers
}


def _load_yaml(path: Path) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=False)


def _stock_yaml(rendered: Path) -> Path:
    from lm_eval.tasks._yaml_loader import load_yaml

    raw = load_yaml(rendered, resolve_func=False, recursive=False)
    return Path(raw["include"])


@pytest.mark.parametrize("task", zeroshot.STOCK_OFFLINE_TASKS)
def test_offline_task_is_the_stock_task_with_bundled_data(tmp_path, task):
    rendered = zeroshot.write_offline_tasks(tmp_path) / f"{task}.yaml"
    stock_path = _stock_yaml(rendered)
    assert stock_path.is_relative_to(Path(zeroshot._roots()["{lm_eval_tasks}"]))
    ours, stock = _load_yaml(rendered), _load_yaml(stock_path)
    assert ours["task"] == stock["task"] == task  # same name offline and online
    changed = {key for key in ours.keys() | stock.keys() if ours.get(key) != stock.get(key)}
    assert changed <= DATA_KEYS | EXTRA_OVERRIDES.get(task, set()), changed
    for key in ("doc_to_text", "doc_to_choice", "metric_list", "output_type"):
        assert ours.get(key) == stock.get(key), key
    for data_file in ours["dataset_kwargs"]["data_files"].values():  # placeholders resolved
        assert Path(data_file).is_absolute() and "{" not in data_file


def test_our_tasks_are_named_as_ours_not_as_stock_tasks(tmp_path):
    assert set(zeroshot.OUR_TASKS) == {"prunelab_basic_arithmetic", "prunelab_mmlu_math"}
    stock = zeroshot.stock_task_names()
    for task in zeroshot.OUR_TASKS:
        assert task not in stock
        rendered = _load_yaml(zeroshot.write_offline_tasks(tmp_path) / f"{task}.yaml")
        assert rendered["task"] == task and not rendered.get("tag")  # not filed under a stock tag (ai2_arc)


@requires_bundled_data
def test_basic_arithmetic_scores_the_3000_questions_with_the_arc_prompt():
    task = zeroshot.task_manager(offline=True).load(["prunelab_basic_arithmetic"])["tasks"]["prunelab_basic_arithmetic"]
    docs = list(task.eval_docs)
    assert len(docs) == 3000
    doc = docs[0]
    assert task.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:" and doc["question"].startswith("Calculate ")
    choices = task.doc_to_choice(doc)
    assert len(choices) == 4 and choices[task.doc_to_target(doc)] == \
        doc["choices"]["text"][doc["choices"]["label"].index(doc["answerKey"])]
    left, op, right = doc["question"].removeprefix("Calculate ").removesuffix(" =").split()
    assert float(choices[task.doc_to_target(doc)]) == pytest.approx(
        {"+": float.__add__, "-": float.__sub__, "*": float.__mul__, "/": float.__truediv__}[op](float(left), float(right)))


@requires_bundled_data
def test_mmlu_math_pools_the_five_mathematics_subjects_with_the_stock_prompt():
    task = zeroshot.task_manager(offline=True).load(["prunelab_mmlu_math"])["tasks"]["prunelab_mmlu_math"]
    docs = list(task.eval_docs)
    subjects = {d["subject"] for d in docs}
    assert len(docs) == 1064 and subjects == {"abstract_algebra", "college_mathematics", "elementary_mathematics",
                                              "high_school_mathematics", "high_school_statistics"}
    assert {d["subject"] for d in docs[:50]} == subjects  # interleaved: eval.limit samples every subject
    stock = _load_yaml(Path(zeroshot._roots()["{lm_eval_tasks}"]) / "mmlu/default/_default_template_yaml")
    assert task.config.doc_to_text == stock["doc_to_text"] and task.doc_to_choice(docs[0]) == ["A", "B", "C", "D"]
    elementary = next(d for d in docs if d["subject"] == "elementary_mathematics")
    context = task.fewshot_context(elementary, num_fewshot=0)
    assert context.startswith("The following are multiple choice questions (with answers) about elementary mathematics.\n\n")


@requires_bundled_data
def test_offline_data_files_resolve_against_the_cache(monkeypatch, tmp_path):
    files = zeroshot._data_files("arc_easy")
    assert files == [assets.paths().hf_datasets_dir / "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow"]
    assert files[0].exists()
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    assert zeroshot._data_files("arc_easy")[0].is_relative_to(tmp_path)


@requires_bundled_data
def test_boolq_offline_target_maps_the_boolean_answer():
    import datasets

    task = zeroshot.task_manager(offline=True).load(["boolq"])["tasks"]["boolq"]
    docs = task.validation_docs()
    raw = datasets.Dataset.from_file(
        str(assets.paths().hf_datasets_dir / "boolq/none/validation/data-00000-of-00001.arrow"))
    assert len(docs) == len(raw) == 3270
    assert task.doc_to_choice(docs[0]) == ["no", "yes"]
    for i in range(20):
        assert task.doc_to_target(docs[i]) == int(raw[i]["answer"])
    assert {task.doc_to_target(docs[i]) for i in range(50)} == {0, 1}
    assert task.doc_to_text(docs[0]).endswith("?\nAnswer:")


@requires_bundled_data
def test_gsm8k_offline_scores_only_the_evaluation_part():
    task = zeroshot.task_manager(offline=True).load(["gsm8k"])["tasks"]["gsm8k"]
    scored = list(task.eval_docs)
    held_out = data.documents("gsm8k", "evaluation")
    assert len(scored) == len(held_out) == 319
    assert held_out[0].startswith(f"Question: {scored[0]['question']}\nAnswer:")
    assert all(doc["answer"].startswith("#### ") for doc in scored)
    exemplars = list(task.fewshot_docs())
    assert len(exemplars) == 1000
    assert not {d["question"] for d in exemplars} & {d["question"] for d in scored}


requires_test_splits = pytest.mark.skipif(
    not all(assets.paths().test_split(t).exists() for t in assets.BENCHKIT_TEST_SPLITS),
    reason="benchkit test splits not prepared: run `make setup`",
)


@requires_test_splits
@pytest.mark.parametrize(("task", "size", "pool_size", "question"), [("arc_challenge", 1172, 299, "question"),
                                                                     ("openbookqa", 500, 500, "question_stem")])
def test_offline_task_scores_the_stock_test_split(task, size, pool_size, question):
    import datasets

    loaded = zeroshot.task_manager(offline=True).load([task])["tasks"][task]
    scored, pool = list(loaded.eval_docs), list(loaded.fewshot_docs())
    raw = datasets.Dataset.from_file(str(assets.paths().test_split(task)))
    assert len(scored) == len(raw) == size
    assert len(pool) == pool_size  # the bundled validation split is the few-shot pool

    def items(docs):  # ARC repeats a few stems across splits with other choices, so compare whole items
        return {(d[question], tuple(d["choices"]["text"])) for d in docs}

    assert not items(scored) & items(pool)
    for doc in scored[:50]:  # the stock target is the index of the answer among the choices
        assert loaded.doc_to_choice(doc)[loaded.doc_to_target(doc)] == \
            doc["choices"]["text"][doc["choices"]["label"].index(doc["answerKey"])]
    assert {loaded.doc_to_target(d) for d in scored} == {0, 1, 2, 3}


def test_benchkit_rows_are_converted_to_the_hub_schema():
    rows = [{"task_id": "ARC/7", "question": "Which is a gas?", "choices": ["ice", "steam", "rock"],
             "labels": ["A", "B", "C"], "answer": "B"}]
    (row,) = assets.multiple_choice_rows_in_hub_schema(rows, "question_stem")
    assert row == {"id": "ARC/7", "question_stem": "Which is a gas?", "answerKey": "B",
                   "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]}}
    with pytest.raises(ValueError, match="answer 'D' is not one of labels"):
        assets.multiple_choice_rows_in_hub_schema([{**rows[0], "answer": "D"}], "question")


def test_metric_keys_and_mean():
    result = {"alias": "x", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25,
              "acc_norm_stderr,none": "N/A", "exact_match,flexible-extract": 0.02,
              "exact_match_stderr,flexible-extract": 0.01}
    metrics = zeroshot.task_metrics("t", result)
    assert metrics == {"zeroshot/t/acc": 0.5, "zeroshot/t/acc_stderr": 0.1, "zeroshot/t/acc_norm": 0.25,
                       "zeroshot/t/exact_match_flexible-extract": 0.02,
                       "zeroshot/t/exact_match_flexible-extract_stderr": 0.01}
    metrics.update({"zeroshot/u/acc": 0.7, "zeroshot/u/acc_stderr": 0.2})
    mean = zeroshot.mean_accuracy(metrics, ("t", "u", "gsm8k"))
    assert mean["zeroshot/mean_acc"] == pytest.approx(0.6)
    assert mean["zeroshot/mean_acc_tasks"] == 2
    assert mean["zeroshot/mean_acc_stderr"] == pytest.approx(math.sqrt(0.1**2 + 0.2**2) / 2)


@requires_bundled_data
def test_real_lm_eval_on_the_tiny_model(tiny_model, tokenizer, tmp_path):
    spec = zeroshot_spec("eval.tasks=[arc_easy,rte]", "eval.limit=5", "eval.limit_per_task={rte:3}",
                         "eval.zeroshot_batch_size=8")
    metrics = zeroshot.evaluate_zeroshot(tiny_model, tokenizer, spec, torch.device("cpu"), task_dir=tmp_path / "tasks",
                                         output_dir=tmp_path / "lm_eval")
    assert metrics["zeroshot/arc_easy/samples"] == 5 and metrics["zeroshot/rte/samples"] == 3
    saved = json.loads((tmp_path / "lm_eval" / "results.json").read_text())  # lm-eval's own results, both tasks
    assert saved["results"]["arc_easy"]["acc,none"] == metrics["zeroshot/arc_easy/acc"]
    assert saved["results"]["rte"]["acc,none"] == metrics["zeroshot/rte/acc"] and saved["n-shot"]["rte"] == 0
    samples = [json.loads(line) for line in (tmp_path / "lm_eval" / "samples_arc_easy.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and sum(s["acc"] for s in samples) / 5 == pytest.approx(metrics["zeroshot/arc_easy/acc"])
    assert len((tmp_path / "lm_eval" / "samples_rte.jsonl").read_text().splitlines()) == 3
    table = zeroshot.results_table(saved)  # what the run logs: lm-eval's make_table
    assert "|arc_easy" in table and "acc_norm" in table and "|rte" in table
    for key in ("zeroshot/arc_easy/acc", "zeroshot/arc_easy/acc_norm", "zeroshot/rte/acc"):
        assert 0.0 <= metrics[key] <= 1.0 and f"{key}_stderr" in metrics
    assert "zeroshot/rte/acc_norm" not in metrics  # stock RTE reports acc only
    # accuracies over 5 and 3 questions are multiples of 1/5 and 1/3
    assert metrics["zeroshot/arc_easy/acc"] * 5 == pytest.approx(round(metrics["zeroshot/arc_easy/acc"] * 5))
    assert metrics["zeroshot/rte/acc"] * 3 == pytest.approx(round(metrics["zeroshot/rte/acc"] * 3))
    expected = (metrics["zeroshot/arc_easy/acc"] + metrics["zeroshot/rte/acc"]) / 2
    assert metrics["zeroshot/mean_acc"] == pytest.approx(expected)
    assert metrics["time/zeroshot_s"] >= metrics["time/zeroshot_arc_easy_s"] > 0


@requires_bundled_data
def test_pipeline_records_zeroshot_metrics(tmp_path):
    overrides = ["eval.tasks=[piqa]", "eval.limit=4"]
    cfg = compose_config("model=tiny_random", "calib_data.nsamples=4", "eval.max_windows=2",
                         "eval.ppl_datasets=[wiki]", "logger=none", *overrides)
    pipeline.main(cfg, output_dir=tmp_path, overrides=overrides)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "completed"
    metrics = record["metrics"]
    assert metrics["zeroshot/piqa/samples"] == 4
    assert metrics["zeroshot/mean_acc"] == metrics["zeroshot/piqa/acc"]
    assert "eval/ppl_wiki" in metrics


@requires_bundled_data
def test_zeroshot_only_run_measures_no_perplexity_and_headlines_the_error(tmp_path):
    overrides = ["eval=zeroshot_only", "eval.tasks=[piqa]", "eval.limit=4"]
    cfg = compose_config("model=tiny_random", "calib_data.nsamples=4", "logger=none", *overrides)
    headline = pipeline.main(cfg, output_dir=tmp_path, overrides=overrides)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert not [k for k in metrics if k.startswith("eval/ppl_")]
    assert headline == pytest.approx(1 - metrics["zeroshot/mean_acc"])  # lower is better, as perplexity
    assert (tmp_path / "lm_eval" / "results.json").exists() and (tmp_path / "lm_eval" / "samples_piqa.jsonl").exists()


def test_default_run_has_no_zeroshot_tasks():
    assert list(compose_config().eval.tasks) == []
    spec = zeroshot_spec("eval=zeroshot")
    assert spec.tasks and all(limit == 100 for limit in spec.limits.values())
    full = zeroshot_spec("eval=zeroshot_full")
    assert set(full.tasks) >= {"boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"}
    assert all(limit is None for limit in full.limits.values())


# ---------------------------------------------------------------------------------------- errors
def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate(compose_config("model=tiny_random", "logger=none", *overrides))
    return str(info.value)


@requires_offline
def test_unknown_task_lists_the_offline_tasks():
    message = _error("eval.tasks=[arc_eassy]")
    assert "'arc_eassy'" in message and "did you mean 'arc_easy'" in message
    assert all(task in message for task in zeroshot.OFFLINE_TASKS)


@requires_offline
def test_task_not_bundled_and_hub_unreachable():
    message = _error("eval.tasks=[mmlu]")
    assert "'mmlu' has no bundled offline data" in message and "hub is unreachable" in message


def test_offline_switch_refuses_tasks_without_bundled_data():
    message = _error("eval.tasks=[lambada_openai]", "eval.zeroshot_data=offline")
    assert "eval.zeroshot_data=offline" in message and "lambada_openai" in message


@requires_offline
def test_online_switch_without_the_hub():
    assert "eval.zeroshot_data=online needs the Hugging Face hub" in _error("eval.tasks=[piqa]", "eval.zeroshot_data=online")


def test_bad_zeroshot_values_name_the_key():
    assert "eval.zeroshot_data='cloud'" in _error("eval.tasks=[piqa]", "eval.zeroshot_data=cloud")
    assert "eval.limit=0" in _error("eval.tasks=[piqa]", "eval.limit=0")
    assert "eval.limit=1.5" in _error("eval.tasks=[piqa]", "eval.limit=1.5")
    assert "eval.limit='all'" in _error("eval.tasks=[piqa]", "eval.limit=all")
    assert "eval.num_fewshot=-1" in _error("eval.tasks=[piqa]", "eval.num_fewshot=-1")
    assert "eval.zeroshot_batch_size=0" in _error("eval.tasks=[piqa]", "eval.zeroshot_batch_size=0")
    assert "'arc_easy'" in _error("eval.tasks=[piqa]", "eval.limit_per_task={arc_easy:5}")
    assert "more than once" in _error("eval.tasks=[piqa,piqa]")


def test_missing_bundled_data_says_how_to_prepare(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    with pytest.raises(zeroshot.ZeroShotConfigError, match="make setup"):
        zeroshot.resolve(["piqa"], data_mode="offline")


# ------------------------------------------------------------------------- the real model (slow)
@requires_embedded
@requires_bundled_data
@pytest.mark.slow
def test_embedded_model_is_plausible_and_pruning_changes_it(tmp_path):
    """SmolLM2-135M on the first 40 ARC-Easy questions: well above chance dense, hurt by 2:4 magnitude."""
    results = {}
    for name, method in (("dense", ["method=dense"]), ("magnitude24", ["method=magnitude", "pattern=2:4"])):
        overrides = [*method, "eval.ppl_datasets=[]", "eval.tasks=[arc_easy]", "eval.limit=40", "logger=none"]
        pipeline.main(compose_config(*overrides), output_dir=tmp_path / name, overrides=overrides)
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
    dense, pruned = results["dense"], results["magnitude24"]
    assert dense["zeroshot/arc_easy/samples"] == 40
    assert dense["zeroshot/arc_easy/acc"] >= 0.4  # chance is 0.25; published full-test acc 0.54
    assert pruned["zeroshot/arc_easy/acc"] < dense["zeroshot/arc_easy/acc"]
