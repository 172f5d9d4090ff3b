# make run   : create .venv, install clframe with its dependencies, run the quick start
# make test  : the test suite (fast; `make test-slow` for reproduction runs)
# make bench : speed benchmark (clframe vs a plain PyTorch loop vs Avalanche)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export CLFRAME_DATA_ROOT ?= $(abspath ../shared/data)

.PHONY: run install test test-slow bench lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/clframe run experiment=quickstart run_dir=runs/quickstart overwrite=true progress_bar=none
	@echo "plots: runs/quickstart/plots/*.png"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py

lint: $(STAMP)
	$(BIN)/ruff check clframe strategies scenarios metrics unlearning tests benchmarks
	$(BIN)/ruff format --check clframe strategies scenarios metrics unlearning tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format clframe strategies scenarios metrics unlearning tests benchmarks

clean:
	rm -rf runs outputs .pytest_cache
