"""SIGTERM (a pod being stopped, ``kill``) always stops flywheel: exit 143, one line on stderr, MLflow runs KILLED.

Python runs a signal handler wherever the main thread is. When that is a callback the interpreter calls itself (a
thread pool's weakref callback that MLflow or a library left behind, a ``__del__``), the handler's exception is
printed as "Exception ignored in ..." and lost; the run went on and finished with exit 0. These tests lose the
exception on purpose (the signal raised inside a weakref callback) and with real processes stopped mid-run.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from flywheel import io, schemas
from flywheel.errors import Terminated
from flywheel.run_state import Ledger
from flywheel.termination import install_termination_handler


@contextlib.contextmanager
def _sigterm_handled():
    """The termination handler installed in this process (in the test's body: pytest puts its own unraisable
    hook in place for each test phase), and the previous handlers back after. Hold on to a Terminated caught
    inside (``pytest.raises(...) as stopped``) until then: once it is gone, the handler's watcher raises SIGTERM
    again, since the process was asked to stop."""
    handler, hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    restore = install_termination_handler()
    try:
        yield
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is handler and sys.unraisablehook is hook


class _Thing:
    pass


def _lose_a_sigterm(unraisable: list) -> None:
    """SIGTERM arrives while the interpreter runs a weakref callback (as when a dropped ThreadPoolExecutor's
    ``weakref_cb`` runs): the handler's exception is raised inside the callback, where Python only reports it."""
    thing = _Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGTERM))  # raise_signal: handled right here
    previous = sys.unraisablehook

    def record(report):
        unraisable.append(report.exc_type)
        previous(report)

    sys.unraisablehook = record
    try:
        del thing
    finally:
        sys.unraisablehook = previous
    assert ref() is None


def test_a_sigterm_lost_in_a_weakref_callback_stops_the_run_at_the_next_stage():
    unraisable, ran = [], []
    ledger = Ledger(None)
    with _sigterm_handled(), pytest.raises(Terminated) as stopped:
        ledger.stage(1, "generate", [], lambda: (_lose_a_sigterm(unraisable), ran.append("generate")))
        ledger.stage(1, "vote", [], lambda: ran.append("vote"))
    assert stopped.value and unraisable == [Terminated]  # it really was lost where it was raised
    assert ran == ["generate"]


def test_a_sigterm_lost_in_a_weakref_callback_is_raised_again_inside_a_long_stage():
    """Not only at the next stage: a stage that trains for hours stops soon after too."""
    ran = []

    def long_stage():
        _lose_a_sigterm([])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a long computation; the re-raised SIGTERM ends it
            time.sleep(0.01)
        ran.append("the whole minute")

    with _sigterm_handled(), pytest.raises(Terminated) as stopped:
        Ledger(None).stage(1, "train", [], long_stage)
    assert stopped.value and ran == []


def test_a_sigterm_inside_an_mlflow_store_request_is_raised_after_it(tmp_path):
    """Cut inside its database commit, a request left the client's session broken, and the runs the unwinding
    should end KILLED stayed RUNNING. The signal arrives in the commit here (sqlalchemy's commit event)."""
    import sqlalchemy

    from flywheel.config import load_config
    from flywheel.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(load_config(None, [f"tracking.uri={uri}"]).tracking)

    def sigterm_in_commit(connection):
        signal.raise_signal(signal.SIGTERM)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", sigterm_in_commit)
    try:
        with _sigterm_handled(), pytest.raises(Terminated) as stopped:
            tracker.client.create_run(tracker.experiment_id, run_name="cut")
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "commit", sigterm_in_commit)
    assert stopped.value
    [run] = tracker.client.search_runs([tracker.experiment_id])  # the request finished, then the signal was raised
    tracker.client.set_terminated(run.info.run_id, status="KILLED")  # and the client still works
    assert tracker.client.get_run(run.info.run_id).info.status == "KILLED"


def test_restore_puts_the_handlers_back_and_forgets_the_signal():
    """What ``flywheel.cli.main`` does when called in-process (tests): a later call starts with no SIGTERM."""
    handler, hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    restore = install_termination_handler()
    with pytest.raises(Terminated) as stopped:
        signal.raise_signal(signal.SIGTERM)
    restore()
    assert stopped.value
    assert signal.getsignal(signal.SIGTERM) is handler and sys.unraisablehook is hook
    restore = install_termination_handler()
    try:
        assert Ledger(None).stage(1, "vote", [], lambda: None)
    finally:
        restore()


# --- real processes -------------------------------------------------------------------------------------------

def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("FLYWHEEL_KILL_AT", None)
    return env


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler installed (Linux: the SigCgt mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _assert_stopped(returncode: int, stderr: str, command: str) -> None:
    """Exit 143 and one line on stderr besides the stage headings, naming the command; no traceback."""
    assert returncode == 143, stderr[-3000:]
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("== round ")]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("flywheel: terminated;") and f"`flywheel {command}`" in lines[0], lines[0]


@pytest.mark.parametrize("heading", [pytest.param("== round 0: track", marks=pytest.mark.slow), "== round 1: train",
                                     pytest.param("== round 1: track", marks=pytest.mark.slow)])
def test_a_sigterm_during_a_tracked_run_exits_143_and_ends_its_mlflow_runs_killed(workdir, heading):
    """SIGTERM as soon as the run logs ``heading``: inside the seed's registration, the training (where thread
    pools' weakref callbacks run), and the round's MLflow logging."""
    import mlflow

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    process = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "run", "-c", "configs/smoke.yaml",
                                "-s", "loop.rounds=1", "-s", f"tracking.uri={uri}"], cwd=workdir, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.rstrip("\n") == heading:
            process.send_signal(signal.SIGTERM)
            break
    seen.append(process.stderr.read())
    returncode = process.wait(timeout=300)
    assert heading + "\n" in seen, "".join(seen)[-3000:]
    _assert_stopped(returncode, "".join(seen), "run")
    assert "flywheel run --resume" in seen[-1]
    client = mlflow.MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name("flywheel-smoke").experiment_id])
    assert runs and {run.info.status for run in runs} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in runs]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc to see the handler installed")
def test_a_sigterm_to_a_single_stage_command_exits_143_with_one_line_naming_it(workdir):
    rows = [{"prompt": f"{a}+{a}=", "completion": f"{2 * a}"} for a in range(1, 9)]
    io.write_rows(workdir / "train.parquet", rows, schemas.CURATED)
    process = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "train", "-c", "configs/smoke.yaml",
                                "-s", "train.steps=1000000", "--round", "1", "--data", "train.parquet",
                                "--init", "runs/smoke/seed", "--out", "candidate"], cwd=workdir, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a million steps: still training when the signal arrives
        while not _catches_sigterm(process.pid) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    _assert_stopped(process.returncode, stderr, "train")
    assert not (workdir / "candidate").exists()
