"""bench/efficacy.py's smoke arm set (what `make test` runs of the efficacy benchmark): every arm runs per
seed from the same seed model, the table holds mean and spread, and the controls do what they claim."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_arms_run_per_seed_and_the_controls_hold(tiny_seed, tmp_path, capsys):
    bench = runpy.run_path(str(ROOT / "bench" / "efficacy.py"))
    runs = bench["main"](["--smoke", "--arms", "default,frozen,oracle,noise30", "--seeds", "0,1,2",
                          "-s", f"seed.path={tiny_seed}", "--out", str(tmp_path / "runs"),
                          "--json", str(tmp_path / "figures.json")])
    out = capsys.readouterr().out
    by_arm = {arm: [r for r in runs if r.arm == arm] for arm in ("default", "frozen", "oracle", "noise30")}
    assert all(len(mine) == 3 for mine in by_arm.values())
    assert sorted(r.seed for r in by_arm["default"]) == [0, 1, 2]
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
    assert "vote prec" in header and "train prec" in header and "s/run" in header
    row = next(line for line in lines if line.startswith("oracle "))
    assert "1.000±0.000" in row  # mean±sd across the three seeds
    assert (tmp_path / "figures.json").exists()
