"""The Argo Workflows door: manifests valid against Argo's own schema, the GPU pool contract on every GPU step,
recursion instead of unrolling, the promotion mutex, committed manifests that recompile byte for byte, a package
with no paths or tracking of its own, and the steps' commands run in order on a tiny model."""

import copy
import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from flywheel import infra
from flywheel.argo import workflows
from flywheel.argo.workflows import m  # hera's models, imported without hera's change to PyYAML
from flywheel.cli import main
from flywheel.config import load_config
from flywheel.layout import FILES

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "pipelines" / "argo"
SCHEMA = json.loads((ROOT / "tests" / "data" / "argo-v4.0.5.schema.json").read_text())
UNREACHABLE = "http://127.0.0.1:9"


def strict(schema: dict) -> dict:
    """Argo's schema with unknown fields refused (what the API server's strict field validation does): a
    misspelled key fails here instead of being dropped by the cluster."""
    schema = copy.deepcopy(schema)
    # IntOrString: the JSON schema says string; the CRDs say x-kubernetes-int-or-string (either is accepted).
    schema["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {
        "anyOf": [{"type": "integer"}, {"type": "string"}]}
    for definition in schema["definitions"].values():
        if definition.get("type") == "object" and "properties" in definition:
            definition.setdefault("additionalProperties", False)
    return schema


STRICT = strict(SCHEMA)


def validate(manifest: dict, kind: str) -> None:
    root = {"$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{kind}", "definitions": STRICT["definitions"]}
    jsonschema.Draft202012Validator(root).validate(manifest)


def compiled(*overrides: str) -> dict:
    return workflows.to_dict(workflows.workflow_template(infra.cluster_config(None, list(overrides))))


def templates(manifest: dict) -> dict:
    return {t["name"]: t for t in manifest["spec"]["templates"]}


VARIANTS = [(), ("train.num_nodes=2", "train.gpus_per_node=4"), ("vote.method=self_judge", "curate.select=loss",
                                                                       "prompts.similar_per_uncertain=1"),
            ("kubeflow.kueue_queue=gpu-queue", "kubeflow.image_pull_secrets=[regcred]", "kubeflow.retries=0")]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_the_manifests_validate_against_argos_schema_and_hera_models(overrides):
    manifest = compiled(*overrides)
    validate(manifest, "WorkflowTemplate")
    assert workflows.to_dict(m.WorkflowTemplate.model_validate(manifest)) == manifest  # hera's models, round trip
    cron = workflows.to_dict(workflows.cron_workflow(load_config(None, list(overrides)), name="nightly",
                                                     schedule="0 3 * * *"))
    validate(cron, "CronWorkflow")
    assert workflows.to_dict(m.CronWorkflow.model_validate(cron)) == cron


def test_the_strict_schema_catches_a_misspelled_field():
    manifest = compiled()
    manifest["spec"]["templates"][0]["stepz"] = manifest["spec"]["templates"][0].pop("steps")
    with pytest.raises(jsonschema.ValidationError):
        validate(manifest, "WorkflowTemplate")


@pytest.mark.parametrize("overrides", VARIANTS)
def test_every_gpu_step_carries_the_pool_contract_and_no_cpu_step_does(overrides):
    config = infra.cluster_config(None, list(overrides))
    for template in compiled(*overrides)["spec"]["templates"]:
        container = template.get("container")
        if container is None:
            continue
        gpu = infra.GPU_RESOURCE in container["resources"]["limits"]
        if gpu:
            assert container["resources"]["requests"][infra.GPU_RESOURCE] == "1"
            assert template["tolerations"] == [infra.GPU_TOLERATION]
            assert template["nodeSelector"] == infra.GPU_NODE_SELECTOR
            assert template["activeDeadlineSeconds"] == config.kubeflow.gpu_step_timeout_s
            assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
            assert container["image"] == infra.images()[1]
            if config.kubeflow.kueue_queue:
                assert template["metadata"]["labels"] == {infra.KUEUE_QUEUE_LABEL: config.kubeflow.kueue_queue}
        else:
            assert "tolerations" not in template and "nodeSelector" not in template
            assert template["activeDeadlineSeconds"] == config.kubeflow.step_timeout_s
            assert container["image"] == infra.images()[0]
        assert {"name": "models", "mountPath": infra.MODELS_MOUNT} in container["volumeMounts"]
    steps = {s["name"]: s["template"] for group in templates(compiled(*overrides))["round"]["steps"] for s in group}
    assert steps["generate"] == steps["evaluate"] == "gpu-stage"
    assert steps["vote"] == ("gpu-stage" if "vote.method=self_judge" in overrides else "cpu-stage")
    assert steps["curate"] == ("gpu-stage" if "curate.select=loss" in overrides else "cpu-stage")
    assert steps["prompts"] == ("gpu-stage" if "prompts.similar_per_uncertain=1" in overrides else "cpu-stage")
    assert steps["train"] == ("train-job" if config.train.num_nodes > 1 else "gpu-stage")


def test_a_multi_node_round_creates_a_trainjob_and_waits_without_a_gpu():
    job = templates(compiled("train.num_nodes=2", "train.gpus_per_node=4"))["train-job"]
    assert "container" not in job and job["resource"]["action"] == "create" and job["resource"]["setOwnerReference"]
    assert job["resource"]["successCondition"] == "status.jobsStatus.0.succeeded > 0"
    manifest = yaml.safe_load(job["resource"]["manifest"])
    assert manifest["kind"] == "TrainJob"
    assert manifest["metadata"]["generateName"] == "flywheel-r{{inputs.parameters.round}}-"
    assert manifest["spec"]["trainer"]["numNodes"] == 2 and manifest["spec"]["trainer"]["numProcPerNode"] == 4
    command = manifest["spec"]["trainer"]["command"]
    assert command[:4] == ["torchrun", "--module", "flywheel.cli", "train"]
    ws, r = "{{workflow.parameters.workspace}}", "{{inputs.parameters.round}}"
    assert command[command.index("--data") + 1] == f"{ws}/rounds/{r}/{FILES.mix}"
    assert command[command.index("--init") + 1] == f"{ws}/rounds/{{{{inputs.parameters.previous}}}}/{FILES.champion}"
    assert command[command.index("--out") + 1] == f"{ws}/rounds/{r}/{FILES.candidate}"
    assert infra.KUEUE_QUEUE_LABEL not in manifest["metadata"]["labels"]
    queued = templates(compiled("train.num_nodes=2", "kubeflow.kueue_queue=gpu-queue"))["train-job"]
    labels = yaml.safe_load(queued["resource"]["manifest"])["metadata"]["labels"]
    assert labels[infra.KUEUE_QUEUE_LABEL] == "gpu-queue"  # Kueue admits the TrainJob from the GPU steps' queue


def test_rounds_recurse_instead_of_unrolling():
    small, large = compiled("loop.rounds=2"), compiled("loop.rounds=90")
    assert small["spec"]["templates"] == large["spec"]["templates"]  # the same templates; only defaults differ
    round_ = templates(small)["round"]
    last = round_["steps"][-1][0]
    assert last["template"] == "round" and "jsonpath(steps.promote.outputs.parameters.record, '$.promotion')" in \
        last["when"] and "asInt(inputs.parameters.round) < asInt(inputs.parameters.last)" in last["when"]
    names = [s["name"] for group in round_["steps"] for s in group]
    assert names == ["prompts", "generate", "vote", "curate", "train", "evaluate", "promote", "next"]


def test_promotion_is_one_at_a_time_and_never_retried_while_the_stages_are():
    by_name = templates(compiled())
    assert by_name["promote"]["synchronization"] == {"mutexes": [{"name": "flywheel-promote-flywheel-addition"}]}
    assert [s["template"] for group in by_name["promote"]["steps"] for s in group] == ["gate", "track"]
    assert "retryStrategy" not in by_name["gate"] and "retryStrategy" not in by_name["track"]
    for name in ("start", "cpu-stage", "gpu-stage"):
        assert by_name[name]["retryStrategy"]["limit"] == "2"
    spec = compiled()["spec"]
    assert spec["activeDeadlineSeconds"] == 7 * 86400 and spec["ttlStrategy"] == {"secondsAfterCompletion": 7 * 86400}
    cron = workflows.to_dict(workflows.cron_workflow(load_config(None, []), name="n", schedule="0 3 * * *"))
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["workflowSpec"]["workflowTemplateRef"] == {"name": "flywheel"}


def test_the_committed_manifests_recompile_byte_for_byte(tmp_path, capsys):
    assert main(["argo", "compile", "--out-dir", str(tmp_path)]) == 0
    for name in ("workflow-template.yaml", "cron-workflow.yaml"):
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), (
            f"pipelines/argo/{name} is stale: run `flywheel argo compile`")
        validate(yaml.safe_load((COMMITTED / name).read_text()), yaml.safe_load((COMMITTED / name).read_text())["kind"])


def test_the_door_adds_no_paths_and_no_tracking_glue():
    """Paths come from flywheel.layout, the stages and their placement from their records (flywheel.stages.records,
    through flywheel.loop and flywheel.machine_checks), MLflow from flywheel.tracking."""
    package = ROOT / "src" / "flywheel" / "argo"
    names = [value for key, value in vars(FILES).items() if not key.startswith("_") and isinstance(value, str)]
    for path in package.glob("*.py"):
        text = path.read_text()
        for needle in [*(f'"{n}"' for n in names), *(f"/{n}" for n in names), "rounds/", "tracking/", ".parquet",
                       "mlflow", "Tracker", "log_round", "register_seed"]:
            assert needle not in text, f"{path.name} spells {needle!r}"
        # A stage's own module never: only the records that declare every stage.
        assert not re.search(r"flywheel\.stages(?!\.records\b)", text), f"{path.name} imports a stage's module"


def test_the_steps_commands_run_a_round_in_order(tiny_seed, tmp_path, monkeypatch, capsys):
    """Each template's command, with Argo's placeholders filled in as Argo would, run in the order the templates
    call them: start writes the round, the stages write the round, track writes the record the `when` reads.
    Outputs are read from the files the templates name (valueFrom.path), as Argo's executor reads them."""
    workspace, db = tmp_path / "ws", tmp_path / "mlflow.db"
    config = load_config(ROOT / "configs" / "smoke.yaml", [f"seed.path={tiny_seed}", "loop.device=cpu",
                                                           f"tracking.uri=sqlite:///{db}", "loop.progress=false"])
    from flywheel.config import dump_config

    (tmp_path / "config.yaml").write_text(dump_config(config))
    manifest = workflows.to_dict(workflows.workflow_template(config))
    by_name = templates(manifest)
    in_pod = {workflows.CONFIG_IN_POD: str(tmp_path / "config.yaml"),
              workflows.NEXT_ROUND_IN_POD: str(tmp_path / "next-round")}

    def fill(text: str, params: dict) -> str:
        text = re.sub(r"\{\{(workflow|inputs)\.parameters\.(\w+)\}\}",
                      lambda g: {"workspace": str(workspace), **params}[g.group(2)], text)
        return in_pod.get(text, text)

    def run(template: str, **params) -> dict:
        """The template's output parameters, each read from its file."""
        command = [fill(part, params) for part in by_name[template]["container"]["command"]]
        assert command[0] == "flywheel"
        capsys.readouterr()
        print("View run track at: http://mlflow/#/experiments/1/runs/x")  # what MLflow's HTTP store prints
        assert main(command[1:]) == 0, capsys.readouterr().err
        outputs = by_name[template].get("outputs", {}).get("parameters", [])
        return {o["name"]: Path(fill(o["valueFrom"]["path"], params)).read_text() for o in outputs}

    assert run("start")["round"].strip() == "1"
    steps = {s["name"]: s["template"] for group in by_name["round"]["steps"] for s in group}
    for stage in ("prompts", "generate", "vote", "curate", "train", "evaluate"):
        run(steps[stage], stage=stage, round="1")
    run("gate", round="1")
    record = json.loads(run("track", round="1")["record"])
    assert record["promotion"] in ("promoted", "declined") and record["model_version"] == 2
    assert run("start")["round"].strip() == "2"  # a second run (or the next trigger) continues with round 2
    capsys.readouterr()
    assert main(["status", str(workspace)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"round 1: {'promote' if record['promotion'] == 'promoted' else 'decline'}")
    assert lines[-1].endswith("next: round:stage 2:prompts") and "--resume" not in lines[-1]


def test_no_decision_reads_a_steps_stdout():
    """A step's stdout is whatever its libraries print (MLflow's HTTP store prints "View run ..." when a run
    ends): the round to run and the record the `when` reads come from files the steps write (valueFrom.path)."""
    text = workflows.to_yaml(workflows.workflow_template(load_config(None, ["train.num_nodes=1"])))
    assert "outputs.result" not in text
    by_name = templates(workflows.to_dict(workflows.workflow_template(load_config(None))))
    for name, parameter in (("start", "round"), ("track", "record")):
        outputs = by_name[name]["outputs"]["parameters"]
        assert [o["name"] for o in outputs] == [parameter] and "path" in outputs[0]["valueFrom"], name


def test_a_cpu_cluster_runs_every_step_off_the_gpu_pool():
    """loop.device=cpu (make cluster's local cluster has no GPU): no step asks for a GPU or selects the pool."""
    for device, gpu_steps in (("cpu", 0), ("cuda", 2)):
        config = load_config(None, [f"loop.device={device}"])
        by_name = templates(workflows.to_dict(workflows.workflow_template(config)))
        asking = [n for n, t in by_name.items() if "container" in t and
                  infra.GPU_RESOURCE in t["container"]["resources"]["limits"]]
        assert len(asking) == gpu_steps, (device, asking)  # start and gpu-stage
        if device == "cpu":
            assert not any(t.get("nodeSelector") or t.get("tolerations") for t in by_name.values())


def test_submit_and_schedule_fail_in_one_line(capsys):
    for argv in (["argo", "submit", "--host", UNREACHABLE], ["argo", "submit", "--host", UNREACHABLE, "--rounds", "97"],
                 ["argo", "schedule", "--host", UNREACHABLE, "--cron", "0 25 * * *"],
                 ["argo", "schedule", "--host", UNREACHABLE, "--cron", "0 3 * * *"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("flywheel: error: ") and "\n" not in err and "Traceback" not in err, err


# What runs under the workflow's ServiceAccount (flywheel-argo) in Argo v4.0.5: the emissary executor reports
# each step's outputs (manifests/quick-start/base/executor/emissary/executor-role.yaml), and the resource
# template's executor creates the TrainJob and polls it (workflow/executor/resource.go: create, then get).
ARGO_ACCESS = [("argoproj.io", "workflowtaskresults", "create"), ("argoproj.io", "workflowtaskresults", "patch"),
               ("trainer.kubeflow.org", "trainjobs", "create"), ("trainer.kubeflow.org", "trainjobs", "get")]


@pytest.mark.parametrize("access", ARGO_ACCESS, ids=lambda a: f"{a[2]}-{a[1]}")
def test_the_workflow_service_account_may_do_what_its_pods_do(access):
    objects = [doc for doc in yaml.safe_load_all((ROOT / "infra" / "argo" / "rbac.yaml").read_text()) if doc]
    kinds = {o["kind"]: o for o in objects}
    assert compiled()["spec"]["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"] == \
        workflows.SERVICE_ACCOUNT
    namespace = yaml.safe_load((ROOT / "infra" / "argo" / "kustomization.yaml").read_text())["namespace"]
    assert kinds["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": workflows.SERVICE_ACCOUNT,
                                                 "namespace": namespace}]
    group, resource, verb = access
    assert any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               for rule in kinds["Role"]["rules"]), access


def test_loading_the_door_leaves_pyyaml_as_it_was():
    """hera changes PyYAML's global string style when it loads; flywheel.argo undoes that, or every YAML
    written later in the process (KFP's compiled pipelines) would change."""
    import subprocess
    import sys

    code = ("import yaml; before = yaml.safe_dump({'a': 'x\\ny'}) + yaml.dump({'a': 'x\\ny'}); "
            "import flywheel.argo.workflows, flywheel.argo.cli, hera.workflows; "
            "after = yaml.safe_dump({'a': 'x\\ny'}) + yaml.dump({'a': 'x\\ny'}); "
            "assert before == after, (before, after)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_relative_seed_path_resolves_under_flywheel_home_in_every_door(tmp_path, monkeypatch):
    """A2: a pod starts in /home/flywheel, and the image ships the seed under FLYWHEEL_HOME (/opt/flywheel):
    `seed.path: seed/default` (which also reads as a hub name) is the shipped directory, whatever the cwd."""
    from flywheel.loop import check_seed
    from flywheel.modeling import seed_location

    home = tmp_path / "opt"
    shutil.copytree(ROOT / "seed" / "smoke", home / "seed" / "smoke")
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(ROOT / "configs" / "smoke.yaml")
    assert config.seed.path == "seed/smoke"
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    assert check_seed(config) == home / "seed" / "smoke"
    assert seed_location("/abs/seed") == "/abs/seed"
    assert seed_location("someorg/somemodel") == "someorg/somemodel"  # no such directory: a hub name
    monkeypatch.delenv("FLYWHEEL_HOME")
    monkeypatch.chdir(ROOT)  # a checkout: relative to the current directory, as `flywheel run` always read it
    assert check_seed(config) == Path("seed/smoke")


def test_the_exit_handler_ends_the_parent_run_as_the_workflow_ended(tmp_path, capsys):
    """onExit runs `flywheel track --end-loop {{workflow.status}} --failures {{workflow.failures}}`: FINISHED on
    Succeeded, FAILED on Failed or Error, KILLED when the failures are `argo stop`'s; round runs left RUNNING end
    with the parent; the first failed step is tagged, and cleared by a later good end; no parent run (nothing
    tracked yet) is not an error."""
    from mlflow.tracking import MlflowClient

    from flywheel.tracking import Tracker, loop_key

    template = templates(compiled())["exit"]
    assert compiled()["spec"]["onExit"] == "exit"
    assert template["container"]["command"][-5:] == ["--end-loop", "{{workflow.status}}", "--failures",
                                                     "{{workflow.failures}}", "-q"]
    db = tmp_path / "mlflow.db"
    overrides = ["-c", str(ROOT / "configs" / "smoke.yaml"), "-s", f"tracking.uri=sqlite:///{db}"]
    workspace = tmp_path / "ws"

    def end(status: str, failures: str) -> dict:
        args = ["track", "--root", str(workspace), "--door", "argo", "--end-loop", status, *overrides]
        assert main([*args, "--failures", failures]) == 0
        return json.loads(capsys.readouterr().out)

    assert end("Failed", "null")["parent_run_id"] is None
    config = load_config(ROOT / "configs" / "smoke.yaml", [f"tracking.uri=sqlite:///{db}"])
    tracker = Tracker(config.tracking)
    parent = tracker.start_loop(config, loop_key=loop_key("argo", workspace))
    client = MlflowClient(f"sqlite:///{db}")
    # What Argo v4.0.5 passes for {{workflow.failures}}: the JSON list, quoted once more (strconv.Quote) -- a pod
    # that failed; the nodes `argo stop` ended (as the e2e stop check saw them), earliest first.
    failed = json.dumps(json.dumps([{"displayName": "train(0)", "message": "main: Error (exit code 1)",
                                     "templateName": "cpu-stage", "phase": "Failed"}]))
    stopped = json.dumps(json.dumps([
        {"displayName": "train", "message": "Stopped with strategy 'Stop'", "finishedAt": "2026-12-06T16:40:02Z"},
        {"displayName": "train(0)", "message": "main: Error (exit code 143)", "finishedAt": "2026-12-06T16:40:01Z"}]))
    cases = (("Failed", failed, "FAILED", "train(0): main: Error (exit code 1)"),
             ("Failed", stopped, "KILLED", "train(0): main: Error (exit code 143)"),
             ("Failed", json.dumps([{"displayName": "generate", "message": "workflow shutdown with strategy:  Stop"}]),
              "KILLED", "generate: workflow shutdown with strategy:  Stop"),
             ("Succeeded", "null", "FINISHED", None), ("Error", "[]", "FAILED", None),
             # not JSON (an Argo that words it otherwise): read as text, and the runs still end
             ("Failed", "Stopped with strategy 'Stop'", "KILLED", "workflow: Stopped with strategy 'Stop'"))
    for status, failures, expected, tag in cases:
        round_run = tracker.client.create_run(tracker.experiment_id,
                                              tags={"mlflow.parentRunId": parent}).info.run_id
        assert end(status, failures) == {"parent_run_id": parent, "status": expected, "first_failure": tag}
        assert client.get_run(parent).info.status == expected
        assert client.get_run(parent).data.tags.get("flywheel.error") == tag
        assert client.get_run(round_run).info.status == ("FAILED" if expected == "FINISHED" else expected)
    assert main(["track", "--root", str(workspace), "--door", "argo", "--end-loop", "Stopped", *overrides]) == 2
    assert "not a workflow status" in capsys.readouterr().err


def test_a_workflow_that_did_not_succeed_deletes_its_train_jobs():
    """With TrainJobs the exit handler is two steps: end the loop, and (unless the workflow Succeeded) delete the
    TrainJobs labelled with the workflow's name, which the runner's Role may delete. Without, one container."""
    by_name = templates(compiled("train.num_nodes=2"))
    steps = by_name["exit"]["steps"][0]
    assert [s["template"] for s in steps] == ["end-loop", "delete-train-jobs"]
    assert steps[1]["when"] == "{{workflow.status}} != Succeeded"
    resource = by_name["delete-train-jobs"]["resource"]
    assert resource["action"] == "delete" and "manifest" not in resource
    assert resource["flags"][:3] == ["trainjobs.trainer.kubeflow.org", "--selector",
                                     "workflows.argoproj.io/workflow={{workflow.name}}"]
    job = yaml.safe_load(by_name["train-job"]["resource"]["manifest"])
    assert job["metadata"]["labels"]["workflows.argoproj.io/workflow"] == "{{workflow.name}}"
    rules = next(d for d in yaml.safe_load_all((ROOT / "infra" / "argo" / "rbac.yaml").read_text())
                 if d["kind"] == "Role")["rules"]
    assert "delete" in next(r for r in rules if "trainjobs" in r["resources"])["verbs"]
    assert "container" in templates(compiled())["exit"] and "delete-train-jobs" not in templates(compiled())
