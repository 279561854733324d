"""MLflow for the Kubeflow pipelines: the champion from the registered model's ``champion`` alias
(scheduled rounds), and logging a round with the same ``Tracker`` calls as ``flywheel run``.

A workspace (a directory on the shared volume) has one MLflow parent run, found again by its
``flywheel.loop`` tag ``kfp:<workspace>``, so the rounds of a schedule nest under one run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from flywheel import io, model_copies, schemas
from flywheel.config import FlywheelConfig
from flywheel.layout import RoundLayout, RunLayout
from flywheel.loop import check_seed, eval_set


def loop_key(workspace: str | Path) -> str:
    from flywheel.tracking import loop_key as key

    return key("kfp", workspace)


def next_round(workspace: str | Path) -> int:
    """1 + the last round of the workspace that reached its gate (1 for a new workspace)."""
    return RunLayout(Path(workspace)).next_round()


def resolve_champion(config: FlywheelConfig, workspace: str | Path, *, task) -> dict:
    """Prepare the workspace's next round: the eval set (once), and the champion of MLflow's ``champion``
    alias placed at ``rounds/<round - 1>/champion`` (the seed is registered first if no alias exists yet).

    Without tracking the champion is the workspace's own last one (the seed for a new workspace).
    Returns ``{"round", "champion_dir", "eval_path", "model_version"}``.
    """
    root = Path(workspace)
    index = next_round(root)
    previous = RoundLayout(root, index - 1)
    eval_path = RunLayout(root).eval_set
    if not eval_path.exists():
        io.write_rows(eval_path, eval_set(config, task), schemas.PROMPTS)
    if not previous.pool.exists():
        io.write_rows(previous.pool, [], schemas.CURATED)
    version = None
    if config.tracking.enabled:
        version = _download_champion(config, root, previous.champion)
    elif not previous.champion.exists():
        model_copies.link_or_copy_tree(check_seed(config), previous.champion)
    return {"round": index, "champion_dir": previous.champion, "eval_path": eval_path, "model_version": version}


def _download_champion(config: FlywheelConfig, root: Path, target: Path) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    from flywheel.model_registry import CHAMPION_ALIAS, FILES_TAG
    from flywheel.tracking import Tracker

    tracker = Tracker(config.tracking)
    name = config.tracking.registered_model
    try:
        version = tracker.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        parent = tracker.start_loop(config, loop_key=loop_key(root))
        tracker.registry.register_seed(parent, check_seed(config))
        version = tracker.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    with tempfile.TemporaryDirectory(prefix="flywheel-champion-") as scratch:
        # The model directory inside the version's pyfunc (older versions: the source is the directory).
        files = version.tags.get(FILES_TAG, version.source)
        local = mlflow.artifacts.download_artifacts(artifact_uri=files, dst_path=scratch,
                                                    tracking_uri=config.tracking.uri)
        model_copies.link_or_copy_tree(Path(local), target)
    return version.version
