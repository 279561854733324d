"""Kubernetes: the GPU node pool's contract and the Kubeflow Trainer TrainJob of a multi-node round.

The manifests under ``infra/`` and the KFP components share these values: every pod that asks for a
GPU selects ``GPU_NODE_SELECTOR`` and tolerates ``GPU_TAINT`` (``GPU_TOLERATION``, for kfp-kubernetes'
``add_toleration``); TrainJob pods also run at ``GPU_PRIORITY_CLASS``. ``trainjob`` renders the TrainJob that
the pipeline's train step submits when ``train.num_nodes > 1``; the scheduling (selector, toleration, priority,
the shared model volume) lives in the ClusterTrainingRuntime ``infra/gpu/training-runtime.yaml``, so the
TrainJob uses only the ``trainer`` fields that are stable across Trainer releases.
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
TRAINING_RUNTIME = "flywheel-torch-distributed"  # infra/gpu/training-runtime.yaml: nodes on the GPU pool
CPU_TRAINING_RUNTIME = "flywheel-torch-distributed-cpu"  # infra/cpu/training-runtime.yaml: loop.device=cpu
TRAINER_RELEASE = "v2.3.0"  # infra/trainer installs it; the TrainJob and the runtime follow its CRD schema
# JobSet names a node's pod <trainjob>-node-0-<index>-<5 random>, which must be a DNS label (<= 63): with up to
# 100 nodes that leaves 47 characters for the TrainJob's name.
MAX_TRAINJOB_NAME = 47
RUN_NAMESPACE = "kubeflow"  # KFP standalone runs pipeline pods (and so submits TrainJobs) here
MODELS_MOUNT = "/models"  # the shared ReadWriteMany model volume in the runtime's pods

# What infra/ creates for the pipelines' pods, shared by every Kubernetes door (Kubeflow, Argo;
# docs/kubeflow-infra.md): the RWX model volume, the object-store Secret, the ConfigMap that says where MLflow,
# the object store and the DVC remote are, and the in-cluster MLflow service.
MODELS_PVC = "flywheel-models"
S3_SECRET = "flywheel-s3"  # object-store credentials, as environment variables (boto3, DVC, MLflow artifacts)
S3_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
CLUSTER_CONFIG_MAP = "flywheel-cluster"
# FLYWHEEL_REGISTRY: a train step names the CUDA image in the TrainJob it submits (train.num_nodes > 1).
CLUSTER_CONFIG_MAP_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "FLYWHEEL_DVC_REMOTE", "HF_HUB_OFFLINE",
                          "FLYWHEEL_REGISTRY")
IN_CLUSTER_MLFLOW = "http://mlflow.flywheel.svc.cluster.local:5000"  # infra/base/services
SHM_SIZE = "16Gi"  # PyTorch data loaders and NCCL use shared memory; the container default (64 MiB) is too small
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# The Argo workflow that created a TrainJob (Argo labels its pods so; resources it creates it does not).
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"
# What a cluster run needs that a laptop run does not: the GPU, and an MLflow every pod reaches. The Kubernetes
# doors (`flywheel pipeline ...`, `flywheel argo ...`) apply these unless -s sets the key; a relative seed.path is
# the seed shipped in the image (FLYWHEEL_HOME).
CLUSTER_SETTINGS = {"loop.device": "cuda", "tracking.uri": IN_CLUSTER_MLFLOW}


def cluster_config(path=None, overrides: list[str] | tuple[str, ...] = ()) -> FlywheelConfig:
    """A recipe (``path``, default: the built-in defaults) as it runs on the cluster: ``CLUSTER_SETTINGS`` first,
    so ``overrides`` (``-s key=value``) win."""
    from flywheel.config import load_config

    return load_config(path, [f"{key}={value}" for key, value in CLUSTER_SETTINGS.items()] + list(overrides))


def images() -> tuple[str, str]:
    """(CPU image, CUDA image) of images/, tagged with the package version, under ``FLYWHEEL_REGISTRY`` (default:
    the placeholder registry the committed manifests name; infra/overlays/gpu points at yours)."""
    import os

    from flywheel import __version__

    registry = os.environ.get("FLYWHEEL_REGISTRY", "registry.example.com/flywheel")
    return f"{registry}/flywheel-cpu:{__version__}", f"{registry}/flywheel-cuda:{__version__}"


def device_image(config: FlywheelConfig) -> str:
    """The image of ``loop.device``: the CUDA image for ``cuda``, else the CPU image (``images()``)."""
    cpu_image, gpu_image = images()
    return gpu_image if config.loop.device.startswith("cuda") else cpu_image


_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def trainjob(config: FlywheelConfig, image: str, *, round_index: int, config_file: str, train_data: str,
             init_dir: str, out_dir: str, name: str | None = None, gpus_per_node: int | None = None,
             cpu: str = "8", memory: str = "64Gi", timeout_s: int = 86400, namespace: str = RUN_NAMESPACE,
             runtime: str | None = None, labels: dict | None = None) -> dict:
    """The TrainJob (trainer.kubeflow.org/v1alpha1, Trainer v2.3) that fine-tunes round ``round_index`` on
    ``train.num_nodes`` nodes of ``gpus_per_node`` GPUs (default ``train.gpus_per_node``).

    Every node runs ``torchrun --module flywheel.cli train`` with the round's files; the runtime's torch
    policy gives torchrun the node count, rank and rendezvous (PET_* variables), one process per GPU
    (``numProcPerNode``). Paths are inside the shared model volume (``/models/...``) so every node reads the
    same files. The job stops after ``timeout_s`` (``activeDeadlineSeconds``: Failed, DeadlineExceeded).
    Raises InputError when ``train.num_nodes`` is 1 (the pipeline's own train step trains then).

    With ``loop.device=cpu`` the nodes follow the rule of every other model stage (``flywheel.machine_checks.on_gpu``):
    one process per node on the CPU image, a CPU step's resources (``kubeflow.cpu_step_*``), no GPU, and the CPU
    runtime (``CPU_TRAINING_RUNTIME``, off the GPU pool); torch then runs DDP over gloo.
    """
    nodes = config.train.num_nodes
    gpus_per_node = config.train.gpus_per_node if gpus_per_node is None else gpus_per_node
    if nodes <= 1:
        raise InputError("config", "is 1: one node trains in the pipeline's train step, no TrainJob",
                         field="train.num_nodes")
    name = name or f"flywheel-train-r{round_index}"
    if len(name) > MAX_TRAINJOB_NAME or not _DNS_LABEL.match(name):
        raise InputError("<trainjob>", f"name {name!r} is not a DNS label of at most {MAX_TRAINJOB_NAME} characters "
                         "(a-z, 0-9, '-'; JobSet appends '-node-0-<index>-<random>' for its pods)", field="name")
    if gpus_per_node < 1:
        raise InputError("<trainjob>", "must be >= 1", field="gpus_per_node")
    if not image or (":" not in image.rsplit("/", 1)[-1] and "@" not in image) or image.endswith(":latest"):
        raise InputError("<trainjob>", f"image {image!r} must be pinned (name:tag or name@digest, not :latest)",
                         field="image")
    command = ["torchrun", "--module", "flywheel.cli", "train", "-c", config_file, "--round", str(round_index),
               "--data", train_data, "--init", init_dir, "--out", out_dir]
    env = [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    if config.loop.device.startswith("cuda"):
        processes = gpus_per_node
        resources = {"requests": {"cpu": cpu, "memory": memory, GPU_RESOURCE: str(gpus_per_node)},
                     "limits": {"memory": memory, GPU_RESOURCE: str(gpus_per_node)}}
        runtime = runtime or TRAINING_RUNTIME
    else:
        options = config.kubeflow
        processes = 1
        resources = {"requests": {"cpu": options.cpu_step_cpu, "memory": options.cpu_step_memory},
                     "limits": {"cpu": options.cpu_step_cpu_limit, "memory": options.cpu_step_memory}}
        runtime = runtime or CPU_TRAINING_RUNTIME
        # torch's threads, set here rather than guessed from the machine's cores (accelerate picks 2 when unset):
        # the cores the node's pod is promised.
        env.append({"name": "OMP_NUM_THREADS", "value": str(cpu_threads(options.cpu_step_cpu))})
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "flywheel", "flywheel/round": str(round_index),
                       "flywheel/recipe": config.name, **(labels or {})},
        },
        "spec": {
            "runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
            "activeDeadlineSeconds": timeout_s,
            "trainer": {
                "image": image,
                "command": command,
                "numNodes": nodes,
                "numProcPerNode": processes,
                "resourcesPerNode": resources,
                "env": env,
            },
        },
    }


def cpu_threads(quantity: str) -> int:
    """Whole cores in a Kubernetes CPU quantity ('500m' -> 1, '2' -> 2, '2500m' -> 3): at least one."""
    import math

    cores = int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return max(1, math.ceil(cores))


def trainjob_name(workspace: str, round_index: int, attempt: str | None = None) -> str:
    """``flywheel-r<round>-<workspace hash>-<attempt>``: unique per run (its workspace) and per attempt (a
    retried step must not collide with the TrainJob of the attempt before it), short enough for JobSet."""
    import hashlib
    import secrets

    run = hashlib.sha256(str(workspace).encode()).hexdigest()[:10]
    return f"flywheel-r{round_index}-{run}-{attempt or secrets.token_hex(3)}"


def example_trainjob() -> dict:
    """The TrainJob of ``infra/trainer/trainjob-example.yaml`` (round 3 of the default recipe on 2 nodes)."""
    config = cluster_config(None, ["train.num_nodes=2", "train.gpus_per_node=4"])
    return trainjob(config, "flywheel-cuda:0.1.0", round_index=3, config_file="/models/run/config.yaml",
                    train_data="/models/run/rounds/3/train.parquet", init_dir="/models/run/rounds/2/champion",
                    out_dir="/models/run/rounds/3/candidate", name=trainjob_name("/models/run", 3, "a1b2c3"))


TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")


def trainjob_state(trainjob_object: dict) -> str:
    """'complete', 'failed' or 'running' from a TrainJob's ``status.conditions`` (Trainer copies its JobSet's
    ``Completed``/``Failed`` condition as ``Complete``/``Failed``; ``Failed`` also for ``DeadlineExceeded``)."""
    conditions = (trainjob_object.get("status") or {}).get("conditions") or []
    for condition in conditions:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return condition["type"].lower()
    return "running"


def run_trainjob(manifest: dict, *, timeout_s: float = 24 * 3600, poll_s: float = 30.0, log=print) -> dict:
    """Submit a TrainJob from inside the cluster (the pipeline pod's ServiceAccount may create TrainJobs,
    infra/base/runs/rbac.yaml), wait for it to end, copy its rank-0 node's log into this step's log, and
    delete it (its JobSet and pods go with it) whether it completed, failed, timed out or this step was stopped.
    Returns its final object; a failed or timed-out job raises ``InputError`` naming the job, so the step fails
    in one line.

    The job goes to this pod's namespace, labelled with, and owned by, the Argo workflow that runs this pod (KFP
    runs every run as one): a SIGTERM (a cancelled run, a step's time limit) unwinds through the ``finally`` that
    deletes it, the run's exit handler deletes what a SIGKILL left (``delete_workflow_trainjobs``), and deleting
    the run's workflow deletes the rest. Exercised in the local cluster (make e2e); ``trainjob_state`` and the
    ownership are unit-tested.
    """
    import time

    from kubernetes import client, config

    from flywheel.termination import install_termination_handler

    config.load_incluster_config()
    api, core = client.CustomObjectsApi(), client.CoreV1Api()
    group, version, plural = TRAINJOB_API
    namespace = pod_namespace() or manifest["metadata"]["namespace"]
    manifest = owned_by(manifest, my_workflow(api, core, namespace), namespace)
    name = manifest["metadata"]["name"]
    restore = install_termination_handler()  # SIGTERM raises Terminated here, so the finally below runs
    try:
        api.create_namespaced_custom_object(group, version, namespace, plural, manifest)
        log(f"trainjob {namespace}/{name}: submitted ({manifest['spec']['trainer']['numNodes']} nodes)")
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                current = api.get_namespaced_custom_object(group, version, namespace, plural, name)
                state = trainjob_state(current)
                if state == "complete":
                    return current
                if state == "failed" or time.monotonic() > deadline:
                    raise InputError(f"trainjob/{namespace}/{name}", "failed" if state == "failed" else
                                     f"did not finish within {timeout_s:.0f} s", field="status")
                time.sleep(poll_s)
        finally:
            _copy_node_log(core, namespace, name, log)
            api.delete_namespaced_custom_object(group, version, namespace, plural, name,
                                                body=client.V1DeleteOptions(propagation_policy="Foreground"))
            log(f"trainjob {namespace}/{name}: deleted")
    finally:
        restore()


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
WORKFLOW_API = ("argoproj.io", "v1alpha1", "workflows")


def pod_namespace() -> str | None:
    """The namespace of the pod this runs in (its ServiceAccount's), or None outside one."""
    from pathlib import Path

    path = Path(SERVICE_ACCOUNT_NAMESPACE)
    return path.read_text().strip() if path.is_file() else None


def my_workflow(api, core, namespace: str) -> dict | None:
    """The Argo workflow that runs this pod (``{"name", "uid"}``: Argo labels its pods with ``WORKFLOW_LABEL``, and
    KFP runs each run as a workflow), read through the pod's own object (``HOSTNAME`` is the pod's name); None
    where this pod belongs to none."""
    import os

    pod = core.read_namespaced_pod(os.environ.get("HOSTNAME", ""), namespace)
    name = (pod.metadata.labels or {}).get(WORKFLOW_LABEL)
    if not name:
        return None
    group, version, plural = WORKFLOW_API
    workflow = api.get_namespaced_custom_object(group, version, namespace, plural, name)
    return {"name": name, "uid": workflow["metadata"]["uid"]}


def owned_by(manifest: dict, workflow: dict | None, namespace: str) -> dict:
    """``manifest`` in ``namespace``, labelled with and owned by ``workflow`` (``my_workflow``) where there is one:
    the exit handler finds the workflow's TrainJobs by the label, and the garbage collector deletes them with
    the workflow."""
    import copy

    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["namespace"] = namespace
    if workflow is not None:
        manifest["metadata"].setdefault("labels", {})[WORKFLOW_LABEL] = workflow["name"]
        manifest["metadata"]["ownerReferences"] = [{
            "apiVersion": "/".join(WORKFLOW_API[:2]), "kind": "Workflow", "name": workflow["name"],
            "uid": workflow["uid"], "blockOwnerDeletion": False}]
    return manifest


def delete_workflow_trainjobs(log=print) -> list[str]:
    """Delete the TrainJobs of the workflow that runs this pod (an exit handler's job: a run that failed or was
    cancelled while its train step waited leaves its TrainJob holding the nodes' GPUs). Returns their names;
    nothing outside a cluster."""
    import os

    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return []
    from kubernetes import client, config

    config.load_incluster_config()
    api, core = client.CustomObjectsApi(), client.CoreV1Api()
    namespace = pod_namespace() or RUN_NAMESPACE
    workflow = my_workflow(api, core, namespace)
    if workflow is None:
        return []
    group, version, plural = TRAINJOB_API
    listed = api.list_namespaced_custom_object(group, version, namespace, plural,
                                               label_selector=f"{WORKFLOW_LABEL}={workflow['name']}")
    names = [item["metadata"]["name"] for item in listed.get("items", [])]
    for name in names:
        api.delete_namespaced_custom_object(group, version, namespace, plural, name,
                                            body=client.V1DeleteOptions(propagation_policy="Foreground"))
        log(f"trainjob {namespace}/{name}: deleted (workflow {workflow['name']} ended)")
    return names


def node_zero_selector(name: str) -> str:
    """The label selector of a TrainJob's rank-0 pod (JobSet and Job controller labels)."""
    return (f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=node,"
            "batch.kubernetes.io/job-completion-index=0")


def _copy_node_log(core, namespace: str, name: str, log, tail_lines: int = 2000) -> None:
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=node_zero_selector(name)).items
        for pod in pods:
            text = core.read_namespaced_pod_log(pod.metadata.name, namespace, container="node", tail_lines=tail_lines)
            log(f"--- {pod.metadata.name} (rank 0), last {tail_lines} lines ---\n{text}")
    except Exception as error:  # the log is a courtesy: never hide the job's own outcome behind it
        log(f"trainjob {namespace}/{name}: could not read the rank-0 log ({error})")
