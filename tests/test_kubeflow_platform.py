"""What a real KFP backend does with the compiled pipelines that kfp.local does not: placeholders, resources,
time limits, retries, run deadline and TTL, parameter descriptions, step placement, size; and the preflight
step's parts (knobs, seed staging, checks) and `flywheel pipeline upload`, without a cluster."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flywheel.config import dump_config, load_config
from flywheel import infra
from flywheel.infra import cluster_config
from flywheel.errors import InputError
from flywheel.kubeflow import pipelines
from flywheel.machine_checks import check_stage
from flywheel.kubeflow.preflight import (Knobs, Placement, apply_knobs, check_placement, run_checks,
                                        stage_seed)

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "compiled"
NAMES = ("flywheel_round", "flywheel")


def _documents(path: Path) -> tuple[dict, dict]:
    pipeline, platform = yaml.safe_load_all(Path(path).read_text())
    return pipeline, platform


def _executor_tasks(pipeline: dict):
    """(task name, display name, executor label) of every task that runs a container, in every DAG."""
    dags = [pipeline["root"]] + list(pipeline["components"].values())
    for dag in dags:
        for name, task in dag.get("dag", {}).get("tasks", {}).items():
            component = pipeline["components"][task["componentRef"]["name"]]
            if "executorLabel" in component:
                yield name, task, component["executorLabel"]


def _compile(tmp_path: Path, config, rounds: int = 1) -> tuple[dict, dict]:
    path = tmp_path / "flywheel.yaml"
    pipelines.compile_checked(pipelines.make_flywheel(rounds, config), path)
    return _documents(path)


@pytest.mark.parametrize("name", NAMES)
def test_no_component_input_default_holds_a_runtime_placeholder(name):
    """The backend substitutes {{$.pipeline_job_uuid}} and friends only in a task's constant arguments; a
    component input's default is copied verbatim (backend/src/v2/driver/resolve.go), so a default of
    '{{$.pipeline_job_uuid}}' would put every run in one directory of that literal name."""
    pipeline, _ = _documents(COMPILED / f"{name}.yaml")
    definitions = [pipeline["root"]] + list(pipeline["components"].values())
    for definition in definitions:
        for key, parameter in definition.get("inputDefinitions", {}).get("parameters", {}).items():
            default = json.dumps(parameter.get("defaultValue", ""))
            assert "{{$." not in default, f"{name}: {key} defaults to a placeholder"
    if name == "flywheel":  # the run id reaches prepare and the exit task as task constants, where it is substituted
        body = pipeline["components"]["comp-exit-handler-1"]["dag"]["tasks"]
        for task in (body["prepare"], pipeline["root"]["dag"]["tasks"]["end-run"]):
            assert task["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


@pytest.mark.parametrize("name", NAMES)
def test_every_step_has_resources_a_time_limit_and_retries_except_gate_and_track(name):
    pipeline, platform = _documents(COMPILED / f"{name}.yaml")
    config = pipelines.cluster_config().kubeflow
    executors = pipeline["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    seen = set()
    for task_name, task, label in _executor_tasks(pipeline):
        step = task_name.rsplit("-", 1)[0] if task_name[-1].isdigit() else task_name
        seen.add(step)
        resources = executors[label]["container"]["resources"]
        gpu = "accelerator" in resources
        assert resources["resourceCpuRequest"] == (config.gpu_step_cpu if gpu else config.cpu_step_cpu), task_name
        assert resources["resourceCpuLimit"] == (config.gpu_step_cpu_limit if gpu else config.cpu_step_cpu_limit)
        memory = config.gpu_step_memory if gpu else config.cpu_step_memory
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == memory
        timeout = config.gpu_step_timeout_s if gpu or step == "train" else config.step_timeout_s
        assert int(k8s[label]["activeDeadlineSeconds"]) == timeout, task_name
        retried = "retryPolicy" in task
        assert retried == (step not in ("gate", "track")), f"{task_name}: retries {retried}"
        if retried:
            assert task["retryPolicy"]["maxRetryCount"] == config.retries
    assert {"preflight", "gate", "track", "generate", "train"} <= seen
    assert platform["platforms"]["kubernetes"]["pipelineConfig"] == {
        "activeDeadlineSeconds": config.run_deadline_s, "resourceTtlOnCompletion": config.ttl_s}


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_is_described_and_the_ui_knobs_are_typed(name):
    pipeline, _ = _documents(COMPILED / f"{name}.yaml")
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    for key, parameter in parameters.items():
        assert parameter.get("description", "").strip(), f"{name}: parameter {key} has no description"
    defaults = pipelines.cluster_config()
    types = {"samples_per_prompt": "NUMBER_INTEGER", "train_steps": "NUMBER_INTEGER", "temperature": "NUMBER_DOUBLE",
             "min_vote_share": "NUMBER_DOUBLE", "gate_alpha": "NUMBER_DOUBLE", "gate_min_gain": "NUMBER_DOUBLE",
             "learning_rate": "NUMBER_DOUBLE"}
    for knob, kind in types.items():
        assert parameters[knob]["parameterType"] == kind
        section, option = Knobs.keys()[knob].split(".")
        assert parameters[knob]["defaultValue"] == getattr(getattr(defaults, section), option)
    # Loops carry a name in the UI, not for-loop-N.
    loops = [task for dag in pipeline["components"].values() for task in dag.get("dag", {}).get("tasks", {}).values()
             if "parameterIterator" in task] + [t for t in pipeline["root"]["dag"]["tasks"].values()
                                                  if "parameterIterator" in t]
    assert loops and all(t["taskInfo"]["name"].endswith("generate-shards") for t in loops)
    report = next(c for n, c in pipeline["components"].items() if n.startswith("comp-report"))
    assert report["outputDefinitions"]["artifacts"]["run_report"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_committed_pipelines_run_on_the_gpu_with_the_in_cluster_mlflow():
    """What the README's cluster commands submit: loop.device=cuda, MLflow in the cluster; a relative seed
    path is the one shipped in the image (the preflight step copies it onto the volume)."""
    pipeline, _ = _documents(COMPILED / "flywheel.yaml")
    config = yaml.safe_load(pipeline["root"]["inputDefinitions"]["parameters"]["config_yaml"]["defaultValue"])
    assert config["loop"]["device"] == "cuda"
    assert config["tracking"]["uri"] == infra.IN_CLUSTER_MLFLOW
    assert config["seed"]["path"] == "seed/default" and (ROOT / "seed" / "default").is_dir()
    # -s wins over the cluster settings.
    assert pipelines.cluster_config(None, ["loop.device=cpu"]).loop.device == "cpu"


def test_a_vote_that_loads_the_champion_runs_on_the_gpu_and_a_trainjob_launcher_holds_no_gpu(tmp_path):
    from flywheel.kubeflow.components import GPU_IMAGE

    config = pipelines.cluster_config(None, ["vote.method=self_judge", "train.num_nodes=2", "curate.select=loss",
                                             "prompts.similar_per_uncertain=1"])
    pipeline, platform = _compile(tmp_path, config)
    executors = pipeline["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    by_step = {name.rsplit("-", 1)[0] if name[-1].isdigit() else name: label
               for name, _, label in _executor_tasks(pipeline)}
    vote = executors[by_step["vote"]]["container"]
    assert vote["image"] == GPU_IMAGE and vote["resources"]["accelerator"]["resourceCount"] == "1"
    assert k8s[by_step["vote"]]["nodeSelector"] and k8s[by_step["vote"]]["tolerations"]
    curate = executors[by_step["curate"]]["container"]  # curate.select scores rows with the champion
    assert curate["image"] == GPU_IMAGE and curate["resources"]["accelerator"]["resourceCount"] == "1"
    prompts = executors[by_step["make-prompts"]]["container"]  # TT-SI probes the prompts with the champion
    assert prompts["image"] == GPU_IMAGE and prompts["resources"]["accelerator"]["resourceCount"] == "1"
    train = executors[by_step["train"]]["container"]
    assert "accelerator" not in train["resources"] and "nodeSelector" not in k8s[by_step["train"]]
    # The committed (majority vote, one node) pipeline places them the other way round.
    committed, _ = _documents(COMPILED / "flywheel_round.yaml")
    labels = {name: label for name, _, label in _executor_tasks(committed)}
    assert "accelerator" not in committed["deploymentSpec"]["executors"][labels["vote"]]["container"]["resources"]
    executors = committed["deploymentSpec"]["executors"]
    assert "accelerator" not in executors[labels["curate"]]["container"]["resources"]
    assert "accelerator" not in executors[labels["make-prompts"]]["container"]["resources"]
    assert "accelerator" in executors[labels["train"]]["container"]["resources"]


def test_image_pull_secrets_and_a_kueue_queue_from_the_config(tmp_path):
    config = pipelines.cluster_config(None, ["kubeflow.image_pull_secrets=[regcred]", "kubeflow.kueue_queue=gpu-queue"])
    pipeline, platform = _compile(tmp_path, config)
    executors = pipeline["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for _, _, label in _executor_tasks(pipeline):
        assert [s["secretName"] for s in k8s[label]["imagePullSecret"]] == ["regcred"]
        labels = k8s[label].get("podMetadata", {}).get("labels", {})
        gpu = "accelerator" in executors[label]["container"]["resources"]
        assert labels.get(infra.KUEUE_QUEUE_LABEL) == ("gpu-queue" if gpu else None), label


def test_compiled_size_per_round_and_the_round_limit(tmp_path):
    """Argo keeps a workflow in one object: the N-round pipeline's size is measured, and a round count that
    would not fit is refused in one line that points to the scheduled round pipeline."""
    # Compiled in a process of its own: in a test worker that imported torch and MLflow, kfp's inspect.stack() on
    # every task setting makes the same compile take 20 times as long.
    measure = ("import sys; from pathlib import Path; from kfp import compiler\n"
               "from flywheel.kubeflow import pipelines\n"
               "for rounds in (1, 2):\n"
               "    path = Path(sys.argv[1]) / f'{rounds}.yaml'\n"
               "    compiler.Compiler().compile(pipelines.make_flywheel(rounds), str(path))\n"
               "    print(path.stat().st_size)")
    result = subprocess.run([sys.executable, "-c", measure, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sizes = dict(zip((1, 2), map(int, result.stdout.split())))
    per_round, base = sizes[2] - sizes[1], 2 * sizes[1] - sizes[2]
    print(f"compiled flywheel pipeline: {base} bytes + {per_round} bytes per round; "
          f"max {pipelines.max_rounds()} rounds")
    assert per_round <= pipelines.ROUND_BYTES and base <= pipelines.BASE_BYTES
    assert pipelines.max_rounds() >= pipelines.DEFAULT_ROUNDS
    with pytest.raises(InputError, match="schedule `flywheel-round`") as error:
        pipelines.make_flywheel(pipelines.max_rounds() + 1)
    assert "\n" not in str(error.value)


# --- the preflight step's parts ----------------------------------------------------------------------------------


def test_a_knob_overrides_config_yaml_only_when_changed_and_is_named_in_errors():
    compiled = Knobs.of(load_config())
    edited = load_config(None, ["generate.temperature=0.3"])  # a UI user edited config_yaml only
    config = apply_knobs(dump_config(edited), compiled, compiled)
    assert config.generate.temperature == 0.3
    turned = Knobs(**{**compiled.__dict__, "gate_alpha": 0.2, "train_steps": 7})
    config = apply_knobs(dump_config(edited), turned, compiled)
    assert (config.gate.alpha, config.train.steps, config.generate.temperature) == (0.2, 7, 0.3)
    with pytest.raises(InputError) as error:
        apply_knobs(dump_config(edited), Knobs(**{**compiled.__dict__, "min_vote_share": 1.5}), compiled)
    assert str(error.value) == ("pipeline parameter min_vote_share: field 'curate.min_vote_share': "
                                "must be in [0, 1]")


def test_a_config_that_contradicts_the_compiled_placement_is_refused():
    compiled = Placement.of(cluster_config())
    assert compiled.gpu_steps == ("prepare", "generate", "train", "evaluate")
    assert Placement.from_text(compiled.to_text()) == compiled
    with pytest.raises(InputError, match="vote.method=self_judge and loop.device=cuda, but this pipeline was compiled "
                                         "with its vote step on the CPU image"):
        check_placement(cluster_config(None, ["vote.method=self_judge"]), compiled)
    with pytest.raises(InputError, match="train.num_nodes=4 and loop.device=cuda, but this pipeline was compiled with "
                                         "its train step on a GPU"):
        check_placement(cluster_config(None, ["train.num_nodes=4"]), compiled)
    # A CPU run of a pipeline compiled for the GPU: the first step that loads a model names loop.device.
    with pytest.raises(InputError, match="field 'loop.device': loop.device=cpu, but this pipeline was compiled with "
                                         "its prepare step on a GPU"):
        check_placement(cluster_config(None, ["loop.device=cpu"]), compiled)
    check_placement(cluster_config(), compiled)


def test_every_step_that_loads_a_model_runs_where_its_device_is():
    """K1: the `flywheel` pipeline's prepare scores the seed with loop.device, so it is placed like generate."""
    assert Placement.of(cluster_config(None, ["loop.device=cpu"])).gpu_steps == ()
    multi = Placement.of(cluster_config(None, ["train.num_nodes=2"]))
    assert not multi.on_gpu("train") and multi.on_gpu("prepare")  # the step submits a TrainJob and waits


def test_a_pipeline_compiled_for_the_cpu_puts_no_step_on_the_cuda_image(tmp_path):
    """A recipe with loop.device=cpu runs every step, prepare and the GPU steps' components included, on the CPU
    image: the CUDA image's specs are only the components' defaults."""
    from flywheel.kubeflow.components import GPU_IMAGE, IMAGE

    pipeline, platform = _compile(tmp_path, cluster_config(None, ["loop.device=cpu"]), rounds=2)
    containers = [e["container"] for e in pipeline["deploymentSpec"]["executors"].values()]
    assert {c["image"] for c in containers} == {IMAGE} != {GPU_IMAGE}
    assert not any("accelerator" in c.get("resources", {}) for c in containers)
    assert not any(e.get("nodeSelector") for e in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
                   .values())


def test_a_relative_seed_is_copied_from_the_image_onto_the_volume_once(tmp_path, tiny_seed, monkeypatch):
    home = tmp_path / "image"
    (home / "seed").mkdir(parents=True)
    import shutil

    shutil.copytree(tiny_seed, home / "seed" / "default")
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    config = stage_seed(load_config(None, ["seed.path=seed/default"]), "", tmp_path / "volume" / "seeds")
    staged = Path(config.seed.path)
    assert staged.parent == tmp_path / "volume" / "seeds" and staged.name.startswith("default-")
    assert (staged / "flywheel-model.json").read_bytes() == (tiny_seed / "flywheel-model.json").read_bytes()
    again = stage_seed(load_config(None, ["seed.path=seed/default"]), "", tmp_path / "volume" / "seeds")
    assert again.seed.path == config.seed.path  # same content, same directory: copied once
    with pytest.raises(InputError, match="relative seed.path is not in the image"):
        stage_seed(load_config(None, ["seed.path=seed/missing"]), "", tmp_path / "volume" / "seeds")


def test_a_seed_from_the_model_registry_or_a_path_uri(tmp_path, tiny_seed, monkeypatch):
    from flywheel.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    config = load_config(None, [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.registered_model=base"])
    tracker = Tracker(config.tracking)
    parent = tracker.start_loop(config, loop_key="test")
    version = tracker.registry.register_seed(parent, tiny_seed)
    seeds = tmp_path / "volume" / "seeds"
    for uri in ("models:/base@champion", f"models:/base/{version}", str(tiny_seed)):
        staged = Path(stage_seed(load_config(None, [f"tracking.uri={config.tracking.uri}"]), uri, seeds).seed.path)
        assert staged.parent == seeds
        assert (staged / "member-0" / "model.safetensors").read_bytes() == (
            tiny_seed / "member-0" / "model.safetensors").read_bytes(), uri
    with pytest.raises(InputError, match="seed_uri models:/base@nope"):
        stage_seed(load_config(None, [f"tracking.uri={config.tracking.uri}"]), "models:/base@nope", seeds)
    with pytest.raises(InputError, match="expected models:/<name>@<alias>"):
        stage_seed(config, "relative/path", seeds)


def test_preflight_checks_print_one_line_each_and_fail_with_every_failed_check(tmp_path, tiny_seed, capsys):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the volume's directory belongs")
    config = load_config(None, [f"seed.path={tiny_seed}", "tracking.uri=http://127.0.0.1:9"])  # nothing listens
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    try:
        with pytest.raises(InputError) as error:
            run_checks(config, blocker / "runs", dvc_remote="s3://flywheel-dvc/rounds")
    finally:
        del os.environ["AWS_ENDPOINT_URL"]
    message = str(error.value)
    assert "\n" not in message and message.startswith("preflight: volume: ")
    assert "; mlflow: MLflow does not answer" in message and "; object store: object store does not answer" in message
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["FAIL  volume", "ok    seed", "FAIL  mlflow",
                                                       "FAIL  object store"]
    # All good: a writable volume, the seed, tracking to a local store, no object store.
    good = load_config(None, [f"seed.path={tiny_seed}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    assert [line[:6] for line in run_checks(good, tmp_path / "volume" / "runs")] == ["ok    "] * 4


def test_a_gpu_step_without_a_visible_gpu_fails_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match="no GPU is visible in this pod") as error:
        check_stage(load_config(None, ["loop.device=cuda"]), "generate", where="in this pod")
    assert "\n" not in str(error.value) and "nvidia.com/gpu" in str(error.value)
    check_stage(load_config(None, ["loop.device=cpu"]), "generate", where="in this pod")
    check_stage(load_config(None, ["loop.device=cuda"]), "curate", where="in this pod")  # a CPU step: no GPU asked


# --- flywheel pipeline upload ------------------------------------------------------------------------------------


class _Server:
    """The four KFP API calls `upload` makes, over an in-memory list of pipelines (no KFP server here)."""

    def __init__(self):
        self.pipelines: dict[str, list[str]] = {}

    def get_pipeline_id(self, name):
        return name if name in self.pipelines else None

    def upload_pipeline(self, path, pipeline_name, description):
        assert Path(path).is_file() and description
        self.pipelines[pipeline_name] = [Path(path).name]
        return type("Pipeline", (), {"pipeline_id": pipeline_name})()

    def list_pipeline_versions(self, pipeline_id, page_size, filter):
        wanted = json.loads(filter)["predicates"][0]["string_value"]
        found = [v for v in self.pipelines[pipeline_id] if v == wanted]
        return type("Versions", (), {"pipeline_versions": found or None})()

    def upload_pipeline_version(self, path, name, pipeline_id, description):
        self.pipelines[pipeline_id].append(name)


def test_upload_creates_then_adds_versions_only_for_changed_pipelines(tmp_path):
    from flywheel.kubeflow.cli import upload, version_name

    server = _Server()
    package = tmp_path / "flywheel.yaml"
    package.write_text("pipeline: 1\n")
    assert upload(server, package, "flywheel", "d").startswith("pipeline flywheel created")
    assert upload(server, package, "flywheel", "d") == f"pipeline flywheel: version {version_name(package)} uploaded"
    assert upload(server, package, "flywheel", "d").endswith("is already there (unchanged)")
    package.write_text("pipeline: 2\n")
    assert upload(server, package, "flywheel", "d").endswith("uploaded")
    assert len(server.pipelines["flywheel"]) == 3


def test_each_schedule_gets_its_own_workspace_and_a_bad_name_is_refused(capsys):
    from flywheel.cli import build_parser, main
    from flywheel.kubeflow.cli import run_arguments

    def arguments(*extra):
        args = build_parser().parse_args(["pipeline", "schedule", "--host", "http://h", "--cron", "0 3 * * *", *extra])
        return run_arguments(args, pipelines.cluster_config())

    assert arguments("--name", "nightly")["workspace"] == "/models/scheduled/nightly"
    assert arguments("--name", "weekly")["workspace"] == "/models/scheduled/weekly"
    assert arguments("--name", "x", "--workspace", "/models/mine")["workspace"] == "/models/mine"
    code = main(["pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * *", "--name", "../x"])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("flywheel: error: --name: '../x' must be letters, digits, '.', '_' "
                                               "or '-' (it names the workspace)")


def test_two_pipelines_of_one_name_on_the_server_are_one_line_not_a_traceback(tmp_path):
    """The KFP UI lets two pipelines share a name; kfp's client then raises ValueError on every lookup by it."""
    from kfp import Client

    from flywheel.kubeflow.cli import _api_errors, upload

    class Pipelines:
        def pipeline_service_list_pipelines(self, filter):
            pipeline = type("Pipeline", (), {"pipeline_id": "p"})()
            return type("Listed", (), {"pipelines": [pipeline, pipeline]})()

    client = Client.__new__(Client)  # the real client's lookup over a server holding two of the name
    client._pipelines_api = Pipelines()
    package = tmp_path / "flywheel.yaml"
    package.write_text("pipeline: 1\n")
    with pytest.raises(InputError) as error:
        with _api_errors("http://kfp:8888"):
            upload(client, package, "flywheel", "d")
    assert str(error.value) == ("http://kfp:8888: Kubeflow Pipelines: Multiple pipelines with the name: flywheel "
                                "found, the name needs to be unique.")
    with pytest.raises(ValueError):  # flywheel's own ValueErrors are not the server's to explain
        with _api_errors("http://kfp:8888"):
            raise ValueError("a bug of ours")
