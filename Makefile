# Two commands: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo seed test test-slow bench smoke dvc-demo clean

setup: $(STAMP)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

## demo: the default flywheel (shipped seed, 3 rounds) on CPU; report in runs/default/
demo: setup
	$(BIN)/flywheel run -c configs/default.yaml

## seed: re-train the shipped seed committee from scratch (labels, 1-5 digits)
seed: setup
	$(BIN)/flywheel seed -c configs/default.yaml

## test: the fast suite (CI runs this)
test: setup
	$(BIN)/python -m pytest -q

## test-slow: the tests marked slow (dvc repro of the full pipeline, MLflow server)
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

## bench: time per stage of one round, and the share outside model compute
bench: setup
	$(BIN)/python bench/round_time.py

## smoke: the whole loop on a tiny model in well under a minute
smoke: setup
	test -d runs/smoke/seed || $(BIN)/flywheel seed -c configs/smoke.yaml  # the tiny seed trains in seconds
	$(BIN)/flywheel run -c configs/smoke.yaml

clean:
	rm -rf runs mlflow.db mlartifacts
