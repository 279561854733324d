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
