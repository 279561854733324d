"""Kill `flywheel run` with SIGKILL inside every stage in turn, resume it, and get the uninterrupted run's results.

The kill points come from ``flywheel.faults`` (``FLYWHEEL_KILL_AT=<round>:<stage>:<point>``): ``publish``
dies with a stage's first output written to its temporary name, ``end`` with every output published
and the completion record not yet written. One chain of runs covers every stage: each killed run is
resumed by the next, which is killed in the next stage, and the last one finishes. Everything runs in
subprocesses at one thread, as the uninterrupted run does, so the weights can be compared bit for bit.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from flywheel import io, schemas
from tests.conftest import SMOKE

# The full chain (make test-slow): every stage of round 1 in loop order, then round 2's at other points.
KILLS = ["0:prepare:publish", "0:track:end", "1:prompts:end", "1:generate:publish", "1:vote:publish",
         "1:curate:publish", "1:train:publish", "1:evaluate:publish", "1:gate:publish", "1:track:end",
         "2:generate:end", "2:train:end", "2:gate:end", "2:track:publish"]
# The fast suite's chain (one round): SIGTERM as a pod stop (MLflow runs end KILLED), a half-written model,
# an error after the decision was published (FAILED), and a round already logged to MLflow with no record,
# which must not be logged twice.
FAST_KILLS = ["1:generate:begin:TERM", "1:train:publish", "1:gate:end:ERROR", "1:track:end"]
# What each fault does to the process: SIGKILL (-9), SIGTERM handled (143), an error (1).
EXIT_CODES = {"TERM": 143, "ERROR": 1}


def flywheel(root, *args, kill=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("FLYWHEEL_KILL_AT", None)
    if kill:
        env["FLYWHEEL_KILL_AT"] = kill
    return subprocess.run([sys.executable, "-m", "flywheel.cli", "run", "-c", str(root / "smoke.yaml"), *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def make_root(tmp_path, name, seed, rounds):
    root = tmp_path / name
    root.mkdir()
    (root / "smoke.yaml").write_text(SMOKE.read_text() + f"\n# the chain's length\nloop: {{rounds: {rounds}, "
                                     "out_dir: runs/smoke/loop}\n")
    shutil.copytree(seed, root / "seed" / "smoke")  # configs/smoke.yaml names seed/smoke
    return root


@pytest.fixture(scope="module", params=[pytest.param((FAST_KILLS, 1), id="fast"),
                                        pytest.param((KILLS, 2), id="every-stage", marks=pytest.mark.slow)])
def uninterrupted_and_resumed(request, tmp_path_factory, tiny_seed):
    kills, rounds = request.param
    tmp_path = tmp_path_factory.mktemp("resume")
    straight = make_root(tmp_path, "straight", tiny_seed, rounds)
    result = flywheel(straight)
    assert result.returncode == 0, result.stderr
    (straight / "stderr.txt").write_text(result.stderr)
    chain = make_root(tmp_path, "chain", tiny_seed, rounds)
    outcomes, stopped = [], {}
    for index, kill in enumerate(kills):
        result = flywheel(chain, *(["--resume"] if index else []), kill=kill)
        outcomes.append((kill, result.returncode, result.stderr[-400:]))
        fault = kill.split(":")[3] if kill.count(":") == 3 else None
        if fault:  # a stop the process saw: the MLflow runs' status and `flywheel status` right after it
            shown = subprocess.run([sys.executable, "-m", "flywheel.cli", "status", "runs/smoke/loop"], cwd=chain,
                                   capture_output=True, text=True, timeout=60)
            stopped[fault] = (_statuses(chain), shown.stdout, result.stderr)
    (chain / "stopped.json").write_text(json.dumps(stopped))
    final = flywheel(chain, "--resume")
    assert final.returncode == 0, final.stderr
    # A complete run resumed again runs no stage: this kill point would be met by any stage that ran.
    again = flywheel(chain, "--resume", kill="1:prompts:begin")
    assert again.returncode == 0, again.stderr
    return straight / "runs" / "smoke", chain / "runs" / "smoke", outcomes, kills, rounds


def test_every_kill_point_was_reached(uninterrupted_and_resumed):
    *_, outcomes, kills, _ = uninterrupted_and_resumed
    expected = [EXIT_CODES.get(kill.split(":")[3], -9) if kill.count(":") == 3 else -9 for kill in kills]
    assert [(kill, code) for kill, code, _ in outcomes] == list(zip(kills, expected)), outcomes


def test_resumed_run_equals_the_uninterrupted_run(uninterrupted_and_resumed):
    straight, chain, _, _, rounds = uninterrupted_and_resumed
    a, b = straight / "loop", chain / "loop"
    for r in range(1, rounds + 1):
        for name in ("decision.json", "eval/metrics.json", "vote.json", "curation.json"):
            assert json.loads((a / f"rounds/{r}/{name}").read_text()) == \
                json.loads((b / f"rounds/{r}/{name}").read_text()), (r, name)
        for name in ("curated.parquet", "train.parquet", "pool.parquet"):
            assert io.read_rows(a / f"rounds/{r}/{name}", schemas.CURATED) == \
                io.read_rows(b / f"rounds/{r}/{name}", schemas.CURATED), (r, name)
        for weights in sorted((a / f"rounds/{r}/candidate").rglob("*.safetensors")):
            twin = b / weights.relative_to(a)
            assert weights.read_bytes() == twin.read_bytes(), weights.relative_to(a)
    summaries = [json.loads((run / "report.json").read_text())["summary"] for run in (a, b)]
    assert summaries[0] == summaries[1]


def test_nothing_temporary_is_left(uninterrupted_and_resumed):
    _, chain, *_ = uninterrupted_and_resumed
    left = [p for p in (chain / "loop").rglob(".*")]
    assert left == [], left


def test_one_parent_run_continued_and_one_run_per_round(uninterrupted_and_resumed):
    import mlflow

    _, chain, _, _, rounds = uninterrupted_and_resumed
    uri = f"sqlite:///{chain / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)  # the registry too: an earlier test may have set the global one
    experiment = client.get_experiment_by_name("flywheel-smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == [f"round-{r}" for r in range(1, rounds + 1)]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert parents[0].data.tags["mlflow.source.git.commit"]
    versions = client.search_model_versions("name = 'flywheel-smoke'")
    assert len(versions) == 1 + rounds  # the seed and one candidate per round, none twice


# --- run status where users look: MLflow runs end FAILED/KILLED, `flywheel status`, config.yaml ---------------

def _statuses(root):
    import mlflow

    uri = f"sqlite:///{root / 'runs' / 'smoke' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name("flywheel-smoke").experiment_id])
    return sorted(r.info.status for r in runs)


def test_a_stopped_run_ends_its_mlflow_runs_and_says_where_it_stopped(uninterrupted_and_resumed):
    """SIGTERM ends the parent run KILLED (exit 143, one line); an error ends it FAILED; `flywheel status`
    says where the loop stopped and how to continue. (The fast chain's TERM and ERROR stops.)"""
    _, chain, _, kills, _ = uninterrupted_and_resumed
    if kills is not FAST_KILLS:
        pytest.skip("the every-stage chain stops by SIGKILL only")
    stopped = json.loads((chain.parents[1] / "stopped.json").read_text())
    statuses, shown, err = stopped["TERM"]
    assert statuses == ["KILLED"]  # the parent; no round run had started
    assert err.strip().splitlines()[-1].startswith("flywheel: terminated;")
    assert "round 1: unfinished, done: prompts" in shown and "stopped before round:stage 1:generate" in shown
    assert "--resume" in shown
    statuses, shown, _ = stopped["ERROR"]
    assert statuses == ["FAILED"]
    assert "done: prompts, generate, vote, curate, train, evaluate" in shown
    assert "stopped before round:stage 1:gate" in shown


def test_report_and_status_read_the_runs_own_config(uninterrupted_and_resumed):
    """`flywheel report --root DIR` without -c uses DIR/config.yaml (here: the smoke recipe, not the default)."""
    straight, *_ = uninterrupted_and_resumed
    root = straight.parents[1]
    before = json.loads((straight / "loop" / "report.json").read_text())
    (straight / "loop" / "report.json").unlink()
    result = subprocess.run([sys.executable, "-m", "flywheel.cli", "report", "--root", "runs/smoke/loop"], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((straight / "loop" / "report.json").read_text())["summary"] == before["summary"]
    shown = subprocess.run([sys.executable, "-m", "flywheel.cli", "status", "runs/smoke/loop"], cwd=root,
                           capture_output=True, text=True, timeout=60)
    assert "round 1: " in shown.stdout and "finished: report.json" in shown.stdout, shown.stdout


def test_a_second_run_into_a_held_directory_is_refused(tmp_path, tiny_seed):
    from flywheel.errors import InputError
    from flywheel.run_lock import RunLock

    with RunLock(tmp_path):
        with pytest.raises(InputError, match="another flywheel run holds this directory"):
            RunLock(tmp_path).__enter__()
    # a lock left by a killed process (a PID that is gone) is stale and taken over
    (tmp_path / ".flywheel.lock").write_text(json.dumps({"pid": 2**22 + 7, "host": __import__("socket").gethostname()}))
    with RunLock(tmp_path):
        pass
    assert not (tmp_path / ".flywheel.lock").exists()


def test_a_copied_run_resumes_where_it_was_copied_to(uninterrupted_and_resumed, tmp_path):
    """`cp -a` of a run to another place (with the lock file a killed run on another machine left) resumes there
    with only loop.out_dir changed: every stage is complete (a stage that ran would meet the kill point) and
    config.yaml names the copy."""
    from flywheel.config import load_config

    straight, *_ = uninterrupted_and_resumed
    copy = tmp_path / "moved" / "loop"
    shutil.copytree(straight / "loop", copy, symlinks=True)
    (copy / ".flywheel.lock").write_text(json.dumps({"pid": 1, "host": "another-machine", "since": "2024-01-01"}))
    result = flywheel(straight.parents[1], "--resume", "--no-track", "-s", f"loop.out_dir={copy}",
                      kill="1:prompts:begin")
    assert result.returncode == 0, result.stderr
    assert load_config(copy / "config.yaml").loop.out_dir == str(copy)
    assert json.loads((copy / "report.json").read_text())["summary"] == \
        json.loads((straight / "loop" / "report.json").read_text())["summary"]
    assert not (copy / ".flywheel.lock").exists()


def test_the_console_has_a_heading_per_round_and_stage_and_no_trainer_dicts(uninterrupted_and_resumed):
    straight, *_, rounds = uninterrupted_and_resumed
    err = (straight.parents[1] / "stderr.txt").read_text()
    headings = [line for line in err.splitlines() if line.startswith("== round ")]
    stages = ["prompts", "generate", "vote", "curate", "train", "evaluate", "gate", "track"]
    assert headings == ["== round 0: prepare", "== round 0: track"] + [
        f"== round {r}: {s}" for r in range(1, rounds + 1) for s in stages]
    assert "{'loss'" not in err and "'grad_norm'" not in err and "Downloading artifacts" not in err


def test_quiet_prints_no_headings(tmp_path, tiny_seed):
    from flywheel.console import setup_logging
    import logging

    assert setup_logging(0, 1) == logging.WARNING and setup_logging(1, 0) == logging.DEBUG
    assert setup_logging(0, 0) == logging.INFO
