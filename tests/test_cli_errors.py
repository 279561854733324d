"""Bad input: one line naming file, row and field; exit code 2; no traceback; nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    result = flywheel("run", "-c", "configs/smoke.yaml", "-s", "train.epochs=3", cwd=prompts_dir)
    assert_clean_error(result, "-s train.epochs=3: field 'train.epochs'", "unknown config key")
    assert "smoke.yaml" not in result.stderr  # the override is wrong, not the file
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


@pytest.mark.parametrize("override, needles", [
    ("nosuch.key=1", ["-s nosuch.key=1: field 'nosuch'", "unknown config key"]),
    ("generate.samples_per_prompt=1000000000", ["field 'generate.samples_per_prompt'", "must be <="]),
    ("evaluate.per_bucket=1000000000", ["field 'evaluate.per_bucket'", "must be <="]),
    ("curate.audit_thresholds=[a]", ["field 'curate.audit_thresholds'", "numbers in [0, 1]"]),
    ("gate.alpha=.nan", ["field 'gate.alpha'", "finite"]),
    ("model.num_heads=0", ["field 'model.num_heads'", "must be > 0"]),
])
def test_config_values_out_of_range_are_one_line_naming_the_override(tmp_path, override, needles):
    result = flywheel("config", "-c", str(ROOT / "configs" / "smoke.yaml"), "-s", override, cwd=tmp_path)
    assert_clean_error(result, f"-s {override}", *needles)
    assert "smoke.yaml" not in result.stderr


def test_a_yaml_alias_bomb_is_one_line_at_once(tmp_path):
    """385 bytes of nested anchors: 9**9 values once expanded (48 s and 4 GB before the loader refused them)."""
    levels = ['&l0 [' + ", ".join(["lol"] * 9) + ']'] + [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]"
                                                        for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("name: [" + ", ".join(levels) + "]\n")
    result = flywheel("config", "-c", "bomb.yaml", cwd=tmp_path)
    assert_clean_error(result, "bomb.yaml: row 1", "expands to more than")


def test_evaluate_refuses_an_empty_eval_set_and_writes_nothing(workdir):
    (workdir / "empty.jsonl").write_text("")
    result = flywheel("evaluate", "-c", "configs/smoke.yaml", "--eval", "empty.jsonl", "--candidate",
                      "runs/smoke/seed", "--champion", "runs/smoke/seed", "--out-dir", "ev", cwd=workdir)
    assert_clean_error(result, "empty.jsonl", "no rows")
    assert not (workdir / "ev").exists()


def test_gate_refuses_zero_compared_rows_whatever_alpha_and_min_gain(workdir):
    from flywheel import io
    from flywheel.stages.evaluate import PREDICTION_SCHEMA

    io.write_rows(workdir / "ev" / "predictions.parquet", [], PREDICTION_SCHEMA)
    result = flywheel("gate", "-c", "configs/smoke.yaml", "-s", "gate.alpha=1", "-s", "gate.min_gain=0",
                      "--eval-dir", "ev", "--candidate", "runs/smoke/seed", "--champion", "runs/smoke/seed",
                      "--out", "decision.json", "--next-champion", "next", cwd=workdir)
    assert_clean_error(result, "predictions.parquet", "no rows")
    assert not (workdir / "decision.json").exists() and not (workdir / "next").exists()


def test_a_directory_at_one_of_votes_outputs_fails_before_the_vote_and_writes_nothing(workdir):
    """It used to vote, publish votes.parquet, then fail renaming agreement.parquet onto the directory (a
    traceback, new votes beside no vote.json)."""
    from flywheel import io, schemas

    rows = [{"prompt_id": "a", "sample_idx": i, "voter": 0, "completion": "5", "answer": "5", "n_tokens": 1,
             "logprob": -0.5} for i in range(3)]
    io.write_rows(workdir / "samples.parquet", rows, schemas.SAMPLES)
    (workdir / "out" / "agreement.parquet").mkdir(parents=True)
    result = flywheel("vote", "-c", "configs/smoke.yaml", "--samples", "samples.parquet", "--out-dir", "out",
                      cwd=workdir)
    assert_clean_error(result, "out/agreement.parquet", "field '--out-dir'", "is a directory")
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["agreement.parquet"]


def test_flywheel_version_prints_the_version(capsys):
    from flywheel import __version__
    from flywheel.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"flywheel {__version__}"
