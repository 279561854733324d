"""The Kubeflow pipelines: compiled YAML (reproducible, strictly valid, GPU platform config), sharded
generation, and the N-round pipeline run end to end under kfp.local against ``flywheel run``."""

import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from flywheel import io, schemas
from flywheel.config import dump_config, load_config

# kfp.local says which cluster-only settings (accelerator, display name) it ignores, once per task.
pytestmark = pytest.mark.filterwarnings("ignore:Task .* have no effect:UserWarning",
                                        "ignore:You may be attemping to run a task:RuntimeWarning")

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "compiled"
NAMES = ("flywheel_round", "flywheel")


def _smoke():
    from tests.conftest import SMOKE

    return SMOKE


def _documents(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def test_every_document_parses_strictly_into_the_kfp_protos():
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    for name in NAMES:
        pipeline, platform = _documents(COMPILED / f"{name}.yaml")
        spec = json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
        assert spec.pipeline_info.name == name.replace("_", "-")
        platform_spec = json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert set(executors) <= set(pipeline["deploymentSpec"]["executors"])
        for config in executors.values():
            json_format.ParseDict(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
        assert "kubernetes" in platform_spec.platforms


def _tasks(pipeline: dict):
    """(dag name, task name, task spec) for every task of every DAG, the root's included."""
    yield from (("root", name, task) for name, task in pipeline["root"]["dag"]["tasks"].items())
    for component_name, component in pipeline["components"].items():
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            yield component_name, name, task


def test_every_gpu_task_has_its_accelerator_toleration_node_selector_and_shm():
    from flywheel.kubeflow.components import GPU_IMAGE
    from flywheel.infra import GPU_NODE_SELECTOR, GPU_RESOURCE, MODELS_MOUNT

    for name in NAMES:
        pipeline, platform = _documents(COMPILED / f"{name}.yaml")
        executors = pipeline["deploymentSpec"]["executors"]
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        gpu_tasks = set()
        for _dag, task_name, task in _tasks(pipeline):
            component = pipeline["components"][task["componentRef"]["name"]]
            if "executorLabel" not in component:
                continue  # a sub-DAG (condition, loop)
            label = component["executorLabel"]
            container = executors[label]["container"]
            assert task.get("cachingOptions", {}).get("enableCache") is not True, f"{name}: {task_name} caches"
            assert any(m["mountPath"] == MODELS_MOUNT for m in k8s[label]["pvcMount"]), f"{task_name}: no volume"
            if container["image"] != GPU_IMAGE:
                assert "accelerator" not in container.get("resources", {}), f"{task_name} asks for a GPU"
                continue
            gpu_tasks.add(task_name.rsplit("-", 1)[0] if task_name[-1].isdigit() else task_name)
            accelerator = container["resources"]["accelerator"]
            assert (accelerator["resourceType"], accelerator["resourceCount"]) == (GPU_RESOURCE, "1")
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s[label]["tolerations"]
            assert k8s[label]["nodeSelector"]["labels"] == GPU_NODE_SELECTOR
            assert {"mountPath": "/dev/shm", "medium": "Memory"}.items() <= k8s[label]["emptyDirMounts"][0].items()
        # K1: the N-round pipeline's prepare scores the seed on loop.device (cuda), so it is a GPU task too.
        expected = {"generate", "train", "evaluate"} | ({"prepare"} if name == "flywheel" else set())
        assert gpu_tasks == expected, (name, gpu_tasks)


def test_side_effect_tasks_get_credentials_from_the_secret():
    from flywheel.infra import S3_SECRET as SECRET

    pipeline, platform = _documents(COMPILED / "flywheel_round.yaml")
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for label in ("exec-resolve-champion", "exec-track", "exec-push-data"):
        secret = k8s[label]["secretAsEnv"][0]
        assert secret["secretName"] == SECRET and secret["optional"] is True
        assert {"secretKey": "AWS_ACCESS_KEY_ID", "envVar": "AWS_ACCESS_KEY_ID"} in secret["keyToEnv"]


def test_sharded_generation_equals_unsharded(tmp_path, tiny_seed):
    from flywheel.stages.prompts import run_prompts
    from flywheel.stages.generate import run_generate, run_merge_samples
    from flywheel.tasks import load_task

    config = load_config(_smoke(), [f"seed.path={tiny_seed}", "generate.batch_size=20"])  # 5 batches a member
    task = load_task("addition")
    run_prompts(tmp_path, config.prompts, task=task, round_index=1, champion_dir=tiny_seed)
    prompts = tmp_path / "prompts.parquet"
    run_generate(prompts, tiny_seed, tmp_path / "whole.parquet", config.generate, task=task, round_index=1)
    shards = [tmp_path / f"shard-{i}.parquet" for i in range(3)]
    for index, path in enumerate(shards):
        run_generate(prompts, tiny_seed, path, config.generate, task=task, round_index=1, shard=index, shards=3)
    parts = [io.read_rows(path, schemas.SAMPLES) for path in shards]
    assert all(parts)  # every shard got batches
    # a prompt's samples may straddle two batches, so two shards; no sample is in two shards
    keys = [{(r["voter"], r["prompt_id"], r["sample_idx"]) for r in part} for part in parts]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2]) and not (keys[0] & keys[2])
    run_merge_samples(prompts, list(reversed(shards)), tmp_path / "merged.parquet")
    _assert_same_samples(io.read_rows(tmp_path / "merged.parquet", schemas.SAMPLES),
                         io.read_rows(tmp_path / "whole.parquet", schemas.SAMPLES))
    with pytest.raises(io.InputError, match="prompts have no samples|lack some of their samples"):
        run_merge_samples(prompts, shards[:2], tmp_path / "partial.parquet")
    with pytest.raises(io.InputError, match="in more than one shard"):
        run_merge_samples(prompts, [*shards, shards[0]], tmp_path / "twice.parquet")


def _assert_same_samples(merged: list[dict], whole: list[dict]) -> None:
    """Same rows in the same order, every field equal, the summed log-probability to the last bit.

    A shard runs whole batches of the unsharded run's batch plan (``generation.Shard``): each sequence is
    computed in the same batch, at the same shape, as unsharded, so nothing may differ on one machine (CPU
    kernels round per batch shape, which is why strided prompt shards agreed only up to float rounding)."""
    assert len(merged) == len(whole)
    for a, b in zip(merged, whole):
        assert a == b


# --- the N-round pipeline under kfp.local against flywheel.loop.run_loop ---------------------------------


def _run_pipeline_and_loop(base: Path, tiny_seed: Path, extra: list[str], knobs: dict | None = None):
    """Two rounds (stopping at the first decline) as a kfp.local pipeline and as ``run_loop``.

    ``knobs``: typed pipeline parameters (``gate_alpha=...``) the pipeline gets instead of ``extra``'s keys,
    which only the loop's config holds: the UI's path, checked against the loop's."""
    from kfp import local

    from flywheel.kubeflow.pipelines import make_flywheel
    from flywheel.loop import run_loop
    from flywheel.tracking import Tracker

    overrides = [f"seed.path={tiny_seed}", "loop.progress=false", "loop.rounds=2", "loop.stop_on_decline=true"]
    loop_config = load_config(_smoke(), overrides + extra + [f"loop.out_dir={base / 'loop'}",
                                                     f"tracking.uri=sqlite:///{base / 'loop.db'}"])
    pipeline_extra = [] if knobs else extra
    pipeline_config = load_config(_smoke(), overrides + pipeline_extra
                                  + [f"tracking.uri=sqlite:///{base / 'pipeline.db'}"])
    cwd = os.getcwd()
    os.chdir(base)  # MLflow's default artifact root (./mlruns) and kfp.local's files stay in tmp
    # kfp.local logs (and then treats as false) a dsl.If condition it cannot resolve or evaluate.
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(base / "kfp"),
                   raise_on_error=True)
        pipeline = make_flywheel(2, pipeline_config)
        task = pipeline(config_yaml=dump_config(pipeline_config), workspace=str(base / "workspaces"), shards=2,
                        dvc_remote="", **(knobs or {}))
        report = run_loop(loop_config, tracker=Tracker(loop_config.tracking))
    finally:
        os.chdir(cwd)
        logging.getLogger().removeHandler(records)
    assert not [m for m in records.messages if "Could not resolve" in m or "Condition evaluation failed" in m], (
        records.messages)
    # The run's workspace, <workspace>/<run id>: the pipeline returns no output from inside its exit handler.
    (workspace,) = (base / "workspaces").iterdir()
    assert task.outputs == {} or task.output is None
    return workspace, base / "loop", report, pipeline_config, base


@pytest.fixture(scope="module")
def pipeline_and_loop(tmp_path_factory, tiny_seed):
    """The two-round pipeline and ``flywheel run -s loop.stop_on_decline=true`` on the smoke recipe, whose gate
    (alpha 0.999) declines the tiny model's round 1: kfp.local evaluates round 2's nested ``dsl.If`` (false) and
    runs nothing more, and so does the loop. One round's cost for CI; the promoted two-round run, round 2 inside
    round 1's condition, is ``test_both_rounds_ran_through_the_nested_condition`` (make test-slow)."""
    return _run_pipeline_and_loop(tmp_path_factory.mktemp("kubeflow"), tiny_seed, [])


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _rounds(root: Path) -> list[int]:
    return sorted(int(p.name) for p in (root / "rounds").iterdir() if p.name.isdigit())


def test_pipeline_gate_decisions_and_metrics_equal_flywheel_run(pipeline_and_loop):
    workspace, loop_out, report, _, _ = pipeline_and_loop
    assert workspace.parent.name == "workspaces"  # <workspace>/<run id>
    assert _rounds(workspace) == _rounds(loop_out) == [r["round"] for r in report["rounds"]]
    _assert_rounds_equal(workspace, loop_out)


def _assert_rounds_equal(workspace: Path, loop_out: Path) -> None:
    """Every round's decision, metrics and data in the pipeline's workspace equal the loop's."""
    for r in _rounds(workspace)[1:]:
        here, there = workspace / "rounds" / str(r), loop_out / "rounds" / str(r)
        assert io.read_json(here / "decision.json") == io.read_json(there / "decision.json")
        assert io.read_json(here / "eval" / "metrics.json") == io.read_json(there / "eval" / "metrics.json")
        # Sharded generation (2 shards) wrote what the loop's unsharded generate wrote, and so on downstream.
        _assert_same_samples(io.read_rows(here / "samples.parquet", schemas.SAMPLES),
                             io.read_rows(there / "samples.parquet", schemas.SAMPLES))
        for name, schema in (("prompts.parquet", schemas.PROMPTS), ("votes.parquet", schemas.VOTES),
                             ("train.parquet", schemas.CURATED)):
            assert io.read_rows(here / name, schema) == io.read_rows(there / name, schema), name
        assert io.read_json(here / "curation.json") == io.read_json(there / "curation.json")
    assert io.read_json(workspace / "rounds" / "0" / "eval" / "metrics.json") == io.read_json(
        loop_out / "rounds" / "0" / "eval" / "metrics.json")


@pytest.mark.slow
def test_both_rounds_ran_through_the_nested_condition(tmp_path, tiny_seed):
    """``gate.alpha=1.0`` (no significance test) promotes the tiny model's candidates, so round 2 runs inside round
    1's nested ``dsl.If``. The pipeline gets it as its typed ``gate_alpha`` parameter (what a UI user turns), the
    loop in its config: the same decisions and metrics mean the knob arrived."""
    workspace, loop_out, report, _, _ = _run_pipeline_and_loop(tmp_path, tiny_seed, ["gate.alpha=1.0"],
                                                               knobs={"gate_alpha": 1.0})
    assert _rounds(workspace) == _rounds(loop_out) == [0, 1, 2]
    assert all(io.read_json(workspace / "rounds" / str(r) / "decision.json")["promote"] for r in (1, 2))
    assert [r["decision"]["promote"] for r in report["rounds"][1:]] == [True, True]
    _assert_rounds_equal(workspace, loop_out)


def test_the_declined_round_stops_the_pipeline_like_stop_on_decline(pipeline_and_loop):
    """The smoke gate declines round 1: neither the pipeline nor the loop runs round 2, and both decided the same."""
    workspace, loop_out, report, _, _ = pipeline_and_loop
    decisions = [io.read_json(workspace / "rounds" / str(r) / "decision.json") for r in _rounds(workspace)[1:]]
    assert [d["promote"] for d in decisions] == [False]
    assert _rounds(workspace) == _rounds(loop_out) == [0, 1]
    assert decisions[0] == io.read_json(loop_out / "rounds" / "1" / "decision.json")
    assert len(report["rounds"]) == 2


def test_pipeline_tracks_in_mlflow_and_moves_the_alias_only_on_promotion(pipeline_and_loop):
    from flywheel.model_registry import CHAMPION_ALIAS
    from flywheel.tracking import Tracker

    workspace, _, _, config, _ = pipeline_and_loop
    tracker = Tracker(config.tracking)
    rounds = _rounds(workspace)[1:]
    versions = tracker.client.search_model_versions(f"name = '{config.tracking.registered_model}'")
    assert len(versions) == 1 + len(rounds)  # the seed and one candidate per round
    expected = next(v.version for v in versions if v.tags.get("role") == "seed")
    for r in rounds:
        tracked = io.read_json(workspace / "tracking" / f"round-{r}.json")
        if tracked["promoted"]:
            expected = tracked["model_version"]
    champion = tracker.client.get_model_version_by_alias(config.tracking.registered_model, CHAMPION_ALIAS)
    assert champion.version == expected
    run = tracker.client.get_run(io.read_json(workspace / "tracking" / "round-1.json")["run_id"])
    assert run.data.params["curate.min_vote_share"] == str(config.curate.min_vote_share)
    assert "evaluate.candidate.accuracy" in run.data.metrics
    # The exit task (end-run) ended the workspace's parent run as the pipeline ended: FINISHED.
    parent = tracker.client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and "flywheel.error" not in parent.data.tags


def test_pipeline_shows_metrics_vote_audit_and_round_report(pipeline_and_loop):
    workspace, _, _, config, base = pipeline_and_loop
    outputs = {}
    for path in (base / "kfp").rglob("executor_output.json"):
        outputs[path.parent.name] = json.loads(path.read_text())
    curate_out = outputs["curate"]["artifacts"]
    matrix = curate_out["vote_audit"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == ["correct", "incorrect"]
    votes = io.read_rows(workspace / "rounds" / "1" / "votes.parquet", schemas.VOTES)
    assert sum(sum(row["row"]) for row in matrix["rows"]) == len(votes)  # every prompt of round 1 is audited
    trusted = sum(row["row"][0] for row in matrix["rows"])
    assert trusted == sum(v["majority_answer"] is not None and v["vote_share"] >= config.curate.min_vote_share
                          for v in votes)
    eval_metrics = outputs["evaluate"]["artifacts"]["eval_metrics"]["artifacts"][0]["metadata"]
    metrics = io.read_json(workspace / "rounds" / "1" / "eval" / "metrics.json")
    assert eval_metrics["candidate.accuracy"] == metrics["candidate"]["accuracy"]
    reports = {path.read_text().splitlines()[0]: path.read_text() for path in (base / "kfp").rglob("round_report")}
    assert set(reports) == {"# smoke: round 1"}  # round 2 never ran: round 1 was declined
    report = reports["# smoke: round 1"]
    decision = io.read_json(workspace / "rounds" / "1" / "decision.json")
    curation = io.read_json(workspace / "rounds" / "1" / "curation.json")
    assert report.startswith("# smoke: round 1")
    assert ("**promoted**" if decision["promote"] else "**declined**") + f": {decision['reason']}" in report
    for reason, count in curation["drops"].items():
        assert f"| dropped `{reason}` | -{count} |" in report
    assert "| 3 | 16 |" in report  # bucket 3 of the per-bucket table: 16 eval prompts
    assert (workspace / "report.html").exists() and (workspace / "report.json").exists()


@pytest.mark.slow
def test_round_pipeline_continues_from_the_mlflow_champion(tmp_path, tiny_seed):
    """Two scheduled runs of ``flywheel_round`` on one workspace: the first registers the seed (no alias yet)
    and runs round 1, the second runs round 2 from the champion the alias names."""
    from kfp import local

    from flywheel.kubeflow.pipelines import make_flywheel_round
    from flywheel.model_registry import CHAMPION_ALIAS
    from flywheel.tracking import Tracker

    config = load_config(_smoke(), [f"seed.path={tiny_seed}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    workspace = tmp_path / "scheduled"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
                   raise_on_error=True)
        flywheel_round = make_flywheel_round(config)
        for _ in range(2):
            flywheel_round(config_yaml=dump_config(config), workspace=str(workspace), shards=1, dvc_remote="")
    finally:
        os.chdir(cwd)
    assert _rounds(workspace) == [0, 1, 2]
    tracker = Tracker(config.tracking)
    name = config.tracking.registered_model
    versions = {v.version: v for v in tracker.client.search_model_versions(f"name = '{name}'")}
    assert sorted(v.tags.get("role", v.tags.get("round")) for v in versions.values()) == ["1", "2", "seed"]
    champion = tracker.client.get_model_version_by_alias(name, CHAMPION_ALIAS).version
    for r in (1, 2):
        tracked = io.read_json(workspace / "tracking" / f"round-{r}.json")
        assert versions[tracked["model_version"]].tags["promoted"] == str(tracked["promoted"]).lower()
    promoted = [io.read_json(workspace / "tracking" / f"round-{r}.json") for r in (1, 2)]
    expected = next((t["model_version"] for t in reversed(promoted) if t["promoted"]),
                    next(v for v, m in versions.items() if m.tags.get("role") == "seed"))
    assert champion == expected
    # Round 2's champion directory holds the weights the alias named when it started.
    first = "rounds/1/champion/member-0/model.safetensors"
    second = "rounds/2/champion/member-0/model.safetensors"
    assert (workspace / first).read_bytes() == (workspace / second).read_bytes() or promoted[1]["promoted"]
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.`flywheel.round` = '2'")
    assert len(runs) == 1 and runs[0].data.tags["mlflow.parentRunId"] == promoted[0]["parent_run_id"]


def test_round_pipeline_takes_the_eval_set_from_the_users_data(tmp_path):
    """``flywheel-round`` on a bring-your-own recipe: the eval set is ``data.eval``, as in ``flywheel run``."""
    from flywheel.data import load_eval
    from flywheel.kubeflow.champion import resolve_champion
    from flywheel.tasks import load_task

    config = load_config(ROOT / "configs" / "byo.yaml", ["tracking.enabled=false", f"seed.path={ROOT / 'seed/default'}",
                                                         f"data.prompts={ROOT / 'examples/byo/prompts.parquet'}",
                                                         f"data.eval={ROOT / 'examples/byo/eval'}"])
    task = load_task(config.task, config.code)
    resolved = resolve_champion(config, tmp_path, task=task)
    assert resolved["round"] == 1
    assert io.read_rows(resolved["eval_path"], schemas.PROMPTS) == load_eval(config.data, task)
