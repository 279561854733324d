import math

import pytest

from flywheel.stages.vote import audit, pseudo_label_precision, vote, vote_summary
from flywheel.tasks import ReversedAddition


def s(prompt_id, idx, answer, voter=0):
    return {"prompt_id": prompt_id, "sample_idx": idx, "voter": voter, "completion": answer or "x",
            "answer": answer, "n_tokens": 3, "logprob": -1.0}


def test_majority_share_entropy_by_hand():
    samples = [s("p", 0, "12"), s("p", 1, "12"), s("p", 2, "13"), s("p", 3, None)]
    votes, agreement = vote(samples)
    (v,) = votes
    assert v["majority_answer"] == "12"
    assert v["vote_share"] == 0.5  # 2 of 4 votes; the no-answer sample counts as a vote
    expected = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) * 2)
    assert v["entropy"] == pytest.approx(expected)
    assert v["n_samples"] == 4 and v["n_answers"] == 2
    assert [a["agrees"] for a in agreement] == [True, True, False, False]


def test_ties_go_to_smallest_answer_whatever_the_order():
    a = vote([s("p", 0, "9"), s("p", 1, "10")])[0][0]
    b = vote([s("p", 0, "10"), s("p", 1, "9")])[0][0]
    assert a["majority_answer"] == b["majority_answer"] == "10"
    assert a["vote_share"] == 0.5


def test_no_answer_never_wins():
    (v,), agreement = vote([s("p", 0, None), s("p", 1, None), s("p", 2, "7")])
    assert v["majority_answer"] == "7" and v["vote_share"] == pytest.approx(1 / 3)
    (w,), agreement = vote([s("q", 0, None)])
    assert w["majority_answer"] is None and w["vote_share"] == 0.0 and not agreement[0]["agrees"]


def test_votes_pool_committee_members():
    samples = [s("p", 0, "5", voter=0), s("p", 0, "5", voter=1), s("p", 0, "6", voter=2)]
    (v,), agreement = vote(samples)
    assert v["majority_answer"] == "5" and v["n_samples"] == 3
    assert [(a["voter"], a["agrees"]) for a in agreement] == [(0, True), (1, True), (2, False)]


def test_audit_precision_and_yield_at_thresholds():
    votes = [
        {"prompt_id": "a", "majority_answer": "1", "vote_share": 1.0},
        {"prompt_id": "b", "majority_answer": "2", "vote_share": 0.5},
        {"prompt_id": "c", "majority_answer": "9", "vote_share": 0.75},
        {"prompt_id": "d", "majority_answer": None, "vote_share": 0.0},
    ]
    truth = {"a": "1", "b": "2", "c": "3", "d": "4"}
    rows = audit(votes, truth, ReversedAddition().is_correct, [0.5, 0.8])
    assert rows[0] == {"threshold": 0.5, "yield": 0.75, "kept": 3, "precision": pytest.approx(2 / 3)}
    assert rows[1] == {"threshold": 0.8, "yield": 0.25, "kept": 1, "precision": 1.0}
    assert pseudo_label_precision(votes, truth, ReversedAddition().is_correct) == pytest.approx(2 / 3)


def test_summary():
    votes = [{"vote_share": 1.0, "entropy": 0.0, "majority_answer": "1"},
             {"vote_share": 0.5, "entropy": 0.7, "majority_answer": None}]
    summary = vote_summary(votes)
    assert summary["majority_ratio"] == 0.75 and summary["no_answer_rate"] == 0.5
    assert summary["unanimous_rate"] == 0.5


def test_min_answer_share_withholds_the_label():
    samples = [s("p", 0, "7"), s("p", 1, None), s("p", 2, None)]
    assert vote(samples, min_answer_share=0.5)[0][0]["majority_answer"] is None
    assert vote(samples, min_answer_share=0.3)[0][0]["majority_answer"] == "7"


# --- vote.method: weighted, self_judge, reference -------------------------------------------------------------

def lp(prompt_id, idx, answer, logprob, n_tokens, voter=0):
    return {**s(prompt_id, idx, answer, voter), "logprob": logprob, "n_tokens": n_tokens}


def test_weighted_vote_hand_sums():
    from flywheel.stages.vote import sample_weights

    samples = [lp("p", 0, "12", 2 * math.log(0.9), 2), lp("p", 1, "12", 3 * math.log(0.9), 3),
               lp("p", 2, "13", 2 * math.log(0.5), 2), lp("p", 3, "13", 2 * math.log(0.5), 2),
               lp("p", 4, "13", 2 * math.log(0.5), 2), lp("p", 5, None, 2 * math.log(0.2), 2)]
    (v,), agreement = vote(samples, weights=sample_weights(samples))
    # "12": 0.9 + 0.9 = 1.8; "13": 3 x 0.5 = 1.5; no answer: 0.2; total 3.5. Unweighted, "13" would win 3 to 2.
    assert v["majority_answer"] == "12"
    assert v["vote_share"] == pytest.approx(1.8 / 3.5)
    assert [a["agrees"] for a in agreement] == [True, True, False, False, False, False]
    assert vote(samples)[0][0]["majority_answer"] == "13"
    # entropy still counts samples, not weights
    assert v["entropy"] == pytest.approx(-(2 / 6 * math.log(2 / 6) + 3 / 6 * math.log(3 / 6) + 1 / 6 * math.log(1 / 6)))


def test_weighted_ties_go_to_smallest_answer():
    samples = [lp("p", 0, "9", math.log(0.5), 1), lp("p", 1, "10", math.log(0.5), 1)]
    from flywheel.stages.vote import sample_weights

    assert vote(samples, weights=sample_weights(samples))[0][0]["majority_answer"] == "10"


def test_judge_weights_score_each_candidate_answer_once():
    from flywheel.stages.vote import judge_weights

    samples = [s("p", 0, "5"), s("p", 1, "5"), s("p", 2, "6"), s("p", 3, None)]
    samples[0]["completion"], samples[1]["completion"] = "5", "5 "  # same answer, different text
    samples[3]["completion"] = "x"
    asked = []

    def score(pairs):
        asked.extend(pairs)
        return [{"5": 0.2, "6": 0.9, "x": 0.1}[completion] for _, completion in pairs]

    weights = judge_weights(samples, {"p": "2+3="}, score)
    assert sorted(asked) == [("2+3=", "5"), ("2+3=", "6"), ("2+3=", "x")]  # "5 " is not scored: "5" represents it
    assert weights == [0.2, 0.2, 0.9, 0.1]
    (v,), _ = vote(samples, weights=weights)
    assert v["majority_answer"] == "6" and v["vote_share"] == pytest.approx(0.9 / 1.4)


def test_reference_vote_uses_the_label_by_hand():
    from flywheel.stages.vote import reference_vote

    samples = [s("p", 0, "12"), s("p", 1, "12"), s("p", 2, "13"), s("p", 3, None), s("q", 0, "7"), s("r", 0, "1")]
    votes, agreement = reference_vote(samples, {"p": "13", "q": "8"}, ReversedAddition().is_correct)
    p, q, r = votes
    assert p["majority_answer"] == "13" and p["vote_share"] == 0.25  # the minority answer is the right one
    assert q["majority_answer"] == "8" and q["vote_share"] == 0.0  # nobody right: the label itself
    assert r["majority_answer"] is None and r["vote_share"] == 0.0  # no label, no pseudo-label
    assert [a["agrees"] for a in agreement] == [False, False, True, False, False, False]


def test_label_noise_replaces_a_share_of_the_labels_by_the_commonest_wrong_answer():
    from flywheel.config import ConfigError, VoteConfig
    from flywheel.stages.vote import reference_vote

    ids = [f"p{i}" for i in range(400)]
    samples = [s(pid, j, answer) for pid in ids for j, answer in enumerate(["12", "12", "13", "14", None])]
    truth = {pid: "12" for pid in ids}
    clean, _ = reference_vote(samples, truth, ReversedAddition().is_correct)
    noisy, agreement = reference_vote(samples, truth, ReversedAddition().is_correct, label_noise=0.3)
    assert {v["majority_answer"] for v in clean} == {"12"}
    flipped = [v for v in noisy if v["majority_answer"] != "12"]
    assert 0.25 < len(flipped) / len(ids) < 0.35
    assert {v["majority_answer"] for v in flipped} == {"13"}  # the commonest wrong answer (ties: smallest)
    assert all(v["vote_share"] == 0.2 for v in flipped)
    assert sum(a["agrees"] for a in agreement) == 2 * (len(ids) - len(flipped)) + len(flipped)
    again, _ = reference_vote(samples, truth, ReversedAddition().is_correct, label_noise=0.3)
    assert again == noisy  # drawn per (seed, prompt id): the same prompts every time
    other, _ = reference_vote(samples, truth, ReversedAddition().is_correct, label_noise=0.3, noise_seed=1)
    assert other != noisy
    unanimous, _ = reference_vote([s("p", 0, "12")], {"p": "12"}, ReversedAddition().is_correct, label_noise=0.999)
    assert unanimous[0]["majority_answer"] is None  # nothing wrong to swap in: no label
    with pytest.raises(ConfigError, match="vote.label_noise"):
        VoteConfig(label_noise=0.1)


def test_run_vote_modes_and_the_loud_reference_flag(tmp_path, tiny_seed):
    from flywheel import io, schemas
    from flywheel.config import VoteConfig
    from flywheel.errors import InputError
    from flywheel.stages.vote import run_vote

    task = ReversedAddition()
    prompts = [{"id": "a", "prompt": "1+1="}, {"id": "b", "prompt": "2+2="}]
    samples = [lp("a", 0, "2", -0.1, 2), lp("a", 1, "3", -0.2, 2), lp("b", 0, "4", -0.3, 2), lp("b", 1, "5", -3.0, 2)]
    io.write_rows(tmp_path / "prompts.parquet", prompts, schemas.PROMPTS)
    io.write_rows(tmp_path / "audit.parquet", [{**p, "answer": a} for p, a in zip(prompts, ("2", "4"))],
                  schemas.PROMPTS)
    io.write_rows(tmp_path / "samples.parquet", samples, schemas.SAMPLES)
    summary = run_vote(tmp_path / "samples.parquet", tmp_path, VoteConfig(method="reference"), task=task,
                       audit_path=tmp_path / "audit.parquet")
    assert summary["supervised"] is True and "REFERENCE LABELS" in summary["label_source"]
    assert summary["pseudo_label_precision"] == 1.0
    with pytest.raises(InputError, match="needs the audit file"):
        run_vote(tmp_path / "samples.parquet", tmp_path, VoteConfig(method="reference"), task=task)
    with pytest.raises(InputError, match="needs the prompts and the champion"):
        run_vote(tmp_path / "samples.parquet", tmp_path, VoteConfig(method="self_judge"), task=task)
    # self_judge with the real tiny champion: weights are probabilities, so shares stay in (0, 1]
    summary = run_vote(tmp_path / "samples.parquet", tmp_path, VoteConfig(method="self_judge"), task=task,
                       prompts_path=tmp_path / "prompts.parquet", model_dir=tiny_seed)
    assert summary["supervised"] is False and summary["method"] == "self_judge"
    votes = io.read_rows(tmp_path / "votes.parquet", schemas.VOTES)
    assert all(0 < v["vote_share"] < 1 for v in votes)
    weighted = run_vote(tmp_path / "samples.parquet", tmp_path, VoteConfig(method="weighted"), task=task)
    assert weighted["majority_ratio"] == pytest.approx(
        (math.exp(-0.05) / (math.exp(-0.05) + math.exp(-0.1))
         + math.exp(-0.15) / (math.exp(-0.15) + math.exp(-1.5))) / 2)


def committee_samples():
    """Four prompts, one sample per member: members 0 and 1 always answer "A"; member 2 answers "A"
    on p0 only and something of its own elsewhere (a member that does not generalise)."""
    samples = []
    for p in range(4):
        samples += [s(f"p{p}", 0, "A", voter=0), s(f"p{p}", 0, "A", voter=1),
                    s(f"p{p}", 0, "A" if p == 0 else f"z{p}", voter=2)]
    return samples


def test_pairwise_agreement_by_hand():
    from flywheel.stages.vote import pairwise_agreement

    assert pairwise_agreement(committee_samples()) == {(0, 1): 1.0, (0, 2): 0.25, (1, 2): 0.25}
    # two samples each: agreement is the chance a random pair of their samples agrees; no-answer never agrees
    two = [s("p", 0, "1", 0), s("p", 1, "2", 0), s("p", 0, "1", 1), s("p", 1, None, 1)]
    assert pairwise_agreement(two) == {(0, 1): pytest.approx(1 / 4)}


def test_voter_reliability_solves_the_triad_and_weighs_votes():
    from flywheel.stages.vote import reliability_weights, voter_reliability

    # agreement(m, n) = acc(m) * acc(n): acc0 = sqrt(a01 * a02 / a12) = 1, acc2 = sqrt(a02 * a12 / a01) = 0.25
    reliability = voter_reliability(committee_samples())
    assert reliability == pytest.approx({0: 1.0, 1: 1.0, 2: 0.25})
    # p1: 0 and 1 say "A", 2 says "z1": by count "A" has 2/3; by reliability 2 / 2.25
    votes, _ = vote(committee_samples(), weights=reliability_weights(committee_samples(), reliability))
    assert votes[1]["majority_answer"] == "A" and votes[1]["vote_share"] == pytest.approx(2 / 2.25)
    assert vote(committee_samples())[0][1]["vote_share"] == pytest.approx(2 / 3)
    # one pair cannot tell its members apart: plain majority
    assert voter_reliability([x for x in committee_samples() if x["voter"] < 2]) == {0: 1.0, 1: 1.0}
    assert voter_reliability([s("p", 0, "1")]) == {0: 1.0}


def test_run_vote_reliability_reports_each_members_estimate(tmp_path):
    from flywheel import io, schemas
    from flywheel.config import VoteConfig
    from flywheel.stages.vote import run_vote

    io.write_rows(tmp_path / "samples.parquet", committee_samples(), schemas.SAMPLES)
    summary = run_vote(tmp_path / "samples.parquet", tmp_path, VoteConfig(method="reliability"),
                       task=ReversedAddition())
    assert summary["voter_reliability"] == {"0": 1.0, "1": 1.0, "2": 0.25}
    assert summary["supervised"] is False and "agree with each other" in summary["label_source"]
    assert summary["majority_ratio"] == pytest.approx((1 + 3 * 2 / 2.25) / 4)


def test_weighted_vote_of_vanishing_probabilities_still_has_a_share():
    """A per-token log-probability of -1e308 (finite, so the samples contract takes it) made exp() 0 for every
    sample: the vote share came out 0 for the winner of a unanimous vote. Below the floor samples weigh alike."""
    import pyarrow as pa

    from flywheel.stages.vote import _weighted, sample_weights, vote_table

    samples = [lp("p", 0, "12", -1e308, 2), lp("p", 1, "12", -1e308, 2), lp("p", 2, "13", -1e300, 3)]
    (v,), _ = vote(samples, weights=sample_weights(samples))
    assert v["majority_answer"] == "12" and v["vote_share"] == pytest.approx(2 / 3)
    weights, _, _ = _weighted(pa.Table.from_pylist(samples), None)
    assert list(weights) == sample_weights(samples)
    votes, _ = vote_table(pa.Table.from_pylist(samples), weights=weights)
    assert votes.column("vote_share").to_pylist() == [v["vote_share"]]
