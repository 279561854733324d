"""Shared fixtures: a tiny seed committee trained once per session (seconds, CPU)."""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import flywheel  # noqa: F401  (first: it pins the CPU kernels before any test module's torch computes)

_REAL_PRINT = builtins.print


@pytest.fixture(autouse=True)
def _builtin_print_restored():
    """kfp.local (2.17) indents a task's output by swapping ``builtins.print`` inside each task
    (``logging_utils.indented_print``); the shards of a ParallelFor run in threads, so the swaps nest out of
    order and the indenting print can outlive the pipeline. Every later test in that worker then printed
    "    arm ..." where the efficacy table's header should start its line. Put the real print back, the one
    saved at import: a module fixture that runs a pipeline is set up before this fixture could save it."""
    yield
    builtins.print = _REAL_PRINT


ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

# The files that run whole pipelines in subprocesses (minutes each), longest first. `make test` hands whole files
# to its two workers (pytest-xdist --dist loadfile --no-loadscope-reorder) in collection order: starting these
# first keeps one worker from being left alone with a long file at the end (measured: 613 s, 1.6 cores busy).
LONGEST_FILES = ("test_kubeflow.py", "test_dvc.py", "test_resume.py", "test_readme.py", "test_efficacy.py",
                 "test_pipeline_cli.py", "test_promotion.py")


def pytest_collection_modifyitems(items):
    """Longest files first, the rest in their usual order (a stable sort: a file's own tests keep theirs)."""
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one test file per core: one torch/OpenMP thread per worker (and per process a test
    # starts), so two workers on two cores do not oversubscribe them and spin-wait.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_seed(tmp_path_factory) -> Path:
    """The smoke config's seed (2 members, ~20k parameters each), trained with labels on 1-2 digits."""
    from flywheel.config import load_config
    from flywheel.seed_model import train_seed
    from flywheel.tasks import load_task

    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp("seed") / "seed"
        train_seed(load_config(SMOKE, [f"seed.path={out}"]), task=load_task("addition"))
        return out
    # Under `make test` the workers share one seed: the first to get here trains it (13 s), the others wait for it.
    # This session's base directory (pytest-<n>) is the workers' common parent, so no other session's seed is used.
    import fcntl

    shared = tmp_path_factory.getbasetemp().parent
    out = shared / "tiny-seed" / "seed"
    with open(shared / "tiny-seed.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "tiny-seed.done").exists():
            shutil.rmtree(out.parent, ignore_errors=True)
            train_seed(load_config(SMOKE, [f"seed.path={out}"]), task=load_task("addition"))
            (shared / "tiny-seed.done").touch()
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_seed) -> Path:
    """A fresh working directory holding a copy of the repo's configs and the tiny seed."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(tiny_seed, tmp_path / "seed" / "smoke")  # configs/smoke.yaml: seed.path seed/smoke
    shutil.copytree(tiny_seed, tmp_path / "runs" / "smoke" / "seed")  # where tests name a model directory
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> Path:
    """A ~60k-parameter chat model (char tokenizer with a chat template) as a plain HF directory; untrained."""
    from flywheel.modeling import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("chat") / "tiny-chat", seed=0)


@contextlib.contextmanager
def mlflow_server(root: Path, workers: int = 1):
    """A real ``mlflow server`` on a free port of 127.0.0.1 (sqlite store, artifacts under ``root``); yields its URI."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                                "--port", str(port), "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                                "--artifacts-destination", str(root / "artifacts"), "--workers", str(workers)],
                               cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               # MLflow's job runner (seven huey consumers, each importing MLflow) serves features
                               # flywheel never asks for: off, the server starts without 20 CPU-seconds of them.
                               env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)
