"""MLflow: a parent run per loop, a nested run per round, every candidate a registered model version.

The stages know nothing of MLflow. After each round, ``log_round`` reads what the
round wrote (vote.json, curation.json, eval/metrics.json, decision.json, timings)
and logs it, so ``flywheel run`` and ``dvc repro`` (its ``track`` stage) log the same
things. The registered model (``flywheel.model_registry``) gets each candidate as a version; its alias
``champion`` moves only when the gate promotes, and then by compare-and-swap. ``round_metrics`` reads a
round's numbers and digests; ``tracking_store`` says whether the store can be used at all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from flywheel.config import FlywheelConfig, TrackingConfig
from flywheel.layout import FILES, RoundLayout, RunLayout
from flywheel.modeling import read_model_meta
from flywheel.model_registry import CHAMPION_ALIAS, DECLINED, PROMOTED, STALE, ModelRegistry
from flywheel.round_metrics import EVAL_METRICS, flatten, metric_key, output_digests, round_metrics
from flywheel.tracking_store import StoreClient, check_reachable, check_writable, local_dir, sqlite_file, store_call
from flywheel.workflow_ends import WorkflowEnd, workflow_end

LOOP_TAG = "flywheel.loop"
# On a finished round run that a later run of the same round (under the same parent run) replaced: its id.
SUPERSEDED_TAG = "flywheel.superseded_by"
# On a round run: DVC's md5 of the round directory it logged (also its dataset input's digest).
DATA_DIGEST_TAG = "flywheel.data_digest"
# Parent run tags: the host and PID of the ``flywheel run`` process that runs it now (what a later run of the same
# directory needs to know that a RUNNING parent was left by a killed process).
HOST_TAG, PID_TAG = "flywheel.host", "flywheel.pid"
# Parent run tag: what ended the loop other than well (an error, a signal, a workflow's first failed step).
ERROR_TAG = "flywheel.error"


def _data_digest(run) -> str | None:
    """The digest of the round data ``run`` logged (its tag; older runs: their dataset input), if any."""
    if DATA_DIGEST_TAG in run.data.tags:
        return run.data.tags[DATA_DIGEST_TAG]
    inputs = run.inputs.dataset_inputs if run.inputs is not None else []
    return inputs[0].dataset.digest if inputs else None


def _system_tags(tags: dict) -> dict:
    """``tags`` plus the system tags MLflow's own ``start_run`` adds (``mlflow.user``, ``mlflow.source.name``,
    ``mlflow.source.type``, ...), from MLflow's run-context registry: the client's ``create_run`` adds none."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags(tags)


def _ended_status(error: BaseException) -> str:
    """How a run that ``error`` stopped ends in MLflow: KILLED (Ctrl-C, SIGTERM) or FAILED."""
    from flywheel.errors import Terminated

    return "KILLED" if isinstance(error, (KeyboardInterrupt, Terminated)) else "FAILED"


class Tracker:
    """Thin wrapper over the MLflow client; one instance per loop."""

    @store_call
    def __init__(self, config: TrackingConfig):
        self.config = config
        check_reachable(config.uri)
        check_writable(config.uri)
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(config.uri)
        mlflow.set_registry_uri(config.uri)
        self.client = StoreClient(mlflow.MlflowClient(config.uri, config.uri))
        experiment = self.client.get_experiment_by_name(config.experiment)
        self.experiment_id = (experiment.experiment_id if experiment
                              else self.client.create_experiment(config.experiment))
        if sqlite_file(config.uri) or local_dir(config.uri):  # a server's artifact paths are its own to check
            experiment = experiment or self.client.get_experiment(self.experiment_id)
            check_writable(config.uri, artifacts=experiment.artifact_location)
        self.registry = ModelRegistry(self.client, config, self.experiment_id)

    @store_call
    def start_loop(self, config: FlywheelConfig, loop_key: str) -> str:
        """The parent run for ``loop_key`` (created once, found again on re-runs)."""
        self.use_config(config)
        found = self._loop_run_id(loop_key)
        if found is not None:
            return found
        run = self.client.create_run(self.experiment_id, run_name=f"{config.name}",
                                     tags=_system_tags({LOOP_TAG: loop_key}))
        params = {}
        for section, values in asdict(config).items():
            if isinstance(values, dict):
                for key, value in values.items():
                    params[f"{section}.{key}"] = str(value)[:500]
            else:
                params[section] = str(values)
        try:
            self._log_batch(run.info.run_id, params=sorted(params.items()))
        except BaseException as error:  # not left RUNNING where the store can still end it
            self._end_quietly(run.info.run_id, _ended_status(error))
            raise
        return run.info.run_id

    def use_config(self, config: FlywheelConfig) -> None:
        """How the registered models answer prompts: the task and completion length the loop evaluates with, and
        a prompt of the task as their input example."""
        from flywheel.mlflow_model import example_prompt

        self.registry.serving = {"task": config.task, "max_new_tokens": config.evaluate.max_new_tokens,
                                 "input_example": example_prompt(config.task)}

    @store_call
    def continue_loop(self, config: FlywheelConfig, root: Path, *, resume: bool) -> str:
        """``flywheel run``'s parent run: a new one, or on ``--resume`` the one the run started (RUNNING again).
        Call it with the run directory's lock held: the runs an earlier, killed process of the directory left
        RUNNING end as KILLED (``end_orphans``).

        Its id and key are kept in ``<root>/tracking/loop.json``, beside the run they belong to.
        """
        from flywheel import io
        from mlflow.entities import RunTag

        record = RunLayout(Path(root)).loop_record
        resumed = resume and record.is_file()
        loop_key = io.read_json(record)["loop_key"] if resumed else f"run:{Path(root).resolve()}:{time.time_ns()}"
        run_id = self.start_loop(config, loop_key=loop_key)
        try:
            if resumed:
                self.client.update_run(run_id, status="RUNNING")
            else:
                io.write_json(record, {"loop_key": loop_key, "parent_run_id": run_id})
            self.client.log_batch(run_id, tags=[RunTag("mlflow.source.git.commit", git_commit() or "unknown"),
                                                RunTag(HOST_TAG, socket.gethostname()),
                                                RunTag(PID_TAG, str(os.getpid()))])
            self.end_orphans(root, keep=run_id)
        except BaseException as error:
            self._end_quietly(run_id, _ended_status(error))
            raise
        return run_id

    def end_orphans(self, root: Path, *, keep: str) -> list[str]:
        """End as KILLED what a killed ``flywheel run`` of ``root`` left RUNNING (SIGKILL, the OOM killer, a lost
        node: no handler ran): its parent runs other than ``keep`` and their round runs, and ``keep``'s round
        runs. Only parents this host started are ended: a directory of the same name on another host (a pod's
        volume) is another run. Needs the directory's lock: no live process of this host runs it then.
        Returns the ids of the parents ended."""
        from mlflow.entities import RunStatus

        host = socket.gethostname()
        prefix = f"run:{Path(root).resolve()}:"
        running = f"attributes.status = '{RunStatus.to_string(RunStatus.RUNNING)}'"
        ended = []
        for parent in self.client.search_runs([self.experiment_id], max_results=1000,
                                              filter_string=f"{running} and tags.`{HOST_TAG}` = '{host}'"):
            tags = parent.data.tags
            if parent.info.run_id == keep or not tags.get(LOOP_TAG, "").startswith(prefix):
                continue
            self._end_children(parent.info.run_id, "KILLED")
            self.client.set_tag(parent.info.run_id, ERROR_TAG,
                                f"its process (pid {tags.get(PID_TAG)} on {host}) was killed; ended by a later "
                                "flywheel run of the directory")
            self.client.set_terminated(parent.info.run_id, status="KILLED")
            ended.append(parent.info.run_id)
        self._end_children(keep, "KILLED")
        return ended

    def _end_children(self, parent_run_id: str, status: str) -> None:
        for child in self._children(parent_run_id):
            if child.info.status == "RUNNING":
                self.client.set_terminated(child.info.run_id, status=status)

    def _end_quietly(self, run_id: str, status: str) -> None:
        """End a run after an error, if the store still takes the write: the error is the one to report."""
        try:
            self.client.set_terminated(run_id, status=status)
        except Exception:
            pass

    @store_call
    def end_loop(self, run_id: str, summary: dict) -> None:
        from flywheel.termination import raise_if_terminated

        self._log_batch(run_id, metrics=[(metric_key(k), v, 0) for k, v in flatten("", summary, {}).items()])
        self.client.set_terminated(run_id)
        raise_if_terminated()  # a SIGTERM lost while it logged: the caller's fail_loop ends the run KILLED instead

    @store_call
    def end_loop_of(self, loop_key: str, status: str, *, error: str | None = None) -> str | None:
        """End the parent run of ``loop_key`` as ``status``, and its round runs still RUNNING as ``status`` (FAILED
        where the parent FINISHED: a round left open then is a fault); ``error`` (what stopped it) as its
        ``flywheel.error`` tag (removed when a later workflow of the loop ends well). Returns its id, or None
        where ``loop_key`` has no parent run."""
        parent = self._loop_run_id(loop_key)
        if parent is not None:
            self._end_children(parent, "FAILED" if status == "FINISHED" else status)
            if error:
                self.client.set_tag(parent, ERROR_TAG, error[:500])
            elif ERROR_TAG in self.client.get_run(parent).data.tags:
                # a schedule's later trigger continues the same parent run: an earlier trigger's error is history
                self.client.delete_tag(parent, ERROR_TAG)
            self.client.set_terminated(parent, status=status)
        return parent

    def _loop_run_id(self, loop_key: str) -> str | None:
        """The parent run tagged with ``loop_key``, if one exists."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{LOOP_TAG}` = '{loop_key}'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def fail_loop(self, run_id: str, error: BaseException) -> None:
        """End the parent run, and any round run left open under it, as KILLED (Ctrl-C, SIGTERM) or FAILED."""
        from flywheel.errors import InputError, one_line

        status = _ended_status(error)
        try:
            self._end_children(run_id, status)
            self.client.set_tag(run_id, ERROR_TAG, f"{type(error).__name__}: {error}"[:500])
            self.client.set_terminated(run_id, status=status)
        except Exception as tracking_error:  # the original error is the one to report
            if isinstance(error, InputError) and error.field == "tracking.uri":
                return  # the store itself failed, and that error says so; the next run ends what is left RUNNING
            print(f"flywheel: warning: could not mark MLflow run {run_id} {status}: {one_line(tracking_error)}",
                  file=sys.stderr)

    def _log_batch(self, run_id: str, *, params=(), metrics=()) -> None:
        """Params (key, value) and metrics (key, value, step) in as few requests as MLflow allows (100 params,
        1000 metrics per batch): one request per value took seconds per round against a remote server."""
        from mlflow.entities import Metric, Param

        params, metrics = list(params), list(metrics)
        now = int(time.time() * 1000)
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params[start:start + 100]])
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                                   for k, v, step in metrics[start:start + 1000]])

    def _children(self, parent_run_id: str, round_index: int | None = None) -> list:
        """The round runs of a loop (of one round), superseded ones excluded: what the loop stands on now."""
        query = f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{SUPERSEDED_TAG}` IS NULL"
        if round_index is not None:
            query += f" and tags.`flywheel.round` = '{round_index}'"
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000)

    def lineage_version(self, parent_run_id: str, round_index: int) -> str | None:
        """The version a loop's round ``round_index`` started from: the candidate of its last earlier round
        whose gate promoted, else the seed this loop registered (None if it registered none)."""
        promoted = {}
        for child in self._children(parent_run_id):
            earlier = int(child.data.tags.get("flywheel.round", "0"))
            if 0 < earlier < round_index:
                for version in self.client.search_model_versions(f"run_id = '{child.info.run_id}'"):
                    if version.tags.get("promoted") == "true":
                        promoted[earlier] = version.version
        if promoted:
            return promoted[max(promoted)]
        for version in self.client.search_model_versions(f"run_id = '{parent_run_id}'"):
            if version.tags.get("role") == "seed":
                return version.version
        return None

    @store_call
    def log_round(self, parent_run_id: str, round_index: int, round_dir: Path, config: FlywheelConfig,
                  data_digest: str, *, started_from: str | None = None) -> dict:
        """Nested run for a round: params per stage, metrics, the data digest, the candidate version, and the
        alias moved by compare-and-swap from ``started_from`` (default: the loop's lineage,
        ``lineage_version``; a scheduled round passes the alias holder it downloaded)."""
        self.use_config(config)
        if started_from is None:
            started_from = self.lineage_version(parent_run_id, round_index)
        # A round logged again over the same data (a resumed run killed while or just after tracking it)
        # replaces its earlier run. A finished run of other data (the round ran again: `dvc repro` after a
        # change) is history: kept, and marked superseded.
        finished = []
        for earlier in self._children(parent_run_id, round_index):
            if earlier.info.status == "FINISHED" and _data_digest(earlier) not in (None, data_digest):
                finished.append(earlier.info.run_id)
                continue
            for version in self.client.search_model_versions(f"run_id = '{earlier.info.run_id}'"):
                self.client.delete_model_version(version.name, version.version)
            self.client.delete_run(earlier.info.run_id)
        run = self.client.create_run(self.experiment_id, run_name=f"round-{round_index}",
                                     tags=_system_tags({"mlflow.parentRunId": parent_run_id,
                                                        "flywheel.round": str(round_index),
                                                        DATA_DIGEST_TAG: data_digest,
                                                        "mlflow.source.git.commit": git_commit() or "unknown"}))
        run_id = run.info.run_id
        for earlier in finished:
            self.client.set_tag(earlier, SUPERSEDED_TAG, run_id)
        try:
            return self._log_round(run_id, parent_run_id, round_index, round_dir, config, data_digest, started_from)
        except BaseException as error:
            self._end_quietly(run_id, _ended_status(error))
            raise

    def _log_round(self, run_id: str, parent_run_id: str, round_index: int, round_dir: Path,
                   config: FlywheelConfig, data_digest: str, started_from: str | None) -> dict:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from flywheel.termination import raise_if_terminated

        params = [(f"{section}.{key}", str(value)[:500])
                  for section in ("data", "prompts", "generate", "vote", "curate", "train", "evaluate", "gate", "code")
                  for key, value in asdict(getattr(config, section)).items()]
        candidate_meta = read_model_meta(round_dir / "candidate")
        if "precision" in candidate_meta:  # what train.precision=auto resolved to on the machine that trained
            params.append(("train.precision_used", candidate_meta["precision"]))
        curves = []
        for member, metrics in enumerate(candidate_meta.get("train_metrics", [])):
            # The trainer's loss curve, logged from the candidate's metadata: stages know nothing of MLflow.
            for step, loss, learning_rate in metrics.get("loss_curve", []):
                curves += [(f"train.member_{member}.loss", loss, step),
                           (f"train.member_{member}.learning_rate", learning_rate, step)]
        metrics = [(metric_key(key), value, round_index) for key, value in round_metrics(round_dir).items()]
        self._log_batch(run_id, params=params, metrics=curves + metrics)
        self._log_batch(parent_run_id, metrics=metrics)
        # The round's data as the run's training dataset, in MLflow's public entities (what mlflow.log_input
        # logs, without its process-wide active run): a local source, and DVC's md5 of the round directory as
        # the digest, the same value dvc.lock records.
        dataset = Dataset(name=f"round-{round_index}", digest=data_digest, source_type="local",
                          source=json.dumps({"uri": os.fspath(round_dir.resolve())}))
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context",
                                                                                      "training")])])
        # Each output's DVC md5, as dvc.lock records it: from a run to `dvc checkout` of exactly its data.
        for name, md5 in output_digests(round_dir).items():
            self.client.set_tag(run_id, f"dvc.md5.{name}", md5)
        for name in (FILES.vote_summary, FILES.curation, FILES.decision, EVAL_METRICS):
            if (round_dir / name).exists():
                self.client.log_artifact(run_id, os.fspath(round_dir / name), os.path.dirname(name) or None)
        decision = json.loads((round_dir / FILES.decision).read_text())
        version = self.registry.register_candidate(run_id, round_dir / FILES.candidate, decision,
                                                   tags={"round": str(round_index), "data_digest": data_digest})
        promotion, holder = self.registry.settle(version, promote=decision["promote"], started_from=started_from,
                                                 claim=f"{parent_run_id}:round-{round_index}")
        self.client.set_tag(run_id, "flywheel.decision", "promote" if decision["promote"] else "decline")
        self.client.set_tag(run_id, "flywheel.promotion", promotion)
        self.client.set_tag(run_id, "flywheel.started_from", str(started_from))
        if promotion == STALE:
            self.client.set_tag(run_id, "flywheel.stale", f"the gate promoted v{version}, but the "
                                f"'{CHAMPION_ALIAS}' alias names v{holder}, not v{started_from} that this round "
                                "started from: nothing moved")
        self.client.set_terminated(run_id)
        raise_if_terminated()  # a SIGTERM lost while it logged: log_round ends the run KILLED instead
        return {"run_id": run_id, "experiment_id": self.experiment_id, "model_version": version,
                "promoted": decision["promote"],
                "promotion": promotion, "started_from": started_from, "champion_version": holder}


def loop_key(door: str, root: str | Path) -> str:
    """The ``flywheel.loop`` tag of a run directory's MLflow parent run: one parent per directory and door
    (``dvc``: ``dvc repro``'s data directory; ``kfp``: a Kubeflow workspace), found again by it. Under
    ``dvc exp run`` (DVC gives each stage ``DVC_EXP_NAME``) one per experiment: an experiment adds its own parent
    run, round runs and model versions beside the baseline's, and never touches those."""
    key = f"{door}:{Path(root).resolve()}"
    experiment = os.environ.get("DVC_EXP_NAME", "") if door == "dvc" else ""
    return f"{key}@exp:{experiment}" if experiment else key


def log_round_files(tracker: Tracker, parent_run_id: str, root: str | Path, round_index: int,
                    config: FlywheelConfig, *, started_from: str | None = None, out: Path | None = None) -> dict:
    """Log round ``round_index`` of the run at ``root`` under ``parent_run_id`` and write the record
    (default ``RunLayout(root).tracking_record``, kept outside the round so its digest stays what was logged).
    The record holds ``Tracker.log_round``'s result, ``parent_run_id`` and ``seconds``."""
    from flywheel import io
    from flywheel.versioning import digest

    start = time.perf_counter()
    here = RoundLayout(Path(root), round_index).dir
    result = tracker.log_round(parent_run_id, round_index, here, config, digest(here), started_from=started_from)
    result = {**result, "parent_run_id": parent_run_id, "seconds": time.perf_counter() - start}
    io.write_json(out or RunLayout(Path(root)).tracking_record(round_index), result)
    return result


def track_round(config: FlywheelConfig, root: str | Path, round_index: int, *, loop_key: str, register_seed: bool,
                started_from: str | None = None, out: Path | None = None) -> dict:
    """Track one finished round from a door that runs a round at a time (``dvc repro``'s track stage, the
    Kubeflow track step): open or find the parent run of ``loop_key``, register the seed (round 0's champion)
    when ``register_seed``, and ``log_round_files``. Without tracking, the record says so and gives the
    gate's outcome. ``promotion`` in the result: promoted, declined or stale."""
    from flywheel import io

    root = Path(root)
    this = RoundLayout(root, round_index)
    if not this.decision.is_file():  # before MLflow creates a parent run for a round that never ran
        from flywheel.errors import InputError

        raise InputError(this.decision, "round not found (run its gate first)", field="--round")
    if not config.tracking.enabled:
        result = {"tracking": "disabled", "promotion": PROMOTED if io.read_json(this.decision)["promote"] else DECLINED}
        io.write_json(out or RunLayout(root).tracking_record(round_index), result)
        return result
    tracker = Tracker(config.tracking)
    parent = tracker.start_loop(config, loop_key=loop_key)
    tracker.client.update_run(parent, status="RUNNING")  # again, if an earlier `dvc repro` ended it
    if register_seed:
        tracker.registry.register_seed(parent, RoundLayout(root, 0).champion)
    return log_round_files(tracker, parent, root, round_index, config, started_from=started_from, out=out)


# Argo's {{workflow.status}} in an exit handler, as the MLflow status its parent run ends with. A stopped
# workflow runs its exit handler as Failed; a terminated one runs none, and its parent run stays RUNNING until a
# later workflow on the workspace ends it.
def end_workspace_loop(config: FlywheelConfig, *, loop_key: str, workflow_status: str = "", failures: str = "",
                       end: WorkflowEnd | None = None) -> dict:
    """A workflow's exit handler (the Argo door's ``onExit``, the Kubeflow pipelines' exit task): end the parent run
    of ``loop_key`` as the workflow ended (``end``, else ``workflow_end`` of Argo's status and failures: FINISHED,
    FAILED, or KILLED for ``argo stop``), with round runs a failed or stopped step left RUNNING under it, and tag
    the first failed step on it. Nothing to end (tracking off, or no round was ever tracked) is not an error: a
    workflow that failed before its first track has no parent run. Idempotent: a retried handler ends nothing
    twice."""
    end = end or workflow_end(workflow_status, failures)
    if not config.tracking.enabled:
        return {"tracking": "disabled", "status": end.status}
    parent = Tracker(config.tracking).end_loop_of(loop_key, end.status, error=end.first_failure)
    return {"parent_run_id": parent, "status": end.status, "first_failure": end.first_failure}


def git_commit() -> str | None:
    """The commit of the code that runs (the checkout flywheel is installed from), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
