"""MLflow: a parent run per loop, a nested run per round, every candidate a registered model version.

The stages know nothing of MLflow. After each round, ``log_round`` reads what the
round wrote (vote.json, curation.json, eval/metrics.json, decision.json, timings)
and logs it, so ``flywheel run`` and ``dvc repro`` (its ``track`` stage) log the same
things. The registered model's alias ``champion`` moves only when the gate promotes, and then by
compare-and-swap (``promote``): only if it still names the version the round started from. A round
whose gate promoted but whose alias had moved meanwhile (another run, an overlapping schedule) ends
``stale``, with nothing moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from flywheel.config import FlywheelConfig, TrackingConfig
from flywheel.layout import FILES, RoundLayout, RunLayout
from flywheel.modeling import read_model_meta

EVAL_METRICS = f"{FILES.eval_dir}/{FILES.metrics}"  # relative to the round, as MLflow's artifact path too
CHAMPION_ALIAS = "champion"
# Model version tag: the URI of the model directory inside the version's pyfunc (what a round continues from).
FILES_TAG = "flywheel.files"
LOOP_TAG = "flywheel.loop"
# The outcome of a round for the registry: the gate declined, promoted (alias moved), or promoted a candidate
# of a champion that is no longer the alias holder (stale: nothing moved).
PROMOTED, DECLINED, STALE = "promoted", "declined", "stale"


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    elif isinstance(value, bool):
        out[prefix] = float(value)
    elif isinstance(value, (int, float)) and value is not None:
        out[prefix] = float(value)
    return out


def _mlflow_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


class Tracker:
    """Thin wrapper over the MLflow client; one instance per loop."""

    def __init__(self, config: TrackingConfig):
        import mlflow

        check_reachable(config.uri)
        self.config = config
        self.mlflow = mlflow
        # How a registered model answers prompts (flywheel.mlflow_model), set by the loop's config.
        self._serving = {"task": "addition", "max_new_tokens": 32}
        mlflow.set_tracking_uri(config.uri)
        mlflow.set_registry_uri(config.uri)
        self.client = mlflow.MlflowClient(config.uri, config.uri)
        experiment = self.client.get_experiment_by_name(config.experiment)
        self.experiment_id = (experiment.experiment_id if experiment
                              else self.client.create_experiment(config.experiment))

    def start_loop(self, config: FlywheelConfig, loop_key: str) -> str:
        """The parent run for ``loop_key`` (created once, found again on re-runs)."""
        self.use_config(config)
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{LOOP_TAG}` = '{loop_key}'",
                                       max_results=1)
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{config.name}", tags={LOOP_TAG: loop_key})
        params = {}
        for section, values in asdict(config).items():
            if isinstance(values, dict):
                for key, value in values.items():
                    params[f"{section}.{key}"] = str(value)[:500]
            else:
                params[section] = str(values)
        self._log_batch(run.info.run_id, params=sorted(params.items()))
        return run.info.run_id

    def use_config(self, config: FlywheelConfig) -> None:
        """How the registered models answer prompts: the task and completion length the loop evaluates with."""
        self._serving = {"task": config.task, "max_new_tokens": config.evaluate.max_new_tokens}

    def continue_loop(self, config: FlywheelConfig, root: Path, *, resume: bool) -> str:
        """``flywheel run``'s parent run: a new one, or on ``--resume`` the one the run started (RUNNING again).

        Its id and key are kept in ``<root>/tracking/loop.json``, beside the run they belong to.
        """
        from flywheel import io

        record = RunLayout(Path(root)).loop_record
        if resume and record.is_file():
            saved = io.read_json(record)
            run_id = self.start_loop(config, loop_key=saved["loop_key"])
            self.client.update_run(run_id, status="RUNNING")
        else:
            loop_key = f"run:{Path(root).resolve()}:{time.time_ns()}"
            run_id = self.start_loop(config, loop_key=loop_key)
            io.write_json(record, {"loop_key": loop_key, "parent_run_id": run_id})
        self.client.set_tag(run_id, "mlflow.source.git.commit", git_commit() or "unknown")
        return run_id

    def end_loop(self, run_id: str, summary: dict) -> None:
        self._log_batch(run_id, metrics=[(_mlflow_key(k), v, 0) for k, v in _flatten("", summary, {}).items()])
        self.client.set_terminated(run_id)

    def fail_loop(self, run_id: str, error: BaseException) -> None:
        """End the parent run, and any round run left open under it, as KILLED (Ctrl-C, SIGTERM) or FAILED."""
        from flywheel.errors import Terminated

        status = "KILLED" if isinstance(error, (KeyboardInterrupt, Terminated)) else "FAILED"
        try:
            for child in self._children(run_id):
                if child.info.status == "RUNNING":
                    self.client.set_terminated(child.info.run_id, status=status)
            self.client.set_tag(run_id, "flywheel.error", f"{type(error).__name__}: {error}"[:500])
            self.client.set_terminated(run_id, status=status)
        except Exception as tracking_error:  # the original error is the one to report
            print(f"flywheel: warning: could not mark MLflow run {run_id} {status}: {tracking_error}",
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
        query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
        if round_index is not None:
            query += f" and tags.`flywheel.round` = '{round_index}'"
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000)

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.config.registered_model)
        except MlflowException:
            self.client.create_registered_model(self.config.registered_model,
                                                description="Candidates of the flywheel; alias 'champion' = current best.")

    def register_seed(self, parent_run_id: str, seed_dir: Path) -> str:
        """Register the seed as a version; it becomes the champion only if there is none yet."""
        from mlflow.exceptions import MlflowException

        self._ensure_registered_model()
        for version in self.client.search_model_versions(f"run_id = '{parent_run_id}'"):
            if version.tags.get("role") == "seed":  # registered before this run was interrupted and resumed
                return version.version
        from flywheel.mlflow_model import log_pyfunc  # MLflow's pyfunc: only where a run is tracked

        source, files = log_pyfunc(self.client, parent_run_id, Path(seed_dir), "seed", **self._serving)
        version = self.client.create_model_version(self.config.registered_model, source, parent_run_id,
                                                   tags={"role": "seed", FILES_TAG: files})
        try:
            self.client.get_model_version_by_alias(self.config.registered_model, CHAMPION_ALIAS)
        except MlflowException:
            self.client.set_registered_model_alias(self.config.registered_model, CHAMPION_ALIAS, version.version)
        return version.version

    def champion_version(self) -> str | None:
        """The version the ``champion`` alias names now (None: no alias yet)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.config.registered_model, CHAMPION_ALIAS).version
        except MlflowException:
            return None

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

    def promote(self, version: str, *, started_from: str | None, claim: str) -> tuple[str, str | None]:
        """Move the ``champion`` alias to ``version`` only if it still names ``started_from``.

        MLflow has no conditional alias update, so the swap is guarded by a record only one writer can
        create: a registered model named ``<model>.promoted-from-v<started_from>`` (names are unique in
        every MLflow store; a second create fails with RESOURCE_ALREADY_EXISTS). The alias only ever
        moves to a new version, so each version is left at most once and two rounds that started from the
        same champion cannot both move it. ``claim`` names the round (loop run and round); a re-run of the
        same round after a kill finishes its own claim. Returns (PROMOTED or STALE, the alias holder after).
        """
        from mlflow.exceptions import MlflowException

        name = self.config.registered_model
        current = self.champion_version()
        if started_from is None:  # a lineage with no registered champion (no seed version): never move
            return STALE, current
        record = f"{name}.promoted-from-v{started_from}"
        if current != started_from and self._record(record).get("flywheel.claim") != claim:
            return STALE, current
        try:
            self.client.create_registered_model(
                record, tags={"flywheel.claim": claim, "from_version": started_from, "to_version": version},
                description=f"Promotion record: the '{CHAMPION_ALIAS}' alias of {name} left v{started_from} "
                            f"for v{version}. Guards the compare-and-swap; do not delete.")
        except MlflowException as error:
            existing = self._record(record)
            if error.error_code != "RESOURCE_ALREADY_EXISTS" or existing.get("flywheel.claim") != claim:
                # Lost the race: the winner's version is (or is about to be) the alias holder.
                return STALE, existing.get("to_version") or self.champion_version()
            self.client.set_registered_model_tag(record, "to_version", version)  # our own, interrupted
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        return PROMOTED, version

    def _record(self, name: str) -> dict:
        """The tags of promotion record ``name`` ({} if there is none)."""
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_registered_model(name).tags)
        except MlflowException:
            return {}

    def log_round(self, parent_run_id: str, round_index: int, round_dir: Path, config: FlywheelConfig,
                  data_digest: str, *, started_from: str | None = None) -> dict:
        """Nested run for a round: params per stage, metrics, the data digest, the candidate version, and the
        alias moved by compare-and-swap from ``started_from`` (default: the loop's lineage,
        ``lineage_version``; a scheduled round passes the alias holder it downloaded)."""
        self.use_config(config)
        if started_from is None:
            started_from = self.lineage_version(parent_run_id, round_index)
        # A round logged again (a resumed run killed while tracking it) replaces its earlier, partial run.
        for earlier in self._children(parent_run_id, round_index):
            for version in self.client.search_model_versions(f"run_id = '{earlier.info.run_id}'"):
                self.client.delete_model_version(version.name, version.version)
            self.client.delete_run(earlier.info.run_id)
        run = self.client.create_run(self.experiment_id, run_name=f"round-{round_index}",
                                     tags={"mlflow.parentRunId": parent_run_id, "flywheel.round": str(round_index),
                                           "mlflow.source.git.commit": git_commit() or "unknown"})
        run_id = run.info.run_id
        try:
            return self._log_round(run_id, parent_run_id, round_index, round_dir, config, data_digest, started_from)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise

    def _log_round(self, run_id: str, parent_run_id: str, round_index: int, round_dir: Path,
                   config: FlywheelConfig, data_digest: str, started_from: str | None) -> dict:
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

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
        metrics = [(_mlflow_key(key), value, round_index) for key, value in round_metrics(round_dir).items()]
        self._log_batch(run_id, params=params, metrics=curves + metrics)
        self._log_batch(parent_run_id, metrics=metrics)
        with warnings.catch_warnings():  # mlflow warns that a local path matches two equivalent source types
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(os.fspath(round_dir.resolve()))
        # The digest is DVC's md5 of the round directory: the same value dvc.lock records.
        dataset = MetaDataset(source, name=f"round-{round_index}", digest=data_digest)
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                              tags=[InputTag("mlflow.data.context", "training")])])
        # Each output's DVC md5, as dvc.lock records it: from a run to `dvc checkout` of exactly its data.
        for name, md5 in output_digests(round_dir).items():
            self.client.set_tag(run_id, f"dvc.md5.{name}", md5)
        for name in (FILES.vote_summary, FILES.curation, FILES.decision, EVAL_METRICS):
            if (round_dir / name).exists():
                self.client.log_artifact(run_id, os.fspath(round_dir / name), os.path.dirname(name) or None)
        self._ensure_registered_model()
        from flywheel.mlflow_model import log_pyfunc

        source, files = log_pyfunc(self.client, run_id, round_dir / FILES.candidate, "candidate", **self._serving)
        decision = json.loads((round_dir / FILES.decision).read_text())
        version = self.client.create_model_version(
            self.config.registered_model, source, run_id,
            tags={"round": str(round_index), "promoted": str(decision["promote"]).lower(),
                  "data_digest": data_digest, FILES_TAG: files},
            description=decision["reason"])
        promotion, holder = DECLINED, self.champion_version()
        if decision["promote"]:
            promotion, holder = self.promote(version.version, started_from=started_from,
                                             claim=f"{parent_run_id}:round-{round_index}")
        self.client.set_model_version_tag(self.config.registered_model, version.version, "promotion", promotion)
        self.client.set_tag(run_id, "flywheel.decision", "promote" if decision["promote"] else "decline")
        self.client.set_tag(run_id, "flywheel.promotion", promotion)
        self.client.set_tag(run_id, "flywheel.started_from", str(started_from))
        if promotion == STALE:
            self.client.set_tag(run_id, "flywheel.stale", f"the gate promoted v{version.version}, but the "
                                f"'{CHAMPION_ALIAS}' alias names v{holder}, not v{started_from} that this round "
                                "started from: nothing moved")
        self.client.set_terminated(run_id)
        return {"run_id": run_id, "model_version": version.version, "promoted": decision["promote"],
                "promotion": promotion, "started_from": started_from, "champion_version": holder}


def loop_key(door: str, root: str | Path) -> str:
    """The ``flywheel.loop`` tag of a run directory's MLflow parent run: one parent per directory and door
    (``dvc``: ``dvc repro``'s data directory; ``kfp``: a Kubeflow workspace), found again by it."""
    return f"{door}:{Path(root).resolve()}"


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
        tracker.register_seed(parent, RoundLayout(root, 0).champion)
    return log_round_files(tracker, parent, root, round_index, config, started_from=started_from, out=out)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """An MLflow server that does not answer is one line within seconds, before any work (MLflow's own client
    retries for minutes and then raises a traceback). Local stores (sqlite, file) need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    from flywheel.errors import InputError, one_line

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy or an older server without /health): the client will say more
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise InputError(uri, f"MLflow does not answer within {timeout_s:g} s ({one_line(reason)}); start it, "
                         "fix tracking.uri, or run with --no-track", field="tracking.uri") from None


def output_digests(round_dir: Path) -> dict[str, str]:
    """DVC md5 of each output of a round (``samples.parquet``, ``candidate``, ``eval/metrics.json``, ...): the
    value ``dvc.lock`` records for it. A model directory is one output; other directories list their files."""
    from flywheel.versioning import digest

    out = {}
    for entry in sorted(p for p in Path(round_dir).iterdir() if not p.name.startswith(".")):
        out[entry.name] = digest(entry)
        if entry.is_dir() and not (entry / "flywheel-model.json").is_file():
            for child in sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")):
                out[f"{entry.name}/{child.name}"] = digest(child)
    return out


def git_commit() -> str | None:
    """The commit of the code that runs (the checkout flywheel is installed from), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def round_metrics(round_dir: Path) -> dict[str, float]:
    """Every number a round wrote, flattened to ``stage.key`` (e.g. ``curate.drops.vote:low_share``)."""
    out: dict[str, float] = {}
    for stage, name in (("prompts", FILES.prompts_summary), ("vote", FILES.vote_summary), ("curate", FILES.curation),
                        ("evaluate", EVAL_METRICS), ("gate", FILES.decision), ("time", FILES.timings)):
        path = round_dir / name
        if path.exists():
            data = json.loads(path.read_text())
            if stage == "curate":  # the per-threshold audit table becomes one metric pair per threshold
                for row in data.pop("thresholds", []):
                    data[f"threshold_{row['threshold']}"] = {"yield": row["yield"], "precision": row["precision"]}
            _flatten(stage, data, out)
    return out
