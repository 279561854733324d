"""The vote's count: who wins a prompt, with what share and entropy, from the samples' answers and weights.
Written once, on Arrow columns (``vote_table``); ``vote`` runs it on sample rows (evaluate, the served model)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel import schemas
from flywheel.columnar import ranks, run_starts, sample_order

NO_ANSWER = None


def winner(weight: dict) -> Any:
    """The vote's one rule for who wins: the most weight (or count), ties to the smallest key; never
    ``NO_ANSWER``. None when nothing was answered. ``vote``, ``reference_vote`` and GRPO's
    ``majority_rewards`` all decide with it."""
    answered = {k: w for k, w in weight.items() if k is not NO_ANSWER}
    return min(answered, key=lambda k: (-answered[k], k)) if answered else None


def vote(samples: list[dict], *, min_answer_share: float = 0.0, weights: list[float] | None = None,
         key=None) -> tuple[list[dict], list[dict]]:
    """Majority vote per prompt on sample rows (dicts with prompt_id, voter, sample_idx, answer): ``vote_table``
    on a table of them. Returns (votes, agreement) as rows, both sorted by prompt id."""

    table = pa.table({"prompt_id": pa.array([s["prompt_id"] for s in samples], pa.string()),
                      "sample_idx": pa.array([s["sample_idx"] for s in samples], pa.int64()),
                      "voter": pa.array([s["voter"] for s in samples], pa.int64()),
                      "answer": pa.array([s["answer"] for s in samples], pa.string())})
    votes, agreement = vote_table(table, weights=weights, key=key, min_answer_share=min_answer_share)
    return votes.to_pylist(), agreement.to_pylist()


def vote_table(samples, *, weights=None, key=None, min_answer_share: float = 0.0):
    """Majority vote per prompt on an Arrow table of samples (``schemas.SAMPLES``): (votes, agreement) as Arrow
    tables sorted by prompt id, without a Python object per sample.

    ``weights``: a float array in the table's row order (default 1 each): what each sample's vote weighs.
    ``key`` (a task's ``vote_key``, applied once per distinct answer; default: the answer itself) maps an
    answer to what votes: samples with equal keys agree (code: equal outputs, different program texts).
    The winning key has the most weight, ties to the least key (``winner``), so the result does not depend
    on sample order; ``majority_answer`` is then the most frequent answer with that key. A prompt where
    fewer than ``min_answer_share`` of the samples (counted, not weighed) have an answer gets no majority.
    Every sum runs in one fixed order (samples by voter and index within a prompt; classes by first
    appearance) and the entropy's terms come from ``math.log``: tests/reference_rows.py states the same
    vote row by row, and tests/test_vote_columnar.py holds the two equal, bit for bit.
    """

    if len(samples) == 0:
        return (pa.Table.from_pylist([], schema=schemas.VOTES.arrow()),
                pa.Table.from_pylist([], schema=schemas.AGREEMENT.arrow()))
    order, g, prompt_names = sample_order(samples)
    w = np.ones(len(order)) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    answers = samples.column("answer").combine_chunks().dictionary_encode()  # codes, then ordered: no string copy
    answer_code = pc.fill_null(answers.indices, -1).to_numpy()[order].astype(np.int64)
    if key is None:  # the key is the answer itself
        k, key_dictionary = answer_code, answers.dictionary
    else:
        keys = pa.array([key(a) for a in answers.dictionary.to_pylist()], pa.string()).dictionary_encode()
        k = np.append(pc.fill_null(keys.indices, -1).to_numpy().astype(np.int64), -1)[answer_code]
        key_dictionary = keys.dictionary
    key_rank = ranks(key_dictionary)
    n_prompts, width = len(prompt_names), len(key_dictionary) + 1

    # One class per (prompt, key), numbered in order of first appearance (a hash, no sort): since the rows are in
    # prompt order, each prompt's classes are consecutive, in the order the reference meets them.
    class_code = g * width  # in place: one array, not three temporaries
    class_code += k
    class_code += 1
    classes = pa.array(class_code).dictionary_encode()
    del class_code
    inverse = classes.indices.to_numpy()
    pair = classes.dictionary.to_numpy()
    count = np.bincount(inverse, minlength=len(pair))
    if weights is None:
        mass = count.astype(np.float64)  # a sum of ones is exact in any order
    else:
        mass = np.zeros(len(pair))
        np.add.at(mass, inverse, w)  # sequential, in row order: the reference's sums
    del classes, inverse  # a round's memory is these arrays: each goes when it is done
    pg, pk = pair // width, pair % width - 1
    starts, _ = run_starts(pg)  # each prompt's first class
    n = np.bincount(g, minlength=n_prompts)
    total = np.zeros(n_prompts)
    np.add.at(total, pg, mass)
    # c/n log(c/n) with math.log, once per (count, n) that can occur: a small table, however many classes.
    n_of_class = n[pg]
    most_samples = int(n.max(initial=0))
    if most_samples <= 2048:
        table = np.zeros((most_samples + 1, most_samples + 1))
        for m in range(1, most_samples + 1):
            for c in range(1, m + 1):
                table[c, m] = c / m * math.log(c / m)
        terms = table[count, n_of_class]
        combined = which = None
    else:
        combined = count * (most_samples + 1) + n_of_class
        distinct, which = np.unique(combined, return_inverse=True)
        terms = np.array([c / m * math.log(c / m) for c, m in zip((distinct // (most_samples + 1)).tolist(),
                                                                    (distinct % (most_samples + 1)).tolist())])[which]
    del n_of_class, combined, which
    entropy = np.zeros(n_prompts)
    np.add.at(entropy, pg, terms)
    entropy = -entropy  # -(0.0) is -0.0, as the reference writes a unanimous prompt

    answered = pk >= 0
    answered_count = np.bincount(pg[answered], weights=count[answered], minlength=n_prompts)
    n_answers = np.bincount(pg[answered], minlength=n_prompts)
    # The winner: the most weight, ties to the least key (code-point order), within each prompt's classes
    # (``starts``: where each prompt's run of classes begins; every prompt has one, so index by prompt = pg).
    weight = np.where(answered, mass, -np.inf)
    most = np.maximum.reduceat(weight, starts)[pg]
    never = np.iinfo(np.int64).max
    rank = np.where(answered & (weight == most), np.append(key_rank, never)[pk], never)  # pk -1: no answer
    least = np.minimum.reduceat(rank, starts)[pg]
    best = np.flatnonzero(answered & (rank == least))
    winner_pair = np.full(n_prompts, -1)
    winner_pair[pg[best]] = best
    winner_pair[answered_count < min_answer_share * n] = -1
    has_winner = winner_pair >= 0
    winner_key = np.where(has_winner, pk[np.maximum(winner_pair, 0)], -2)
    share = np.where(has_winner, mass[np.maximum(winner_pair, 0)], 0.0)
    share = np.divide(share, total, out=np.zeros(n_prompts), where=total > 0)
    agrees = winner_key[g] == k

    # The majority answer: the most frequent answer among the winning key's samples, ties to the least answer.
    majority = np.full(n_prompts, -1)
    in_winner = np.flatnonzero(agrees) if key is not None else np.empty(0, dtype=np.int64)
    if key is None:  # one answer per key: the winning key is the answer
        majority = winner_key.copy()
        majority[~has_winner] = -1
    elif len(in_winner):
        answer_rank = ranks(answers.dictionary)
        width_a = len(answers.dictionary)
        apair, acount = np.unique(g[in_winner] * width_a + answer_code[in_winner], return_counts=True)
        ag, aa = apair // width_a, apair % width_a
        ranked = np.lexsort((answer_rank[aa], -acount, ag))
        first_of = ranked[np.unique(ag[ranked], return_index=True)[1]]
        majority[ag[first_of]] = aa[first_of]
    majority_answer = pa.DictionaryArray.from_arrays(pa.array(majority, pa.int32(), mask=majority < 0),
                                                     answers.dictionary).cast(pa.string())
    votes = pa.table({"prompt_id": prompt_names, "majority_answer": majority_answer,
                      "vote_share": pa.array(share), "entropy": pa.array(entropy),
                      "n_samples": pa.array(n.astype(np.int64)), "n_answers": pa.array(n_answers.astype(np.int64))})
    agreement = pa.table({"prompt_id": pa.DictionaryArray.from_arrays(pa.array(g, pa.int32()), prompt_names),
                          "sample_idx": samples.column("sample_idx").take(pa.array(order)),
                          "voter": samples.column("voter").take(pa.array(order)), "agrees": pa.array(agrees)})
    return votes, agreement


def vote_summary(votes: list[dict]) -> dict:
    """Label-free statistics of a vote (TTRL's ``majority_ratio``)."""
    return summary_of([v["vote_share"] for v in votes], [v["entropy"] for v in votes],
                      [v["majority_answer"] for v in votes])


def summary_of(shares: list[float], entropies: list[float], majorities: list) -> dict:
    """``vote_summary`` from the votes' columns (the columnar vote passes them without building rows)."""
    n = len(shares)
    if n == 0:
        return {"prompts": 0, "majority_ratio": 0.0, "mean_entropy": 0.0, "no_answer_rate": 0.0}
    return {
        "prompts": n,
        "majority_ratio": sum(shares) / n,
        "mean_entropy": sum(entropies) / n,
        "no_answer_rate": sum(m is None for m in majorities) / n,
        "unanimous_rate": sum(share == 1.0 for share in shares) / n,
    }
