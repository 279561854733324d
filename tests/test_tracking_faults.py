"""The MLflow store when things go wrong: runs a killed process left RUNNING end as KILLED on --restart and
--resume, and a store that cannot be written (read-only, full, refused) is one line and exit 2, before any work
where that can be known, and leaves no run RUNNING where the store still takes writes."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.cli import main
from flywheel.config import load_config
from flywheel.tracking import Tracker
from tests.conftest import SMOKE


def _config(tmp_path, uri, *overrides):
    return load_config(SMOKE, [f"tracking.uri={uri}", f"loop.out_dir={tmp_path / 'loop'}", *overrides])


def _statuses(uri: str) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("flywheel-smoke")
    return {run.info.run_id: run.info.status for run in client.search_runs([experiment.experiment_id])}


# --- a killed process's runs ----------------------------------------------------------------------------------

KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from flywheel.config import load_config
from flywheel.tracking import Tracker

uri, root = sys.argv[1], Path(sys.argv[2])
config = load_config(sys.argv[3], [f"tracking.uri={uri}", f"loop.out_dir={root}"])
tracker = Tracker(config.tracking)
parent = tracker.continue_loop(config, root, resume=False)
child = tracker.client.create_run(tracker.experiment_id, run_name="round-1",
                                  tags={"mlflow.parentRunId": parent, "flywheel.round": "1"})
print(parent, child.info.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer or a lost node does: no handler, no finally
"""


def _killed_run(uri: str, root: Path) -> tuple[str, str]:
    """The parent and round run a SIGKILLed ``flywheel run`` of ``root`` left RUNNING."""
    result = subprocess.run([sys.executable, "-c", KILLED_RUN, uri, str(root), str(SMOKE)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == -9, result.stderr
    parent, child = result.stdout.split()
    assert _statuses(uri) == {parent: "RUNNING", child: "RUNNING"}
    return parent, child


def test_a_restart_ends_the_runs_a_killed_process_left_running(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = tmp_path / "loop"
    parent, child = _killed_run(uri, root)
    config = _config(tmp_path, uri)
    tracker = Tracker(config.tracking)
    tracker.end_orphans(tmp_path / "elsewhere", keep="none")  # another directory's runs are not these
    assert _statuses(uri) == {parent: "RUNNING", child: "RUNNING"}
    now = tracker.continue_loop(config, root, resume=False)
    assert _statuses(uri) == {parent: "KILLED", child: "KILLED", now: "RUNNING"}
    assert "was killed" in tracker.client.get_run(parent).data.tags["flywheel.error"]
    assert tracker.client.get_run(now).data.tags["flywheel.pid"] == str(os.getpid())


def test_a_resume_ends_the_round_run_its_killed_process_was_logging(tmp_path):
    """The parent goes on (RUNNING again), the round run ends KILLED (the round is logged again). A parent of
    the same directory name on another host (a pod's own volume) is another run: left alone."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = tmp_path / "loop"
    config = _config(tmp_path, uri)
    tracker = Tracker(config.tracking)
    parent = tracker.continue_loop(config, root, resume=False)  # the process that is then killed
    child = tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    other_host = tracker.start_loop(config, loop_key=f"run:{root.resolve()}:1")
    tracker.client.set_tag(other_host, "flywheel.host", "another-host")
    assert tracker.continue_loop(config, root, resume=True) == parent
    assert _statuses(uri) == {parent: "RUNNING", child: "KILLED", other_host: "RUNNING"}


# --- a store that cannot be written ---------------------------------------------------------------------------

@contextlib.contextmanager
def _mount(tmp_path: Path, *options: str):
    """A directory mounted with ``options`` (a read-only bind mount, a tiny tmpfs): root's writes ignore
    permission bits, a mount does not. Skips where mounting is not allowed."""
    target = tmp_path / "mnt"
    target.mkdir()
    for command in options:
        result = subprocess.run(["mount", *command.split(), str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True)
            pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "--lazy", str(target)], check=True)  # lazy: a store MLflow still holds open


@contextlib.contextmanager
def _read_only(tmp_path: Path, source: Path):
    with _mount(tmp_path, f"--bind {source}", "-o remount,bind,ro") as target:
        yield target


def _run(tmp_path, tiny_seed, uri, capsys) -> tuple[int, str]:
    """``flywheel run -q`` in-process (no headings: stderr holds only what went wrong)."""
    code = main(["run", "-q", "-c", str(SMOKE), "-s", f"seed.path={tiny_seed}", "-s", "loop.rounds=1",
                 "-s", f"loop.out_dir={tmp_path / 'loop'}", "-s", f"tracking.uri={uri}"])
    return code, capsys.readouterr().err


def _assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("flywheel: error: ") and "field 'tracking.uri'" in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_sqlite_store_in_a_read_only_directory_is_one_line_before_any_work(tmp_path, tiny_seed, capsys):
    """MLflow retried this for 110 s and then printed a traceback."""
    (tmp_path / "store").mkdir()
    with _read_only(tmp_path, tmp_path / "store") as store:
        uri = f"sqlite:///{store / 'mlflow.db'}"
        code, err = _run(tmp_path, tiny_seed, uri, capsys)
    _assert_one_line(code, err, str(store), "Read-only file system", "--no-track")
    assert not (tmp_path / "loop").exists()


def test_a_read_only_sqlite_store_is_one_line_before_any_work(tmp_path, tiny_seed, capsys):
    (tmp_path / "store").mkdir()
    Tracker(_config(tmp_path, f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}").tracking)  # the store exists
    with _read_only(tmp_path, tmp_path / "store") as store:
        code, err = _run(tmp_path, tiny_seed, f"sqlite:///{store / 'mlflow.db'}", capsys)
    _assert_one_line(code, err, str(store / "mlflow.db"), "Read-only file system")
    assert not (tmp_path / "loop").exists()


def test_a_read_only_file_store_is_one_line_before_any_work(tmp_path, tiny_seed, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (tmp_path / "store").mkdir()
    with _read_only(tmp_path, tmp_path / "store") as store:
        code, err = _run(tmp_path, tiny_seed, f"file://{store / 'mlruns'}", capsys)
    _assert_one_line(code, err, str(store / "mlruns"), "Read-only file system")


def test_a_file_store_mlflow_refuses_is_one_line(tmp_path, tiny_seed, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    code, err = _run(tmp_path, tiny_seed, f"file://{tmp_path / 'mlruns'}", capsys)
    _assert_one_line(code, err, "MLFLOW_ALLOW_FILE_STORE=true", "sqlite:///")


def test_a_store_that_fills_up_during_the_run_is_one_line_and_leaves_no_run_running(tmp_path, tiny_seed, capsys):
    """The experiment's artifacts on a 64 KiB disk, its database elsewhere: the first model the loop logs fills
    the disk. The database still takes writes, so the parent run ends FAILED, not RUNNING."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with _mount(tmp_path, "-t tmpfs -o size=64k tmpfs") as disk:
        mlflow.MlflowClient(uri, uri).create_experiment("flywheel-smoke", artifact_location=f"file://{disk}")
        code, err = _run(tmp_path, tiny_seed, uri, capsys)
    _assert_one_line(code, err, str(disk), "the disk is full", "--resume")
    statuses = _statuses(uri)
    assert list(statuses.values()) == ["FAILED"], statuses
