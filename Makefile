# Two commands: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo seed lint test test-slow bench smoke dvc-demo clean lock cluster cluster-down e2e

setup: $(STAMP)

# Every version comes from constraints.txt (scripts/lock.sh regenerates it; tests/test_lock.py checks it).
# torch first, pinned (torch==2.13.0): an unpinned resolve could pick another build. The package index here
# serves 2.13.0 as its CUDA 13 build, which runs on the CPU; a local wheel directory (PIP_FIND_LINKS) that
# holds a CPU build is searched too. Everything with uv: torch in 37 s against pip's 81 s, cold cache (README).
# --compile-bytecode: uv skips it by default, and then every test process that imports torch, transformers
# or MLflow first compiles them itself (PYTHONDONTWRITEBYTECODE=1 here: never cached).
UV_PIP = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt \
	$(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt --upgrade pip uv
	$(UV_PIP) torch==2.13.0
	$(UV_PIP) -e ".[test]"
	touch $(STAMP)

## lock: regenerate constraints.txt from the newest versions inside pyproject.toml's ranges
lock:
	scripts/lock.sh

## demo: the default flywheel (the shipped committee of three seeds, 4 rounds) on CPU; report in runs/default/
demo: setup
	$(BIN)/flywheel run -c configs/default.yaml --restart

## seed: re-train the shipped seed committee from scratch (labels, 1-5 digits)
seed: setup
	$(BIN)/flywheel seed -c configs/default.yaml

## lint: ruff over the code, the tests, the benchmarks and the e2e checks (pyproject.toml's [tool.ruff])
lint: setup
	$(BIN)/ruff check src tests bench e2e scripts

## test: the fast suite (CI runs this); one test file per core (pytest-xdist)
test: setup
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

## test-slow: the tests marked slow (kill-and-resume in every stage, the promoted two-round kfp.local run,
## mlflow models serve, the benchmarks' own checks, ...)
test-slow: setup
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m slow

## bench: time per stage of one round at two sizes (3000 and 12000 prompts), generation tokens/s by batching, vote and curate at 1M samples
bench: setup
	$(BIN)/python bench/round_time.py --sizes 3000,12000
	$(BIN)/python bench/generate_batching.py
	$(BIN)/python bench/vote_curate.py --prompts 125000 --reference

## smoke: the whole loop on a tiny model in well under a minute
smoke: setup
	$(BIN)/flywheel run -c configs/smoke.yaml --restart

## cluster: a real single-node Kubernetes with Argo Workflows, built here from the Go module proxy and Debian's
## packages (root; e2e/README.md): cold about 18 min, warm 15 s. Stop it with `make cluster-down`.
cluster: setup
	e2e/cluster/cluster.sh up

cluster-down:
	e2e/cluster/cluster.sh down

## e2e: the cluster doors on the cluster of `make cluster` (not part of `make test`): each check by name.
## The flywheel image is rebuilt from this checkout first (its source layer: seconds), so pods run this code.
e2e: setup
	e2e/cluster/images.sh flywheel
	e2e/cluster/cluster.sh exec $(BIN)/python -m pytest -v -p no:cacheprovider e2e/

clean:
	rm -rf runs mlflow.db mlartifacts
