"""Kubernetes: the GPU node pool's contract and the Kubeflow Trainer TrainJob of a multi-node round.

The manifests under ``infra/`` and the KFP components share these values: every pod that asks for a
GPU selects ``GPU_NODE_SELECTOR`` and tolerates ``GPU_TAINT`` (``GPU_TOLERATION``, for kfp-kubernetes'
``add_toleration``); TrainJob pods also run at ``GPU_PRIORITY_CLASS``. ``trainjob`` renders the TrainJob that the pipeline's train step submits
when ``train.num_nodes > 1``; the scheduling (selector, toleration, priority, the shared model
volume) lives in the ClusterTrainingRuntime ``infra/gpu/training-runtime.yaml``, so the TrainJob
uses only the ``trainer`` fields that are stable across Trainer releases.
"""

from __future__ import annotations

import re

from flywheel.config import FlywheelConfig
from flywheel.errors import InputError

GPU_NODE_SELECTOR = {"flywheel/pool": "gpu"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
GPU_PRIORITY_CLASS = "flywheel-gpu"
GPU_RESOURCE = "nvidia.com/gpu"
TRAINING_RUNTIME = "flywheel-torch-distributed"
RUN_NAMESPACE = "kubeflow"  # KFP standalone runs pipeline pods (and so submits TrainJobs) here
MODELS_MOUNT = "/models"  # the shared ReadWriteMany model volume in the runtime's pods

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def trainjob(config: FlywheelConfig, image: str, *, round_index: int, config_file: str, train_data: str,
             init_dir: str, out_dir: str, name: str | None = None, gpus_per_node: int = 1, cpu: str = "8",
             memory: str = "64Gi", namespace: str = RUN_NAMESPACE, runtime: str = TRAINING_RUNTIME) -> dict:
    """The TrainJob (trainer.kubeflow.org/v1alpha1) that fine-tunes round ``round_index`` on ``train.num_nodes`` nodes.

    Every node runs ``torchrun --module flywheel.cli train`` with the round's files; the runtime's torch
    policy gives torchrun the node count, rank and rendezvous (PET_* variables), one process per GPU.
    Paths are inside the shared model volume (``/models/...``) so every node reads the same files.
    Raises InputError when ``train.num_nodes`` is 1 (the pipeline's own train step trains then).
    """
    nodes = config.train.num_nodes
    if nodes <= 1:
        raise InputError("config", "is 1: one node trains in the pipeline's train step, no TrainJob",
                         field="train.num_nodes")
    name = name or f"flywheel-train-r{round_index}"
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise InputError("<trainjob>", f"name {name!r} is not a DNS label (a-z, 0-9, '-', <= 63 chars)",
                         field="name")
    if gpus_per_node < 1:
        raise InputError("<trainjob>", "must be >= 1", field="gpus_per_node")
    if not image or (":" not in image.rsplit("/", 1)[-1] and "@" not in image) or image.endswith(":latest"):
        raise InputError("<trainjob>", f"image {image!r} must be pinned (name:tag or name@digest, not :latest)",
                         field="image")
    command = ["torchrun", "--module", "flywheel.cli", "train", "-c", config_file, "--round", str(round_index),
               "--data", train_data, "--init", init_dir, "--out", out_dir]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "flywheel", "flywheel/round": str(round_index),
                       "flywheel/recipe": config.name},
        },
        "spec": {
            "runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": image,
                "command": command,
                "numNodes": nodes,
                "resourcesPerNode": {
                    "requests": {"cpu": cpu, "memory": memory, GPU_RESOURCE: str(gpus_per_node)},
                    "limits": {"memory": memory, GPU_RESOURCE: str(gpus_per_node)},
                },
                "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "TOKENIZERS_PARALLELISM", "value": "false"}],
            },
        },
    }


def example_trainjob() -> dict:
    """The TrainJob of ``infra/trainer/trainjob-example.yaml`` (round 3 of the default recipe on 2 nodes)."""
    from flywheel.config import load_config

    config = load_config(None, ["train.num_nodes=2"])
    return trainjob(config, "flywheel-cuda:0.1.0", round_index=3, config_file="/models/run/config.yaml",
                    train_data="/models/run/rounds/3/train.parquet", init_dir="/models/run/rounds/2/champion",
                    out_dir="/models/run/rounds/3/candidate", gpus_per_node=8)


TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")


def dns_label(text: str) -> str:
    """``text`` as a Kubernetes name: lower case, a-z 0-9 '-', at most 63 characters, the end kept
    (it holds the round number)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if len(label) > 63:
        label = "f" + label[-62:].lstrip("-")
    return label


def trainjob_state(trainjob_object: dict) -> str:
    """'complete', 'failed' or 'running' from a TrainJob's ``status.conditions`` (Trainer sets
    ``Complete`` or ``Failed`` to ``"True"`` when its JobSet ends)."""
    conditions = (trainjob_object.get("status") or {}).get("conditions") or []
    for condition in conditions:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return condition["type"].lower()
    return "running"


def run_trainjob(manifest: dict, *, timeout_s: float = 24 * 3600, poll_s: float = 30.0) -> dict:
    """Submit a TrainJob from inside the cluster (the pipeline pod's ServiceAccount may create TrainJobs,
    infra/base/runs/rbac.yaml) and wait for it to end. Returns its final object; a failed or timed-out
    job raises ``InputError`` naming the job, so the pipeline step fails with one line.

    Not exercised in this repository's tests: they have no cluster. ``trainjob_state`` is tested.
    """
    import time

    from kubernetes import client, config

    config.load_incluster_config()
    api = client.CustomObjectsApi()
    group, version, plural = TRAINJOB_API
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    api.create_namespaced_custom_object(group, version, namespace, plural, manifest)
    deadline = time.monotonic() + timeout_s
    while True:
        current = api.get_namespaced_custom_object(group, version, namespace, plural, name)
        state = trainjob_state(current)
        if state == "complete":
            return current
        if state == "failed" or time.monotonic() > deadline:
            raise InputError(f"trainjob/{namespace}/{name}", "failed" if state == "failed" else
                             f"did not finish within {timeout_s:.0f} s", field="status")
        time.sleep(poll_s)
