"""A run directory's state: new/restart/resume, changed-config refusal, stage records, stale temporaries."""

import json
import os
import time

import pytest

from flywheel.cli import main
from flywheel.config import load_config
from flywheel.errors import InputError
from flywheel.run_state import Ledger, changed_keys, open_run, path_md5, remove_stale_temporaries
from tests.conftest import SMOKE


def _config(root, seed, *overrides):
    return load_config(SMOKE, [f"seed.path={seed}", f"loop.out_dir={root}", *overrides])


def test_changed_keys_name_every_changed_setting_but_rounds_and_progress():
    saved = {"train": {"steps": 5, "lora": {"r": 8}}, "loop": {"rounds": 2, "progress": True}}
    now = {"train": {"steps": 6, "lora": {"r": 16}}, "loop": {"rounds": 5, "progress": False}}
    assert changed_keys(saved, now) == ["train.lora.r", "train.steps"]


def test_new_refuses_a_directory_with_a_run_and_resume_refuses_a_changed_config(tmp_path, tiny_seed):
    root = tmp_path / "run"
    open_run(root, _config(root, tiny_seed), "new")
    assert (root / "config.yaml").is_file() and (root / "state" / "inputs.json").is_file()
    with pytest.raises(InputError, match="holds an earlier run; pass --resume"):
        open_run(root, _config(root, tiny_seed), "new")
    with pytest.raises(InputError, match=r"config changed since the run started \(curate.min_vote_share, "
                                         r"train.steps\)"):
        open_run(root, _config(root, tiny_seed, "train.steps=7", "curate.min_vote_share=0.9"), "resume")
    open_run(root, _config(root, tiny_seed, "loop.rounds=9"), "resume")  # more rounds: allowed
    assert load_config(root / "config.yaml").loop.rounds == 9


def test_resume_refuses_a_seed_whose_files_changed(tmp_path, tiny_seed):
    import shutil

    seed = tmp_path / "seed"
    shutil.copytree(tiny_seed, seed)
    root = tmp_path / "run"
    open_run(root, _config(root, seed), "new")
    (seed / "member-0" / "config.json").write_text((seed / "member-0" / "config.json").read_text() + " ")
    with pytest.raises(InputError, match=r"seed.path \(its contents\)"):
        open_run(root, _config(root, seed), "resume")


def test_resume_without_a_run_and_restart_deletes_only_results(tmp_path, tiny_seed):
    root = tmp_path / "run"
    with pytest.raises(InputError, match="no run to resume here"):
        open_run(root, _config(root, tiny_seed), "resume")
    open_run(root, _config(root, tiny_seed), "new")
    (root / "rounds" / "1").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    open_run(root, _config(root, tiny_seed), "restart")
    assert not (root / "rounds").exists() and (root / "notes.txt").read_text() == "mine"


def test_a_bad_prompt_file_fails_before_an_earlier_run_is_touched(tmp_path, tiny_seed, monkeypatch):
    root = tmp_path / "run"
    open_run(root, _config(root, tiny_seed), "new")
    (root / "rounds" / "1").mkdir(parents=True)
    (root / "rounds" / "1" / "decision.json").write_text("{}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "1+2="}\n{"id": "b", "prompt": ""}\n')
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--no-track", "--restart", "-c", str(SMOKE), "-s", f"seed.path={tiny_seed}",
                 "-s", f"loop.out_dir={root}", "-s", f"data.prompts={bad}"])
    assert code == 2
    assert (root / "rounds" / "1" / "decision.json").read_text() == "{}"


def test_ledger_skips_complete_stages_until_the_first_that_is_not(tmp_path):
    state = tmp_path / "state"
    ran = []

    def stage(ledger, name, output):
        ledger.stage(1, name, [output], lambda: (ran.append(name), output.write_text(name)))

    first = Ledger(state)
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for name, out in (("one", a), ("two", b), ("three", c)):
        stage(first, name, out)
    b.write_text("changed by hand")  # stage two's output no longer has its recorded digest
    ran.clear()
    again = Ledger(state, replay=True)
    for name, out in (("one", a), ("two", b), ("three", c)):
        stage(again, name, out)
    assert ran == ["two", "three"] and again.skipped == ["1:one"]
    assert set(again.seconds(1)) == {"one", "two", "three"}


def test_digests_ignore_temporaries_and_stale_ones_are_removed(tmp_path):
    model = tmp_path / "candidate"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    clean = path_md5(model)
    (model / ".model.safetensors.x1.tmp").write_bytes(b"half")
    (tmp_path / ".candidate.ab12.tmp").mkdir()
    assert path_md5(model) == clean
    removed = remove_stale_temporaries(tmp_path)
    assert {p.name for p in removed} == {".candidate.ab12.tmp", ".model.safetensors.x1.tmp"}
    assert json.dumps(sorted(p.name for p in tmp_path.rglob("*"))) == '["candidate", "model.safetensors"]'


# --- the run directory: refused in one line, nothing deleted ---------------------------------------------------

def _files(root):
    """Every file under ``root`` with its bytes: what a refused run must leave exactly as it was."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(capsys, seed, out_dir, *args):
    code = main(["run", "-q", "--no-track", "-c", str(SMOKE), "-s", f"seed.path={seed}",
                 "-s", f"loop.out_dir={out_dir}", "-s", "loop.rounds=1", *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


@pytest.mark.parametrize("mode", [[], ["--restart"]])
@pytest.mark.parametrize("contents", [
    {"plots/fig.csv": "mine"},
    {"config.yaml": "name: my own\n", "rounds/notes.txt": "mine", "report.html": "x"}])
def test_a_directory_that_holds_no_run_is_refused_and_nothing_is_deleted(tmp_path, tiny_seed, capsys, mode, contents):
    """Not empty and no run of flywheel's in it (no state/inputs.json): refused for a new run and --restart alike,
    even where the user's files have the names a run writes (config.yaml, rounds/, plots/, report.html)."""
    root = tmp_path / "mine"
    for name, text in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    before = _files(root)
    code, lines = _run(capsys, tiny_seed, root, *mode)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"flywheel: error: {root}: field 'loop.out_dir': ") and "not a flywheel run" in lines[0]
    assert _files(root) == before and sorted(p.name for p in root.iterdir()) == sorted(
        {name.split("/")[0] for name in contents})


@pytest.mark.parametrize("mode", [[], ["--restart"], ["--resume"]])
def test_a_refused_tracked_run_leaves_no_tracking_store(tmp_path, tiny_seed, capsys, mode):
    """The directory's refusals come before MLflow creates its store: a refused run leaves nothing anywhere."""
    root = tmp_path / "mine"
    (root / "plots").mkdir(parents=True)
    (root / "plots" / "fig.csv").write_text("mine")
    store = tmp_path / "store"
    code = main(["run", "-q", "-c", str(SMOKE), "-s", f"seed.path={tiny_seed}", "-s", f"loop.out_dir={root}",
                 "-s", f"tracking.uri=sqlite:///{store}/mlflow.db", *mode])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and str(root) in lines[0], lines
    assert not store.exists()


def test_an_empty_out_dir_is_refused_not_taken_for_the_current_directory(tmp_path, tiny_seed, capsys, monkeypatch):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "fig.csv").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    code, lines = _run(capsys, tiny_seed, "", "--restart")
    assert code == 2 and lines == ["flywheel: error: loop.out_dir: is empty; name the run directory "
                                   "(use '.' for the current directory)"]
    assert _files(tmp_path) == before
    code, lines = _run(capsys, tiny_seed, ".", "--restart")  # '.' said on purpose: an ordinary directory
    assert code == 2 and len(lines) == 1 and "not a flywheel run" in lines[0]
    assert _files(tmp_path) == before


def test_a_run_is_recognised_by_the_inputs_record_flywheel_writes(tmp_path, tiny_seed):
    from flywheel.run_state import holds_a_run

    root = tmp_path / "run"
    assert not holds_a_run(root)
    open_run(root, _config(root, tiny_seed), "new")
    assert holds_a_run(root)
    (root / "state" / "inputs.json").write_text("garbage")  # not flywheel's marker any more: no longer its run
    assert not holds_a_run(root)


def _read_only_dir(path):
    """A directory even root cannot write: a read-only bind mount (skip where mounting is not allowed)."""
    import subprocess

    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    bound = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
    remounted = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True)
    if remounted.returncode != 0:
        subprocess.run(["umount", str(path)])
        pytest.skip(f"cannot remount read-only here: {remounted.stderr.decode().strip()}")
    return lambda: subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only"])
def test_an_out_dir_that_cannot_hold_a_run_is_one_line(tmp_path, tiny_seed, capsys, case):
    undo = lambda: None  # noqa: E731
    if case == "a file":
        out_dir = tmp_path / "taken"
        out_dir.write_text("mine")
    elif case == "under a file":
        (tmp_path / "taken").write_text("mine")
        out_dir = tmp_path / "taken" / "run"
    else:
        undo = _read_only_dir(tmp_path / "locked")
        out_dir = tmp_path / "locked" / "run"
    try:
        before = _files(tmp_path)
        code, lines = _run(capsys, tiny_seed, out_dir)
    finally:
        undo()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"flywheel: error: {out_dir}: field 'loop.out_dir': ")
    assert _files(tmp_path) == before


@pytest.mark.parametrize("record, garbage", [("state/0/prepare.json", "{not json"),
                                             ("state/0/prepare.json", '["a list"]'),
                                             ("state/inputs.json", '{"seed.path": ')])
def test_a_corrupt_state_record_on_resume_is_one_line(tmp_path, tiny_seed, capsys, record, garbage):
    root = tmp_path / "run"
    open_run(root, _config(root, tiny_seed, "loop.rounds=1"), "new")
    (root / record).parent.mkdir(parents=True, exist_ok=True)
    (root / record).write_text(garbage)
    before = _files(root)
    code, lines = _run(capsys, tiny_seed, root, "--resume")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"flywheel: error: {root / record}: ")
    assert _files(root) == before


def _small_tmpfs(path, size):
    import subprocess

    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    # Lazily: a model the failed run loaded may still be mapped from it until the garbage collector runs.
    return lambda: subprocess.run(["umount", "--lazy", str(path)], check=True)


# 8k: full while writing the run's first JSON (an OSError); 150k: while copying the seed into round 0 (shutil.Error);
# 400k: while the candidate's weights are saved (safetensors' own error, errno only in its text).
@pytest.mark.parametrize("size", ["8k", "150k", "400k"])
def test_a_full_disk_is_one_line_naming_the_run_directory(tmp_path, tiny_seed, capsys, size):
    undo = _small_tmpfs(tmp_path / "disk", size)
    root = tmp_path / "disk" / "run"
    try:
        code, lines = _run(capsys, tiny_seed, root)
    finally:
        undo()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"flywheel: error: {root}: field 'loop.out_dir': no space left on device")


def test_a_copied_run_opens_for_resume_with_only_its_out_dir_changed(tmp_path, tiny_seed):
    import shutil

    root, copy = tmp_path / "run", tmp_path / "elsewhere" / "copy"
    ledger = open_run(root, _config(root, tiny_seed), "new")
    (root / "rounds").mkdir()
    ledger.stage(1, "prompts", [root / "rounds" / "a.txt"], lambda: (root / "rounds" / "a.txt").write_text("a"))
    shutil.copytree(root, copy, symlinks=True)
    moved = open_run(copy, _config(copy, tiny_seed), "resume")
    assert moved.is_complete(1, "prompts", [copy / "rounds" / "a.txt"])
    assert load_config(copy / "config.yaml").loop.out_dir == str(copy)
    with pytest.raises(InputError, match=r"config changed since the run started \(train.steps\)"):
        open_run(copy, _config(copy, tiny_seed, "train.steps=7"), "resume")


# --- the lock ------------------------------------------------------------------------------------------------

def _take_lock(roots, barrier, inside, overlaps, outcomes, index):
    """One process of the race: at each trial's start (the barrier), take the lock on that trial's directory."""
    from flywheel.run_lock import RunLock

    for trial, root in enumerate(roots):
        barrier.wait()
        outcome = 3
        try:
            with RunLock(root):
                with inside.get_lock():
                    inside.value += 1
                    overlaps.value += inside.value > 1
                time.sleep(0.02)  # hold it a moment: a second holder, if the lock let one in, would overlap this one
                with inside.get_lock():
                    inside.value -= 1
            outcome = 1
        except InputError as error:
            outcome = 2 if "another flywheel run holds this directory" in str(error) else 3
        finally:  # anything else (a traceback) stays 3, and the test fails on it
            outcomes[trial * (len(outcomes) // len(roots)) + index] = outcome


def test_many_processes_taking_a_stale_lock_at_once_never_hold_it_together(tmp_path):
    """The lock left by a killed run (its PID gone), and 12 runs starting at once, 40 times over: never two
    holders at a time, at least one holder per trial, every other process refused in one line."""
    import multiprocessing
    import socket

    context = multiprocessing.get_context("fork")
    processes, trials = 12, 40  # the unlink-then-create lock let two in about one trial in ten
    roots = [tmp_path / f"trial-{trial}" for trial in range(trials)]
    for root in roots:
        root.mkdir()
        (root / ".flywheel.lock").write_text(json.dumps({"pid": 2**22 + 7, "host": socket.gethostname(),
                                                         "since": "2024-01-01T00:00:00"}))
    barrier, inside, overlaps = context.Barrier(processes), context.Value("i", 0), context.Value("i", 0)
    outcomes = context.Array("i", processes * trials)
    children = [context.Process(target=_take_lock, args=(roots, barrier, inside, overlaps, outcomes, i))
                for i in range(processes)]
    for child in children:
        child.start()
    for child in children:
        child.join(300)
    assert [child.exitcode for child in children] == [0] * processes
    by_trial = [list(outcomes[t * processes:(t + 1) * processes]) for t in range(trials)]
    assert all(3 not in trial and 1 in trial for trial in by_trial), by_trial
    assert not any((root / ".flywheel.lock").exists() for root in roots)
    assert overlaps.value == 0


@pytest.mark.parametrize("content", ["", "garbage{", "[1, 2]", '{"pid": "x"}'])
def test_a_malformed_lock_file_is_taken_over(tmp_path, content):
    """Nothing holds it (a lock is a process holding the file, not the file's text), so a run takes it."""
    from flywheel.run_lock import RunLock

    (tmp_path / ".flywheel.lock").write_text(content)
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".flywheel.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".flywheel.lock").exists()


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_lock_path_that_is_not_a_file_is_one_line_and_no_hang(tmp_path, tiny_seed, kind):
    import subprocess
    import sys

    root = tmp_path / "run"
    open_run(root, _config(root, tiny_seed), "new")
    lock = root / ".flywheel.lock"
    lock.mkdir() if kind == "directory" else os.mkfifo(lock)
    before = _files(root)
    for args in (["status", str(root)],
                 ["run", "--no-track", "--resume", "-c", str(SMOKE), "-s", f"seed.path={tiny_seed}",
                  "-s", f"loop.out_dir={root}"]):
        result = subprocess.run([sys.executable, "-m", "flywheel.cli", *args], capture_output=True, text=True,
                                timeout=60)  # the lock file read as a pipe waits forever: a hang fails
        if args[0] == "run":
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines() == [
                f"flywheel: error: {lock}: field 'loop.out_dir': is not a file (flywheel's lock file is); "
                "remove it and run again"]
        else:
            assert result.returncode == 0 and "is not a file" in result.stdout, result.stderr
    assert _files(root) == before and (lock.is_dir() if kind == "directory" else lock.is_fifo())


def test_a_full_disk_elsewhere_names_that_place_and_one_line_errors_pass_unchanged(tmp_path):
    """Only a write under the run directory is blamed on loop.out_dir: a full /tmp (the sandbox, a library's
    cache) names the file, and an error already made one line (a full MLflow store) keeps its own words."""
    import errno

    from flywheel.run_state import disk_full_is_one_line

    root = tmp_path / "run"
    with pytest.raises(InputError) as caught:
        with disk_full_is_one_line(root):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "elsewhere" / "cache.bin"))
    assert str(caught.value).startswith(str(tmp_path / "elsewhere" / "cache.bin"))
    assert "loop.out_dir" not in str(caught.value)
    with pytest.raises(InputError) as caught:
        with disk_full_is_one_line(root):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(root / "rounds" / "1" / "samples.parquet"))
    assert "loop.out_dir" in str(caught.value)
    store = InputError("sqlite:///x/mlflow.db", "the tracking store's disk is full")
    with pytest.raises(InputError) as caught:
        with disk_full_is_one_line(root):
            raise store
    assert caught.value is store
