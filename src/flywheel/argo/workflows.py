"""The flywheel as Argo Workflows manifests, built with hera's models of Argo's API.

``workflow_template(config)``: the ``flywheel`` WorkflowTemplate. Its entry point runs ``start`` (writes the
workspace's config, prepares round 0 once, writes the next round to a file Argo reads) and then ``round``,
which runs the stages as one pod each and, while the gate promotes and rounds are left, calls itself for the
next round; the exit handler ends the workspace's MLflow parent run as the workflow ended::

    main:   start -> round(r = start's output, last = r + rounds - 1)
    round:  prompts -> generate -> vote -> curate -> train -> evaluate -> promote -> round(r + 1)  [if promoted]
    promote (one at a time per registered model: a mutex): gate -> track

``cron_workflow(config, ...)``: a CronWorkflow that starts the template on a schedule (``concurrencyPolicy:
Forbid``: a round still running skips the next trigger); each trigger continues the same workspace.

Scheduling follows the GPU pool contract of ``infra/`` (``flywheel.infra``): GPU steps ask for one
``nvidia.com/gpu``, tolerate its taint and select its nodes; CPU steps stay off the pool. With
``train.num_nodes > 1`` the train step is a ``resource`` template that creates a Kubeflow Trainer TrainJob
(``flywheel.infra.trainjob``) and waits for it from Argo's executor, holding no GPU itself.
Resources, time limits and retries come from the config's ``kubeflow`` section, as for the Kubeflow door.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from flywheel import infra
from flywheel.config import FlywheelConfig, dump_config
from flywheel.layout import RoundLayout, RunLayout
from flywheel.machine_checks import on_gpu
from flywheel.stages.records import ROUND_STAGES


def _import_hera_models():
    """hera's models of Argo's API, with PyYAML left as it was: loading hera registers a ``str`` representer on
    PyYAML's global dumpers (block style for multi-line strings), which would change how everything else in
    the process writes YAML (KFP's compiled pipelines and component specs, byte for byte)."""
    classes = (yaml.Dumper, yaml.SafeDumper, yaml.representer.SafeRepresenter, yaml.representer.Representer)
    saved = {cls: cls.__dict__.get("yaml_representers") for cls in classes}
    saved = {cls: None if table is None else dict(table) for cls, table in saved.items()}
    from hera.workflows import models

    for cls, table in saved.items():
        if table is not None:
            cls.yaml_representers = table
        elif "yaml_representers" in cls.__dict__:
            del cls.yaml_representers
    return models


m = _import_hera_models()

API_VERSION = "argoproj.io/v1alpha1"
TEMPLATE_NAME = "flywheel"
SERVICE_ACCOUNT = "flywheel-argo"  # infra/argo/rbac.yaml
CONFIG_IN_POD = "/flywheel/config.yaml"  # where the start step finds the config parameter (a raw artifact)
# Where start writes the round to run: Argo reads step outputs from files (valueFrom.path), never from stdout,
# which any library may print to (MLflow's HTTP store prints "View run ..." when a run ends).
NEXT_ROUND_IN_POD = "/tmp/flywheel-next-round"
# Argo's controller stops a workflow whose template calls nest 100 deep (workflow/controller/controller.go,
# maxAllowedStackDepth, v4.0.5); round r runs its gate at depth r + 3, so one workflow runs at most 96 rounds
# unless the controller sets DISABLE_MAX_RECURSION=true. A schedule runs a few rounds per trigger instead.
MAX_ROUNDS_PER_WORKFLOW = 96

# The round's stages before the promotion, one pod each, in order (train: a TrainJob with train.num_nodes > 1);
# gate runs in `promote`, under the mutex.
ROUND_STEPS = tuple(stage for stage in ROUND_STAGES if stage != "gate")

# What the templates substitute at run time.
WORKSPACE = "{{workflow.parameters.workspace}}"
ROUND = "{{inputs.parameters.round}}"
PREVIOUS = "{{inputs.parameters.previous}}"


def workflow_template(config: FlywheelConfig) -> m.WorkflowTemplate:
    """The ``flywheel`` WorkflowTemplate; parameter defaults, resources and placement from ``config``."""
    options = config.kubeflow
    train = _train_job(config) if config.train.num_nodes > 1 else None
    templates = [
        _main(),
        _round(config, train_job=train is not None),
        _promote(config),
        _start(config),
        _stage("cpu-stage", config, gpu=False, retried=True),
        # (none on a cluster without GPUs: loop.device=cpu, as in `make cluster`'s)
        *([_stage("gpu-stage", config, gpu=True, retried=True)] if any(
            on_gpu(config, stage) for stage in ROUND_STEPS) else []),
        _stage("gate", config, gpu=False, retried=False, fixed_stage="gate"),
        _track(config),
        *_exit(config, train_jobs=train is not None),
        *([train] if train is not None else []),
    ]
    spec = m.WorkflowSpec(
        entrypoint="main",
        arguments=m.Arguments(parameters=[
            m.Parameter(name="config", value=dump_config(config),
                        description="The whole flywheel config as YAML (flywheel config -c RECIPE prints every key)."),
            m.Parameter(name="workspace", value=f"{infra.MODELS_MOUNT}/argo/{config.name}",
                        description="Directory on the shared volume; a later run (or the schedule) continues it."),
            m.Parameter(name="rounds", value=str(config.loop.rounds),
                        description=f"Rounds this run may add (at most {MAX_ROUNDS_PER_WORKFLOW}); it stops at the "
                                    "first round the gate declines."),
            m.Parameter(name="pvc", value=infra.MODELS_PVC, description="The ReadWriteMany claim mounted at "
                        f"{infra.MODELS_MOUNT} in every step."),
        ]),
        templates=templates,
        on_exit="exit",
        service_account_name=SERVICE_ACCOUNT,
        volumes=[m.Volume(name="models", persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
            claim_name="{{workflow.parameters.pvc}}"))],
        active_deadline_seconds=options.run_deadline_s,
        ttl_strategy=m.TTLStrategy(seconds_after_completion=options.ttl_s),
        pod_gc=m.PodGC(strategy="OnPodSuccess"),  # failed pods stay for their logs until the TTL
        image_pull_secrets=[m.LocalObjectReference(name=s) for s in options.image_pull_secrets] or None,
        workflow_metadata=m.WorkflowMetadata(labels={"app.kubernetes.io/part-of": "flywheel"}),
    )
    return m.WorkflowTemplate(api_version=API_VERSION, kind="WorkflowTemplate",
                              metadata=m.ObjectMeta(name=TEMPLATE_NAME), spec=spec)


def cron_workflow(config: FlywheelConfig, *, name: str, schedule: str, rounds: int = 1, timezone: str = "UTC",
                  workspace: str | None = None) -> m.CronWorkflow:
    """A CronWorkflow running the ``flywheel`` template ``rounds`` rounds per trigger on ``workspace`` (default:
    its own, ``/models/argo/scheduled/<name>``). ``Forbid``: no trigger starts while the last run is going."""
    workspace = workspace or f"{infra.MODELS_MOUNT}/argo/scheduled/{name}"
    arguments = m.Arguments(parameters=[m.Parameter(name="config", value=dump_config(config)),
                                        m.Parameter(name="workspace", value=workspace),
                                        m.Parameter(name="rounds", value=str(rounds))])
    spec = m.CronWorkflowSpec(
        schedules=[schedule], timezone=timezone, concurrency_policy="Forbid", starting_deadline_seconds=3600,
        successful_jobs_history_limit=5, failed_jobs_history_limit=5,
        workflow_spec=m.WorkflowSpec(workflow_template_ref=m.WorkflowTemplateRef(name=TEMPLATE_NAME),
                                     arguments=arguments))
    return m.CronWorkflow(api_version=API_VERSION, kind="CronWorkflow",
                          metadata=m.ObjectMeta(name=name, labels={"app.kubernetes.io/part-of": "flywheel"}),
                          spec=spec)


def to_dict(manifest) -> dict:
    """The manifest as Kubernetes reads it (camelCase keys, no empty fields)."""
    return manifest.model_dump(mode="json", by_alias=True, exclude_none=True)


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (the config, the TrainJob manifest) as readable ``|`` blocks; this dumper only."""


def _str(dumper, data: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_ManifestDumper.add_representer(str, _str)


def to_yaml(manifest) -> str:
    return yaml.dump(to_dict(manifest), Dumper=_ManifestDumper, sort_keys=False, width=120)


def compile_all(out_dir: Path, config: FlywheelConfig, *, schedule: str = "0 3 * * *") -> list[Path]:
    """Write ``workflow-template.yaml`` and ``cron-workflow.yaml`` (a nightly example schedule) to ``out_dir``."""
    from flywheel import io

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, manifest in (("workflow-template.yaml", workflow_template(config)),
                                ("cron-workflow.yaml", cron_workflow(config, name="flywheel-nightly",
                                                                     schedule=schedule))):
        io.write_text(out_dir / file_name, to_yaml(manifest))
        written.append(out_dir / file_name)
    return written


# --- templates ----------------------------------------------------------------------------------------------------

def _main() -> m.Template:
    last = "{{=asInt(steps.start.outputs.parameters.round) + asInt(workflow.parameters.rounds) - 1}}"
    return m.Template(name="main", steps=[
        m.ParallelSteps([m.WorkflowStep(name="start", template="start")]),
        m.ParallelSteps([m.WorkflowStep(name="round", template="round", arguments=_args(
            round="{{steps.start.outputs.parameters.round}}", last=last))]),
    ])


def _round(config: FlywheelConfig, *, train_job: bool) -> m.Template:
    """One round, then itself for the next while the gate promotes and ``last`` is not reached. Each stage runs on
    the image and pool of ``loop.device`` when it loads a model (``flywheel.machine_checks.on_gpu``), else on the
    CPU's."""
    def stage(name: str) -> m.ParallelSteps:
        return m.ParallelSteps([m.WorkflowStep(name=name, template="gpu-stage" if on_gpu(config, name) else
                                               "cpu-stage", arguments=_args(stage=name, round=ROUND))])

    train = (m.ParallelSteps([m.WorkflowStep(name="train", template="train-job", arguments=_args(
        round=ROUND, previous="{{=asInt(inputs.parameters.round) - 1}}"))]) if train_job else stage("train"))
    again = ("{{=jsonpath(steps.promote.outputs.parameters.record, '$.promotion') == 'promoted' && "
             "asInt(inputs.parameters.round) < asInt(inputs.parameters.last)}}")
    return m.Template(name="round", inputs=_inputs("round", "last"), steps=[
        *[train if name == "train" else stage(name) for name in ROUND_STEPS],
        m.ParallelSteps([m.WorkflowStep(name="promote", template="promote", arguments=_args(round=ROUND))]),
        m.ParallelSteps([m.WorkflowStep(name="next", template="round", when=again, arguments=_args(
            round="{{=asInt(inputs.parameters.round) + 1}}", last="{{inputs.parameters.last}}"))]),
    ])


def _promote(config: FlywheelConfig) -> m.Template:
    """gate, then track (which moves MLflow's champion alias by compare-and-swap), one workflow at a time per
    registered model: two runs (a schedule and a manual run) never decide and promote at once."""
    mutex = re.sub(r"[^a-z0-9-]", "-", f"flywheel-promote-{config.tracking.registered_model}".lower())
    return m.Template(
        name="promote", inputs=_inputs("round"),
        synchronization=m.Synchronization(mutexes=[m.Mutex(name=mutex)]),
        steps=[m.ParallelSteps([m.WorkflowStep(name="gate", template="gate", arguments=_args(round=ROUND))]),
               m.ParallelSteps([m.WorkflowStep(name="track", template="track", arguments=_args(round=ROUND))])],
        outputs=m.Outputs(parameters=[m.Parameter(name="record", value_from=m.ValueFrom(
            parameter="{{steps.track.outputs.parameters.record}}"))]))


def _start(config: FlywheelConfig) -> m.Template:
    """Write the workspace's config, prepare round 0 when the workspace has none (scores the seed: a GPU step),
    print the next round. Retried: every write is atomic."""
    template = _container_template("start", config, ["flywheel", "step", "start", "--root", WORKSPACE,
                                                     "-c", CONFIG_IN_POD, "--next-round-file", NEXT_ROUND_IN_POD],
                                   gpu=on_gpu(config, "prepare"), retried=True)
    template.inputs = m.Inputs(artifacts=[m.Artifact(name="config", path=CONFIG_IN_POD, raw=m.RawArtifact(
        data="{{workflow.parameters.config}}"))])
    template.outputs = m.Outputs(parameters=[m.Parameter(name="round", value_from=m.ValueFrom(
        path=NEXT_ROUND_IN_POD))])
    return template


def _stage(name: str, config: FlywheelConfig, *, gpu: bool, retried: bool, fixed_stage: str | None = None):
    """``flywheel step <stage> --root <workspace> --round <r>``: a stage of ``flywheel.loop.round_stages``."""
    stage = fixed_stage or "{{inputs.parameters.stage}}"
    template = _container_template(name, config, ["flywheel", "step", stage, "--root", WORKSPACE, "--round", ROUND],
                                   gpu=gpu, retried=retried)
    template.inputs = _inputs("round") if fixed_stage else _inputs("stage", "round")
    return template


def _track(config: FlywheelConfig) -> m.Template:
    """``flywheel track --door argo``: the round under the workspace's MLflow parent run; the record it writes
    (``RunLayout.tracking_record`` in the workspace, with ``promotion``) decides whether the next round runs. Read
    from the file, not stdout: nothing a library prints can change the decision. Never retried: it moves the
    champion alias."""
    template = _container_template("track", config, ["flywheel", "track", "--root", WORKSPACE, "--round", ROUND,
                                                     "--door", "argo", "-q"], gpu=False, retried=False)
    template.inputs = _inputs("round")
    record = RunLayout(Path(WORKSPACE)).tracking_record(ROUND)
    template.outputs = m.Outputs(parameters=[m.Parameter(name="record", value_from=m.ValueFrom(path=str(record)))])
    return template


def _exit(config: FlywheelConfig, *, train_jobs: bool) -> list[m.Template]:
    """The workflow's exit handler: ``flywheel track --end-loop`` ends the workspace's MLflow parent run FINISHED
    (Succeeded), FAILED (Failed, Error) or KILLED (``argo stop``, told by the failed steps' messages), with round
    runs a failed or stopped step left RUNNING, and tags the first failed step on it. Retried: ending a run twice
    changes nothing. (``argo terminate`` runs no exit handler at all: Argo's choice; ``argo stop`` is the one to
    use.) With TrainJobs, a workflow that did not succeed also deletes the ones it created: a stopped workflow's
    TrainJob would otherwise keep its nodes' GPUs until the workflow itself is deleted."""
    end_loop = _container_template("end-loop", config, [
        "flywheel", "track", "--root", WORKSPACE, "--door", "argo", "--end-loop", "{{workflow.status}}",
        "--failures", "{{workflow.failures}}", "-q"], gpu=False, retried=True)
    if not train_jobs:
        end_loop.name = "exit"
        return [end_loop]
    delete = m.Template(name="delete-train-jobs", resource=m.ResourceTemplate(
        action="delete", flags=["trainjobs.trainer.kubeflow.org", "--selector",
                                f"{infra.WORKFLOW_LABEL}={{{{workflow.name}}}}", "--wait=false"]),
        retry_strategy=_retry(config.kubeflow.retries))
    steps = m.Template(name="exit", steps=[[
        m.WorkflowStep(name="end-loop", template="end-loop"),
        m.WorkflowStep(name="delete-train-jobs", template="delete-train-jobs",
                       when="{{workflow.status}} != Succeeded")]])
    return [steps, end_loop, delete]


def _train_job(config: FlywheelConfig) -> m.Template:
    """``train.num_nodes > 1``: create the round's TrainJob and wait for it (Argo's executor polls it; no GPU
    here). The TrainJob's nodes run ``flywheel train`` on the round's files, the same paths ``flywheel step``
    reads. Success and failure come from its one child Job (``status.jobsStatus``: the runtime's replicated
    job ``node``); the TrainJob's own ``activeDeadlineSeconds`` and this template's stop a hung job."""
    this, previous, run = RoundLayout(Path(WORKSPACE), ROUND), RoundLayout(Path(WORKSPACE), PREVIOUS), \
        RunLayout(Path(WORKSPACE))
    manifest = infra.trainjob(config, infra.device_image(config), round_index=ROUND, config_file=str(run.config),
                              train_data=str(this.train_data(config.train.method)),
                              init_dir=str(config.train.start_from(previous.champion, run.seed)),
                              out_dir=str(this.candidate), name="flywheel-train", namespace="{{workflow.namespace}}",
                              timeout_s=config.kubeflow.gpu_step_timeout_s,
                              # the exit handler finds the workflow's TrainJobs by this label; Kueue admits
                              # their GPUs from the queue the GPU steps use
                              labels={infra.WORKFLOW_LABEL: "{{workflow.name}}",
                                      **({infra.KUEUE_QUEUE_LABEL: config.kubeflow.kueue_queue}
                                         if config.kubeflow.kueue_queue else {})})
    del manifest["metadata"]["name"]
    manifest["metadata"]["generateName"] = f"flywheel-r{ROUND}-"  # a retry creates a new job, never meets the old
    return m.Template(
        name="train-job", inputs=_inputs("round", "previous"),
        # The workflow owns the TrainJob: deleting (or a TTL removing) a stopped workflow deletes the job and frees
        # its GPUs.
        resource=m.ResourceTemplate(action="create", set_owner_reference=True,
                                    manifest=yaml.safe_dump(manifest, sort_keys=False),
                                    success_condition="status.jobsStatus.0.succeeded > 0",
                                    failure_condition="status.jobsStatus.0.failed > 0"),
        active_deadline_seconds=config.kubeflow.gpu_step_timeout_s,
        retry_strategy=_retry(config.kubeflow.retries))


def _container_template(name: str, config: FlywheelConfig, command: list[str], *, gpu: bool,
                        retried: bool) -> m.Template:
    options = config.kubeflow
    cpu_image, gpu_image = infra.images()
    mounts = [m.VolumeMount(name="models", mount_path=infra.MODELS_MOUNT)]
    env_from = [m.EnvFromSource(config_map_ref=m.ConfigMapEnvSource(name=infra.CLUSTER_CONFIG_MAP, optional=True)),
                m.EnvFromSource(secret_ref=m.SecretEnvSource(name=infra.S3_SECRET, optional=True))]
    if gpu:
        resources = m.ResourceRequirements(
            requests={"cpu": m.Quantity(options.gpu_step_cpu), "memory": m.Quantity(options.gpu_step_memory),
                      infra.GPU_RESOURCE: m.Quantity("1")},
            limits={"cpu": m.Quantity(options.gpu_step_cpu_limit), "memory": m.Quantity(options.gpu_step_memory),
                    infra.GPU_RESOURCE: m.Quantity("1")})
        mounts.append(m.VolumeMount(name="dshm", mount_path="/dev/shm"))
    else:
        resources = m.ResourceRequirements(
            requests={"cpu": m.Quantity(options.cpu_step_cpu), "memory": m.Quantity(options.cpu_step_memory)},
            limits={"cpu": m.Quantity(options.cpu_step_cpu_limit), "memory": m.Quantity(options.cpu_step_memory)})
    labels = {infra.KUEUE_QUEUE_LABEL: options.kueue_queue} if gpu and options.kueue_queue else None
    return m.Template(
        name=name,
        container=m.Container(image=gpu_image if gpu else cpu_image, command=command, env_from=env_from,
                              resources=resources, volume_mounts=mounts),
        volumes=[m.Volume(name="dshm", empty_dir=m.EmptyDirVolumeSource(
            medium="Memory", size_limit=m.Quantity(infra.SHM_SIZE)))] if gpu else None,
        node_selector=dict(infra.GPU_NODE_SELECTOR) if gpu else None,
        tolerations=[m.Toleration(**infra.GPU_TOLERATION)] if gpu else None,
        metadata=m.Metadata(labels=labels) if labels else None,
        active_deadline_seconds=options.gpu_step_timeout_s if gpu else options.step_timeout_s,
        retry_strategy=_retry(options.retries) if retried else None,
    )


def _retry(limit: int) -> m.RetryStrategy | None:
    """Retry a failed idempotent step (every stage writes atomically), backing off like the Kubeflow door."""
    if not limit:
        return None
    return m.RetryStrategy(limit=str(limit), retry_policy="Always",
                           backoff=m.Backoff(duration="60s", factor=str(2)))


def _inputs(*names: str) -> m.Inputs:
    return m.Inputs(parameters=[m.Parameter(name=n) for n in names])


def _args(**values: str) -> m.Arguments:
    return m.Arguments(parameters=[m.Parameter(name=k, value=v) for k, v in values.items()])
