"""Every shipped real-model recipe (math, code, byo) runs one round end to end on the tiny chat model (CPU).

The untrained model answers nonsense, so this checks the plumbing: the configs load, the
user's data flows through every stage with the right schemas, and the report is written.
"""

import json
import shutil
from pathlib import Path

import pytest

from flywheel import io, schemas

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["math", "code", "byo"])
def test_recipe_runs_one_round(name, tiny_chat_model, tmp_path, monkeypatch, capsys):
    from flywheel.cli import main

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "loop"
    code = main(["run", "--no-track", "-c", str(ROOT / "configs" / f"{name}.yaml"),
                 "-s", f"seed.path={tiny_chat_model}", "-s", "loop.device=cpu", "-s", "loop.rounds=1",
                 "-s", f"loop.out_dir={out}", "-s", "train.steps=2", "-s", "train.batch_size=2",
                 "-s", "generate.samples_per_prompt=2", "-s", "generate.max_new_tokens=12",
                 "-s", "evaluate.max_new_tokens=12", "-s", "data.per_round=3", "-s", "data.eval_limit=3"])
    assert code == 0, capsys.readouterr().err
    here = out / "rounds" / "1"
    prompts = io.read_rows(here / "prompts.parquet", schemas.PROMPTS)
    assert len(prompts) == 3 and all(p["answer"] is None for p in prompts)  # answers only in the audit file
    assert len(io.read_rows(here / "audit.parquet", schemas.PROMPTS)) == 3
    samples = io.read_rows(here / "samples.parquet", schemas.SAMPLES)
    assert len(samples) == 3 * 2 and {s["prompt_id"] for s in samples} == {p["id"] for p in prompts}
    assert len(io.read_rows(here / "votes.parquet", schemas.VOTES)) == 3
    io.read_rows(here / "train.parquet", schemas.CURATED)
    eval_rows = io.read_rows(out / "eval.parquet", schemas.PROMPTS)
    assert len(eval_rows) == 3 and all(r["answer"] for r in eval_rows)
    metrics = json.loads((here / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"candidate", "champion"} and 0 <= metrics["champion"]["accuracy"] <= 1
    decision = json.loads((here / "decision.json").read_text())
    assert isinstance(decision["promote"], bool) and decision["reason"]
    report = json.loads((out / "report.json").read_text())
    assert report["name"] == name and report["summary"]["rounds"] == 1
    assert (out / "report.html").stat().st_size > 0
    if name == "byo":
        assert set(metrics["champion"]["buckets"]) <= {"easy", "hard"}  # data.columns.bucket: level
