# absa-lightning: `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build that lies on this machine's disk; on a GPU machine: make install TORCH=torch
TORCH  ?= torch==2.13.0
# A copy of UIT-ViSFD beside the checkout (as CI lays it out) is used when present;
# otherwise train.py looks in data/uit-visfd and downloads it there.
ABSA_DATA_DIR ?= $(firstword $(wildcard $(abspath ../shared/data/uit-visfd)))
ifneq ($(ABSA_DATA_DIR),)
export ABSA_DATA_DIR
endif
# MAMS-ACSA (data=mams) likewise: beside the checkout, else data/mams-acsa (downloaded there).
ABSA_MAMS_DIR ?= $(firstword $(wildcard $(abspath ../shared/data/mams-acsa)))
ifneq ($(ABSA_MAMS_DIR),)
export ABSA_MAMS_DIR
endif

# apt-get needs root: sudo when not root already.
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help install install-browser train test test-fast bench bench-quick bench-advice bench-predict bench-serve lint format clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

install: $(PY) ## Virtual env in .venv: torch (CPU build here), then the package with dev extras
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'

install-browser: ## Chromium (Debian/Ubuntu package), for the web demo's headless-browser test
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

train: ## Train the default recipe on UIT-ViSFD (args: make train ARGS="loss.contrastive_weight=0.3")
	$(PY) train.py $(ARGS)

test: ## The whole test suite, slow tests included (a few minutes on 2 cores)
	$(PY) -m pytest -q

test-fast: ## The tests not marked slow
	$(PY) -m pytest -q -m "not slow"

bench: ## The benchmark: SVM baseline, the recipes x 3 seeds on UIT-ViSFD (whole, 1k, 3k) and MAMS, speed -> benchmarks/results/bench.md (~16 h)
	$(PY) -m benchmarks.bench $(ARGS)

bench-quick: ## The benchmark, 1 seed, short runs (not comparable) -> benchmarks/results/bench-quick.md (~1 h)
	$(PY) -m benchmarks.bench --quick $(ARGS)

bench-advice: ## Varied short runs read and their advice checked -> benchmarks/results/advice.md (~1 h on 2 cores)
	$(PY) -m benchmarks.advice $(ARGS)

bench-predict: ## Comments/s at batch 64 on 2 threads (make bench-predict CKPT=path)
	$(if $(CKPT),,$(error give the checkpoint or exported folder: make bench-predict CKPT=path))
	$(PY) benchmarks/predict_throughput.py --ckpt "$(CKPT)" --comments "$(or $(ABSA_DATA_DIR),data/uit-visfd)/Test.csv"

bench-serve: ## absa-serve under 1, 4, 16 keep-alive clients + a slow one: req/s, p50/p95/p99 (CKPT=path, else a tiny model)
	$(PY) -m benchmarks.serve_load $(if $(CKPT),--ckpt "$(CKPT)") $(ARGS)

lint: ## ruff: lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: ## ruff: fix what it can and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## Remove run outputs and caches (not the virtual env)
	rm -rf outputs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
