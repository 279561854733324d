"""Vote: self-verification by majority over a prompt's samples (TTRL's majority reward, no labels).

Input: samples (``schemas.SAMPLES``), all members' samples of a prompt together.
Output per prompt: majority answer, vote share, entropy (nats), sample count; per
sample: whether it agrees with its prompt's majority. A sample without an
extractable answer still counts as a vote, for "no answer", which never wins.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

from flywheel import io, schemas
from flywheel.config import VoteConfig

NO_ANSWER = None


def vote(samples: list[dict], *, min_answer_share: float = 0.0) -> tuple[list[dict], list[dict]]:
    """Majority vote per prompt. Returns (votes, agreement), both sorted by prompt id.

    Ties between answers go to the lexicographically smallest answer, so the
    result does not depend on sample order. A prompt where fewer than
    ``min_answer_share`` of the samples have an answer gets no majority.
    """
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for sample in samples:
        by_prompt[sample["prompt_id"]].append(sample)
    votes, agreement = [], []
    for prompt_id in sorted(by_prompt):
        group = by_prompt[prompt_id]
        counts = Counter(s["answer"] for s in group)
        answered = {a: c for a, c in counts.items() if a is not NO_ANSWER}
        n = len(group)
        majority = min(answered, key=lambda a: (-answered[a], a)) if answered else None
        if sum(answered.values()) < min_answer_share * n:
            majority = None
        votes.append({
            "prompt_id": prompt_id,
            "majority_answer": majority,
            "vote_share": answered.get(majority, 0) / n,
            "entropy": -sum(c / n * math.log(c / n) for c in counts.values()),
            "n_samples": n,
            "n_answers": len(answered),
        })
        for s in sorted(group, key=lambda s: (s["voter"], s["sample_idx"])):
            agreement.append({"prompt_id": prompt_id, "sample_idx": s["sample_idx"], "voter": s["voter"],
                              "agrees": majority is not None and s["answer"] == majority})
    return votes, agreement


def vote_summary(votes: list[dict]) -> dict:
    """Label-free statistics of a vote (TTRL's ``majority_ratio``)."""
    n = len(votes)
    if n == 0:
        return {"prompts": 0, "majority_ratio": 0.0, "mean_entropy": 0.0, "no_answer_rate": 0.0}
    return {
        "prompts": n,
        "majority_ratio": sum(v["vote_share"] for v in votes) / n,
        "mean_entropy": sum(v["entropy"] for v in votes) / n,
        "no_answer_rate": sum(v["majority_answer"] is None for v in votes) / n,
        "unanimous_rate": sum(v["vote_share"] == 1.0 for v in votes) / n,
    }


def audit(votes: list[dict], truth: dict[str, str], is_correct, thresholds: list[float]) -> list[dict]:
    """Pseudo-label precision and yield at each vote-share threshold, against hidden truth.

    Audit only: this never feeds training. ``yield`` is the share of prompts whose
    majority holds at least the threshold; ``precision`` the share of those whose
    majority answer is correct (None when nothing passes).
    """
    audited = [v for v in votes if v["prompt_id"] in truth]
    rows = []
    for threshold in sorted(thresholds):
        kept = [v for v in audited if v["majority_answer"] is not None and v["vote_share"] >= threshold]
        correct = sum(is_correct(v["majority_answer"], truth[v["prompt_id"]]) for v in kept)
        rows.append({
            "threshold": threshold,
            "yield": len(kept) / len(audited) if audited else 0.0,
            "kept": len(kept),
            "precision": correct / len(kept) if kept else None,
        })
    return rows


def pseudo_label_precision(votes: list[dict], truth: dict[str, str], is_correct) -> float | None:
    """Share of audited prompts with a majority answer whose majority is correct."""
    labeled = [v for v in votes if v["prompt_id"] in truth and v["majority_answer"] is not None]
    if not labeled:
        return None
    return sum(is_correct(v["majority_answer"], truth[v["prompt_id"]]) for v in labeled) / len(labeled)


def read_truth(audit_path: Path) -> dict[str, str]:
    """Hidden answers by prompt id, from a round's audit file (audits only, never training)."""
    return {row["id"]: row["answer"] for row in io.read_rows(audit_path, schemas.PROMPTS)}


def run_vote(samples_path: Path, out_dir: Path, config: VoteConfig, *, task, audit_path: Path | None = None) -> dict:
    """Shell: samples.parquet -> votes.parquet, agreement.parquet, vote.json."""
    samples = io.read_rows(samples_path, schemas.SAMPLES)
    votes, agreement = vote(samples, min_answer_share=config.min_answer_share)
    summary = vote_summary(votes)
    if audit_path is not None and Path(audit_path).exists():
        truth = read_truth(audit_path)
        summary["pseudo_label_precision"] = pseudo_label_precision(votes, truth, task.is_correct)
    io.write_rows(out_dir / "votes.parquet", votes, schemas.VOTES)
    io.write_rows(out_dir / "agreement.parquet", agreement, schemas.AGREEMENT)
    io.write_json(out_dir / "vote.json", summary)
    return summary
