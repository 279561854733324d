"""``flywheel status DIR``: which rounds of a run finished, their decisions, and where the loop stopped.

Read from the run directory only (config.yaml, state/, rounds/*/decision.json, the lock file, whose lock is
probed and dropped at once); nothing is loaded or run, so it answers in well under a second while a run is going on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.errors import InputError
from flywheel.layout import RoundLayout, RunLayout
from flywheel.run_lock import LockState, describe_holder, read_lock
from flywheel.run_state import RUN_CONFIG, STATE_DIR
from flywheel.stages.records import ROUND_STAGES

# The stages of round 0 and of each round, in loop order ("track" only when MLflow is on).
PREPARE_STAGES = ("prepare", "track")
TRACKED_ROUND_STAGES = ROUND_STAGES + ("track",)


@dataclass
class RoundStatus:
    round: int
    stages_done: list[str]
    promote: bool | None = None  # None: the gate has not decided
    reason: str = ""
    corrupt: Path | None = None  # the gate is done but this decision.json is not a decision


@dataclass
class RunStatus:
    root: Path
    rounds_planned: int | None
    tracked: bool
    rounds: list[RoundStatus] = field(default_factory=list)
    lock: LockState | None = None  # the lock file, if there is one: held by a running loop, or left stale
    lock_problem: str = ""  # the lock's name holds something that is not a lock file
    finished: bool = False  # the report of the last planned round is written
    next_stage: str | None = None  # "<round>:<stage>" where the loop stopped (or is now)
    stepwise: bool = False  # no `flywheel run` ledger: a dvc or Argo workspace, read from its outputs


def run_status(root: Path) -> RunStatus:
    root = Path(root)
    config_path = root / RUN_CONFIG
    if not config_path.is_file():
        raise InputError(root, "no run here (no config.yaml; `flywheel run` writes it)", field="root")
    from flywheel.config import load_config

    config = load_config(config_path)
    tracked = config.tracking.enabled and RunLayout(root).loop_record.is_file()
    status = RunStatus(root=root, rounds_planned=config.loop.rounds, tracked=tracked)
    try:
        status.lock = read_lock(root)
    except InputError as error:
        status.lock_problem = str(error)
    state = root / STATE_DIR
    if not state.is_dir() and RunLayout(root).round(0).metrics.is_file():
        return _stepwise_status(status, config, root)
    expected = [(0, s) for s in PREPARE_STAGES if s != "track" or tracked]
    round_index = 1
    while (state / str(round_index)).is_dir() or RunLayout(root).round(round_index).dir.is_dir():
        done = [s for s in TRACKED_ROUND_STAGES if (state / str(round_index) / f"{s}.json").is_file()]
        status.rounds.append(_round_status(round_index, done, RoundLayout(root, round_index).decision))
        round_index += 1
    for r in range(1, max(len(status.rounds), config.loop.rounds) + 1):
        expected += [(r, s) for s in TRACKED_ROUND_STAGES if s != "track" or tracked]
    stopped_early = config.loop.stop_on_decline and any(r.promote is False for r in status.rounds)
    for r, stage in expected:
        if not (state / str(r) / f"{stage}.json").is_file():
            if not (stopped_early and r > min(x.round for x in status.rounds if x.promote is False)):
                status.next_stage = f"{r}:{stage}"
            break
    corrupt = [r.round for r in status.rounds if r.corrupt]
    if corrupt:  # its gate's record no longer matches what it recorded: --resume runs the gate again
        status.next_stage = f"{corrupt[0]}:gate"
    status.finished = status.next_stage is None and RunLayout(root).report_json.is_file()
    return status


def _round_status(index: int, done: list[str], decision_path: Path) -> RoundStatus:
    """A round's stages done and, once its gate is, the gate's decision (or that decision.json is corrupt)."""
    status = RoundStatus(round=index, stages_done=done)
    if "gate" not in done or not decision_path.is_file():
        return status
    try:
        decision = json.loads(decision_path.read_text())
    except (OSError, ValueError):
        decision = None
    if not (isinstance(decision, dict) and isinstance(decision.get("promote"), bool)):
        status.corrupt = decision_path
        return status
    status.promote, status.reason = decision["promote"], str(decision.get("reason", ""))
    return status


def _stepwise_status(status: RunStatus, config, root: Path) -> RunStatus:
    """A workspace run a stage at a time (``dvc repro``, ``flywheel step`` in the Argo door's pods): no ledger, so
    a stage is done when its outputs exist (``flywheel.loop.round_stages`` names them)."""
    from flywheel.loop import round_stages

    run = RunLayout(root)
    status.stepwise = True
    for index in [i for i in run.round_indices() if i > 0]:
        stages = round_stages(config, root, index, task=None)
        done = [stage.name for stage in stages if all(path.exists() for path in stage.outputs)]
        status.rounds.append(_round_status(index, done, run.round(index).decision))
        missing = [stage.name for stage in stages if stage.name not in done]
        if status.rounds[-1].corrupt:
            missing.insert(0, "gate")
        if missing and status.next_stage is None:
            status.next_stage = f"{index}:{missing[0]}"
    if status.next_stage is None:
        status.next_stage = f"{run.next_round()}:prompts"
    return status


def status_lines(status: RunStatus) -> list[str]:
    lines = [f"run: {status.root}  (rounds planned: {status.rounds_planned}, "
             f"MLflow: {'on' if status.tracked else 'off'})"]
    for r in status.rounds:
        if r.corrupt:
            again = f"`flywheel step gate --round {r.round}`" if status.stepwise else "`flywheel run --resume`"
            lines.append(f"round {r.round}: corrupt {r.corrupt}: not a gate decision; {again} runs the gate again")
        elif r.promote is None:
            lines.append(f"round {r.round}: unfinished, done: {', '.join(r.stages_done) or 'nothing'}")
        else:
            lines.append(f"round {r.round}: {'promote' if r.promote else 'decline'}  {r.reason}")
    if status.lock_problem:
        lines.append(f"lock: {status.lock_problem}")
    if status.lock and not status.lock.held:
        lines.append(f"stale lock: {status.lock.path} names {describe_holder(status.lock.holder)}, but no process "
                     "holds it; the next `flywheel run` takes it over")
    if status.lock and status.lock.held:
        lines.append(f"running now: {describe_holder(status.lock.holder)}, at round:stage {status.next_stage}")
    elif status.finished:
        lines.append("finished: report.json and report.html are written")
    elif status.stepwise:
        lines.append(f"run a stage at a time (dvc repro, or the Argo door's flywheel step); next: round:stage "
                     f"{status.next_stage}")
    else:
        lines.append(f"stopped before round:stage {status.next_stage or 'the report'}; "
                     "continue with `flywheel run -c <its config> --resume`")
    return lines
