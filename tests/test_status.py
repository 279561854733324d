"""`flywheel status DIR`: what it says about a run's rounds and its lock, read from the directory only."""

import json
import os
import socket

import pytest

from flywheel.cli import main
from flywheel.config import load_config
from flywheel.run_lock import RunLock
from flywheel.run_state import open_run
from flywheel.stages.records import ROUND_STAGES
from tests.conftest import SMOKE


@pytest.fixture
def finished_run(tmp_path, tiny_seed):
    """A run directory whose one round's stages are all recorded and whose report is written (no model ran:
    status reads records and decisions only)."""
    root = tmp_path / "run"
    open_run(root, load_config(SMOKE, [f"seed.path={tiny_seed}", f"loop.out_dir={root}", "loop.rounds=1"]), "new")
    (root / "state" / "0").mkdir(parents=True)
    (root / "state" / "0" / "prepare.json").write_text(json.dumps({"stage": "prepare", "seconds": 1, "outputs": {}}))
    (root / "state" / "1").mkdir()
    for stage in ROUND_STAGES:
        (root / "state" / "1" / f"{stage}.json").write_text(json.dumps({"stage": stage, "seconds": 1, "outputs": {}}))
    (root / "rounds" / "1").mkdir(parents=True)
    (root / "rounds" / "1" / "decision.json").write_text(json.dumps({"promote": True, "reason": "gain"}))
    (root / "report.json").write_text("{}")
    return root


def _status(capsys, root):
    code = main(["status", str(root)])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    return out.splitlines()


def test_a_finished_run(finished_run, capsys):
    lines = _status(capsys, finished_run)
    assert lines[1:] == ["round 1: promote  gain", "finished: report.json and report.html are written"]


@pytest.mark.parametrize("garbage", ["{half", "[]", '{"reason": "no promote key"}'])
def test_a_corrupt_decision_is_reported_as_corrupt_not_as_unfinished(finished_run, capsys, garbage):
    decision = finished_run / "rounds" / "1" / "decision.json"
    decision.write_text(garbage)
    lines = _status(capsys, finished_run)
    assert lines[1] == f"round 1: corrupt {decision}: not a gate decision; `flywheel run --resume` runs the gate again"
    assert lines[2].startswith("stopped before round:stage 1:gate")
    assert not any("unfinished" in line or "finished:" in line for line in lines)


@pytest.mark.parametrize("host", ["this", "elsewhere", None])
def test_a_lock_that_no_process_holds_is_reported_stale(finished_run, capsys, host):
    """Left by a killed run (its PID gone), copied from another host, or missing fields: no process holds it."""
    holder = {"pid": 2**22 + 7, "since": "2024-01-01T00:00:00"}
    if host:
        holder["host"] = socket.gethostname() if host == "this" else host
    (finished_run / ".flywheel.lock").write_text(json.dumps(holder))
    lines = _status(capsys, finished_run)
    shown = {"this": socket.gethostname(), "elsewhere": "elsewhere (another host)", None: "an unknown host"}[host]
    assert lines[-2] == (f"stale lock: {finished_run / '.flywheel.lock'} names pid {2**22 + 7} on {shown} since "
                         "2024-01-01T00:00:00, but no process holds it; the next `flywheel run` takes it over")
    assert lines[-1] == "finished: report.json and report.html are written"
    assert not any("running now" in line or "None" in line for line in lines)


def test_a_held_lock_is_reported_running(finished_run, capsys):
    with RunLock(finished_run):
        lines = _status(capsys, finished_run)
    assert lines[-1].startswith(f"running now: pid {os.getpid()} on {socket.gethostname()} since ")
