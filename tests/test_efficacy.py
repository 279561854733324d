"""bench/efficacy.py's smoke arm set (what `make test` runs of the efficacy benchmark): every arm runs per
seed from the same seed model, the table holds mean and spread, and the controls do what they claim."""

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_arms_run_per_seed_and_the_controls_hold(tiny_seed, tmp_path, capsys):
    bench = runpy.run_path(str(ROOT / "bench" / "efficacy.py"))
    runs = bench["main"](["--smoke", "--arms", "default,frozen,oracle,noise30", "--seeds", "0,1",
                          "-s", f"seed.path={tiny_seed}", "--out", str(tmp_path / "runs"),
                          "--json", str(tmp_path / "figures.json")])
    out = capsys.readouterr().out
    by_arm = {arm: [r for r in runs if r.arm == arm] for arm in ("default", "frozen", "oracle", "noise30")}
    assert all(len(mine) == 2 for mine in by_arm.values())
    assert sorted(r.seed for r in by_arm["default"]) == [0, 1]
    # Same seed model, so the same round-0 scores in every arm and seed.
    assert len({str(r.accuracy_by_round[0]) for r in runs}) == 1
    # Frozen: nothing promoted, so after every round the champion scores what the seed model scored.
    assert all(r.promotions == 0 and r.accuracy_by_round == [r.accuracy_by_round[0]] * 2 for r in by_arm["frozen"])
    # Oracle: every label is right, and so is every row trained on; 30% noise: about 30% of the labels are
    # wrong, other prompts in each seed.
    assert all(r.vote_precision == 1.0 and r.label_precision in (None, 1.0) for r in by_arm["oracle"])
    noisy = [r.vote_precision for r in by_arm["noise30"]]
    assert all(0.4 < p < 0.95 for p in noisy) and len(set(noisy)) > 1, noisy  # 32 prompts a run: wide
    # Seeds change the prompts: the default arm's runs are not copies of each other.
    assert len({r.label_yield for r in by_arm["default"]}) > 1
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("arm") and "frontier" in line)
    assert "vote prec" in header and "train prec" in header and "s/run" in header and "Mtok" in header
    assert all(r.tokens and r.tokens > 0 for r in runs)
    row = next(line for line in lines if line.startswith("oracle "))
    assert "1.000±0.000" in row  # mean±sd across the two seeds
    assert (tmp_path / "figures.json").exists()

    # --reuse reads a finished run made with the same config, and runs one whose config differs.
    common = ["--smoke", "--arms", "frozen", "--seeds", "1", "-s", f"seed.path={tiny_seed}", "--out",
              str(tmp_path / "runs"), "--reuse"]
    first = next(r for r in by_arm["frozen"] if r.seed == 1)
    assert bench["main"](common)[0].__dict__ == first.__dict__
    assert bench["main"](common + ["-s", "train.steps=6"])[0].seconds != first.seconds


def test_the_gap_recovered_is_measured_against_the_weak_seed_and_the_ceiling():
    bench = runpy.run_path(str(ROOT / "bench" / "efficacy.py"))
    figures = bench["RunFigures"]

    def run(arm, before, after):
        return figures(arm=arm, seed=0, seconds=1.0, accuracy_by_round=[before, after], lengths_won=[], frontier=0,
                       reach=0, vote_precision=None, label_precision=None, label_yield=None)

    runs = [run("weak_to_strong", {"6": 0.2, "7": 0.0}, {"6": 0.7, "7": 0.02}),
            run("weak_to_strong", {"6": 0.2, "7": 0.0}, {"6": 0.5, "7": 0.0}),
            run("oracle", {"6": 0.9, "7": 0.0}, {"6": 1.0, "7": 0.03})]
    table = bench["gap_recovered"](runs, ["6", "7"])
    assert "    1      6     20       60      100   0.50" in table  # (60 - 20) / (100 - 20) after round 1
    assert table.splitlines()[-1].endswith("-")  # a ceiling under 5 points above the weak seed: no ratio


@pytest.mark.slow  # the benchmark's --jobs, --collect and --reuse: 25 s of runs (make test-slow)
def test_parallel_runs_and_collecting_runs_as_they_stand(tiny_seed, tmp_path, capsys):
    """--jobs runs each (arm, seed) in its own process and reads their figures back; --collect shows the runs
    in --out as they stand, cut at the last round every one of them finished."""
    bench = runpy.run_path(str(ROOT / "bench" / "efficacy.py"))
    common = ["--smoke", "--arms", "default", "--seeds", "0,1", "-s", f"seed.path={tiny_seed}",
              "--out", str(tmp_path / "runs")]
    runs = bench["main"](common + ["--jobs", "2"])
    assert [(r.arm, r.seed, len(r.accuracy_by_round)) for r in runs] == [("default", 0, 2), ("default", 1, 2)]
    assert all((tmp_path / "runs" / "default" / f"seed{s}" / "figures.json").is_file() for s in (0, 1))

    collected = bench["main"](common + ["--collect"])
    assert [r.accuracy_by_round for r in collected] == [r.accuracy_by_round for r in runs]
    assert [r.vote_precision for r in collected] == [r.vote_precision for r in runs]

    # Seed 1 killed in round 1's gate: both runs are shown after round 0 (the seed model).
    seed1 = tmp_path / "runs" / "default" / "seed1"
    (seed1 / "rounds" / "1" / "decision.json").unlink()
    (seed1 / "figures.json").unlink()
    capsys.readouterr()
    cut = bench["main"](common + ["--collect"])
    assert [r.accuracy_by_round for r in cut] == [r.accuracy_by_round[:1] for r in runs]
    assert "default seed 1: 0 of 1 rounds finished" in capsys.readouterr().err

    # --reuse continues it from its last finished stage (its samples are not drawn again) to the same figures.
    samples = seed1 / "rounds" / "1" / "samples.parquet"
    drawn = samples.stat().st_mtime_ns
    resumed = bench["main"](common + ["--seeds", "1", "--reuse"])
    assert samples.stat().st_mtime_ns == drawn
    assert resumed[0].accuracy_by_round == runs[1].accuracy_by_round


def test_every_arm_config_loads_and_the_prompt_count_control_adds_500_new_prompts(tmp_path):
    bench = runpy.run_path(str(ROOT / "bench" / "efficacy.py"))
    config_path = str(ROOT / "configs" / "default.yaml")
    configs = {name: bench["arm_config"](config_path, arm, 1, [], tmp_path, committee_seed=str(tmp_path),
                                         weak_seed=str(tmp_path))
               for name, arm in bench["ARMS"].items()}
    default, more = configs["default"], configs["more_prompts"]
    assert more.prompts.per_round == default.prompts.per_round + 500
    # Everything else equal, the seed shift included: the control differs from the default by its count only.
    assert more.prompts.seed == default.prompts.seed
    assert more.prompts.replay_per_round == default.prompts.replay_per_round
