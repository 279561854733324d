"""Every registered model version is an MLflow model that answers prompts.

``mlflow.pyfunc.load_model("models:/<name>@champion")`` returns a model whose ``predict`` takes
prompts (a list of strings, or a DataFrame with a ``prompt`` column) and returns a DataFrame of
``prompt, answer, completion, vote_share``: every committee member answers greedily, as the
evaluate stage scores it, and the members vote (one member: its answer, share 1.0). A LoRA
adapter member loads over its base. ``mlflow models serve -m models:/<name>@champion
--env-manager local`` serves the same ``predict``.

A pyfunc, not ``mlflow.transformers``: a flywheel model is a committee directory (``member-*/``
and ``flywheel-model.json``) and needs the task to render prompts and read answers; the flywheel
package itself travels with the model (``code_paths``), so loading needs no flywheel install.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow.pyfunc

PACKAGE_DIR = Path(__file__).resolve().parent
# What loading the model needs besides the shipped flywheel code (versions: those installed when logging).
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "peft", "pandas", "pyarrow", "pyyaml",
                "math-verify")


class FlywheelModel(mlflow.pyfunc.PythonModel):
    """A flywheel model directory (a committee) behind MLflow's pyfunc interface."""

    # predict takes a list of prompts or a DataFrame with a `prompt` column on purpose: no type-hint
    # validation (MLflow would otherwise warn that predict has no type hints).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from flywheel.stages.generate import load_backends
        from flywheel.tasks import load_task

        settings = context.model_config or {}
        self.task = load_task(settings.get("task", "addition"))
        self.max_new_tokens = int(settings.get("max_new_tokens", 32))
        self.backends = load_backends(Path(context.artifacts["model"]), batch_size=int(settings.get("batch_size", 64)),
                                      device=settings.get("device", "cpu"), progress=False,
                                      precision=settings.get("precision", "auto"))

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from flywheel.config import GenerateConfig
        from flywheel.stages.generate import generate
        from flywheel.stages.vote import vote

        if isinstance(model_input, pd.DataFrame):
            prompts = [str(p) for p in model_input["prompt"]]
        elif isinstance(model_input, str):
            prompts = [model_input]
        else:
            prompts = [str(p) for p in model_input]
        rows = [{"id": f"q{i}", "prompt": p, "meta": ""} for i, p in enumerate(prompts)]
        greedy = GenerateConfig(samples_per_prompt=1, temperature=0.0, max_new_tokens=self.max_new_tokens)
        samples = generate(rows, self.backends, greedy, task=self.task, round_index=0)
        votes, _ = vote(samples, key=self.task.vote_key)
        by_id = {v["prompt_id"]: v for v in votes}
        first = {}
        for sample in samples:
            if sample["answer"] == by_id[sample["prompt_id"]]["majority_answer"]:
                first.setdefault(sample["prompt_id"], sample["completion"])
        return pd.DataFrame({
            "prompt": pd.Series([r["prompt"] for r in rows], dtype=object),
            # object dtype keeps "no answer" as None (JSON null when served), never NaN
            "answer": pd.Series([by_id[r["id"]]["majority_answer"] for r in rows], dtype=object),
            "completion": pd.Series([first.get(r["id"], "") for r in rows], dtype=object),
            "vote_share": [float(by_id[r["id"]]["vote_share"]) for r in rows],
        })


def requirements() -> list[str]:
    from importlib import metadata

    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def save_pyfunc(model_dir: Path, target: Path, *, task: str, max_new_tokens: int) -> None:
    """Write ``model_dir`` as an MLflow pyfunc model at ``target`` (which must not exist)."""
    import logging
    import os

    # MLflow warns that a pickled python_model executes code when loaded (true of any pickle; ours is our own
    # class) and draws a progress bar per artifact copy: neither helps the loop's console.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    mlflow.pyfunc.save_model(
        path=str(target), python_model=FlywheelModel(), artifacts={"model": str(model_dir)},
        code_paths=[str(PACKAGE_DIR)], pip_requirements=requirements(),
        model_config={"task": task, "max_new_tokens": max_new_tokens, "device": "cpu", "precision": "auto"})


def log_pyfunc(client, run_id: str, model_dir: Path, artifact_path: str, *, task: str,
               max_new_tokens: int) -> tuple[str, str]:
    """Log ``model_dir`` as a pyfunc under ``artifact_path`` of ``run_id``.

    Returns (the pyfunc's URI, the URI of the model directory inside it): the Kubeflow round
    downloads the second to continue from the champion, so the weights are stored once.
    """
    import yaml

    with tempfile.TemporaryDirectory(prefix="flywheel-mlflow-") as scratch:
        target = Path(scratch) / artifact_path
        save_pyfunc(model_dir, target, task=task, max_new_tokens=max_new_tokens)
        inside = yaml.safe_load((target / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
        client.log_artifacts(run_id, str(target), artifact_path)
    model_uri = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    return model_uri, f"{model_uri}/{inside['model']['path']}"
