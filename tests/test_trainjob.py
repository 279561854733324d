"""train.num_nodes and the Kubeflow Trainer TrainJob of a multi-node round (flywheel.infra.trainjob)."""

import pytest
import yaml

from flywheel import infra
from flywheel.config import load_config
from flywheel.errors import InputError
from tests.conftest import ROOT, SMOKE
from tests.test_infra import documents, pod_specs, tolerates, validate_custom

PATHS = dict(config_file="/models/r/config.yaml", train_data="/models/r/rounds/2/train.parquet",
             init_dir="/models/r/rounds/1/champion", out_dir="/models/r/rounds/2/candidate")


def test_num_nodes_defaults_to_one_and_must_be_at_least_one():
    assert load_config(SMOKE).train.num_nodes == 1
    assert load_config(SMOKE, ["train.num_nodes=4"]).train.num_nodes == 4
    with pytest.raises(InputError, match=r"field 'train.num_nodes': must be >= 1"):
        load_config(SMOKE, ["train.num_nodes=0"])
    with pytest.raises(InputError, match=r"field 'train.num_nodes': expected int"):
        load_config(SMOKE, ["train.num_nodes=two"])


def test_trainjob_shape_nodes_resources_and_command():
    config = load_config(SMOKE, ["train.num_nodes=3", "loop.device=cuda"])
    job = infra.trainjob(config, "registry.example.com/flywheel/flywheel-cuda:0.1.0", round_index=2,
                         gpus_per_node=4, cpu="16", memory="128Gi", name="flywheel-run7-r2", **PATHS)
    validate_custom(job, "trainjob")
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["metadata"]["name"] == "flywheel-run7-r2" and job["metadata"]["namespace"] == "kubeflow"
    assert job["metadata"]["labels"]["flywheel/round"] == "2"
    assert job["spec"]["runtimeRef"] == {"name": "flywheel-torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime"}
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 3
    assert trainer["image"] == "registry.example.com/flywheel/flywheel-cuda:0.1.0"
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"},
                                           "limits": {"memory": "128Gi", "nvidia.com/gpu": "4"}}
    assert trainer["command"] == ["torchrun", "--module", "flywheel.cli", "train", "-c", "/models/r/config.yaml",
                                  "--round", "2", "--data", "/models/r/rounds/2/train.parquet",
                                  "--init", "/models/r/rounds/1/champion", "--out", "/models/r/rounds/2/candidate"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in trainer["env"]
    # The command is a real `flywheel train` invocation.
    from flywheel.cli import build_parser

    args = build_parser().parse_args(trainer["command"][3:])
    assert (args.command, args.round, str(args.out)) == ("train", 2, "/models/r/rounds/2/candidate")


def test_the_runtime_it_uses_puts_its_pods_on_the_gpu_pool():
    job = infra.trainjob(load_config(SMOKE, ["train.num_nodes=2", "loop.device=cuda"]), "flywheel-cuda:0.1.0",
                         round_index=1, **PATHS)
    runtimes = {o["metadata"]["name"]: o for o in documents(ROOT / "infra" / "gpu" / "training-runtime.yaml")}
    runtime = runtimes[job["spec"]["runtimeRef"]["name"]]
    assert runtime["kind"] == job["spec"]["runtimeRef"]["kind"]
    pod = pod_specs(runtime)[0]
    assert tolerates(pod, infra.GPU_TAINT)
    assert pod["nodeSelector"] == infra.GPU_NODE_SELECTOR
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert infra.MODELS_MOUNT in mounts
    assert all(p.startswith(infra.MODELS_MOUNT + "/") for p in PATHS.values())  # every node sees the files


def test_on_the_cpu_device_the_nodes_take_the_cpu_image_runtime_and_resources_and_no_gpu():
    """loop.device=cpu: the rule of every model stage (flywheel.machine_checks.on_gpu), for the TrainJob's nodes too."""
    config = load_config(SMOKE, ["train.num_nodes=2", "train.gpus_per_node=4", "kubeflow.cpu_step_cpu=500m",
                                 "kubeflow.cpu_step_memory=3Gi"])
    job = infra.trainjob(config, infra.device_image(config), round_index=1, **PATHS)
    validate_custom(job, "trainjob")
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == infra.images()[0] and "flywheel-cpu" in trainer["image"]
    assert trainer["numProcPerNode"] == 1  # one gloo process per node; gpus_per_node counts GPUs
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "500m", "memory": "3Gi"},
                                           "limits": {"cpu": "4", "memory": "3Gi"}}
    assert job["spec"]["runtimeRef"]["name"] == infra.CPU_TRAINING_RUNTIME
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in trainer["env"]  # the half core promised, rounded up
    assert [infra.cpu_threads(q) for q in ("500m", "1", "2", "2500m", "16")] == [1, 1, 2, 3, 16]
    runtimes = {o["metadata"]["name"]: o for o in documents(ROOT / "infra" / "cpu" / "training-runtime.yaml")}
    pod = pod_specs(runtimes[infra.CPU_TRAINING_RUNTIME])[0]
    assert "nodeSelector" not in pod and not tolerates(pod, infra.GPU_TAINT) and "priorityClassName" not in pod
    assert infra.MODELS_MOUNT in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert pod["containers"][0]["image"] == "flywheel-cpu:0.1.0"
    cuda = load_config(SMOKE, ["train.num_nodes=2", "loop.device=cuda"])
    assert infra.device_image(cuda) == infra.images()[1]


@pytest.mark.parametrize("overrides, kwargs, message", [
    (["train.num_nodes=1"], {}, "field 'train.num_nodes'"),
    (["train.num_nodes=2"], {"name": "Flywheel_R1"}, "is not a DNS label"),
    (["train.num_nodes=2"], {"name": "x" * 48}, "is not a DNS label of at most 47"),
    (["train.num_nodes=2"], {"gpus_per_node": 0}, "field 'gpus_per_node'"),
    (["train.num_nodes=2"], {"image": "flywheel-cuda:latest"}, "must be pinned"),
    (["train.num_nodes=2"], {"image": "registry:5000/flywheel-cuda"}, "must be pinned"),
])
def test_trainjob_refuses(overrides, kwargs, message):
    kwargs = {"image": "flywheel-cuda:0.1.0", **kwargs}
    with pytest.raises(InputError, match=message):
        infra.trainjob(load_config(SMOKE, overrides), round_index=1, **PATHS, **kwargs)


def test_the_shipped_example_is_what_trainjob_renders():
    shipped = yaml.safe_load((ROOT / "infra" / "trainer" / "trainjob-example.yaml").read_text())
    assert shipped == infra.example_trainjob()
    assert shipped["spec"]["trainer"]["numNodes"] == 2


def test_trainjob_state_reads_the_terminal_conditions():
    from flywheel.infra import trainjob_state

    assert trainjob_state({}) == "running"
    assert trainjob_state({"status": {"conditions": [{"type": "Created", "status": "True"}]}}) == "running"
    assert trainjob_state({"status": {"conditions": [{"type": "Complete", "status": "False"}]}}) == "running"
    assert trainjob_state({"status": {"conditions": [{"type": "Created", "status": "True"},
                                                     {"type": "Complete", "status": "True"}]}}) == "complete"
    assert trainjob_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "failed"


def test_trainjob_names_are_unique_per_run_and_attempt_and_fit_jobset():
    from flywheel.infra import _DNS_LABEL, MAX_TRAINJOB_NAME, trainjob_name

    names = {trainjob_name(workspace, 12) for workspace in ("/models/runs/a", "/models/runs/b") for _ in range(20)}
    assert len(names) == 40  # two runs, twenty attempts each: no AlreadyExists on a retry
    assert all(len(n) <= MAX_TRAINJOB_NAME and _DNS_LABEL.match(n) and n.startswith("flywheel-r12-") for n in names)
    job = infra.trainjob(load_config(SMOKE, ["train.num_nodes=100"]), "flywheel-cuda:0.1.0", round_index=999,
                         name=trainjob_name("/models/" + "x" * 300, 999), **PATHS)
    # JobSet's longest pod name, <name>-node-0-<index>-<5 random>, is still a DNS label.
    assert len(f"{job['metadata']['name']}-node-0-99-abcde") <= 63
    assert infra.node_zero_selector("j") == ("jobset.sigs.k8s.io/jobset-name=j,jobset.sigs.k8s.io/replicatedjob-name="
                                             "node,batch.kubernetes.io/job-completion-index=0")


def test_only_rank_zero_writes_the_candidate_under_torchrun(tmp_path, monkeypatch):
    from flywheel.stages.train import _candidate_dir

    monkeypatch.setenv("RANK", "1")
    with _candidate_dir(tmp_path / "candidate") as scratch:
        (scratch / "weights").write_text("rank 1")
    assert not (tmp_path / "candidate").exists()
    monkeypatch.setenv("RANK", "0")
    with _candidate_dir(tmp_path / "candidate") as target:
        (target / "weights").write_text("rank 0")
    assert (tmp_path / "candidate" / "weights").read_text() == "rank 0"
