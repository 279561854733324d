"""Bad input: one line naming file, row and field; exit code 2; no traceback; nothing written."""

import json
import subprocess
import sys

import pytest


def flywheel(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flywheel.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def assert_clean_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def prompts_dir(workdir):
    (workdir / "good.jsonl").write_text(json.dumps({"id": "a", "prompt": "12+34="}) + "\n")
    return workdir


@pytest.mark.parametrize("content, needles", [
    ('{"id": "a", "prompt": "1+1="}\n{"id": "b", "prompt": "2+\n', ["bad.jsonl", "row 2", "malformed JSON"]),
    ('{"id": "a"}\n', ["bad.jsonl", "row 1", "field 'prompt'", "missing"]),
    ('{"id": "a", "prompt": ""}\n', ["bad.jsonl", "row 1", "field 'prompt'", "must not be empty"]),
    ('{"id": "a", "prompt": 5}\n', ["bad.jsonl", "row 1", "field 'prompt'", "expected str"]),
])
def test_generate_rejects_bad_prompts(prompts_dir, content, needles):
    (prompts_dir / "bad.jsonl").write_text(content)
    result = flywheel("generate", "-c", "configs/smoke.yaml", "--round", "1", "--prompts", "bad.jsonl",
                      "--model", "runs/smoke/seed", "--out", "samples.parquet", cwd=prompts_dir)
    assert_clean_error(result, *needles)
    assert not (prompts_dir / "samples.parquet").exists()


def test_malformed_parquet(prompts_dir):
    (prompts_dir / "bad.parquet").write_bytes(b"PAR1 but not really")
    result = flywheel("vote", "-c", "configs/smoke.yaml", "--samples", "bad.parquet", "--out-dir", "out",
                      cwd=prompts_dir)
    assert_clean_error(result, "bad.parquet", "not a readable Parquet file")
    assert not (prompts_dir / "out").exists()


def test_nonexistent_model_path(prompts_dir):
    result = flywheel("generate", "-c", "configs/smoke.yaml", "--round", "1", "--prompts", "good.jsonl",
                      "--model", "no/such/model", "--out", "samples.parquet", cwd=prompts_dir)
    assert_clean_error(result, "no/such/model", "model directory not found")
    assert not (prompts_dir / "samples.parquet").exists()


def test_unknown_config_key_and_wrong_type(prompts_dir):
    assert_clean_error(flywheel("run", "-c", "configs/smoke.yaml", "-s", "train.epochs=3", cwd=prompts_dir),
                       "configs/smoke.yaml", "field 'train.epochs'", "unknown config key")
    assert_clean_error(flywheel("run", "-c", "configs/smoke.yaml", "-s", "generate.temperature=hot", cwd=prompts_dir),
                       "field 'generate.temperature'", "expected float")
    (prompts_dir / "typo.yaml").write_text("curate:\n  min_vote_shar: 0.5\n")
    assert_clean_error(flywheel("run", "-c", "typo.yaml", cwd=prompts_dir), "typo.yaml",
                       "field 'curate.min_vote_shar'")


def test_missing_seed_is_explained(prompts_dir):
    result = flywheel("run", "-c", "configs/smoke.yaml", "-s", "seed.path=nowhere", cwd=prompts_dir)
    assert_clean_error(result, "nowhere", "make seed")
    assert not (prompts_dir / "runs" / "smoke" / "loop").exists()


def test_help_lists_every_stage(workdir):
    result = flywheel("--help", cwd=workdir)
    assert result.returncode == 0
    for command in ("run", "seed", "prepare", "prompts", "generate", "vote", "curate", "train", "evaluate", "gate",
                    "track", "report", "config"):
        assert command in result.stdout


def test_gate_with_a_missing_champion_writes_nothing(workdir):
    (workdir / "eval").mkdir()
    result = flywheel("gate", "-c", "configs/smoke.yaml", "--eval-dir", "eval", "--candidate", "runs/smoke/seed",
                      "--champion", "nochamp", "--out", "decision.json", "--next-champion", "next", cwd=workdir)
    assert_clean_error(result, "nochamp", "model directory not found")
    assert not (workdir / "decision.json").exists() and not (workdir / "next").exists()


def test_track_of_a_round_that_never_ran(workdir):
    result = flywheel("track", "-c", "configs/smoke.yaml", "-s", "tracking.uri=sqlite:///t.db", "--round", "3",
                      "--root", "nowhere", "--out", "tracking.json", cwd=workdir)
    assert_clean_error(result, "decision.json", "round not found", "--round")
    assert not (workdir / "t.db").exists() and not (workdir / "tracking.json").exists()


def test_report_of_a_directory_without_a_loop(workdir):
    result = flywheel("report", "-c", "configs/smoke.yaml", "--root", "nowhere", cwd=workdir)
    assert_clean_error(result, "nowhere", "no loop here", "--root")
    assert not (workdir / "nowhere").exists()


def test_an_unreachable_mlflow_server_is_one_line_in_seconds_and_writes_nothing(workdir, tmp_path):
    """Through the real entry point with its own HOME: no traceback after minutes of retries, and nothing
    written, not even MLflow's telemetry file in ~/.config (flywheel turns telemetry off)."""
    import os
    import time

    home = tmp_path / "home"
    home.mkdir()
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "flywheel.cli", "run", "-c", "configs/smoke.yaml",
                             "-s", "seed.path=runs/smoke/seed", "-s", "loop.out_dir=fresh",
                             "-s", "tracking.uri=http://127.0.0.1:9"], cwd=workdir, capture_output=True, text=True,
                            timeout=300, env={"PATH": os.environ["PATH"], "HOME": str(home)})
    assert_clean_error(result, "http://127.0.0.1:9", "field 'tracking.uri'", "does not answer")
    assert time.monotonic() - start < 60
    assert list(home.iterdir()) == [] and not (workdir / "fresh").exists()
