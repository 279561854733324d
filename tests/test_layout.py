"""The one owner of a run's file layout: its paths, the model a round starts from, and dvc.yaml spelling the
same names (the DVC door cannot import Python, so a test keeps the two equal)."""

import re
from pathlib import Path

import yaml

from flywheel.config import load_config
from flywheel.layout import RoundLayout, RunLayout, start_model, train_data_files
from tests.conftest import ROOT


def test_round_paths():
    this = RoundLayout(Path("/w"), 3)
    assert this.dir == Path("/w/rounds/3") and this.previous().champion == Path("/w/rounds/2/champion")
    assert (this.samples, this.decision, this.metrics) == (Path("/w/rounds/3/samples.parquet"),
                                                           Path("/w/rounds/3/decision.json"),
                                                           Path("/w/rounds/3/eval/metrics.json"))
    assert {m: this.train_data(m).name for m in train_data_files()} == train_data_files()
    run = RunLayout(Path("/w"))
    assert run.eval_set == Path("/w/eval.parquet") and run.seed == Path("/w/rounds/0/champion")
    assert run.tracking_record(2) == Path("/w/tracking/round-2.json")


def test_every_door_starts_a_round_from_the_same_model(tmp_path):
    this = RoundLayout(tmp_path, 2)
    config = load_config(None, ["seed.path=/elsewhere/seed"])
    assert start_model(config, this) == tmp_path / "rounds/1/champion"
    base = load_config(None, ["seed.path=/elsewhere/seed", "train.init=base"])
    assert start_model(base, this) == Path("/elsewhere/seed")  # no round 0 here (a scheduled workspace)
    (tmp_path / "rounds/0/champion").mkdir(parents=True)
    assert start_model(base, this) == tmp_path / "rounds/0/champion"  # the run's own copy, as flywheel run uses


def test_dvc_yaml_writes_the_layouts_names():
    names = {getattr(RoundLayout(Path("."), 1), attr).name for attr in (
        "prompts", "audit", "prompts_summary", "samples", "votes", "agreement", "vote_summary", "curated", "pool",
        "curation", "candidate", "eval_dir", "decision", "champion")} | set(train_data_files().values())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    written = set()
    for stage in stages.values():
        body = stage.get("do", stage)
        for out in body.get("outs", []) + body.get("metrics", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            match = re.match(r"data/rounds/\$\{item\.(round|prev)\}/([^/]+)", path)
            if match:
                written.add(match.group(2))
    assert written and written <= names | {"eval"}, written - names
    assert {"samples.parquet", "votes.parquet", "decision.json", "candidate", "champion"} <= written
