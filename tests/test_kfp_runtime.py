"""The Kubeflow components as KFP 2.17's launcher runs them: the compiled spec's own command (``sh``, then
``_KFP_RUNTIME=true python3 -m kfp.dsl.executor_main``) with an executor input. Under ``_KFP_RUNTIME=true`` kfp.dsl
exports no ``component``, so a body that imports ``flywheel.kubeflow.components`` dies at import (K2: every round
with ``train.num_nodes > 1``). kfp.local runs the same bodies without that variable and cannot see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from flywheel.config import dump_config, load_config
from tests.conftest import ROOT, SMOKE


def run_component(name: str, parameters: dict, artifacts: dict[str, Path], outputs: dict[str, Path],
                  tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``components/<name>.yaml``'s container command here, as the launcher would in its pod."""
    spec = yaml.safe_load((ROOT / "components" / f"{name}.yaml").read_text())
    container = next(iter(spec["deploymentSpec"]["executors"].values()))["container"]
    definitions = spec["root"]

    def artifact(key: str, path: Path, where: str) -> dict:
        schema = definitions[where]["artifacts"][key]["artifactType"]["schemaTitle"]
        return {"artifacts": [{"name": key, "uri": str(path), "metadata": {}, "type": {"schemaTitle": schema}}]}

    executor_input = {
        "inputs": {"parameterValues": parameters,  # a PipelineTaskFinalStatus input is a struct among them
                   "artifacts": {k: artifact(k, p, "inputDefinitions") for k, p in artifacts.items()}},
        "outputs": {"artifacts": {k: artifact(k, p, "outputDefinitions") for k, p in outputs.items()},
                    "outputFile": str(tmp_path / "executor_output.json")},
    }
    args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in container["args"]]
    # The image's python3 is the one with flywheel installed: here, this interpreter's.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run(container["command"] + args, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)


def test_the_multi_node_train_step_gets_past_its_imports_under_the_kfp_runtime(tmp_path):
    """K2. Outside a cluster the step then stops where it first talks to Kubernetes, to submit the TrainJob:
    that message proves the body imported and rendered the TrainJob (before the fix: AttributeError on
    ``kfp.dsl.component``)."""
    config = load_config(SMOKE, ["train.num_nodes=2"])
    workspace = tmp_path / "workspace"
    (workspace / "rounds" / "1").mkdir(parents=True)
    result = run_component("train", {"config_yaml": dump_config(config), "workspace": str(workspace),
                                     "round_index": 1},
                           {"train_set": tmp_path / "train.parquet", "champion": tmp_path / "champion"},
                           {"candidate": tmp_path / "candidate"}, tmp_path)
    assert result.returncode != 0
    assert "has no attribute 'component'" not in result.stderr, result.stderr[-2000:]
    assert "Service host/port is not set" in result.stderr, result.stderr[-2000:]
    # The TrainJob's config, written before the submission, is the run's config.
    written = load_config(workspace / "rounds" / "1" / "train-config.yaml")
    assert written.train.num_nodes == 2


def test_a_component_body_that_imports_the_component_module_fails_under_the_kfp_runtime():
    """The trap itself, so the test above keeps meaning something if kfp changes: under the runtime flag the
    module that declares the components cannot be imported."""
    result = subprocess.run([sys.executable, "-c", "import flywheel.kubeflow.components"], capture_output=True,
                            text=True, env={**os.environ, "_KFP_RUNTIME": "true"}, timeout=120)
    assert result.returncode != 0 and "has no attribute 'component'" in result.stderr


def test_the_exit_task_ends_the_runs_as_the_pipeline_ended(tmp_path):
    """Both pipelines' exit task (components/end_run.yaml), with the final status KFP's driver hands it: the parent
    run of the workspace ends FINISHED, FAILED (its error message as flywheel.error) or KILLED (cancelled), with the
    round runs left RUNNING under it. The flywheel pipeline passes its workspace root and the run's id."""
    from mlflow.tracking import MlflowClient

    from flywheel.kubeflow.champion import loop_key
    from flywheel.tracking import Tracker

    db = tmp_path / "mlflow.db"
    config = load_config(SMOKE, [f"tracking.uri=sqlite:///{db}"])
    tracker = Tracker(config.tracking)
    parent = tracker.start_loop(config, loop_key=loop_key(str(tmp_path / "runs" / "run-7")))
    client = MlflowClient(f"sqlite:///{db}")
    from flywheel.tracking import end_workspace_loop
    from flywheel.workflow_ends import pipeline_end

    # Through kfp's executor once (each run starts a Python that imports MLflow: seconds), then the same function
    # in this process for the other final states.
    cases = (({"state": "FAILED", "error": {"code": 2, "message": "round-1-train: exit status 1"}}, "FAILED",
              "round-1-train: exit status 1"),
             ({"state": "CANCELLED"}, "KILLED", "CANCELLED"),
             ({"state": "CANCELED"}, "KILLED", "CANCELED"),
             ({"state": "SUCCEEDED"}, "FINISHED", None))
    for index, (status, expected, tag) in enumerate(cases):
        round_run = tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
        if index == 0:
            result = run_component("end_run", {"config_yaml": dump_config(config), "workspace": str(tmp_path / "runs"),
                                               "run_id": "run-7", "status": status}, {}, {}, tmp_path)
            assert result.returncode == 0, result.stderr[-2000:]
        else:
            end_workspace_loop(config, loop_key=loop_key(str(tmp_path / "runs" / "run-7")),
                               end=pipeline_end(status["state"], (status.get("error") or {}).get("message")))
        assert client.get_run(parent).info.status == expected
        assert client.get_run(parent).data.tags.get("flywheel.error") == tag
        assert client.get_run(round_run).info.status == ("FAILED" if expected == "FINISHED" else expected)


def test_a_trainjob_is_owned_by_and_labelled_with_the_workflow_that_runs_the_step():
    """The run's workflow owns its TrainJobs (deleting the run deletes them) and labels them (the exit task finds
    them); in the pod's own namespace, not a fixed one."""
    from flywheel import infra

    manifest = infra.example_trainjob()
    owned = infra.owned_by(manifest, {"name": "flywheel-abc12", "uid": "u-1"}, "team-a")
    assert owned["metadata"]["namespace"] == "team-a"
    assert owned["metadata"]["labels"][infra.WORKFLOW_LABEL] == "flywheel-abc12"
    assert owned["metadata"]["ownerReferences"] == [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                                                     "name": "flywheel-abc12", "uid": "u-1",
                                                     "blockOwnerDeletion": False}]
    assert "ownerReferences" not in manifest["metadata"]  # a copy: the rendered job is left alone
    assert "ownerReferences" not in infra.owned_by(manifest, None, "team-a")["metadata"]
    assert infra.delete_workflow_trainjobs() == []  # outside a cluster: nothing to find
