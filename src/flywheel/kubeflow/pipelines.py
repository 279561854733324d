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
from flywheel.config import FlywheelConfig, KubeflowConfig, dump_config
from flywheel.errors import InputError
from flywheel.kubeflow import components as c
from flywheel.kubeflow.preflight import Knobs, Placement

DEFAULT_ROUNDS = 3
# Steps that may run again after a failure: every stage writes atomically, so a retry starts clean.
# Never gate (it decides) or track (it moves the champion alias): a retry of those is a person's call.
NOT_RETRIED = ("gate", "track")
COMPILED_DIR = Path(__file__).resolve().parents[3] / "pipelines" / "compiled"
COMPONENTS_DIR = Path(__file__).resolve().parents[3] / "components"
# The reusable component specs written to components/ (one per step; flywheel's pipelines use the same functions).
COMPONENT_NAMES = ("preflight", "prepare", "resolve_champion", "plan_shards", "make_prompts", "generate",
                   "merge_samples", "vote", "curate", "train", "evaluate", "gate", "track", "report", "push_data",
                   "end_run")


cluster_config = infra.cluster_config  # every Kubernetes door runs the recipe as it runs on the cluster


def _platform(task: dsl.PipelineTask, pvc_name, options: KubeflowConfig, *, step: str, label: str = "",
              placement: Placement | None = None, secrets: bool = False) -> dsl.PipelineTask:
    """Everything the cluster needs to know about one step: its name (``label`` + ``step``, the step's kind:
    ``generate``, ``gate``, ...), volume, resources, time limit, retries, GPU scheduling, credentials.

    ``placement``: a step that may load a model goes on the image and pool of ``loop.device`` when it does
    (``Placement``, from ``flywheel.machine_checks.on_gpu``: one rule for every door), else on the CPU image."""
    gpu = placement is not None and placement.on_gpu(step)
    if placement is not None:
        task.set_container_image(c.GPU_IMAGE if gpu else c.IMAGE)
    task.set_display_name(f"{label}{step}").set_caching_options(False)
    kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=infra.MODELS_MOUNT)
    if gpu:
        task.set_cpu_request(options.gpu_step_cpu).set_cpu_limit(options.gpu_step_cpu_limit)
        task.set_memory_request(options.gpu_step_memory).set_memory_limit(options.gpu_step_memory)
        task.set_accelerator_type(infra.GPU_RESOURCE).set_accelerator_limit(1)
        kubernetes.add_toleration(task, **infra.GPU_TOLERATION)
        kubernetes.add_node_selector(task, *next(iter(infra.GPU_NODE_SELECTOR.items())))
        # PyTorch data loaders and NCCL use shared memory; the container default (64 MiB) is too small.
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=infra.SHM_SIZE)
        kubernetes.set_timeout(task, options.gpu_step_timeout_s)
        if options.kueue_queue:
            kubernetes.add_pod_label(task, infra.KUEUE_QUEUE_LABEL, options.kueue_queue)
    else:
        task.set_cpu_request(options.cpu_step_cpu).set_cpu_limit(options.cpu_step_cpu_limit)
        task.set_memory_request(options.cpu_step_memory).set_memory_limit(options.cpu_step_memory)
        kubernetes.set_timeout(task, options.step_timeout_s)
    if options.retries and step not in NOT_RETRIED:
        task.set_retry(options.retries, backoff_duration="60s", backoff_factor=2.0)
    if options.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(options.image_pull_secrets))
    if secrets:
        # the names infra/ creates (flywheel.infra): the object-store Secret, the cluster ConfigMap
        kubernetes.use_secret_as_env(task, secret_name=infra.S3_SECRET,
                                     secret_key_to_env={k: k for k in infra.S3_SECRET_ENV}, optional=True)
        kubernetes.use_config_map_as_env(task, config_map_name=infra.CLUSTER_CONFIG_MAP,
                                         config_map_key_to_env={k: k for k in infra.CLUSTER_CONFIG_MAP_ENV},
                                         optional=True)
    return task


def _round(*, config_yaml, run_config, workspace, round_index, champion, eval_set, shards, dvc_remote, pvc_name,
           options: KubeflowConfig, placement: Placement, register_seed: bool, label: str,
           after: dsl.PipelineTask | None = None) -> tuple:
    """The tasks of one round; returns (gate task, its ``Output`` 1.0 on promotion; track task).

    ``after``: the previous round's track task. Round r+1 waits for it, so MLflow registers the
    candidates and moves the alias in round order (Argo and kfp.local would otherwise run round r's
    tracking concurrently with, or after, round r+1's)."""

    def named(task: dsl.PipelineTask, step: str, **platform) -> dsl.PipelineTask:
        return _platform(task, pvc_name, options, step=step, label=label, **platform)

    def placed(task: dsl.PipelineTask, step: str, **platform) -> dsl.PipelineTask:
        return named(task, step, placement=placement, **platform)

    common = {"config_yaml": config_yaml, "workspace": workspace, "round_index": round_index}
    # TT-SI probes the prompts with the champion
    prompts = placed(c.make_prompts(**common, champion=champion), "prompts")
    if after is not None:
        prompts.after(after)
    plan = named(c.plan_shards(shards=shards), "plan-shards")
    with dsl.ParallelFor(plan.output, name=f"{label}generate-shards") as shard:
        generated = placed(c.generate(run_config=run_config, shard=shard, shards=shards,
                                      prompts=prompts.outputs["prompts"], champion=champion), "generate")
    merged = named(c.merge_samples(workspace=workspace, round_index=round_index, prompts=prompts.outputs["prompts"],
                                   shards=dsl.Collected(generated.outputs["samples"])), "merge-samples")
    # vote and curate load the champion as their config sections say (placed by machine_checks.on_gpu)
    voted = placed(c.vote(**common, prompts=prompts.outputs["prompts"], samples=merged.outputs["samples"],
                          champion=champion), "vote")
    curated = placed(c.curate(**common, votes=voted.outputs["votes"], eval_set=eval_set, champion=champion),
                     "curate")
    # One node: the step trains on its device. More: it submits a TrainJob (RBAC, FLYWHEEL_REGISTRY from the
    # ConfigMap) and waits on the CPU pool, holding no GPU of its own. Either way it may take as long as a GPU step.
    trained = placed(c.train(**common, train_set=curated.outputs["train_set"], champion=champion), "train",
                     secrets=True)
    if not placement.on_gpu("train"):
        kubernetes.set_timeout(trained, options.gpu_step_timeout_s)
    evaluated = placed(c.evaluate(**common, eval_set=eval_set, candidate=trained.outputs["candidate"],
                                  champion=champion), "evaluate")
    gated = named(c.gate(**common, candidate=trained.outputs["candidate"], champion=champion,
                         eval_metrics=evaluated.outputs["eval_metrics"]), "gate")
    tracked = named(c.track(**common, register_seed=register_seed, champion=champion,
                            gate_metrics=gated.outputs["gate_metrics"]), "track", secrets=True)
    named(c.report(**common, tracking=tracked.outputs["tracking"]), "report")
    with dsl.If(dvc_remote != "", name=f"{label}dvc-push"):
        named(c.push_data(workspace=workspace, round_index=round_index, dvc_remote=dvc_remote,
                          gate_metrics=gated.outputs["gate_metrics"]), "push-data", secrets=True)
    return gated, tracked


def _preflight(parameters: dict, *, options: KubeflowConfig, placement: Placement, compiled: Knobs) -> tuple:
    """Every pipeline's first step, from the pipeline's ``parameters`` (its ``locals()``): returns the run's
    config as a parameter (for steps outside loops) and as the ``run_config`` artifact (for steps inside)."""
    task = c.preflight(config_yaml=parameters["config_yaml"], workspace_root=parameters["workspace"],
                       seed_uri=parameters["seed_uri"], dvc_remote=parameters["dvc_remote"],
                       compiled_knobs=compiled.to_json(), gpu_steps=placement.to_text(),
                       **{name: parameters[name] for name in Knobs.keys()})
    _platform(task, parameters["pvc_name"], options, step="preflight", secrets=True)
    return task.outputs["Output"], task.outputs["run_config"]


def _end_run(parameters: dict, *, options: KubeflowConfig, run_id) -> dsl.PipelineTask:
    """Every pipeline's exit task (``components.end_run``): ends the MLflow runs and deletes leftover TrainJobs as
    the run ended, however it ended. Retried: ending twice changes nothing."""
    task = c.end_run(config_yaml=parameters["config_yaml"], workspace=parameters["workspace"], run_id=run_id)
    return _platform(task, parameters["pvc_name"], options, step="end-run", secrets=True)


def _pipeline_config(options: KubeflowConfig) -> dsl.PipelineConfig:
    return dsl.PipelineConfig(active_deadline_seconds=options.run_deadline_s,
                              ttl_seconds_after_finished=options.ttl_s)


PARAMETER_DOCS = """
    Args:
        config_yaml: The whole flywheel config as YAML (flywheel config -c RECIPE prints every key); each step
            reads its own section. A typed parameter below that is set to a value other than its default
            overrides its key.
        workspace: Directory on the shared volume. flywheel writes <workspace>/<run id>/; flywheel-round
            continues <workspace>/ round after round (one workspace per schedule).
        seed_uri: Where the seed comes from when it is not already on the volume: models:/<name>@<alias>,
            models:/<name>/<version>, runs:/..., s3://... or an absolute path. Empty: seed.path of the config
            (a relative path is the seed shipped in the image, copied to the volume once).
        shards: Prompt shards generated in parallel, one GPU pod each.
        dvc_remote: DVC remote URL (s3://bucket/path) each round's directory is pushed to; empty: none.
        pvc_name: The ReadWriteMany PersistentVolumeClaim mounted at /models in every step.
        samples_per_prompt: generate.samples_per_prompt, K completions per prompt per committee member.
        temperature: generate.temperature, the sampling temperature (0 is greedy).
        min_vote_share: curate.min_vote_share, the majority share a prompt needs to be trained on.
        gate_alpha: gate.alpha, the significance level of the gate's paired test (1.0 switches it off).
        gate_min_gain: gate.min_gain, the accuracy gain over the champion a candidate needs.
        train_steps: train.steps, optimizer steps per committee member per round.
        learning_rate: train.learning_rate, the peak learning rate of fine-tuning.
"""


def check_rounds(rounds: int) -> None:
    """One line when ``rounds`` cannot be unrolled into one pipeline."""
    if rounds < 1:
        raise InputError("--rounds", f"must be >= 1, got {rounds}")
    if rounds > max_rounds():
        raise InputError("--rounds", f"{rounds} rounds is more than the {max_rounds()} that fit one Argo workflow "
                         f"(each unrolled round adds about {ROUND_BYTES // 1000} KB to the compiled pipeline; Argo "
                         f"refuses a workflow over 1 MiB): schedule `flywheel-round` for longer runs "
                         "(flywheel pipeline schedule)")


def _pipeline(body, *, name: str, doc: str, description: str, config: FlywheelConfig, default_workspace: str):
    """A pipeline with the parameters both pipelines take (``PARAMETER_DOCS``), their defaults from ``config``;
    ``body`` adds its tasks, given the parameters (KFP's placeholders) by name."""
    knob = Knobs.of(config)

    def pipeline(config_yaml: str = dump_config(config), workspace: str = default_workspace, seed_uri: str = "",
                 shards: int = 4, dvc_remote: str = "", pvc_name: str = infra.MODELS_PVC,
                 samples_per_prompt: int = knob.samples_per_prompt, temperature: float = knob.temperature,
                 min_vote_share: float = knob.min_vote_share, gate_alpha: float = knob.gate_alpha,
                 gate_min_gain: float = knob.gate_min_gain, train_steps: int = knob.train_steps,
                 learning_rate: float = knob.learning_rate):
        body(dict(locals()))

    pipeline.__name__ = pipeline.__qualname__ = name.replace("-", "_")
    pipeline.__doc__ = doc + "\n" + PARAMETER_DOCS
    return dsl.pipeline(pipeline, name=name, description=description,
                        pipeline_config=_pipeline_config(config.kubeflow))


def make_flywheel(rounds: int = DEFAULT_ROUNDS, config: FlywheelConfig | None = None):
    """The ``flywheel`` pipeline with ``rounds`` rounds unrolled, its parameter defaults, resources and step
    placement from ``config`` (default: ``cluster_config()``)."""
    config = config or cluster_config()
    options, placement, knob = config.kubeflow, Placement.of(config), Knobs.of(config)
    check_rounds(rounds)

    def flywheel(parameters: dict) -> None:
        # No pipeline output: KFP returns none from inside an exit handler. The prepare step's output is the run's
        # workspace (<workspace>/<run id>).
        with dsl.ExitHandler(_end_run(parameters, options=options, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
                             name="flywheel-run"):
            run_config, run_config_file = _preflight(parameters, options=options, placement=placement, compiled=knob)
            # The run's id as a task constant: the only place the backend substitutes {{$.pipeline_job_uuid}}.
            # prepare scores the seed: on the image and pool of loop.device (Placement)
            prepared = _platform(c.prepare(config_yaml=run_config, workspace_root=parameters["workspace"],
                                           run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
                                 parameters["pvc_name"], options, step="prepare", placement=placement)
            _unroll(1, rounds, config_yaml=run_config, workspace=prepared.outputs["Output"],
                    champion=prepared.outputs["champion"], eval_set=prepared.outputs["eval_set"],
                    shards=parameters["shards"], dvc_remote=parameters["dvc_remote"],
                    pvc_name=parameters["pvc_name"], options=options, placement=placement, run_config=run_config_file)

    return _pipeline(flywheel, name="flywheel", config=config, default_workspace=f"{infra.MODELS_MOUNT}/runs",
                     doc="The flywheel: seed evaluation, then up to N rounds.",
                     description=f"Seed evaluation, then up to {rounds} rounds of generate, vote, curate, train, "
                     "evaluate, gate; stops at the first round the gate declines.")


def _unroll(index: int, rounds: int, *, champion, after=None, **shared) -> None:
    gated, tracked = _round(round_index=index, champion=champion, register_seed=index == 1,
                            label=f"round-{index}-", after=after, **shared)
    if index < rounds:
        with dsl.If(gated.outputs["Output"] == 1.0, name=f"round-{index}-promoted"):
            _unroll(index + 1, rounds, champion=gated.outputs["next_champion"], after=tracked, **shared)


def make_flywheel_round(config: FlywheelConfig | None = None):
    """The ``flywheel-round`` pipeline (one round from the ``champion`` alias), defaults from ``config``."""
    config = config or cluster_config()
    options, placement, knob = config.kubeflow, Placement.of(config), Knobs.of(config)

    def flywheel_round(parameters: dict) -> None:
        # No pipeline output (KFP returns none from inside an exit handler): the track step's output says
        # promoted, declined or stale.
        workspace, pvc_name = parameters["workspace"], parameters["pvc_name"]
        with dsl.ExitHandler(_end_run(parameters, options=options, run_id=""), name="flywheel-round-run"):
            run_config, run_config_file = _preflight(parameters, options=options, placement=placement, compiled=knob)
            resolved = _platform(c.resolve_champion(config_yaml=run_config, workspace=workspace), pvc_name, options,
                                 step="resolve-champion", secrets=True)
            _round(config_yaml=run_config, workspace=workspace, round_index=resolved.outputs["Output"],
                   champion=resolved.outputs["champion"], eval_set=resolved.outputs["eval_set"],
                   shards=parameters["shards"], dvc_remote=parameters["dvc_remote"], pvc_name=pvc_name,
                   options=options, placement=placement, register_seed=False, label="", run_config=run_config_file)

    return _pipeline(flywheel_round, name="flywheel-round", config=config,
                     default_workspace=f"{infra.MODELS_MOUNT}/scheduled",
                     doc="One round; its track step returns promoted, declined or stale (the alias moved meanwhile).",
                     description="One flywheel round on a long-lived workspace, starting from the MLflow registered "
                     "model's 'champion' alias (what a recurring run schedules).")


# The compiled N-round pipeline is about BASE_BYTES + rounds x ROUND_BYTES (tests/test_kubeflow.py measures
# both and fails when they grow past these). Argo refuses a workflow object over 1 MiB (MAX_WORKFLOW_SIZE) and
# etcd one over 1.5 MiB; the backend turns every task of the IR into driver and executor templates with the
# task's specs inlined as JSON, so the IR may use half of that.
BASE_BYTES = 30_000  # with the exit task (end-run) and its spec
ROUND_BYTES = 64_000
MAX_COMPILED_BYTES = 512 * 1024


def max_rounds() -> int:
    """The most rounds ``flywheel`` unrolls: more would not fit one Argo workflow."""
    return (MAX_COMPILED_BYTES - BASE_BYTES) // ROUND_BYTES


def compile_all(out_dir: Path = COMPILED_DIR, rounds: int = DEFAULT_ROUNDS,
                config: FlywheelConfig | None = None) -> list[Path]:
    """Write ``flywheel_round.yaml`` and ``flywheel.yaml`` (``rounds`` unrolled) to ``out_dir``."""
    check_rounds(rounds)  # before seconds of building the round pipeline
    built = (("flywheel_round", make_flywheel_round(config)), ("flywheel", make_flywheel(rounds, config)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # after the round count was accepted
    paths = []
    for name, pipeline in built:
        path = out_dir / f"{name}.yaml"
        compile_checked(pipeline, path)
        paths.append(path)
    return paths


def compile_components(out_dir: Path = COMPONENTS_DIR) -> list[Path]:
    """Write every step's component spec to ``out_dir/<name>.yaml``: another team's pipeline loads one with
    ``kfp.components.load_component_from_file`` and gets the same step flywheel's pipelines run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in COMPONENT_NAMES:
        path = out_dir / f"{name}.yaml"
        compiler.Compiler().compile(getattr(c, name), str(path))
        paths.append(path)
    return paths


def compile_checked(pipeline, path: Path) -> Path:
    """Compile ``pipeline`` to ``path``; a result too large for one Argo workflow is one line, not a failed run."""
    compiler.Compiler().compile(pipeline, str(path))
    size = Path(path).stat().st_size
    if size > MAX_COMPILED_BYTES:
        Path(path).unlink()
        raise InputError(path, f"compiled pipeline is {size // 1024} KiB, over the {MAX_COMPILED_BYTES // 1024} KiB "
                         "that fit one Argo workflow: fewer rounds, or schedule `flywheel-round`")
    return Path(path)
