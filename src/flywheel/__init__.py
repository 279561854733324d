"""flywheel: a language model that improves itself in rounds, without labels.

Each round the champion answers unlabeled prompts many times (generate), verifies itself by majority
vote (vote), keeps what it trusts (curate), is fine-tuned on it (train), is measured against the
champion (evaluate), and replaces it only if it wins (gate).

The public surface for scripts (the CLI is built on the same functions)::

    import flywheel

    config = flywheel.load_config("configs/smoke.yaml", ["loop.rounds=1"])
    report = flywheel.run_loop(config, mode="restart")          # the whole loop, as `flywheel run`
    task = flywheel.load_task(config.task, config.code)
    flywheel.run_generate(prompts, champion, out, config.generate, task=task, round_index=1)  # one stage
    for stage in flywheel.round_stages(config, root, 1, task=task):
        stage.run()                                             # a round stage by stage, as `flywheel step`

Extension points (docs/extending.md): ``flywheel.TASKS``, ``VOTE_METHODS``, ``TRAIN_METHODS``.

Names resolve on first use, so ``import flywheel`` stays cheap (no torch, no MLflow) and a Kubeflow
component that imports one helper does not pay for the rest.
"""

from __future__ import annotations

import importlib
import os

# MLflow 3 sends usage telemetry by default and writes ~/.config/mlflow: flywheel reaches no network but the
# package index and its own tracking server, so it turns that off (unless the user set it) before any of its
# modules can import MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# The same numbers on every CPU of the machine kind (Intel Xeon, AMD EPYC): MKL and ATen run their AVX2 paths,
# set before torch computes anything (flywheel.cpu_kernels says why, and how to opt out).
from flywheel import cpu_kernels as _cpu_kernels  # noqa: E402

_cpu_kernels.pin()

__version__ = "0.1.0"  # the same as pyproject.toml's (a test keeps them equal) and the images' tag

# public name -> the module that defines it
_EXPORTS = {
    "FlywheelConfig": "flywheel.config",
    "load_config": "flywheel.config",
    "load_config_text": "flywheel.config",
    "dump_config": "flywheel.config",
    "InputError": "flywheel.errors",
    "load_task": "flywheel.tasks",
    "run_loop": "flywheel.loop",
    "run_round": "flywheel.loop",
    "round_stages": "flywheel.loop",
    "prepare": "flywheel.loop",
    "RoundLayout": "flywheel.layout",
    "RunLayout": "flywheel.layout",
    "TASKS": "flywheel.registry",
    "VOTE_METHODS": "flywheel.registry",
    "TRAIN_METHODS": "flywheel.registry",
    "run_prompts": "flywheel.stages.prompts",
    "run_generate": "flywheel.stages.generate",
    "run_vote": "flywheel.stages.vote",
    "run_curate": "flywheel.stages.curate",
    "run_train": "flywheel.stages.train",
    "run_evaluate": "flywheel.stages.evaluate",
    "run_gate": "flywheel.stages.gate",
    "Tracker": "flywheel.tracking",
    "track_round": "flywheel.tracking",
    "build_report": "flywheel.report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'flywheel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
