import pytest

from flywheel.config import GateConfig
from flywheel.stages.gate import bootstrap_p, decide, mcnemar_p


def items(pairs, bucket="1"):
    return [{"bucket": bucket, "champion_correct": h, "candidate_correct": c} for h, c in pairs]


def test_mcnemar_exact_by_hand():
    # b=1 (only champion right), c=5 (only candidate right): P(X>=5 | Bin(6, .5)) = (6 + 1) / 64
    assert mcnemar_p(1, 5) == pytest.approx(7 / 64)
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 10) == pytest.approx(1 / 1024)


def test_promotes_a_significant_win():
    data = items([(False, True)] * 10 + [(True, True)] * 10)
    d = decide(data, GateConfig())
    assert d["promote"] and d["only_candidate_correct"] == 10
    assert d["delta"] == pytest.approx(0.5) and d["p_value"] == pytest.approx(1 / 1024)


def test_declines_below_margin_and_when_not_significant():
    tie = items([(True, True)] * 20)
    assert not decide(tie, GateConfig()).get("promote")
    assert "below the required" in decide(tie, GateConfig())["reason"]
    small = items([(False, True)] * 2 + [(True, True)] * 18)
    d = decide(small, GateConfig(min_gain=0.0))
    assert not d["promote"] and "not significant" in d["reason"] and d["p_value"] == pytest.approx(0.25)


def test_declines_when_a_bucket_regresses():
    data = items([(False, True)] * 30, bucket="2") + items([(True, False)] * 3 + [(True, True)] * 7, bucket="1")
    d = decide(data, GateConfig(max_bucket_drop=0.05))
    assert not d["promote"] and "bucket 1 regressed by 0.3000" in d["reason"]
    assert d["buckets"]["1"]["delta"] == pytest.approx(-0.3)
    assert decide(data, GateConfig(max_bucket_drop=0.5))["promote"]


def test_bootstrap_agrees_on_clear_cases():
    champion = [False] * 50 + [True] * 50
    better = [True] * 100
    assert bootstrap_p(champion, better, samples=500, seed=0) == 0.0
    assert bootstrap_p(better, champion, samples=500, seed=0) == 1.0
    d = decide(items(list(zip(champion, better))), GateConfig(test="bootstrap", bootstrap_samples=200))
    assert d["promote"] and d["test"] == "bootstrap"


def test_buckets_sort_numerically_and_frontier_ignores_named_buckets():
    from flywheel.schemas import bucket_key
    from flywheel.stages.evaluate import length_frontier

    assert sorted(["10", "2", "all", "1"], key=bucket_key) == ["1", "2", "10", "all"]
    assert length_frontier({"1": 1.0, "2": 0.995, "3": 0.6, "10": 0.5, "all": 0.9}) == {"frontier": 2, "reach": 10}
    d = decide(items([(True, True)] * 3, bucket="10") + items([(True, True)] * 3, bucket="2"), GateConfig())
    assert list(d["buckets"]) == ["2", "10"]


def test_alpha_one_switches_the_test_off_but_not_min_gain():
    from flywheel.config import GateConfig
    from flywheel.stages.gate import decide

    items = [{"bucket": "1", "champion_correct": c, "candidate_correct": c} for c in (True, False, True, False)]
    assert decide(items, GateConfig(alpha=1.0, min_gain=0.0))["promote"]  # p = 1.0 <= alpha
    assert not decide(items, GateConfig(alpha=0.999, min_gain=0.0))["promote"]
    assert not decide(items, GateConfig(alpha=1.0, min_gain=0.01))["promote"]


@pytest.mark.parametrize("test", ["mcnemar", "bootstrap"])
def test_never_promotes_on_zero_compared_rows(test):
    d = decide([], GateConfig(alpha=1.0, min_gain=0.0, max_bucket_drop=1.0, test=test))
    assert not d["promote"] and d["n"] == 0 and "no compared rows" in d["reason"]
    assert not decide([], GateConfig(min_gain=-1.0, alpha=1.0))["promote"]


def test_run_gate_refuses_empty_predictions_and_writes_nothing(tmp_path):
    from flywheel import io
    from flywheel.errors import InputError
    from flywheel.stages.evaluate import PREDICTION_SCHEMA, PREDICTIONS
    from flywheel.stages.gate import run_gate

    io.write_rows(tmp_path / "ev" / PREDICTIONS, [], PREDICTION_SCHEMA)
    with pytest.raises(InputError) as error:
        run_gate(tmp_path / "ev", tmp_path / "decision.json", GateConfig(alpha=1.0, min_gain=0.0))
    assert str(error.value).startswith(str(tmp_path / "ev" / PREDICTIONS)) and "no rows" in str(error.value)
    assert not (tmp_path / "decision.json").exists()


def test_the_multinomial_bootstrap_matches_resampling_items():
    """The bootstrap draws each resample's counts of -1/0/+1 differences at once; the same p as resampling
    the n items one by one (the textbook form, kept here as the oracle), within Monte Carlo error."""
    import random

    rng = random.Random(1)
    champion = [rng.random() < 0.6 for _ in range(400)]
    candidate = [rng.random() < 0.62 for _ in range(400)]
    diffs = [int(c) - int(h) for h, c in zip(champion, candidate)]
    draw = random.Random(0)
    oracle = sum(sum(diffs[draw.randrange(400)] for _ in range(400)) <= 0 for _ in range(4000)) / 4000
    p = bootstrap_p(champion, candidate, samples=4000, seed=0)
    assert abs(p - oracle) < 0.02 and 0.05 < p < 0.95, (p, oracle)  # a p far from both ends
    assert bootstrap_p(champion, candidate, samples=4000, seed=0) == p  # same seed, same p
