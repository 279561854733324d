"""What reads the audit file's hidden labels: the supervised ``reference`` vote, and the audits (pseudo-label
precision and yield at thresholds), which never feed training."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel import io, schemas
from flywheel.columnar import BATCH
from flywheel.rng import derive_seed
from flywheel.stages.vote.count import NO_ANSWER, winner


def reference_vote(samples: list[dict], truth: dict[str, str], is_correct, *, label_noise: float = 0.0,
                   noise_seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``reference`` voting (SUPERVISED): the label is the pseudo-label. Same outputs as ``vote``.

    ``majority_answer`` is the most frequent sample answer that ``is_correct`` accepts (so it
    compares equal to samples' normalised answers), else the label itself; prompts without a
    label get none. ``vote_share`` is the share of samples that are correct.
    ``label_noise`` (a control): that share of the prompts, drawn per (``noise_seed``, prompt id), gets a
    wrong label instead, the most frequent wrong sample answer, or none if every answer is right.
    """
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for sample in samples:
        by_prompt[sample["prompt_id"]].append(sample)
    votes, agreement = [], []
    for prompt_id in sorted(by_prompt):
        group = sorted(by_prompt[prompt_id], key=lambda s: (s["voter"], s["sample_idx"]))
        label = truth.get(prompt_id)
        draw = random.Random(derive_seed("label-noise", noise_seed, prompt_id)).random()
        flipped = label_noise and draw < label_noise
        if label is not None and flipped:
            label = winner(Counter(s["answer"] for s in group if not is_correct(s["answer"], label)))
        correct = [label is not None and is_correct(s["answer"], label) for s in group]
        counts = Counter(s["answer"] for s in group)
        right = Counter(s["answer"] for s, ok in zip(group, correct) if ok)
        majority = winner(right) if right else label
        n = len(group)
        votes.append({
            "prompt_id": prompt_id,
            "majority_answer": majority,
            "vote_share": sum(correct) / n,
            "entropy": -sum(c / n * math.log(c / n) for c in counts.values()),
            "n_samples": n,
            "n_answers": len([a for a in counts if a is not NO_ANSWER]),
        })
        for s, ok in zip(group, correct):
            agreement.append({"prompt_id": prompt_id, "sample_idx": s["sample_idx"], "voter": s["voter"],
                              "agrees": ok})
    return votes, agreement


def audit(votes: list[dict], truth: dict[str, str], is_correct, thresholds: list[float]) -> list[dict]:
    """Pseudo-label precision and yield at each vote-share threshold, against hidden truth: ``audit_columns`` on
    vote rows and a dict of labels. Audit only: this never feeds training."""

    labels = pa.table({"id": pa.array(list(truth), pa.string()), "answer": pa.array(list(truth.values()), pa.string())})
    return audit_columns(pa.array([v["prompt_id"] for v in votes], pa.string()),
                         pa.array([v["majority_answer"] for v in votes], pa.string()),
                         pa.array([v["vote_share"] for v in votes], pa.float64()), labels, is_correct, thresholds)


def audit_columns(prompt_ids, majorities, shares, truth, is_correct, thresholds: list[float]) -> list[dict]:
    """Pseudo-label precision and yield at each vote-share threshold, against hidden truth (audit only: this
    never feeds training), on Arrow columns of the votes and the audit file's table (``truth``: id, answer).
    ``yield`` is the share of audited prompts whose majority holds at least the threshold; ``precision`` the
    share of those whose majority answer is correct (None when nothing passes). Each majority is judged once,
    a batch of Python values at a time; the thresholds then count numpy masks."""

    at = pc.index_in(prompt_ids, value_set=truth.column("id").combine_chunks())
    audited = at.is_valid().to_numpy(zero_copy_only=False)
    answered = audited & majorities.is_valid().to_numpy(zero_copy_only=False)
    correct = np.zeros(len(audited), dtype=bool)
    judged = np.flatnonzero(answered)
    for start in range(0, len(judged), BATCH):
        rows = judged[start:start + BATCH]
        taken = pa.array(rows)
        correct[rows] = [bool(is_correct(m, t)) for m, t in zip(majorities.take(taken).to_pylist(),
                                                                truth.column("answer").take(at.take(taken)).to_pylist())]
    share = shares.to_numpy(zero_copy_only=False)
    rows, n_audited = [], int(audited.sum())
    for threshold in sorted(thresholds):
        kept = answered & (share >= threshold)
        n_kept = int(kept.sum())
        rows.append({"threshold": threshold, "yield": n_kept / n_audited if n_audited else 0.0, "kept": n_kept,
                     "precision": int((correct & kept).sum()) / n_kept if n_kept else None})
    return rows


def pseudo_label_precision(votes: list[dict], truth: dict[str, str], is_correct) -> float | None:
    """Share of audited prompts with a majority answer whose majority is correct (the audit at threshold 0)."""
    return audit(votes, truth, is_correct, [0.0])[0]["precision"]


def read_truth(audit_path: Path) -> dict[str, str]:
    """Hidden answers by prompt id, from a round's audit file (audits only, never training)."""
    audit = io.read_table(audit_path, schemas.PROMPTS)
    return dict(zip(audit.column("id").to_pylist(), audit.column("answer").to_pylist()))


def check_labels(samples: list[dict], truth: dict[str, str | None], audit_path: Path) -> None:
    """A supervised vote needs a label for at least one sampled prompt: an audit file without answers, or of
    another round's prompts, would otherwise give every prompt no majority, and curate would keep nothing."""
    if samples and not any(truth.get(s["prompt_id"]) is not None for s in samples):
        raise io.InputError(audit_path, f"labels none of the {len({s['prompt_id'] for s in samples})} sampled "
                            "prompts (vote.method=reference votes with these answers)", field="answer")
