"""Multi-node training on Kubeflow Trainer v2.3.0 in the local cluster: a round with `train.num_nodes: 2` through
the Argo door, whose train step creates a TrainJob that JobSet runs as two CPU pods (torchrun, DDP over gloo); a
stopped workflow whose exit handler deletes its TrainJob; and the Kubeflow door's train step, run as KFP's
launcher would run it, submitting one and deleting it when cancelled.

The cluster runs the real Trainer and JobSet controllers with their admission webhooks (cluster.sh trainer_up);
the training runtime is infra/cpu's, applied as docs/kubeflow-infra.md tells a user of a cluster without GPUs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import (LONG_TRAIN, NAMESPACE, PROMOTE, ROOT, VOLUME, describe_failure, kubectl, kubectl_json,
                      submit, wait_for_workflow, wait_until)

# Two nodes of half a core each beside the MLflow server and the step pods: the node has 2 cores.
TWO_NODES = ["-s", "train.num_nodes=2", "-s", "kubeflow.cpu_step_cpu=500m", "-s", "kubeflow.cpu_step_memory=3Gi"]
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"


@pytest.fixture(scope="module")
def trainer(door):
    """The CPU training runtime (infra/cpu), as a user of a cluster without GPUs applies it."""
    kubectl("apply", "-k", str(ROOT / "infra" / "cpu"))
    return kubectl_json("get", "clustertrainingruntime", "flywheel-torch-distributed-cpu")


def trainjobs_of(workflow_name: str) -> list[dict]:
    return kubectl_json("-n", NAMESPACE, "get", "trainjobs", "-l", f"{WORKFLOW_LABEL}={workflow_name}")["items"]


def node_pods(trainjob: str) -> list[dict]:
    return kubectl_json("-n", NAMESPACE, "get", "pods", "-l", f"jobset.sigs.k8s.io/jobset-name={trainjob}")["items"]


@pytest.fixture(scope="module")
def two_node_round(trainer):
    """One round with train.num_nodes=2 through the Argo door, run to its end: (workflow name, workspace, workflow)."""
    workspace = f"/models/argo/e2e-trainer-{int(time.time())}"
    name = submit(workspace, 1, *PROMOTE, *TWO_NODES)
    return name, workspace, wait_for_workflow(name)


def test_a_two_node_round_trains_on_kubeflow_trainer_through_the_argo_door(two_node_round):
    """train.num_nodes=2: the train step creates a TrainJob (owned by the workflow), the Trainer makes a JobSet
    of two pods that torchrun into one DDP job (node ranks 0 and 1), rank 0 writes the candidate, and the round
    goes on to evaluate, gate and track."""
    name, workspace, wf = two_node_round
    assert wf["status"]["phase"] == "Succeeded", describe_failure(wf)
    (job,) = trainjobs_of(name)
    assert job["spec"]["runtimeRef"]["name"] == "flywheel-torch-distributed-cpu"
    assert [c["type"] for c in job["status"]["conditions"] if c["status"] == "True"][-1] == "Complete"
    assert [(o["kind"], o["name"]) for o in job["metadata"]["ownerReferences"]] == [("Workflow", name)]
    pods = node_pods(job["metadata"]["name"])
    assert len(pods) == 2 and all(p["status"]["phase"] == "Succeeded" for p in pods), [
        (p["metadata"]["name"], p["status"]["phase"]) for p in pods]
    # torchrun's node rank is the Job's completion index (PET_NODE_RANK reads it through the downward API).
    env = [{e["name"]: e for e in p["spec"]["containers"][0].get("env", [])} for p in pods]
    assert {e["PET_NNODES"]["value"] for e in env} == {"2"}
    assert all("job-completion-index" in e["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] for e in env)
    assert {e["OMP_NUM_THREADS"]["value"] for e in env} == {"1"}  # the half core each node is promised
    index = "batch.kubernetes.io/job-completion-index"
    assert sorted(p["metadata"]["annotations"][index] for p in pods) == ["0", "1"]
    rank_zero = next(p for p in pods if p["metadata"]["annotations"][index] == "0")
    log = kubectl("-n", NAMESPACE, "logs", rank_zero["metadata"]["name"], "-c", "node")
    assert '"train_rows"' in log, log[-2000:]
    candidate = VOLUME / Path(workspace).relative_to("/models") / "rounds" / "1" / "candidate"
    meta = json.loads((candidate / "flywheel-model.json").read_text())
    assert meta["trained"] is True and meta["round"] == 1
    decision = json.loads((candidate.parent / "decision.json").read_text())
    assert decision["promote"] in (True, False)


def test_a_stopped_two_node_workflow_deletes_its_trainjob(trainer):
    """`argo stop` while the TrainJob's two pods train: the workflow ends Failed and its exit handler deletes the
    TrainJob (its JobSet and pods with it), which would otherwise hold its nodes until the workflow itself is
    deleted. (The MLflow side of a stop, KILLED, is test_argo_door's.)"""
    workspace = f"/models/argo/e2e-trainer-stop-{int(time.time())}"
    name = submit(workspace, 1, *PROMOTE, *TWO_NODES, *LONG_TRAIN)

    job, wf = stop_while_training(name, timeout_s=900)
    deleted = [n for n in wf["status"]["nodes"].values() if n["displayName"] == "delete-train-jobs"]
    assert [n["phase"] for n in deleted] == ["Succeeded"], deleted
    wait_until("the TrainJob and its pods gone", lambda: not trainjobs_of(name)
               and not node_pods(job["metadata"]["name"]), timeout_s=180)


def stop_while_training(name: str, timeout_s: float) -> tuple[dict, dict]:
    """Once workflow ``name``'s TrainJob has both pods running, `argo stop` it; returns (the TrainJob as it was
    then, the workflow once it ended Failed)."""
    def training():
        jobs = trainjobs_of(name)
        pods = node_pods(jobs[0]["metadata"]["name"]) if jobs else []
        return len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods) and jobs[0]

    job = wait_until("the TrainJob with both pods running", training, timeout_s=timeout_s, every_s=1)
    kubectl("-n", NAMESPACE, "patch", "workflow", name, "--type", "merge", "-p", '{"spec":{"shutdown":"Stop"}}')
    wf = wait_for_workflow(name)
    assert wf["status"]["phase"] == "Failed", describe_failure(wf)
    return job, wf


# --- the Kubeflow door's multi-node train step, in a pod --------------------------------------------------------
# No KFP backend runs here (the module proxy refuses github.com/kubeflow/pipelines: e2e/README.md). What KFP's
# launcher would run in the train step's pod is run instead, in a pod of an Argo workflow (KFP runs every run as
# one): the compiled component's own command (components/train.yaml: `_KFP_RUNTIME=true python3 -m
# kfp.dsl.executor_main ...`), with the executor input the driver would hand it, under the KFP runner's Role.

RUNNER = "flywheel-pipeline-runner"


def runner_account_in(namespace: str) -> None:
    """infra/base/runs' ServiceAccount, Role and RoleBinding, in ``namespace`` (KFP runs its pods in kubeflow)."""
    import yaml

    documents = [d for name in ("serviceaccount.yaml", "rbac.yaml")
                 for d in yaml.safe_load_all((ROOT / "infra" / "base" / "runs" / name).read_text()) if d]
    for document in documents:
        document["metadata"]["namespace"] = namespace
        for subject in document.get("subjects", []):
            subject["namespace"] = namespace
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))


def kfp_train_step(workspace: str, round_index: int, name: str, *overrides: str) -> str:
    """An Argo workflow of one pod that runs components/train.yaml as KFP's launcher would, with the workspace's
    config and ``overrides`` (``train.steps=1500``); returns its name."""
    import yaml

    from flywheel.config import dump_config, load_config
    from flywheel.infra import images

    spec = yaml.safe_load((ROOT / "components" / "train.yaml").read_text())
    container = next(iter(spec["deploymentSpec"]["executors"].values()))["container"]
    config_yaml = dump_config(load_config(VOLUME / Path(workspace).relative_to("/models") / "config.yaml",
                                          list(overrides)))
    here = f"{workspace}/rounds/{round_index}"
    executor_input = {
        "inputs": {"parameterValues": {"config_yaml": config_yaml, "workspace": workspace,
                                       "round_index": round_index},
                   "artifacts": {
                       "train_set": {"artifacts": [{"name": "train_set", "uri": f"{here}/train.parquet",
                                                    "type": {"schemaTitle": "system.Dataset"}, "metadata": {}}]},
                       "champion": {"artifacts": [{"name": "champion", "uri": f"{workspace}/rounds/0/champion",
                                                   "type": {"schemaTitle": "system.Model"}, "metadata": {}}]}}},
        "outputs": {"artifacts": {"candidate": {"artifacts": [{"name": "candidate", "uri": "/tmp/kfp/candidate",
                                                               "type": {"schemaTitle": "system.Model"},
                                                               "metadata": {}}]}},
                    "outputFile": "/tmp/kfp/executor_output.json"},
    }
    args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in container["args"]]
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"entrypoint": "train", "serviceAccountName": RUNNER,
                 "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "flywheel-models"}}],
                 "templates": [{"name": "train", "container": {
                     "image": images()[0], "command": container["command"], "args": args,
                     "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                     "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}}}]},
    }
    kubectl("create", "-f", "-", input=json.dumps(workflow))
    return name


def test_the_kubeflow_train_step_runs_a_two_node_trainjob_from_its_pod(two_node_round):
    """K2 and the TrainJob's ownership, in a pod: the compiled train component under kfp's runtime flag imports,
    submits a TrainJob owned by and labelled with its workflow, waits for both nodes, copies rank 0's log and
    deletes the job. The round's files are the two-node round's (what prepare .. curate wrote)."""
    runner_account_in(NAMESPACE)
    _, workspace, _ = two_node_round
    name = kfp_train_step(workspace, 1, f"kfp-train-{int(time.time())}")
    seen = wait_until("the step's TrainJob", lambda: trainjobs_of(name), timeout_s=600, every_s=1)[0]
    assert [(o["kind"], o["name"]) for o in seen["metadata"]["ownerReferences"]] == [("Workflow", name)]
    wf = wait_for_workflow(name)
    assert wf["status"]["phase"] == "Succeeded", describe_failure(wf)
    pod = next(n["id"] for n in wf["status"]["nodes"].values() if n["type"] == "Pod")
    log = kubectl("-n", NAMESPACE, "logs", "-l", f"{WORKFLOW_LABEL}={name}", "-c", "main", "--tail", "-1")
    assert "(rank 0)" in log and "deleted" in log, (pod, log[-3000:])
    assert not trainjobs_of(name)


def test_a_cancelled_kubeflow_train_step_deletes_its_trainjob(two_node_round):
    """The TrainJob leak: stopping the run sends the step's pod SIGTERM, which now unwinds through the deletion
    (before: the `finally` never ran, and the job held its nodes up to a day)."""
    runner_account_in(NAMESPACE)
    _, workspace, _ = two_node_round
    name = kfp_train_step(workspace, 1, f"kfp-cancel-{int(time.time())}", "train.steps=1500")

    job, _ = stop_while_training(name, timeout_s=600)
    wait_until("the TrainJob and its pods gone", lambda: not trainjobs_of(name)
               and not node_pods(job["metadata"]["name"]), timeout_s=180)
