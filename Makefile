# Repeat-contact predictor. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo
DEMO_N ?= 6000
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export BENTOML_DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false

.PHONY: help install test test-deps test-fast lint demo serve notebook bench bench-cluster clean

help: ## List the targets (coloured on a terminal, plain text otherwise)
	@if [ -t 1 ]; then on='\033[36m'; off='\033[0m'; else on=''; off=''; fi; \
	grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-12s%s %s\n", on, $$1, off, $$2}'

install: $(STAMP) ## Create .venv with the CPU torch wheel first, then the project and its dev tools

# Re-runs only when the dependency list changes; torch goes first so nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# model2vec's distillation needs skeletoken, whose pins would downgrade transformers: no deps.
	$(BIN)/pip install --quiet --no-deps skeletoken==0.6.1
	touch $(STAMP)

test-deps: ## System packages the tests need (PostgreSQL for the store tests, Chromium for the report's)
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
		echo "installing PostgreSQL (apt-get) for the store tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Chromium (apt-get) to render the report in the tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: install ## ruff over the code
	$(BIN)/ruff check src tests service benchmarks

test: install test-deps lint ## Lint, then the whole test suite (slow end-to-end tests included)
	$(BIN)/pytest

test-fast: install ## The tests not marked slow
	$(BIN)/pytest -m "not slow"

demo: install ## The main job: simulate, validate, label, train + register, plan, score over HTTP, report
	$(BIN)/predictor simulate --n $(DEMO_N) --seed 7 --out $(DEMO_DIR)/contacts.csv
	$(BIN)/predictor validate $(DEMO_DIR)/contacts.csv --out $(DEMO_DIR)/valid.parquet
	$(BIN)/predictor labels $(DEMO_DIR)/valid.parquet
	$(BIN)/predictor train $(DEMO_DIR)/valid.parquet --oracle-truth $(DEMO_DIR)/contacts.truth.parquet \
		--plots-dir $(DEMO_DIR)/plots
	$(BIN)/predictor plan $(DEMO_DIR)/valid.parquet
	$(BIN)/predictor serve-demo $(DEMO_DIR)/valid.parquet --store $(DEMO_DIR)/store.db
	$(BIN)/predictor report $(DEMO_DIR)/valid.parquet --out $(DEMO_DIR)/report.html
	@echo "demo done: report $(DEMO_DIR)/report.html, high-risk list $(DEMO_DIR)/report_high_risk.csv,"
	@echo "plan models/next_issue_plan.yaml, plots $(DEMO_DIR)/plots/, MLflow store models/mlflow.db"

serve: install ## Run the scoring service on 127.0.0.1:3000 (needs a trained champion: make demo)
	$(BIN)/predictor serve --port 3000

notebook: install ## JupyterLab on notebooks/ at 127.0.0.1:8888 (installs the notebook extra once)
	@$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,notebook]'
	PREDICTOR_HOME=$(CURDIR) $(BIN)/jupyter lab --no-browser --ip 127.0.0.1 --port 8888 notebooks

clean: ## Remove generated data and local model stores (keeps .venv)
	rm -rf $(DEMO_DIR) models/mlflow.db models/mlartifacts models/embedding-cache models/contacts.db

bench: install ## Benchmarks (ratios against a baseline measured in the same run) -> bench-results/
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_train.py --n 20000 --n 100000
	$(BIN)/python benchmarks/bench_train.py --n 20000 --backend sentence-transformers
	$(BIN)/python benchmarks/bench_backends.py --n 10000
	$(BIN)/python benchmarks/bench_cluster.py --n 100000
	$(BIN)/python benchmarks/bench_service.py
	$(BIN)/python benchmarks/bench_service.py --backend sentence-transformers
	# Other languages: each log with the multilingual backend against English with the default, and /score on
	# long Russian transcripts with the English default and the multilingual backend, side by side.
	$(BIN)/python benchmarks/bench_languages.py --n 20000
	$(BIN)/python benchmarks/bench_service.py --language ru --backend model2vec --backend e5-static
	$(BIN)/python benchmarks/bench_cold_start.py
	# The long fuzzing run: every schemathesis check for 10 minutes (CI runs a bounded one).
	PREDICTOR_FUZZ_SECONDS=600 $(BIN)/pytest tests/test_service.py -k schemathesis -p no:cacheprovider
	$(BIN)/python benchmarks/real_logs.py logs && $(BIN)/python benchmarks/real_logs.py train \
		&& $(BIN)/python benchmarks/real_logs.py ablate

bench-cluster: install ## Training on 1M contacts in-process vs a local Dask cluster, per stage (~45 min here)
	$(BIN)/python benchmarks/bench_cluster_train.py --n 1000000
