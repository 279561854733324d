"""The whole loop, top to bottom: seed evaluation, then N rounds of
prompts -> generate -> vote -> curate -> train -> evaluate -> gate (-> track).

Every path comes from ``flywheel.layout`` (the run directory's layout, shared by every front door).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import Callable

from flywheel import io, model_copies, schemas
from flywheel.config import FlywheelConfig
from flywheel.errors import InputError
from flywheel.layout import RoundLayout, RunLayout
from flywheel.modeling import looks_like_hub_name, member_dirs, resolve_model, seed_location
from flywheel.run_lock import RunLock
from flywheel.run_state import Ledger, check_out_dir, disk_full_is_one_line, open_run
from flywheel.stages.evaluate import evaluate_model, make_eval_set
from flywheel.stages.records import ROUND, ROUND_STAGES
from flywheel.tasks import load_task

log = logging.getLogger("flywheel")


def check_seed(config: FlywheelConfig) -> Path:
    """The seed directory, or a one-line error saying how to make it."""
    location = seed_location(config.seed.path)  # relative: under FLYWHEEL_HOME (the image's project directory)
    seed_dir = Path(location)
    if not seed_dir.exists() and not looks_like_hub_name(location):
        raise InputError(seed_dir, "seed model not found; run `make seed` (or `flywheel seed`) first",
                         field="seed.path")
    seed_dir = resolve_model(location)  # a hub name: its snapshot in the local cache
    member_dirs(seed_dir)  # a malformed model directory fails here, not deep inside round 1
    return seed_dir


def eval_set(config: FlywheelConfig, task) -> list[dict]:
    """The held-out labeled eval rows: the user's ``data.eval`` file, else the task's generated set."""
    if config.data.eval:
        from flywheel.data import load_eval

        return load_eval(config.data, task)
    return make_eval_set(task, config.evaluate)


def check_data(config: FlywheelConfig, task) -> None:
    """A bad prompt file fails now, not after the seed's evaluation (nor after an earlier run was deleted)."""
    if config.data.prompts:
        from flywheel.data import load_prompts

        load_prompts(config.data, task)


def prepare(config: FlywheelConfig, root: Path, *, task) -> Path:
    """Write the eval set and round 0 (the seed as champion, its scores, an empty pool). Returns the eval path."""
    run = RunLayout(Path(root))
    seed_dir = check_seed(config)
    check_data(config, task)
    zero = run.round(0)
    rows = eval_set(config, task)  # a bad data.eval fails before anything is created
    # Published together: a failed evaluation leaves the earlier round 0 (or none), never a new eval set beside
    # old scores.
    with io.publish_together(root) as staged:
        def at(path: Path) -> Path:
            return staged(str(path.relative_to(root)))

        eval_path, champion = at(run.eval_set), at(zero.champion)
        io.write_rows(eval_path, rows, schemas.PROMPTS)
        model_copies.link_or_copy_tree(seed_dir, champion)
        io.write_rows(at(zero.pool), [], schemas.CURATED)
        metrics, _ = evaluate_model(champion, io.read_rows(eval_path, schemas.PROMPTS), config.evaluate,
                                    task=task, device=config.loop.device, progress=config.loop.progress)
        io.write_json(at(zero.metrics), {"champion": metrics})
    return run.eval_set


@dataclass(frozen=True)
class RoundStage:
    """One stage of a round: its name, the files it writes, and the call that writes them from the files
    the stages before it wrote."""

    name: str
    outputs: list[Path]
    run: Callable[[], dict]


def round_stages(config: FlywheelConfig, root: Path, round_index: int, *, task) -> list[RoundStage]:
    """The stages of round ``round_index`` of the run at ``root``, in order, every path from the round's layout
    (``flywheel.stages.records``: each stage's files and call). ``flywheel run`` runs them all (``run_round``);
    ``flywheel step`` runs one (the Argo Workflows door, one pod per stage)."""
    this = RoundLayout(Path(root), round_index)
    stages = []
    for stage in ROUND:
        paths = stage.paths_of(this, config)
        stages.append(RoundStage(stage.name, stage.outputs(paths),
                                 partial(stage.run, config, task, round_index, paths)))
    return stages


def run_round(config: FlywheelConfig, root: Path, round_index: int, *, task, ledger: Ledger | None = None) -> dict:
    """One round; every stage reads the previous stage's files. Returns the gate's decision.

    ``ledger`` (``flywheel run``) records each completed stage and, on ``--resume``, skips the ones
    that are complete; without it every stage runs.
    """
    ledger = ledger or Ledger(None)
    for stage in round_stages(config, root, round_index, task=task):
        ledger.stage(round_index, stage.name, stage.outputs, stage.run)
    this = RoundLayout(Path(root), round_index)
    seconds = ledger.seconds(round_index)
    if seconds:  # a resumed round keeps the seconds its skipped stages took when they ran
        io.write_json(this.timings, {k: seconds[k] for k in ROUND_STAGES if k in seconds})
    return io.read_json(this.decision)


def run_loop(config: FlywheelConfig, *, tracker=None, on_round=None, mode: str = "new") -> dict:
    """``flywheel run``: the seed's scores, then ``loop.rounds`` rounds; writes report.json and report.html.

    ``mode``: 'new' (refuses a directory holding an earlier run), 'restart' (deletes it first) or
    'resume' (continues it: complete stages are skipped, the MLflow parent run continues).
    Every input is checked before anything is deleted, and the directory is locked while the loop runs.
    An error, Ctrl-C or SIGTERM ends the MLflow runs as FAILED or KILLED.
    """
    from flywheel.report import build_report, write_report
    from flywheel.tracking import log_round_files

    task = load_task(config.task, config.code)
    root = check_out_dir(config.loop.out_dir)
    check_seed(config)
    check_data(config, task)
    with RunLock(root), disk_full_is_one_line(root):
        ledger = open_run(root, config, mode)
        run, zero = RunLayout(root), RoundLayout(root, 0)
        eval_path = run.eval_set
        ledger.stage(0, "prepare", [eval_path, zero.champion, zero.pool, zero.eval_dir],
                     lambda: prepare(config, root, task=task))
        parent = tracker.continue_loop(config, root, resume=mode == "resume") if tracker is not None else None
        try:
            if tracker is not None:
                ledger.stage(0, "track", [run.tracking_record(0)], lambda: io.write_json(
                    run.tracking_record(0), {"seed_version": tracker.registry.register_seed(parent, zero.champion)}))
            for round_index in range(1, config.loop.rounds + 1):
                decision = run_round(config, root, round_index, task=task, ledger=ledger)
                if tracker is not None:
                    record = run.tracking_record(round_index)
                    ledger.stage(round_index, "track", [record], lambda r=round_index: log_round_files(
                        tracker, parent, root, r, config))
                    logged = io.read_json(record)
                    if logged.get("promotion") == "stale":
                        log.warning("round %d: the gate promoted, but MLflow's '%s' alias of %s names v%s, not "
                                    "v%s that this run started from: the alias stays (stale)", round_index,
                                    "champion", config.tracking.registered_model, logged.get("champion_version"),
                                    logged.get("started_from"))
                if on_round is not None:
                    on_round(round_index, build_report(root, config))
                if config.loop.stop_on_decline and not decision["promote"]:
                    break  # what the Kubeflow `flywheel` pipeline does: its next round runs only after a promotion
            report = build_report(root, config)  # with its MLflow section, from the rounds' tracking records
            write_report(root, report)
            if tracker is not None:
                tracker.end_loop(parent, {"final": report["summary"]})
        except BaseException as error:
            if parent is not None:
                tracker.fail_loop(parent, error)
            raise
    return report
