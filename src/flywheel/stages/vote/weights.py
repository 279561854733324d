"""What a sample's vote weighs, for the weighing vote methods (``weighted``, ``reliability``, ``self_judge``):
per sample, in the samples' order. ``vote_table`` then counts the weights."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from flywheel.stages.vote.count import NO_ANSWER

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
