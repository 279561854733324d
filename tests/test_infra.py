"""infra/: every manifest parses and is named, core objects validate field by field against the Kubernetes API
models (an unknown or misspelt field fails), kustomizations point at files that exist, both overlays render
with `kubectl kustomize` (when kubectl is installed), images are pinned, and every GPU pod tolerates the GPU
pool's taint. The remote bases (KFP, Trainer) cannot be fetched here: their pins are checked instead."""

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from flywheel import infra
from tests.conftest import ROOT

INFRA = ROOT / "infra"
KUSTOMIZATIONS = sorted(INFRA.rglob("kustomization.yaml"))
OVERLAYS = ["local", "gpu"]

# kind -> (apiVersion, model class in kubernetes.client.models)
CORE = {
    "Namespace": ("v1", "V1Namespace"), "Service": ("v1", "V1Service"), "Secret": ("v1", "V1Secret"),
    "ConfigMap": ("v1", "V1ConfigMap"), "ServiceAccount": ("v1", "V1ServiceAccount"),
    "PersistentVolumeClaim": ("v1", "V1PersistentVolumeClaim"), "LimitRange": ("v1", "V1LimitRange"),
    "ResourceQuota": ("v1", "V1ResourceQuota"), "Deployment": ("apps/v1", "V1Deployment"),
    "StatefulSet": ("apps/v1", "V1StatefulSet"), "Job": ("batch/v1", "V1Job"),
    "Role": ("rbac.authorization.k8s.io/v1", "V1Role"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "V1RoleBinding"),
    "PriorityClass": ("scheduling.k8s.io/v1", "V1PriorityClass"),
}
# Custom resources we ship, with the CRD's API version (their pod templates are validated as core models).
CUSTOM = {"ClusterTrainingRuntime": "trainer.kubeflow.org/v1alpha1", "TrainJob": "trainer.kubeflow.org/v1alpha1"}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str}


def strict_errors(data, type_name: str, path: str = "") -> list[str]:
    """Every mismatch between ``data`` (parsed YAML) and the API model ``type_name``: unknown fields, wrong types.

    The client's own deserializer silently drops unknown keys, so this walks ``openapi_types``/``attribute_map``.
    """
    if type_name == "object":  # IntOrString, free-form
        return []
    if type_name.startswith("list["):
        if not isinstance(data, list):
            return [f"{path}: expected a list"]
        return [e for i, item in enumerate(data) for e in strict_errors(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            return [f"{path}: expected a mapping"]
        value_type = re.match(r"dict\(([^,]*), (.*)\)", type_name).group(2)
        return [e for k, v in data.items() for e in strict_errors(v, value_type, f"{path}.{k}")]
    if type_name in PRIMITIVES:
        kind = PRIMITIVES[type_name]
        ok = isinstance(data, kind) and not (type_name in ("int", "float") and isinstance(data, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {type(data).__name__} {data!r}"]
    model = getattr(client.models, type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected a {type_name} mapping"]
    fields = {json_name: model.openapi_types[attr] for attr, json_name in model.attribute_map.items()}
    errors = [f"{path}.{key}: unknown field of {type_name}" for key in data if key not in fields]
    for key, value in data.items():
        if key in fields and value is not None:
            errors += strict_errors(value, fields[key], f"{path}.{key}")
    return errors


class _Response:
    def __init__(self, obj):
        self.data = json.dumps(obj)


def validate(obj: dict, where: str) -> None:
    """A core object: the right apiVersion, no unknown or mistyped field, and the model's required fields."""
    api_version, model = CORE[obj["kind"]]
    assert obj["apiVersion"] == api_version, f"{where}: {obj['kind']} is {api_version}, not {obj['apiVersion']}"
    errors = strict_errors(obj, model, obj["kind"])
    assert not errors, f"{where}: " + "; ".join(errors)
    # The generated constructors check required fields (client-side validation), e.g. a container's name.
    client.ApiClient().deserialize(_Response(obj), model)


def validate_custom(obj: dict, where: str) -> None:
    assert obj["apiVersion"] == CUSTOM[obj["kind"]], where
    if obj["kind"] == "ClusterTrainingRuntime":  # trainingruntime_types.go at Trainer v2.3.0
        assert set(obj["spec"]) <= {"mlPolicy", "podGroupPolicy", "template"}, where
        policy = obj["spec"]["mlPolicy"]
        assert set(policy) <= {"numNodes", "torch", "mpi", "flux", "jax", "xgboost"}, where
        assert set(policy.get("torch") or {}) <= {"envInjection"}, f"{where}: torch policy fields of v2.3"
        jobs = obj["spec"]["template"]["spec"]["replicatedJobs"]
        for job in jobs:
            assert set(job) <= {"name", "replicas", "template", "dependsOn"}, where
            errors = strict_errors(job["template"], "V1JobTemplateSpec", f"replicatedJobs[{job['name']}]")
            assert not errors, f"{where}: " + "; ".join(errors)
        # The trainer's job: named `node` (the torch plugin's PET_MASTER_ADDR), labelled as the trainer step,
        # its container named `node` (the webhook).
        trainer = [j for j in jobs if j["template"]["metadata"]["labels"].get(
            "trainer.kubeflow.org/trainjob-ancestor-step") == "trainer"]
        assert [j["name"] for j in trainer] == ["node"], where
        containers = trainer[0]["template"]["spec"]["template"]["spec"]["containers"]
        assert [c["name"] for c in containers] == ["node"], where
    else:  # TrainJob: trainjob_types.go at Trainer v2.3.0
        assert set(obj["spec"]) <= {"runtimeRef", "initializer", "trainer", "runtimePatches", "suspend", "managedBy",
                                    "activeDeadlineSeconds"}, where
        assert len(obj["metadata"]["name"]) <= infra.MAX_TRAINJOB_NAME, where
        trainer = obj["spec"]["trainer"]
        assert set(trainer) <= {"image", "command", "args", "env", "numNodes", "resourcesPerNode",
                                "numProcPerNode"}, where
        assert isinstance(trainer.get("numProcPerNode", 1), int), f"{where}: numProcPerNode is an int32 in v2.2+"
        reserved = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
        assert not reserved & {e["name"] for e in trainer.get("env", [])}, where
        errors = strict_errors(trainer["resourcesPerNode"], "V1ResourceRequirements", "resourcesPerNode")
        errors += strict_errors(trainer.get("env", []), "list[V1EnvVar]", "env")
        assert not errors, f"{where}: " + "; ".join(errors)


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def local_entries(kustomization: Path, key: str) -> list[Path]:
    entries = yaml.safe_load(kustomization.read_text()).get(key) or []
    entries = [e["path"] if isinstance(e, dict) else e for e in entries]
    return [kustomization.parent / e for e in entries if e and "://" not in e and not e.startswith("github.com")]


def resource_files() -> list[Path]:
    """Manifest files that kustomize takes whole (resources:), as opposed to partial patches."""
    files = []
    for kustomization in KUSTOMIZATIONS:
        for entry in local_entries(kustomization, "resources"):
            if entry.is_file():
                files.append(entry)
    return sorted(set(files))


def render(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the overlays' files are still checked one by one")
    return json.loads(_render(overlay))  # a fresh copy each time: tests may not share mutations


@functools.cache
def _render(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(INFRA / "overlays" / overlay)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.dumps([d for d in yaml.safe_load_all(result.stdout) if d])


def pod_specs(obj: dict) -> list[dict]:
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "Job"):
        return [spec["template"]["spec"]]
    if kind == "ClusterTrainingRuntime":
        return [job["template"]["spec"]["template"]["spec"] for job in spec["template"]["spec"]["replicatedJobs"]]
    return []


def images_of(obj: dict) -> list[str]:
    return [c["image"] for pod in pod_specs(obj) for c in pod.get("containers", []) + pod.get("initContainers", [])]


def tolerates(pod: dict, taint: dict) -> bool:
    for toleration in pod.get("tolerations") or []:
        if toleration.get("key") != taint["key"]:
            continue
        if toleration.get("effect") not in (None, taint["effect"]):
            continue
        if toleration.get("operator", "Equal") == "Exists" or toleration.get("value") == taint["value"]:
            return True
    return False


def wants_gpu(obj: dict, pod: dict) -> bool:
    if obj["kind"] == "ClusterTrainingRuntime":  # its TrainJobs ask for GPUs per node, except the CPU runtime's
        return obj["metadata"]["name"] != infra.CPU_TRAINING_RUNTIME
    return any(infra.GPU_RESOURCE in ((c.get("resources") or {}).get(part) or {})
               for c in pod.get("containers", []) for part in ("requests", "limits"))


# --- files ---------------------------------------------------------------------------------------------------

def test_every_yaml_file_parses_and_every_object_is_named():
    files = sorted(INFRA.rglob("*.yaml"))
    assert len(files) >= 20
    for path in files:
        for doc in documents(path):
            assert isinstance(doc, dict), path
            if path.name == "kustomization.yaml":
                assert doc["kind"] == "Kustomization" and doc["apiVersion"].startswith("kustomize.config.k8s.io/")
                continue
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: object without apiVersion/kind"
            assert (doc.get("metadata") or {}).get("name"), f"{path}: {doc['kind']} without metadata.name"


def test_every_kustomization_entry_exists_and_remote_bases_are_pinned():
    for kustomization in KUSTOMIZATIONS:
        data = yaml.safe_load(kustomization.read_text())
        for key in ("resources", "patches", "components"):
            for entry in local_entries(kustomization, key):
                assert entry.exists(), f"{kustomization}: {key} entry {entry} does not exist"
                if entry.is_dir():
                    assert (entry / "kustomization.yaml").is_file(), f"{entry} is a directory without kustomization"
        for entry in data.get("resources") or []:
            if "://" in entry or entry.startswith("github.com"):
                assert re.search(r"\?ref=v?\d+\.\d+\.\d+$", entry), f"{kustomization}: {entry} is not pinned to a tag"


def test_kfp_is_pinned_to_the_release_of_the_installed_sdk():
    import kfp

    refs = [entry for path in (INFRA / "kfp").rglob("kustomization.yaml")
            for entry in yaml.safe_load(path.read_text())["resources"] if "kubeflow/pipelines" in entry]
    assert len(refs) == 2  # cluster-scoped resources, then the platform-agnostic environment
    assert all(ref.endswith(f"?ref={kfp.__version__}") for ref in refs), refs
    assert any("env/platform-agnostic" in ref for ref in refs)  # env/dev repoints images to :master
    trainer = yaml.safe_load((INFRA / "trainer" / "kustomization.yaml").read_text())["resources"]
    assert len(trainer) == 1 and "kubeflow/trainer" in trainer[0]


def test_core_objects_in_every_manifest_validate_strictly():
    seen = set()
    for path in resource_files():
        for obj in documents(path):
            if obj["kind"] in CORE:
                validate(obj, str(path.relative_to(ROOT)))
            else:
                assert obj["kind"] in CUSTOM, f"{path}: {obj['kind']} is neither a core kind nor a known CRD"
                validate_custom(obj, str(path.relative_to(ROOT)))
            seen.add(obj["kind"])
    assert seen >= {"Deployment", "StatefulSet", "Service", "PersistentVolumeClaim", "Job", "ServiceAccount", "Role",
                    "RoleBinding", "Namespace", "ConfigMap", "ClusterTrainingRuntime"}


def test_the_validator_rejects_typos_wrong_types_and_missing_required_fields():
    deployment = documents(INFRA / "base" / "services" / "mlflow.yaml")[1]
    validate(deployment, "mlflow.yaml")

    typo = json.loads(json.dumps(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(AssertionError, match=r"containers\[0\]\.imagePullPolicyy: unknown field of V1Container"):
        validate(typo, "typo")
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["replica"] = 1
    with pytest.raises(AssertionError, match="spec.replica: unknown field of V1DeploymentSpec"):
        validate(typo, "typo")
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["replicas"] = "one"
    with pytest.raises(AssertionError, match="spec.replicas: expected int"):
        validate(wrong_type, "type")
    unquoted = json.loads(json.dumps(deployment))
    unquoted["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 2
    with pytest.raises(AssertionError, match="limits.cpu: expected str"):
        validate(unquoted, "quantity")
    nameless = json.loads(json.dumps(deployment))
    del nameless["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        validate(nameless, "required")


# --- rendered overlays -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_validates(overlay):
    objects = render(overlay)
    for obj in objects:
        if obj["kind"] in CORE:
            validate(obj, f"overlays/{overlay}")
        else:
            validate_custom(obj, f"overlays/{overlay}")
        if obj["kind"] not in ("Namespace", "PriorityClass", "ClusterTrainingRuntime"):
            assert obj["metadata"].get("namespace") in ("flywheel", "kubeflow"), (obj["kind"], obj["metadata"])
    kinds = {o["kind"] for o in objects}
    assert ("ClusterTrainingRuntime" in kinds) == (overlay == "gpu")  # no GPU and no Trainer on a laptop
    models = next(o for o in objects
                  if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == "flywheel-models")
    assert models["metadata"]["namespace"] == infra.RUN_NAMESPACE
    assert models["spec"]["accessModes"] == (["ReadWriteMany"] if overlay == "gpu" else ["ReadWriteOnce"])


def test_local_overlay_defines_every_secret_its_pods_read():
    objects = render("local")
    secrets = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects if o["kind"] == "Secret"}
    for obj in objects:
        for pod in pod_specs(obj):
            namespace = obj["metadata"]["namespace"]
            for container in pod["containers"]:
                refs = [(s["secretRef"]["name"], None) for s in container.get("envFrom", []) if "secretRef" in s]
                refs += [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                         for e in container.get("env", []) if "secretKeyRef" in (e.get("valueFrom") or {})]
                for name, key in refs:
                    assert (namespace, name) in secrets, f"{obj['metadata']['name']} reads missing Secret {name}"
                    if key:
                        assert key in secrets[(namespace, name)]["data"]
    # The pipeline pods' copy of the object-store keys, and the ConfigMap naming the endpoint push_round reads.
    assert ("kubeflow", "flywheel-s3") in secrets
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "flywheel-cluster")
    from flywheel.versioning import S3_ENDPOINT_ENV

    assert config["data"][S3_ENDPOINT_ENV].startswith("http://minio.flywheel.svc")
    assert config["data"]["FLYWHEEL_DVC_REMOTE"].startswith("s3://flywheel-dvc/")
    job = next(o for o in objects if o["kind"] == "Job")
    assert "store/flywheel-dvc" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_every_image_is_pinned():
    objects = [o for path in resource_files() for o in documents(path)]
    objects += [o for overlay in OVERLAYS if shutil.which("kubectl") for o in render(overlay)]
    images = [image for obj in objects for image in images_of(obj)]
    assert len(images) >= 5
    for image in images:
        name = image.rsplit("/", 1)[-1]
        assert (":" in name or "@sha256:" in image) and not image.endswith(":latest"), f"unpinned image {image}"


def test_every_gpu_workload_tolerates_the_gpu_taint_and_selects_the_pool():
    objects = [o for path in resource_files() for o in documents(path)]
    objects += render("gpu") if shutil.which("kubectl") else []
    gpu_pods = [(obj, pod) for obj in objects for pod in pod_specs(obj) if wants_gpu(obj, pod)]
    assert gpu_pods, "no GPU workload found"
    for obj, pod in gpu_pods:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        assert tolerates(pod, infra.GPU_TAINT), f"{name} does not tolerate {infra.GPU_TAINT}"
        assert pod.get("nodeSelector") == infra.GPU_NODE_SELECTOR, name
        assert pod.get("priorityClassName") == infra.GPU_PRIORITY_CLASS, name
    # The checker itself: a toleration for another key or effect does not count.
    assert not tolerates({"tolerations": [{"key": "gpu", "operator": "Exists"}]}, infra.GPU_TAINT)
    assert not tolerates({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}]},
                         infra.GPU_TAINT)
    assert tolerates({"tolerations": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
                     infra.GPU_TAINT)
    # No CPU-only service is pinned to (or tolerates) the GPU pool.
    for obj in objects:
        for pod in pod_specs(obj):
            if not wants_gpu(obj, pod):
                assert not tolerates(pod, infra.GPU_TAINT), obj["metadata"]["name"]


def test_gpu_pool_objects_match_the_python_contract():
    gpu = {o["kind"]: o for name in ("priorityclass.yaml", "quota.yaml", "training-runtime.yaml")
           for o in documents(INFRA / "gpu" / name)}
    assert gpu["PriorityClass"]["metadata"]["name"] == infra.GPU_PRIORITY_CLASS
    assert gpu["ResourceQuota"]["metadata"]["namespace"] == infra.RUN_NAMESPACE
    assert f"requests.{infra.GPU_RESOURCE}" in gpu["ResourceQuota"]["spec"]["hard"]
    runtime = gpu["ClusterTrainingRuntime"]
    assert runtime["metadata"]["name"] == infra.TRAINING_RUNTIME
    assert "torch" in runtime["spec"]["mlPolicy"]
    pod = pod_specs(runtime)[0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "flywheel-models"
    assert {"name": "models", "mountPath": infra.MODELS_MOUNT} in pod["containers"][0]["volumeMounts"]
    assert pod["containers"][0]["name"] == "node"  # the container Trainer fills from TrainJob.spec.trainer
    taint_doc = (INFRA / "gpu" / "kustomization.yaml").read_text()
    t = infra.GPU_TAINT
    assert f"{t['key']}={t['value']}:{t['effect']}" in taint_doc
    assert "flywheel/pool=gpu" in taint_doc


def test_kfp_patches_apply_to_objects_of_those_names(tmp_path):
    """The remote base cannot be fetched, so the patches go onto stand-ins of the upstream objects they name:
    this catches a patch that kustomize cannot apply (wrong kind, name or namespace), not upstream drift."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    kfp = yaml.safe_load((INFRA / "kfp" / "kustomization.yaml").read_text())
    stand_ins = []
    for entry in kfp["patches"]:
        patch = yaml.safe_load((INFRA / "kfp" / entry["path"]).read_text())
        shutil.copy(INFRA / "kfp" / entry["path"], tmp_path / Path(entry["path"]).name)
        stand_ins.append({"apiVersion": patch["apiVersion"], "kind": patch["kind"],
                          "metadata": {"name": patch["metadata"]["name"], "namespace": "kubeflow"},
                          "data": {"upstream": "kept"}})
    (tmp_path / "upstream.yaml").write_text(yaml.safe_dump_all(stand_ins))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "namespace": kfp["namespace"], "resources": ["upstream.yaml"],
        "patches": [{"path": Path(e["path"]).name} for e in kfp["patches"]]}))
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = {o["metadata"]["name"]: o for o in yaml.safe_load_all(result.stdout)}
    assert rendered["workflow-controller-configmap"]["data"] == {"upstream": "kept", "parallelism": "4"}
    assert rendered["pipeline-install-config"]["data"]["defaultSecurityContextRunAsUser"] == "1000"
    assert len(rendered) == len(stand_ins)  # a patch that matched nothing would fail the render or add an object


def test_the_gpu_contract_fits_kfp_kubernetes(tmp_path):
    """KFP steps get the GPU pool's toleration and selector from flywheel.infra through kfp-kubernetes."""
    from kfp import compiler, dsl
    from kfp import kubernetes as kfp_k8s

    @dsl.container_component
    def gpu_step():
        return dsl.ContainerSpec(image="flywheel-cuda:0.1.0", command=["flywheel", "--help"])

    @dsl.pipeline(name="gpu-contract")
    def pipeline():
        task = gpu_step().set_accelerator_type(infra.GPU_RESOURCE).set_accelerator_limit(1)
        kfp_k8s.add_toleration(task, **infra.GPU_TOLERATION)
        (label, value), = infra.GPU_NODE_SELECTOR.items()
        kfp_k8s.add_node_selector(task, label_key=label, label_value=value)

    compiler.Compiler().compile(pipeline, str(tmp_path / "p.yaml"))
    docs = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    executor = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-gpu-step"]
    assert executor["tolerations"] == [infra.GPU_TOLERATION]
    assert executor["nodeSelector"]["labels"] == infra.GPU_NODE_SELECTOR
    pod = {"tolerations": executor["tolerations"]}
    assert tolerates(pod, infra.GPU_TAINT)


# What runs under the pipeline's ServiceAccount in every step pod of a real KFP 2.17 run, read from the backend's
# source at tag 2.17.0 (kubeflow/pipelines) and Argo v4.0.5 (the Argo KFP 2.17 ships), plus flywheel's own
# calls. (api group, resource, verb, object name or None for any.) kfp.local runs none of these.
BACKEND_ACCESS = [
    # launcher and importer: KFP's object store credentials for every artifact a step reads or writes
    # (backend/src/v2/objectstore/object_store.go getS3BucketCredential; names from v2/config/env.go).
    ("", "secrets", "get", "mlpipeline-minio-artifact"),
    # root DAG driver and importer: the launcher config (defaultPipelineRoot, providers; v2/config/env.go).
    ("", "configmaps", "get", "kfp-launcher"),
    # launcher: its own pod, for the retry index of a retried step (component/launcher_v2.go).
    ("", "pods", "get", None),
    # driver: the workflow, for the job's schedule/creation time placeholders (cmd/driver/main.go).
    ("argoproj.io", "workflows", "get", None),
    # Argo executor (argoexec): step outputs as WorkflowTaskResults (cmd/argoexec/executor/init.go).
    ("argoproj.io", "workflowtaskresults", "create", None),
    ("argoproj.io", "workflowtaskresults", "patch", None),
]
FLYWHEEL_ACCESS = [
    ("", "secrets", "get", "flywheel-s3"),  # object-store keys as env (use_secret_as_env)
    ("", "configmaps", "get", "flywheel-cluster"),  # MLflow/S3 endpoints as env
    *[("trainer.kubeflow.org", "trainjobs", verb, None) for verb in ("create", "get", "delete")],  # infra.run_trainjob
    ("", "pods", "list", None),  # the TrainJob's node-0 pod, for its log
    ("", "pods/log", "get", None),
]


def _allows(role: dict, group: str, resource: str, verb: str, name) -> bool:
    for rule in role["rules"]:
        if (group in rule["apiGroups"] and resource in rule["resources"]
                and (verb in rule["verbs"] or "*" in rule["verbs"])
                and ("resourceNames" not in rule or name in rule["resourceNames"])):
            return True
    return False


@pytest.mark.parametrize("access", BACKEND_ACCESS + FLYWHEEL_ACCESS, ids=lambda a: f"{a[2]}-{a[1]}-{a[3] or 'any'}")
def test_the_runner_role_grants_what_the_kfp_backend_and_flywheel_do_in_a_step_pod(access):
    objects = [o for o in documents(INFRA / "base" / "runs" / "rbac.yaml")]
    role = next(o for o in objects if o["kind"] == "Role")
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # flywheel's account (`flywheel pipeline run|schedule`) and KFP's default (runs started from the UI)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": infra.RUN_NAMESPACE}
                                   for name in ("flywheel-pipeline-runner", "pipeline-runner")]
    assert infra.S3_SECRET == "flywheel-s3" and infra.CLUSTER_CONFIG_MAP == "flywheel-cluster"
    assert _allows(role, *access), f"{role['metadata']['name']} does not allow {access}"


def test_the_runner_role_reads_no_other_secret():
    role = next(o for o in documents(INFRA / "base" / "runs" / "rbac.yaml") if o["kind"] == "Role")
    assert not _allows(role, "", "secrets", "get", "some-other-secret")
    assert not _allows(role, "", "secrets", "list", None)


def test_the_volume_bootstrap_job_gives_the_pipeline_user_the_volume():
    """Pipeline pods run as uid 1000 and KFP cannot give them an fsGroup: the init Job chowns the fresh volume."""
    patch = documents(INFRA / "kfp" / "patches" / "pipeline-install-config-nonroot.yaml")[0]
    uid, gid = patch["data"]["defaultSecurityContextRunAsUser"], patch["data"]["defaultSecurityContextRunAsGroup"]
    job = documents(INFRA / "base" / "models" / "models-volume-init.yaml")[0]
    validate(job, "models-volume-init.yaml")
    pod = job["spec"]["template"]["spec"]
    script = pod["containers"][0]["args"][0]
    assert f"chown {uid}:{gid} /models " in script
    for directory in ("runs", "scheduled", "seeds"):  # workspace roots of both pipelines, the staged seeds
        assert f"/models/{directory}" in script
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]]
    assert claims == [infra.MODELS_PVC] and pod["containers"][0]["volumeMounts"][0]["mountPath"] == infra.MODELS_MOUNT
    assert "models-volume-init.yaml" in (INFRA / "base" / "models" / "kustomization.yaml").read_text()
    for door in ("base/runs", "argo"):  # both doors take the shared base whole
        assert "../models" in (INFRA / door / "kustomization.yaml").read_text().replace("../base/models", "../models")


def test_trainer_is_pinned_to_the_release_the_trainjob_follows():
    kustomization = (INFRA / "trainer" / "kustomization.yaml").read_text()
    assert f"?ref={infra.TRAINER_RELEASE}" in kustomization


def test_the_example_trainjob_fits_the_gpu_quota():
    """A TrainJob asking for more GPUs than the quota admits would wait out its whole timeout."""
    quota = documents(INFRA / "gpu" / "quota.yaml")[0]["spec"]["hard"]["requests.nvidia.com/gpu"]
    job = documents(INFRA / "trainer" / "trainjob-example.yaml")[0]
    trainer = job["spec"]["trainer"]
    gpus = trainer["numNodes"] * int(trainer["resourcesPerNode"]["requests"][infra.GPU_RESOURCE])
    assert gpus <= int(quota), f"the example asks for {gpus} GPUs, the quota admits {quota}"
    assert trainer["numProcPerNode"] == int(trainer["resourcesPerNode"]["requests"][infra.GPU_RESOURCE])


def test_no_kustomization_loads_a_file_from_outside_its_directory():
    """kustomize's default load restrictor (LoadRestrictionsRootOnly) refuses a file resource or patch outside the
    kustomization's directory; only another kustomization (a directory) may be elsewhere. infra/argo once listed
    ../base/runs/*.yaml, and `kubectl apply -k infra/argo` failed."""
    for kustomization in KUSTOMIZATIONS:
        root = kustomization.parent.resolve()
        data = yaml.safe_load(kustomization.read_text())
        entries = local_entries(kustomization, "resources") + [
            kustomization.parent / p["path"] for p in data.get("patches") or [] if "path" in p]
        for entry in entries:
            if entry.resolve().is_dir():
                continue
            assert entry.resolve().is_relative_to(root), f"{kustomization}: {entry} is outside {root}"


def test_infra_argo_renders_in_the_argo_namespace_with_the_workflows_image():
    """A1, A4: `kubectl kustomize infra/argo` builds; the init Job runs the image the workflow steps run."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomizations' files are still checked one by one")
    result = subprocess.run([shutil.which("kubectl"), "kustomize", str(INFRA / "argo")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {o["metadata"].get("namespace") for o in objects} == {"argo"}
    assert {o["kind"] for o in objects} >= {"ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                                            "PersistentVolumeClaim", "Job"}
    job = next(o for o in objects if o["kind"] == "Job")
    assert images_of(job) == [infra.images()[0]]
