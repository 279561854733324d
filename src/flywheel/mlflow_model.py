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

        if isinstance(model_input, pd.DataFrame):  # a list arrives as one unnamed column (the signature's input)
            column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
            prompts = [str(p) for p in model_input[column]]
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


def example_prompt(task: str) -> str:
    """A prompt of ``task`` for the model's input example: one its generator makes, or, for a task whose prompts
    come from a file, a plain question."""
    from flywheel.tasks import load_task

    try:
        return str(load_task(task).make_prompts(bucket=1, count=1, seed=0, id_prefix="example")[0]["prompt"])
    except Exception:  # no generator (prompts from data.prompts): any string shows the input's type
        return "What is 1 + 1?"


def signature():
    """Prompts in (one string column: a list of strings, or a DataFrame with a ``prompt`` column), the voted
    answers out: what ``predict`` takes and returns, and what ``mlflow models serve`` checks requests against."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([
        ColSpec("string", "prompt"), ColSpec("string", "answer"), ColSpec("string", "completion"),
        ColSpec("double", "vote_share")]))


def save_pyfunc(model_dir: Path, target: Path, *, task: str, max_new_tokens: int, input_example: str = "1+1=",
                mlflow_model=None) -> None:
    """Write ``model_dir`` as an MLflow pyfunc model at ``target`` (which must not exist), with its signature
    and an input example (a prompt of the task)."""
    import logging
    import os

    # MLflow warns that a pickled python_model executes code when loaded (true of any pickle; ours is our own
    # class) and draws a progress bar per artifact copy: neither helps the loop's console.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    mlflow.pyfunc.save_model(
        path=str(target), python_model=FlywheelModel(), artifacts={"model": str(model_dir)},
        code_paths=[str(PACKAGE_DIR)], pip_requirements=requirements(), signature=signature(),
        input_example=[input_example], mlflow_model=mlflow_model,
        model_config={"task": task, "max_new_tokens": max_new_tokens, "device": "cpu", "precision": "auto"})


def log_pyfunc(client, run_id: str, experiment_id: str, model_dir: Path, name: str, *, task: str,
               max_new_tokens: int, input_example: str = "1+1=") -> tuple[str, str, str]:
    """Log ``model_dir`` as an MLflow 3 LoggedModel called ``name``, an output of run ``run_id``.

    Through the client (not ``mlflow.pyfunc.log_model``, which reads the process's active run and experiment,
    and predicts on the example again to validate it): create the LoggedModel, save the pyfunc with its id,
    upload it, mark it READY, and link it to the run. Returns (its id, its ``models:/<id>`` URI, the URI of the
    model directory inside it): the Kubeflow round downloads the last to continue from the champion, so the
    weights are stored once.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, model_type="flywheel")
    try:
        with tempfile.TemporaryDirectory(prefix="flywheel-mlflow-") as scratch:
            target = Path(scratch) / name
            save_pyfunc(model_dir, target, task=task, max_new_tokens=max_new_tokens, input_example=input_example,
                        mlflow_model=Model(model_id=logged.model_id, run_id=run_id, model_uuid=logged.model_id,
                                           artifact_path=logged.artifact_location))
            inside = Model.load(str(target)).flavors["python_function"]["artifacts"]["model"]["path"]
            client.log_model_artifacts(logged.model_id, str(target))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id, f"models:/{logged.model_id}", f"{logged.artifact_location}/{inside}"
