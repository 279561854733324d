"""The Kubeflow pipelines: ``flywheel_round`` (one round, for schedules) and ``flywheel`` (N rounds).

``flywheel`` unrolls its rounds at compile time; round r+1 runs inside ``dsl.If`` on round r's
gate (``== 1.0``: kfp.local evaluates conditions by rewriting CEL to Python and cannot evaluate
the ``double(...)`` cast the compiler adds when an int meets a float), so the pipeline stops at
the first declined round, like ``flywheel run -s loop.stop_on_decline=true``. ``flywheel_round``
reads the champion from MLflow's ``champion`` alias and continues a long-lived workspace.

Generation is sharded: ``ParallelFor`` over ``shards`` prompt shards, ``dsl.Collected`` into
``merge_samples``. Platform settings (kfp-kubernetes): GPU tasks request an accelerator, tolerate
the GPU taint, select GPU nodes and get a memory-backed ``/dev/shm``; every task mounts the shared
volume (models stay there instead of being copied between steps); MLflow/S3 credentials come from
a Secret as environment variables. Caching is off for every task: each writes the run's
workspace on the shared volume, which a cached step would leave incomplete.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes

from flywheel import infra
from flywheel.config import dump_config, load_config
from flywheel.infra import GPU_RESOURCE
from flywheel.kubeflow import components as c

MOUNT_PATH = infra.MODELS_MOUNT  # the shared volume, at the same path as in the TrainJob runtime's pods
# The names infra/ creates (docs/kubeflow-infra.md): the RWX model volume, the object-store Secret and the
# ConfigMap that says where MLflow, the object store and the DVC remote are.
DEFAULT_PVC = "flywheel-models"
SECRET = "flywheel-s3"  # object-store credentials, as environment variables (boto3, DVC, MLflow artifacts)
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
CONFIG_MAP = "flywheel-cluster"
# FLYWHEEL_REGISTRY: the train step names the CUDA image in the TrainJob it submits (train.num_nodes > 1).
CONFIG_MAP_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "FLYWHEEL_DVC_REMOTE", "HF_HUB_OFFLINE",
                  "FLYWHEEL_REGISTRY")
IN_CLUSTER_MLFLOW = "http://mlflow.flywheel.svc.cluster.local:5000"  # infra/base/services
ACCELERATOR = GPU_RESOURCE
GPU_TOLERATION = infra.GPU_TOLERATION
GPU_NODE_SELECTOR = next(iter(infra.GPU_NODE_SELECTOR.items()))  # the label the GPU pool's nodes carry
SHM_SIZE = "16Gi"
DEFAULT_ROUNDS = 3
COMPILED_DIR = Path(__file__).resolve().parents[3] / "pipelines" / "compiled"


def default_config_yaml() -> str:
    """The built-in defaults (configs/default.yaml) with the GPU device and paths inside the pods."""
    return dump_config(load_config(None, ["loop.device=cuda", f"loop.out_dir={MOUNT_PATH}/runs",
                                          f"seed.path={MOUNT_PATH}/seed/default",
                                          f"tracking.uri={IN_CLUSTER_MLFLOW}"]))


def _platform(task: dsl.PipelineTask, pvc_name, *, gpu: bool = False, secrets: bool = False) -> dsl.PipelineTask:
    task.set_caching_options(False)
    kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=MOUNT_PATH)
    if gpu:
        task.set_accelerator_type(ACCELERATOR).set_accelerator_limit(1)
        kubernetes.add_toleration(task, **GPU_TOLERATION)
        kubernetes.add_node_selector(task, *GPU_NODE_SELECTOR)
        # PyTorch data loaders and NCCL use shared memory; the container default (64 MiB) is too small.
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=SHM_SIZE)
    if secrets:
        kubernetes.use_secret_as_env(task, secret_name=SECRET, secret_key_to_env={k: k for k in SECRET_ENV},
                                     optional=True)
        kubernetes.use_config_map_as_env(task, config_map_name=CONFIG_MAP,
                                         config_map_key_to_env={k: k for k in CONFIG_MAP_ENV}, optional=True)
    return task


def _round(*, config_yaml, workspace, round_index, champion, eval_set, shards, dvc_remote, pvc_name,
           register_seed: bool, label: str, after: dsl.PipelineTask | None = None) -> tuple:
    """The tasks of one round; returns (gate task, its ``Output`` 1.0 on promotion; track task).

    ``after``: the previous round's track task. Round r+1 waits for it, so MLflow registers the
    candidates and moves the alias in round order (Argo and kfp.local would otherwise run round r's
    tracking concurrently with, or after, round r+1's)."""

    def named(task: dsl.PipelineTask, name: str, **platform) -> dsl.PipelineTask:
        return _platform(task.set_display_name(f"{label}{name}"), pvc_name, **platform)

    common = {"config_yaml": config_yaml, "workspace": workspace, "round_index": round_index}
    prompts = named(c.make_prompts(**common, champion=champion), "prompts")
    if after is not None:
        prompts.after(after)
    plan = named(c.plan_shards(shards=shards), "plan-shards")
    with dsl.ParallelFor(plan.output) as shard:
        generated = named(c.generate(config_yaml=config_yaml, round_index=round_index, shard=shard, shards=shards,
                                     prompts=prompts.outputs["prompts"], champion=champion), "generate", gpu=True)
    merged = named(c.merge_samples(workspace=workspace, round_index=round_index, prompts=prompts.outputs["prompts"],
                                   shards=dsl.Collected(generated.outputs["samples"])), "merge-samples")
    voted = named(c.vote(**common, prompts=prompts.outputs["prompts"], samples=merged.outputs["samples"],
                         champion=champion), "vote")
    curated = named(c.curate(**common, votes=voted.outputs["votes"], eval_set=eval_set), "curate")
    trained = named(c.train(**common, train_set=curated.outputs["train_set"], champion=champion),
                    "train", gpu=True, secrets=True)  # TrainJob: FLYWHEEL_REGISTRY, RBAC
    evaluated = named(c.evaluate(**common, eval_set=eval_set, candidate=trained.outputs["candidate"],
                                 champion=champion), "evaluate", gpu=True)
    gated = named(c.gate(**common, candidate=trained.outputs["candidate"], champion=champion,
                         eval_metrics=evaluated.outputs["eval_metrics"]), "gate")
    tracked = named(c.track(**common, register_seed=register_seed, gate_metrics=gated.outputs["gate_metrics"]),
                    "track", secrets=True)
    named(c.report(**common, gate_metrics=gated.outputs["gate_metrics"]), "report").after(tracked)
    with dsl.If(dvc_remote != "", name=f"{label}dvc-push"):
        named(c.push_data(workspace=workspace, round_index=round_index, dvc_remote=dvc_remote,
                          gate_metrics=gated.outputs["gate_metrics"]), "push-data", secrets=True)
    return gated, tracked


def make_flywheel(rounds: int = DEFAULT_ROUNDS):
    """The ``flywheel`` pipeline with ``rounds`` rounds unrolled (a new pipeline per round count)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")

    @dsl.pipeline(name="flywheel", description=f"Seed evaluation, then up to {rounds} rounds of generate, vote, "
                  "curate, train, evaluate, gate; stops at the first round the gate declines.")
    def flywheel(config_yaml: str = default_config_yaml(), workspace: str = f"{MOUNT_PATH}/runs", shards: int = 4,
                 dvc_remote: str = "", pvc_name: str = DEFAULT_PVC) -> str:
        """``workspace``: parent directory on the shared volume; the run writes ``<workspace>/<run id>/``."""
        prepared = _platform(c.prepare(config_yaml=config_yaml, workspace_root=workspace), pvc_name)
        here = prepared.outputs["Output"]
        _unroll(1, rounds, config_yaml=config_yaml, workspace=here, champion=prepared.outputs["champion"],
                eval_set=prepared.outputs["eval_set"], shards=shards, dvc_remote=dvc_remote, pvc_name=pvc_name)
        return here

    return flywheel


def _unroll(index: int, rounds: int, *, champion, after=None, **shared) -> None:
    gated, tracked = _round(round_index=index, champion=champion, register_seed=index == 1,
                            label=f"round-{index}-", after=after, **shared)
    if index < rounds:
        with dsl.If(gated.outputs["Output"] == 1.0, name=f"round-{index}-promoted"):
            _unroll(index + 1, rounds, champion=gated.outputs["next_champion"], after=tracked, **shared)


@dsl.pipeline(name="flywheel-round", description="One flywheel round on a long-lived workspace, starting from "
              "the MLflow registered model's 'champion' alias (what a recurring run schedules).")
def flywheel_round(config_yaml: str = default_config_yaml(), workspace: str = f"{MOUNT_PATH}/scheduled",
                   shards: int = 4, dvc_remote: str = "", pvc_name: str = DEFAULT_PVC) -> float:
    """Returns 1.0 if the round promoted its candidate."""
    resolved = _platform(c.resolve_champion(config_yaml=config_yaml, workspace=workspace), pvc_name, secrets=True)
    champion = resolved.outputs["champion"]
    gated, _ = _round(config_yaml=config_yaml, workspace=workspace, round_index=resolved.outputs["Output"],
                      champion=champion, eval_set=resolved.outputs["eval_set"], shards=shards,
                      dvc_remote=dvc_remote, pvc_name=pvc_name, register_seed=False, label="")
    return gated.outputs["Output"]


def compile_all(out_dir: Path = COMPILED_DIR, rounds: int = DEFAULT_ROUNDS) -> list[Path]:
    """Write ``flywheel_round.yaml`` and ``flywheel.yaml`` (``rounds`` unrolled) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pipeline in (("flywheel_round", flywheel_round), ("flywheel", make_flywheel(rounds))):
        path = out_dir / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        paths.append(path)
    return paths
