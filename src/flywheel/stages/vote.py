"""Vote: self-verification by majority over a prompt's samples (TTRL's majority reward, no labels).

Input: samples (``schemas.SAMPLES``), all members' samples of a prompt together.
Output per prompt: majority answer, vote share, entropy (nats), sample count; per
sample: whether it agrees with its prompt's majority. A sample without an
extractable answer still counts as a vote, for "no answer", which never wins.

``vote.method`` chooses what a vote weighs (``vote_share`` is then the majority's share
of the total weight; ``entropy`` always counts samples):
  majority    1 per sample (the default; TTRL, ReST-EM without labels).
  weighted    exp(logprob / n_tokens): the sample's per-token probability under the
              distribution it was sampled from (geometric mean). Per token, not the sequence
              probability, so a longer answer (e.g. one more digit) is not out-voted for its length.
  self_judge  the champion scores each candidate answer (its first completion), averaged over members;
              every sample of that answer weighs that score. Chat tasks on a chat model: the task's
              yes/no judge prompt, score P(yes) / (P(yes) + P(no)) of the next token. Otherwise
              (addition): exp(mean token log-prob of the completion, end-of-sequence included, given
              the prompt) at temperature 1.
  reliability a committee's votes weigh each member's estimated accuracy, from how often the
              members agree with each other: when wrong answers rarely coincide across models,
              agreement(m, n) ~ accuracy(m) * accuracy(n), fitted in logs over all pairs (the
              one-coin Dawid-Skene idea, no labels). A member that does not generalise to the new
              length agrees with nobody and loses its say; one or two members: plain majority.
  reference   SUPERVISED (ReST-EM with labels, verifiable rewards): the hidden label from the audit
              file is the pseudo-label; a sample agrees when ``task.is_correct``. The only mode that
              reads the audit file for anything but the audit, and vote.json says so.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel import io, schemas
from flywheel.config import VoteConfig
from flywheel.layout import FILES
from flywheel.registry import VOTE_METHODS
from flywheel.rng import derive_seed
from flywheel.tasks.base import vote_key_of

NO_ANSWER = None

# Rows turned into Python values at a time where the columnar stages call the task's Python rules (audits, and
# curate's per-prompt rules): a batch, never the whole round, is Python objects at once (a million prompts as
# dicts is ~1 GB).
BATCH = 65_536


def winner(weight: dict) -> Any:
    """The vote's one rule for who wins: the most weight (or count), ties to the smallest key; never
    ``NO_ANSWER``. None when nothing was answered. ``vote``, ``reference_vote`` and GRPO's
    ``majority_rewards`` all decide with it."""
    answered = {k: w for k, w in weight.items() if k is not NO_ANSWER}
    return min(answered, key=lambda k: (-answered[k], k)) if answered else None


def vote(samples: list[dict], *, min_answer_share: float = 0.0, weights: list[float] | None = None,
         key=None) -> tuple[list[dict], list[dict]]:
    """Majority vote per prompt. Returns (votes, agreement), both sorted by prompt id.

    ``weights[i]`` (default 1) is what sample i's vote weighs. ``key`` (a task's ``vote_key``;
    default: the answer itself) maps an answer to what votes: samples with equal keys agree
    (code: equal outputs, different program texts). ``majority_answer`` is then the most frequent
    answer with the winning key. Ties go to the lexicographically smallest key (answer), so the
    result does not depend on sample order. A prompt where fewer than ``min_answer_share`` of the
    samples (counted, not weighed) have an answer gets no majority.
    """
    key = key or (lambda answer: answer)
    by_prompt: dict[str, list[tuple[dict, float]]] = defaultdict(list)
    for index, sample in enumerate(samples):
        by_prompt[sample["prompt_id"]].append((sample, 1.0 if weights is None else float(weights[index])))
    votes, agreement = [], []
    for prompt_id in sorted(by_prompt):
        weighed = sorted(by_prompt[prompt_id], key=lambda sw: (sw[0]["voter"], sw[0]["sample_idx"]))  # fixed order
        group = [s for s, _ in weighed]
        keys = {id(s): key(s["answer"]) for s in group}
        counts = Counter(keys[id(s)] for s in group)
        mass: dict = defaultdict(float)
        for s, w in weighed:
            mass[keys[id(s)]] += w
        answered = {k: m for k, m in mass.items() if k is not NO_ANSWER}
        n = len(group)
        total = sum(mass.values())
        won = winner(mass)
        if sum(c for k, c in counts.items() if k is not NO_ANSWER) < min_answer_share * n:
            won = None
        majority = None
        if won is not None:
            majority = winner(Counter(s["answer"] for s in group if keys[id(s)] == won))
        votes.append({
            "prompt_id": prompt_id,
            "majority_answer": majority,
            "vote_share": answered.get(won, 0.0) / total if total > 0 else 0.0,
            "entropy": -sum(c / n * math.log(c / n) for c in counts.values()),
            "n_samples": n,
            "n_answers": len(answered),
        })
        for s in sorted(group, key=lambda s: (s["voter"], s["sample_idx"])):
            agreement.append({"prompt_id": prompt_id, "sample_idx": s["sample_idx"], "voter": s["voter"],
                              "agrees": won is not None and keys[id(s)] == won})
    return votes, agreement


class DuplicateSample(ValueError):
    """Two rows of the samples table share their key; ``run_vote`` then lets the row reader name them."""


def vote_table(samples, *, weights=None, key=None, min_answer_share: float = 0.0):
    """``vote`` on an Arrow table of samples (``schemas.SAMPLES``): the same votes and agreement, bit for bit, as
    Arrow tables, without a Python object per sample (tests/test_vote_columnar.py compares them on random rounds).

    ``weights``: a float array in the table's row order (default 1 each). ``key``: the task's ``vote_key``,
    applied once per distinct answer. Every sum runs in the order ``vote`` uses (samples by voter and index
    within a prompt; classes by first appearance), and the entropy's terms come from ``math.log``, so the
    floats are the reference's own.
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


def sample_order(samples):
    """(row order, each ordered row's prompt code, the prompt ids by code) of a samples table: the reference's
    order, by prompt id, then voter, then sample index. The ids are sorted once as distinct values (their codes
    then order the rows), never row by row. Raises ``DuplicateSample`` when two rows share that key."""

    prompt_ids = samples.column("prompt_id").combine_chunks().dictionary_encode()
    prompt_rank = ranks(prompt_ids.dictionary)
    code = prompt_rank[prompt_ids.indices.to_numpy()]
    voter, index = samples.column("voter").to_numpy(), samples.column("sample_idx").to_numpy()
    if voter.min(initial=0) < 0 or index.min(initial=0) < 0:  # (zero-copy views otherwise: no 80 MB copies)
        voter, index = voter - voter.min(initial=0), index - index.min(initial=0)
    voters, indices = int(voter.max(initial=0)) + 1, int(index.max(initial=0)) + 1
    if len(prompt_rank) * voters * indices < 2**62:  # one int64 per row: one sort instead of three
        row_key = code * voters  # built in place: one array, not four temporaries
        row_key += voter
        row_key *= indices
        row_key += index
        order = np.argsort(row_key)
        row_key = row_key[order]
        repeated = len(row_key) > 1 and bool((row_key[1:] == row_key[:-1]).any())
    else:
        order = np.lexsort((index, voter, code))
        keys = np.stack([code[order], voter[order], index[order]])
        repeated = len(order) > 1 and bool((keys[:, 1:] == keys[:, :-1]).all(axis=0).any())
    if repeated:
        raise DuplicateSample("two samples share (prompt_id, voter, sample_idx)")
    prompt_names = prompt_ids.dictionary.take(pa.array(np.argsort(prompt_rank)))
    return order, code[order], prompt_names


def run_starts(codes):
    """Where each run of equal values in ``codes`` (sorted, or grouped) begins, and for each element the start
    of its run: the columnar stages' per-prompt cumulative counts and reductions."""
    if not len(codes):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return starts, np.repeat(starts, np.diff(np.r_[starts, len(codes)]))


def ranks(values):
    """Each value's position in code-point order (Python's string order; Arrow sorts UTF-8 bytes the same way)."""

    rank = np.empty(len(values), dtype=np.int64)
    rank[pc.sort_indices(values).to_numpy()] = np.arange(len(values))
    return rank


# The lowest per-token log-probability a weight is taken at: exp(-700) is about 1e-304. No model's sampled tokens
# come near it, but a samples file can say -1e308, whose exp underflows to 0: every weight of a prompt 0, its vote
# share 0/0. Below the floor the samples weigh alike (exp(-700) each).
LOG_WEIGHT_FLOOR = -700.0


def sample_weights(samples: list[dict]) -> list[float]:
    """``weighted`` voting: exp(logprob / n_tokens) per sample, in (0, 1]."""
    return [math.exp(max(LOG_WEIGHT_FLOOR, s["logprob"] / max(1, s["n_tokens"]))) for s in samples]


def pairwise_agreement(samples: list[dict], key=None) -> dict[tuple[int, int], float]:
    """For each pair of voters m < n: the chance that a sample of m and a sample of n of the same prompt
    give the same (answered) key, averaged over the prompts both answered at all."""
    key = key or (lambda answer: answer)
    counts: dict[str, dict[int, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for s in samples:
        counts[s["prompt_id"]][s["voter"]][key(s["answer"])] += 1
    voters = sorted({s["voter"] for s in samples})
    sums: dict[tuple[int, int], float] = defaultdict(float)
    seen: dict[tuple[int, int], int] = defaultdict(int)
    for prompt_id in sorted(counts):
        by_voter = counts[prompt_id]
        for i, m in enumerate(voters):
            for n in voters[i + 1:]:
                if m not in by_voter or n not in by_voter:
                    continue
                cm, cn = by_voter[m], by_voter[n]
                same = sum(c * cn[k] for k, c in cm.items() if k is not NO_ANSWER)
                sums[m, n] += same / (sum(cm.values()) * sum(cn.values()))
                seen[m, n] += 1
    return {pair: sums[pair] / seen[pair] for pair in sorted(seen)}


def voter_reliability(samples: list[dict], key=None) -> dict[int, float]:
    """Each voter's estimated accuracy in (0, 1], from ``pairwise_agreement`` alone (no labels).

    With wrong answers that rarely coincide across voters, agreement(m, n) ~ acc(m) * acc(n), so
    log agreement(m, n) = log acc(m) + log acc(n): least squares over all pairs (three voters: the
    exact triad solution). One voter, or two (one pair cannot tell them apart): 1.0 each, i.e. plain
    majority.
    """

    voters = sorted({s["voter"] for s in samples})
    if len(voters) < 3:
        return {v: 1.0 for v in voters}
    agreement = pairwise_agreement(samples, key)
    index = {v: i for i, v in enumerate(voters)}
    design = np.zeros((len(agreement), len(voters)))
    target = np.zeros(len(agreement))
    for row, ((m, n), rate) in enumerate(agreement.items()):
        design[row, index[m]] = design[row, index[n]] = 1.0
        target[row] = math.log(max(rate, 1e-6))
    log_accuracy = np.linalg.lstsq(design, target, rcond=None)[0]
    return {v: float(min(1.0, math.exp(log_accuracy[index[v]]))) for v in voters}


def reliability_weights(samples: list[dict], reliability: dict[int, float]) -> list[float]:
    """``reliability`` voting: every sample weighs its voter's estimated accuracy."""
    return [reliability[s["voter"]] for s in samples]


def judge_weights(samples: list[dict], prompts: dict[str, str], score) -> list[float]:
    """``self_judge`` voting: every sample weighs the judge's score of its answer.

    An answer's candidate text is the completion of its first sample (by voter, sample
    index); ``score(pairs)`` maps a list of (prompt, completion) to probabilities in (0, 1].
    A sample without an answer is scored on its own completion.
    """
    candidates: dict[tuple, str] = {}
    for s in sorted(samples, key=lambda s: (s["prompt_id"], s["voter"], s["sample_idx"])):
        key = (s["prompt_id"], s["answer"]) if s["answer"] is not NO_ANSWER else (s["prompt_id"], None, s["completion"])
        candidates.setdefault(key, s["completion"])
    keys = sorted(candidates, key=lambda k: tuple("" if x is None else x for x in k))
    scores = dict(zip(keys, score([(prompts[k[0]], candidates[k]) for k in keys])))
    return [scores[(s["prompt_id"], s["answer"]) if s["answer"] is not NO_ANSWER
                   else (s["prompt_id"], None, s["completion"])] for s in samples]


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
        flipped = label_noise and random.Random(derive_seed("label-noise", noise_seed, prompt_id)).random() < label_noise
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


def audit_columns(prompt_ids, majorities, shares, truth, is_correct, thresholds: list[float]) -> list[dict]:
    """``audit`` on Arrow columns of the votes and the audit file's table (``truth``: id, answer): each
    majority judged once, a batch of Python values at a time; the thresholds then count numpy masks."""

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
    """Share of audited prompts with a majority answer whose majority is correct."""
    labeled = [v for v in votes if v["prompt_id"] in truth and v["majority_answer"] is not None]
    if not labeled:
        return None
    return sum(is_correct(v["majority_answer"], truth[v["prompt_id"]]) for v in labeled) / len(labeled)


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


@dataclass(frozen=True)
class VoteInputs:
    """What a vote method may read besides the samples. ``truth``: the audit file's labels, when given;
    ``prompts`` and ``model_dir``: the round's prompts and the champion, for methods that ask it."""

    task: Any
    config: VoteConfig
    truth: dict[str, str] | None = None
    prompts_path: Path | None = None
    model_dir: Path | None = None
    device: str = "cpu"
    samples_path: Path | None = None  # what an error about a sample's row names


@dataclass(frozen=True)
class Ballot:
    """A vote method's result: the votes and agreement rows, what vote.json says the labels came from,
    and anything else it reports there (``reliability``: each voter's estimated accuracy)."""

    votes: list[dict]
    agreement: list[dict]
    label_source: str
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class VoteMethod:
    """A ``vote.method``. Either ``weigh(samples_table, inputs) -> (weights or None, label_source, report)``: a
    weighing of the samples that the columnar ``vote_table`` then counts (every method of the embedded
    default); or ``run(sample_rows, inputs) -> Ballot``: anything else, on rows. ``needs_model``: it loads
    the champion (the Kubeflow vote step then runs on the GPU pool); ``supervised``: it reads the audit
    file's labels, and vote.json says the round is supervised."""

    run: Callable[[list[dict], VoteInputs], Ballot] | None = None
    weigh: Callable[..., tuple] | None = None
    needs_model: bool = False
    supervised: bool = False
    columns: tuple[str, ...] = ("prompt_id", "sample_idx", "voter", "answer")  # of samples.parquet that it reads


def _majority(table, inputs: VoteInputs) -> tuple:
    return None, "majority vote of the samples (no labels)", {}


def _weighted(table, inputs: VoteInputs) -> tuple:

    ratio = table.column("logprob").to_numpy() / np.maximum(1, table.column("n_tokens").to_numpy())
    ratio = np.maximum(LOG_WEIGHT_FLOOR, ratio)
    weights = np.fromiter(map(math.exp, ratio.tolist()), float, len(ratio))  # math.exp: numpy's differs in the last bit
    return weights, "vote weighted by each sample's per-token probability, exp(logprob / n_tokens) (no labels)", {}


def _reliability(table, inputs: VoteInputs) -> tuple:

    rows = table.select(["prompt_id", "voter", "answer"]).to_pylist()
    reliability = voter_reliability(rows, inputs.task.vote_key)
    weights = np.array([reliability[v] for v in table.column("voter").to_pylist()], dtype=float)
    return weights, ("vote weighted by each committee member's accuracy as estimated from how often the members "
                     "agree with each other (no labels)"), {
        "voter_reliability": {str(v): round(p, 4) for v, p in reliability.items()}}


def _self_judge(table, inputs: VoteInputs) -> tuple:

    from flywheel.generation import member_judge

    prompts = {p["id"]: p["prompt"] for p in io.read_rows(inputs.prompts_path, schemas.PROMPTS)}
    ids = table.column("prompt_id")
    unknown = pc.invert(pc.is_in(ids, value_set=pa.array(list(prompts), pa.string())))
    if pc.any(unknown).as_py():  # the judge is asked the sample's question: before the model loads
        row = pc.index(unknown, True).as_py()
        raise io.InputError(inputs.samples_path or "samples", f"prompt {ids[row].as_py()!r} is not in "
                            f"{Path(inputs.prompts_path).name}", row=row + 1, field="prompt_id")
    judge = member_judge(inputs.model_dir, batch_size=inputs.config.judge_batch_size, device=inputs.device,
                         task=inputs.task)
    weights = np.array(judge_weights(table.to_pylist(), prompts, judge), dtype=float)
    scores = {"yes_no": "P(yes) / (P(yes) + P(no)) of its yes/no judge prompt",
              "logprob": "exp(mean token log-prob | prompt)"}
    return weights, ("vote weighted by the champion's own score of each candidate answer, "
                     + " and ".join(scores[kind] for kind in judge.kinds) + " (no labels)"), {}


def _reference(samples: list[dict], inputs: VoteInputs) -> Ballot:
    noise = inputs.config.label_noise
    votes, agreement = reference_vote(samples, inputs.truth, inputs.task.is_correct, label_noise=noise,
                                      noise_seed=inputs.config.label_noise_seed)
    return Ballot(votes, agreement, "REFERENCE LABELS from the audit file: this round is SUPERVISED (ReST-EM with "
                  "labels / verifiable rewards), not self-training"
                  + (f"; {noise:.0%} of the labels replaced by wrong answers (a control)" if noise else ""))


# The registered vote methods (flywheel.registry; the module docstring says what each weighs).
VOTE_METHODS.add("majority", VoteMethod(weigh=_majority))
VOTE_METHODS.add("weighted", VoteMethod(weigh=_weighted, columns=("prompt_id", "sample_idx", "voter", "answer",
                                                                   "n_tokens", "logprob")))
VOTE_METHODS.add("reliability", VoteMethod(weigh=_reliability))
VOTE_METHODS.add("self_judge", VoteMethod(weigh=_self_judge, needs_model=True, columns=tuple(schemas.SAMPLES.names)))
VOTE_METHODS.add("reference", VoteMethod(run=_reference, supervised=True))


def run_vote(samples_path: Path, out_dir: Path, config: VoteConfig, *, task, audit_path: Path | None = None,
             prompts_path: Path | None = None, model_dir: Path | None = None, device: str = "cpu") -> dict:
    """Shell: samples.parquet -> votes.parquet, agreement.parquet, vote.json, by the ``vote.method``.

    Methods that load the champion (``self_judge``) also need the prompts and ``model_dir``; supervised
    ones (``reference``) the audit file. Weighing methods vote on Arrow columns (``vote_table``).
    """
    method: VoteMethod = VOTE_METHODS.get(config.method)
    audited = audit_path is not None and Path(audit_path).exists()
    # Labels as a dict only for the row methods that vote with them; the columnar path reads the audit file
    # after voting, as a table (a million prompts' labels as a dict would be ~200 MB held through the vote).
    truth = read_truth(audit_path) if audited and method.weigh is None else None
    if method.supervised and not audited:
        raise io.InputError(audit_path or "vote", f"vote.method={config.method} needs the audit file of labels "
                            "(--audit)", field="vote.method")
    if method.needs_model and (prompts_path is None or model_dir is None):
        raise io.InputError("vote", f"vote.method={config.method} needs the prompts and the champion "
                            "(--prompts, --model)", field="vote.method")
    inputs = VoteInputs(task=task, config=config, truth=truth, prompts_path=prompts_path, model_dir=model_dir,
                        device=device, samples_path=Path(samples_path))
    if method.weigh is not None:
        table = io.read_table(samples_path, schemas.SAMPLES, columns=method.columns, check_key=False)
        try:
            weights, label_source, report = method.weigh(table, inputs)
            votes, agreement = vote_table(table, weights=weights, key=vote_key_of(task),
                                          min_answer_share=config.min_answer_share)
        except DuplicateSample:
            io.read_rows(samples_path, schemas.SAMPLES)  # the one-line error naming both rows
            raise
        del table
        summary = summary_of(votes.column("vote_share").to_pylist(), votes.column("entropy").to_pylist(),
                             votes.column("majority_answer").to_pylist())
        if audited:  # the precision at threshold 0: of every answered, labeled prompt
            (everything,) = audit_columns(votes.column("prompt_id").combine_chunks(),
                                          votes.column("majority_answer").combine_chunks(), votes.column("vote_share"),
                                          io.read_table(audit_path, schemas.PROMPTS), task.is_correct, [0.0])
            precision = everything["precision"]
    else:
        rows = io.read_rows(samples_path, schemas.SAMPLES)
        if method.supervised:
            check_labels(rows, truth, audit_path)
        ballot = method.run(rows, inputs)
        label_source, report = ballot.label_source, ballot.report
        votes, agreement = (pa.Table.from_pylist(ballot.votes, schema=schemas.VOTES.arrow()),
                            pa.Table.from_pylist(ballot.agreement, schema=schemas.AGREEMENT.arrow()))
        summary = vote_summary(ballot.votes)
        if audited:
            precision = pseudo_label_precision(ballot.votes, truth, task.is_correct)
    summary["method"] = config.method
    summary["label_source"] = label_source
    summary.update(report)
    summary["supervised"] = method.supervised
    if audited:
        summary["pseudo_label_precision"] = precision
    with io.publish_together(out_dir) as staged:
        io.write_table(staged(FILES.votes), votes, schemas.VOTES)
        io.write_table(staged(FILES.agreement), agreement, schemas.AGREEMENT)
        io.write_json(staged(FILES.vote_summary), summary)
    return summary
