"""What the Kubeflow components share: the config from its YAML parameter, the round directory
in the workspace, and publishing files, model pointers and metrics as KFP artifacts.

Imported inside component bodies (KFP copies only a component's function source into the
pipeline), so it must stay importable without KFP's compiler and cheap to import.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flywheel.config import FlywheelConfig, load_config_text
from flywheel.round_metrics import flatten


def load(config_yaml: str, *, stage: str | None = None) -> FlywheelConfig:
    """The run's config (what the preflight step returned); no progress bars in pod logs.

    ``stage``: the step first runs the machine checks every door shares (``flywheel.machine_checks.check_stage``:
    a GPU visible in its pod, vLLM where the config asks for it).
    """
    config = load_config_text(config_yaml, source="pipeline parameter config_yaml")
    config.loop.progress = False
    if stage is not None:
        from flywheel.machine_checks import check_stage

        check_stage(config, stage, where="in this pod")
    return config


def layout(workspace: str, round_index: int):
    """Round ``round_index`` of the workspace: every path of it (``flywheel.layout.RoundLayout``)."""
    from flywheel.layout import RoundLayout

    return RoundLayout(Path(workspace), int(round_index))


def publish_file(source: Path, artifact) -> None:
    """Copy a small stage output (Parquet, JSON) into an output artifact, recording where it came from."""
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, artifact.path)
    artifact.metadata["workspace_path"] = str(source)


def publish_model(model_dir: Path, artifact, **metadata) -> None:
    """A Model artifact that points at a model directory on the shared volume instead of copying it.

    The artifact's file is the model's ``flywheel-model.json`` (members, round, curriculum bucket) so
    the UI shows what it is; ``metadata['path']`` is where the weights are.
    """
    from flywheel.modeling import read_model_meta

    meta = read_model_meta(model_dir)
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps({"path": str(Path(model_dir).resolve()), **meta}, indent=2) + "\n")
    artifact.metadata.update({"path": str(Path(model_dir).resolve()), **metadata})


def model_path(artifact) -> Path:
    return Path(artifact.metadata["path"])


def log_metrics(artifact, values: dict, prefix: str = "") -> None:
    """Every number in ``values`` (nested dicts flattened to dotted keys) as a scalar metric."""
    for key, value in flatten(prefix, values, {}).items():
        artifact.log_metric(key, value)


def run_stage(name: str, config: FlywheelConfig, round_index: int, this, given: dict, **extra) -> dict:
    """Run stage ``name`` by its record (``flywheel.stages.records``) on round ``round_index``: its paths from the
    round layout ``this`` (None: every path is ``given``), with ``given`` (the step's artifacts) in their place."""
    from flywheel.stages.records import STAGES
    from flywheel.tasks import load_task

    stage = STAGES[name]
    return stage.run(config, load_task(config.task, config.code), round_index, stage.paths_of(this, config, **given),
                     **extra)
