# Every target runs through .venv/, which `install` creates and fills.
# CPU torch is pinned by default; GPU users override TORCH_SPEC, e.g.
#   make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON      ?= $(shell command -v python3.11 || command -v python3)
TORCH_SPEC  ?= torch==2.13.0
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
SWEEP       ?= runs/quick.toml
WORKERS     ?=
SWEEP_ARGS  ?=
RUNS        ?= runs/quick
PYTEST_ARGS ?=

.PHONY: help install test test-slow lint format sweep plots bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[dev,ray,tracking]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv/ and install kfac-bench with the dev, ray and tracking extras

test: $(STAMP)  ## unit, oracle and integration tests (fast; benchmarks run once as tests)
	$(BIN)/python -m pytest -m "not slow" --benchmark-disable -q $(PYTEST_ARGS)

test-slow: $(STAMP)  ## the slow checks (longer training runs)
	$(BIN)/python -m pytest -m slow --benchmark-disable -q $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

sweep: $(STAMP)  ## run a sweep spec (SWEEP=runs/quick.toml WORKERS=N)
	$(BIN)/kfac-bench sweep $(SWEEP) $(if $(WORKERS),--workers $(WORKERS),) $(SWEEP_ARGS)

plots: $(STAMP)  ## analyse a sweep into figures and a report (RUNS=runs/quick)
	$(BIN)/kfac-bench analyze $(RUNS)

bench: $(STAMP)  ## pytest-benchmark suite -> runs/bench/*.json + runs/bench/report.md
	$(BIN)/python -m kfac_bench.bench_report run

clean:  ## remove .venv/, caches and benchmark output (sweep outputs are kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
