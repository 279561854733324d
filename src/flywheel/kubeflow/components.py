"""One Kubeflow (KFP v2) component per step of a round, each a thin call into ``flywheel``.

KFP copies only a component's function source into the compiled pipeline, so every body
imports what it uses; the image (``IMAGE``, ``GPU_IMAGE``) has ``flywheel`` installed, hence
``install_kfp_package=False``. (No ``from __future__ import annotations`` here:
KFP reads the parameter annotations as types.) Every component takes the run's config as one YAML string
(``config_yaml``, read with ``flywheel.config.load_config_text``) and passes its stage only that
stage's section. ``workspace`` is the run's directory on the shared volume; a round's files go to
``<workspace>/rounds/<round>/`` exactly as ``flywheel run`` writes them (see ``flywheel.loop``).
"""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


from flywheel.infra import images

# The images of images/ (README there): images/cpu.Dockerfile, images/cuda.Dockerfile (CUDA + vLLM), under
# FLYWHEEL_REGISTRY when compiling for your own registry; the committed YAML uses the placeholder.
IMAGE, GPU_IMAGE = images()


def _component(image: str = IMAGE):
    return dsl.component(base_image=image, install_kfp_package=False)


@_component()
def preflight(config_yaml: str, workspace_root: str, seed_uri: str, dvc_remote: str, compiled_knobs: str,
              gpu_steps: str, samples_per_prompt: int, temperature: float,
              min_vote_share: float, gate_alpha: float, gate_min_gain: float, train_steps: int,
              learning_rate: float, run_config: Output[Artifact]) -> str:
    """The run's effective config (``flywheel.kubeflow.preflight.effective_config``): the typed knobs a user
    changed (from ``compiled_knobs``, the defaults compiled in) applied to ``config_yaml``, checked against the
    steps compiled onto the GPU (``gpu_steps``), the seed staged on the shared volume, and one line per dependency
    checked (volume writable, seed, MLflow, object store). Every later step reads the config this returns."""
    from pathlib import Path

    from flywheel.kubeflow.preflight import Knobs, effective_config

    knobs = Knobs(samples_per_prompt=samples_per_prompt, temperature=temperature, min_vote_share=min_vote_share,
                  gate_alpha=gate_alpha, gate_min_gain=gate_min_gain, train_steps=train_steps,
                  learning_rate=learning_rate)
    effective = effective_config(config_yaml, knobs, Knobs.from_json(compiled_knobs), seed_uri=seed_uri,
                                 workspace_root=workspace_root, gpu_steps=gpu_steps, dvc_remote=dvc_remote)
    # Also as an artifact (the UI shows it): what steps inside a ParallelFor read (see generate).
    Path(run_config.path).parent.mkdir(parents=True, exist_ok=True)
    Path(run_config.path).write_text(effective + "\n")
    return effective


@_component(GPU_IMAGE)  # scores the seed; a pipeline compiled for loop.device=cpu puts it on the CPU image
def prepare(config_yaml: str, workspace_root: str, run_id: str, eval_set: Output[Dataset], champion: Output[Model],
            seed_metrics: Output[Metrics]) -> str:
    """Round 0 of a new run in ``<workspace_root>/<run_id>`` (``flywheel.loop.prepare``): the eval set,
    the seed as champion, the seed's scores. Returns the run's workspace directory.

    ``run_id`` comes from the call site (the KFP run's id): the backend substitutes the job-id placeholder
    only in a task's constant arguments, never in a component input's default."""
    from pathlib import Path

    from flywheel import io
    from flywheel.kubeflow import artifacts
    from flywheel.loop import prepare as prepare_round_zero
    from flywheel.tasks import load_task

    config = artifacts.load(config_yaml, stage="prepare")  # scores the seed: a GPU in this pod for loop.device=cuda
    workspace = Path(workspace_root) / run_id
    eval_path = prepare_round_zero(config, workspace, task=load_task(config.task, config.code))
    artifacts.publish_file(eval_path, eval_set)
    zero = artifacts.layout(str(workspace), 0)
    artifacts.publish_model(zero.champion, champion, round=0, role="seed")
    artifacts.log_metrics(seed_metrics, io.read_json(zero.metrics)["champion"], "seed")
    return str(workspace)


@_component()
def plan_shards(shards: int) -> List[int]:
    """Shard indices 0 .. shards-1 for the generate fan-out."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return list(range(shards))


@_component()
def resolve_champion(config_yaml: str, workspace: str, eval_set: Output[Dataset], champion: Output[Model]) -> int:
    """The next round of a long-lived workspace, with the champion read from MLflow's ``champion`` alias.

    Returns the round index; see ``flywheel.kubeflow.champion.resolve_champion``.
    """
    from flywheel.kubeflow import artifacts
    from flywheel.kubeflow.champion import resolve_champion as resolve
    from flywheel.tasks import load_task

    config = artifacts.load(config_yaml)
    resolved = resolve(config, workspace, task=load_task(config.task, config.code))
    artifacts.publish_file(resolved["eval_path"], eval_set)
    artifacts.publish_model(resolved["champion_dir"], champion, round=resolved["round"] - 1,
                            model_version=resolved["model_version"])
    return resolved["round"]


@_component()
def make_prompts(config_yaml: str, workspace: str, round_index: int, champion: Input[Model],
                 prompts: Output[Dataset]):
    """The round's unlabeled prompts (``flywheel.stages.prompts.run_prompts``); the truth stays in audit.parquet."""
    from flywheel.kubeflow import artifacts

    config = artifacts.load(config_yaml, stage="prompts")  # a GPU in this pod when TT-SI probes with the champion
    this = artifacts.layout(workspace, round_index)
    summary = artifacts.run_stage("prompts", config, round_index, this, {"champion": artifacts.model_path(champion)})
    artifacts.publish_file(this.prompts, prompts)
    prompts.metadata.update({**summary, "round": round_index})


@_component(GPU_IMAGE)
def generate(run_config: Input[Artifact], shard: int, shards: int, prompts: Input[Dataset], champion: Input[Model],
             samples: Output[Dataset]):
    """One shard of the K samples per prompt: every `shards`-th batch (``flywheel.stages.generate.run_generate``).

    Inside the shards' ``ParallelFor`` every parameter comes from an artifact or the loop: kfp.local (2.17)
    replaces any task-output parameter of a loop body with the loop item, so the config is the preflight
    step's ``run_config`` file and the round is the ``prompts`` artifact's ``round`` metadata.
    """
    from pathlib import Path

    from flywheel.kubeflow import artifacts

    config = artifacts.load(Path(run_config.path).read_text(), stage="generate")
    round_index = int(prompts.metadata["round"])
    given = {"prompts": Path(prompts.path), "model": artifacts.model_path(champion), "out": Path(samples.path)}
    summary = artifacts.run_stage("generate", config, round_index, None, given, shard=shard, shards=shards)
    samples.metadata.update({"round": round_index, "shard": shard, "shards": shards, **summary})


@_component()
def merge_samples(workspace: str, round_index: int, prompts: Input[Dataset], shards: Input[List[Dataset]],
                  samples: Output[Dataset]):
    """The shards' samples as one samples.parquet, identical to an unsharded run's."""
    from pathlib import Path

    from flywheel.kubeflow import artifacts
    from flywheel.stages.generate import run_merge_samples

    this = artifacts.layout(workspace, round_index)
    summary = run_merge_samples(Path(prompts.path), [Path(s.path) for s in shards], this.samples)
    artifacts.publish_file(this.samples, samples)
    samples.metadata.update(summary)


@_component()
def vote(config_yaml: str, workspace: str, round_index: int, prompts: Input[Dataset], samples: Input[Dataset],
         champion: Input[Model], votes: Output[Dataset], vote_metrics: Output[Metrics]):
    """Vote per prompt (``flywheel.stages.vote.run_vote``: ``vote.method``), audited against the hidden truth.

    The champion is an input because ``vote.method: self_judge`` scores candidates with it; the pipeline
    then runs this step on the GPU image and pool (``flywheel.kubeflow.preflight.Placement``).
    """
    from pathlib import Path

    from flywheel.kubeflow import artifacts

    config = artifacts.load(config_yaml, stage="vote")  # a GPU in this pod when the vote loads the champion
    this = artifacts.layout(workspace, round_index)
    summary = artifacts.run_stage("vote", config, round_index, this, {
        "samples": Path(samples.path), "prompts": Path(prompts.path), "model": artifacts.model_path(champion)})
    artifacts.publish_file(this.votes, votes)
    artifacts.log_metrics(vote_metrics, summary, "vote")


@_component()
def curate(config_yaml: str, workspace: str, round_index: int, votes: Input[Dataset], eval_set: Input[Dataset],
           champion: Input[Model], train_set: Output[Dataset], curate_metrics: Output[Metrics],
           vote_audit: Output[ClassificationMetrics]):
    """Keep what the vote trusts (``flywheel.stages.curate.run_curate``); count every drop by reason.

    ``vote_audit``: the vote's verdict (trusted at ``curate.min_vote_share`` or not) against whether the
    majority answer is truly correct, where the round has an audit set. The champion is an input because some
    curate options score or continue the rows with it (``CurateConfig.MODEL_SETTINGS``); the pipeline then runs
    this step on the GPU image and pool.
    """
    from pathlib import Path

    from flywheel import io, schemas
    from flywheel.kubeflow import artifacts
    from flywheel.report import vote_confusion
    from flywheel.stages.vote import read_truth
    from flywheel.tasks import load_task

    config = artifacts.load(config_yaml, stage="curate")  # a GPU in this pod when curate loads the champion
    this = artifacts.layout(workspace, round_index)
    report = artifacts.run_stage("curate", config, round_index, this, {
        "eval": Path(eval_set.path), "model": artifacts.model_path(champion)})
    # What train.method trains on: train.parquet (sft), pairs.parquet (dpo) or rl_prompts.parquet (grpo).
    artifacts.publish_file(this.train_data(config.train.method), train_set)
    report.pop("thresholds", None)
    artifacts.log_metrics(curate_metrics, report, "curate")
    if this.audit.exists():
        confusion = vote_confusion(io.read_rows(Path(votes.path), schemas.VOTES), read_truth(this.audit),
                                   load_task(config.task, config.code).is_correct, config.curate.min_vote_share)
        vote_audit.log_confusion_matrix(confusion["categories"], confusion["matrix"])


@_component(GPU_IMAGE)
def train(config_yaml: str, workspace: str, round_index: int, train_set: Input[Dataset], champion: Input[Model],
          candidate: Output[Model]):
    """Fine-tune every member on the curated set (``flywheel.stages.train.run_train``: TRL SFT, DPO or GRPO by
    ``train.method``), starting from the champion or, with ``train.init: base``, from the seed
    (``flywheel.layout.start_model``: round 0's champion, as in ``flywheel run``)."""
    from pathlib import Path

    from flywheel.kubeflow import artifacts
    from flywheel.layout import start_model

    config = artifacts.load(config_yaml)
    this = artifacts.layout(workspace, round_index)
    here = this.dir
    if config.train.num_nodes > 1:
        # Several nodes: a Kubeflow Trainer TrainJob runs `torchrun -m flywheel.cli train` on every node
        # over the shared volume (rank 0 writes the candidate); this step (no GPU of its own) submits it,
        # waits, copies rank 0's log here and deletes it.
        # (Never `from flywheel.kubeflow.components import ...` here: KFP runs this body with _KFP_RUNTIME=true,
        # where kfp.dsl has no `component` and that module cannot be imported.)
        from flywheel import infra, io
        from flywheel.config import dump_config
        config_file = here / "train-config.yaml"
        with io.atomic_path(config_file) as tmp:
            tmp.write_text(dump_config(config))
        # A new name per attempt: a retried step never meets the TrainJob of the attempt before it.
        manifest = infra.trainjob(config, infra.device_image(config), round_index=round_index,
                                  config_file=str(config_file),
                                  train_data=str(this.train_data(config.train.method)),
                                  init_dir=str(start_model(config, this)),  # the same choice as flywheel run's
                                  out_dir=str(this.candidate), timeout_s=config.kubeflow.gpu_step_timeout_s,
                                  name=infra.trainjob_name(workspace, round_index))
        infra.run_trainjob(manifest, timeout_s=config.kubeflow.gpu_step_timeout_s)
        summary = {"train_rows": None, "num_nodes": config.train.num_nodes}
    else:
        from flywheel.machine_checks import check_stage

        check_stage(config, "train", where="in this pod")
        summary = artifacts.run_stage("train", config, round_index, this, {"data": Path(train_set.path)})
    artifacts.publish_model(this.candidate, candidate, round=round_index, role="candidate",
                            train_rows=summary["train_rows"])


@_component(GPU_IMAGE)
def evaluate(config_yaml: str, workspace: str, round_index: int, eval_set: Input[Dataset], candidate: Input[Model],
             champion: Input[Model], eval_metrics: Output[Metrics]):
    """Candidate and champion on the held-out set (``flywheel.stages.evaluate.run_evaluate``)."""
    from pathlib import Path

    from flywheel.kubeflow import artifacts

    config = artifacts.load(config_yaml, stage="evaluate")
    metrics = artifacts.run_stage("evaluate", config, round_index, artifacts.layout(workspace, round_index), {
        "eval": Path(eval_set.path), "candidate": artifacts.model_path(candidate),
        "champion": artifacts.model_path(champion)})
    artifacts.log_metrics(eval_metrics, metrics)


@_component()
def gate(config_yaml: str, workspace: str, round_index: int, candidate: Input[Model], champion: Input[Model],
         eval_metrics: Input[Metrics], next_champion: Output[Model], gate_metrics: Output[Metrics]) -> float:
    """Promote only on a significant, non-regressing win (``flywheel.stages.gate.run_gate``).

    Returns 1.0 on promotion, else 0.0 (a float: the pipeline's ``dsl.If`` compares it with ``1.0``).
    The round's ``champion`` directory becomes the candidate or stays the old champion; the MLflow
    alias moves in ``track``, through the same ``Tracker.log_round`` as ``flywheel run``.
    """
    from flywheel.kubeflow import artifacts

    config = artifacts.load(config_yaml)
    this = artifacts.layout(workspace, round_index)
    decision = artifacts.run_stage("gate", config, round_index, this, {
        "candidate": artifacts.model_path(candidate), "champion": artifacts.model_path(champion)})
    artifacts.publish_model(this.champion, next_champion, round=round_index, promoted=decision["promote"])
    artifacts.log_metrics(gate_metrics, {k: decision[k] for k in (
        "promote", "delta", "p_value", "champion_accuracy", "candidate_accuracy", "only_champion_correct",
        "only_candidate_correct", "n")}, "gate")
    return 1.0 if decision["promote"] else 0.0


@_component()
def track(config_yaml: str, workspace: str, round_index: int, register_seed: bool, champion: Input[Model],
          gate_metrics: Input[Metrics], tracking: Output[Artifact]) -> str:
    """Log the round to MLflow (``flywheel.tracking.Tracker.log_round``): a nested run under the workspace's
    parent run, the data digest, the candidate as a model version, and the ``champion`` alias moved on
    promotion only, by compare-and-swap: only if it still names the version this round started from.
    ``register_seed``: also register the seed (round 1 of the ``flywheel`` pipeline).

    Returns the round's outcome: ``promoted``, ``declined``, or ``stale`` (the gate promoted, but the alias
    had moved since the round started; nothing was moved). The version the round started from is the
    ``champion`` artifact's ``model_version`` (``flywheel-round``: the alias holder it downloaded), else
    the run's own lineage (``flywheel``: the seed it registered, then its promoted candidates)."""
    from pathlib import Path

    from flywheel import io
    from flywheel.kubeflow import artifacts
    from flywheel.kubeflow.champion import loop_key
    from flywheel.tracking import track_round

    config = artifacts.load(config_yaml)
    result = track_round(config, workspace, round_index, loop_key=loop_key(workspace), register_seed=register_seed,
                         started_from=champion.metadata.get("model_version"))
    io.write_json(Path(tracking.path), result)
    tracking.metadata.update({k: v for k, v in result.items() if isinstance(v, (str, int, float, bool))})
    return result["promotion"]


@_component()
def report(config_yaml: str, workspace: str, round_index: int, tracking: Input[Artifact],
           round_report: Output[Markdown], run_report: Output[HTML]):
    """The round's Markdown report and the run's HTML report with its plots (both shown in the UI), and the
    workspace's report.json / report.html so far."""
    from pathlib import Path

    from flywheel.kubeflow import artifacts
    from flywheel.report import build_report, html_report, round_markdown, write_report

    config = artifacts.load(config_yaml)
    built = build_report(Path(workspace), config)
    write_report(Path(workspace), built)
    Path(round_report.path).write_text(round_markdown(Path(workspace), round_index, config.name))
    Path(run_report.path).write_text(html_report(built))


@_component()
def push_data(workspace: str, round_index: int, dvc_remote: str, gate_metrics: Input[Metrics],
              dvc_file: Output[Artifact]):
    """Version the round directory with DVC: push it to ``dvc_remote``, emit its ``.dvc`` file."""
    from pathlib import Path

    from flywheel.kubeflow import artifacts
    from flywheel.versioning import push_round

    result = push_round(artifacts.layout(workspace, round_index).dir, dvc_remote, Path(dvc_file.path))
    dvc_file.metadata.update({k: v for k, v in result.items() if isinstance(v, (str, int, float, bool))})


@_component()
def end_run(config_yaml: str, workspace: str, run_id: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """The exit handler of both pipelines: runs when the run ends, however it ends. Ends the workspace's MLflow
    parent run (and round runs left RUNNING) as FINISHED, FAILED or KILLED (cancelled), tagging what failed
    (``flywheel.tracking.end_workspace_loop``, as the Argo door's exit handler), and with ``train.num_nodes > 1``
    deletes the TrainJobs this run created (a cancelled run's train step may not have). ``workspace`` is the run's
    directory; for the ``flywheel`` pipeline, its root and ``run_id``. Returns what it did, as JSON."""
    import json
    from pathlib import Path

    from flywheel import infra
    from flywheel.kubeflow import artifacts
    from flywheel.kubeflow.champion import loop_key
    from flywheel.tracking import end_workspace_loop
    from flywheel.workflow_ends import pipeline_end

    config = artifacts.load(config_yaml)
    here = str(Path(workspace) / run_id) if run_id else workspace
    deleted = infra.delete_workflow_trainjobs() if config.train.num_nodes > 1 else []
    ended = end_workspace_loop(config, loop_key=loop_key(here), end=pipeline_end(status.state, status.error_message))
    result = json.dumps({**ended, "trainjobs_deleted": deleted})
    print(result)  # in the step's log as well as its output
    return result


# The specs name the CUDA image (a pipeline may place them on the CPU).
GPU_COMPONENTS = (prepare, generate, train, evaluate)
