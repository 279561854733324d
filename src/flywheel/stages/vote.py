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
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flywheel import io, schemas
from flywheel.config import VoteConfig
from flywheel.layout import FILES
from flywheel.registry import VOTE_METHODS

NO_ANSWER = None


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
        weighed = by_prompt[prompt_id]
        group = [s for s, _ in weighed]
        keys = {id(s): key(s["answer"]) for s in group}
        counts = Counter(keys[id(s)] for s in group)
        mass: dict = defaultdict(float)
        for s, w in sorted(weighed, key=lambda sw: (sw[0]["voter"], sw[0]["sample_idx"])):  # fixed summation order
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


def sample_weights(samples: list[dict]) -> list[float]:
    """``weighted`` voting: exp(logprob / n_tokens) per sample, in (0, 1]."""
    return [math.exp(s["logprob"] / max(1, s["n_tokens"])) for s in samples]


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
    import numpy as np

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


def reference_vote(samples: list[dict], truth: dict[str, str], is_correct) -> tuple[list[dict], list[dict]]:
    """``reference`` voting (SUPERVISED): the label is the pseudo-label. Same outputs as ``vote``.

    ``majority_answer`` is the most frequent sample answer that ``is_correct`` accepts (so it
    compares equal to samples' normalised answers), else the label itself; prompts without a
    label get none. ``vote_share`` is the share of samples that are correct.
    """
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for sample in samples:
        by_prompt[sample["prompt_id"]].append(sample)
    votes, agreement = [], []
    for prompt_id in sorted(by_prompt):
        group = sorted(by_prompt[prompt_id], key=lambda s: (s["voter"], s["sample_idx"]))
        label = truth.get(prompt_id)
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
    """A ``vote.method``. ``needs_model``: it loads the champion (the Kubeflow vote step then runs on the
    GPU pool); ``supervised``: it reads the audit file's labels, and vote.json says the round is supervised."""

    run: Callable[[list[dict], VoteInputs], Ballot]
    needs_model: bool = False
    supervised: bool = False


def _weighted(weights: Callable[[list[dict], VoteInputs], list[float] | None], label_source: str):
    """A method that is ``vote`` with each sample's vote weighing ``weights(samples, inputs)``."""

    def run(samples: list[dict], inputs: VoteInputs) -> Ballot:
        votes, agreement = vote(samples, min_answer_share=inputs.config.min_answer_share,
                                weights=weights(samples, inputs), key=inputs.task.vote_key)
        return Ballot(votes, agreement, label_source)

    return run


def _reliability(samples: list[dict], inputs: VoteInputs) -> Ballot:
    reliability = voter_reliability(samples, inputs.task.vote_key)
    votes, agreement = vote(samples, min_answer_share=inputs.config.min_answer_share,
                            weights=reliability_weights(samples, reliability), key=inputs.task.vote_key)
    return Ballot(votes, agreement, "vote weighted by each committee member's accuracy as estimated from how often "
                  "the members agree with each other (no labels)",
                  {"voter_reliability": {str(v): round(p, 4) for v, p in reliability.items()}})


def _self_judge(samples: list[dict], inputs: VoteInputs) -> Ballot:
    from flywheel.generation import member_judge

    prompts = {p["id"]: p["prompt"] for p in io.read_rows(inputs.prompts_path, schemas.PROMPTS)}
    judge = member_judge(inputs.model_dir, batch_size=inputs.config.judge_batch_size, device=inputs.device,
                         task=inputs.task)
    votes, agreement = vote(samples, min_answer_share=inputs.config.min_answer_share,
                            weights=judge_weights(samples, prompts, judge), key=inputs.task.vote_key)
    scores = {"yes_no": "P(yes) / (P(yes) + P(no)) of its yes/no judge prompt",
              "logprob": "exp(mean token log-prob | prompt)"}
    return Ballot(votes, agreement, "vote weighted by the champion's own score of each candidate answer, "
                  + " and ".join(scores[kind] for kind in judge.kinds) + " (no labels)")


def _reference(samples: list[dict], inputs: VoteInputs) -> Ballot:
    votes, agreement = reference_vote(samples, inputs.truth, inputs.task.is_correct)
    return Ballot(votes, agreement, "REFERENCE LABELS from the audit file: this round is SUPERVISED (ReST-EM with "
                  "labels / verifiable rewards), not self-training")


# The registered vote methods (flywheel.registry; the module docstring says what each weighs).
VOTE_METHODS.add("majority", VoteMethod(_weighted(lambda samples, inputs: None,
                                                  "majority vote of the samples (no labels)")))
VOTE_METHODS.add("weighted", VoteMethod(_weighted(
    lambda samples, inputs: sample_weights(samples),
    "vote weighted by each sample's per-token probability, exp(logprob / n_tokens) (no labels)")))
VOTE_METHODS.add("reliability", VoteMethod(_reliability))
VOTE_METHODS.add("self_judge", VoteMethod(_self_judge, needs_model=True))
VOTE_METHODS.add("reference", VoteMethod(_reference, supervised=True))


def run_vote(samples_path: Path, out_dir: Path, config: VoteConfig, *, task, audit_path: Path | None = None,
             prompts_path: Path | None = None, model_dir: Path | None = None, device: str = "cpu") -> dict:
    """Shell: samples.parquet -> votes.parquet, agreement.parquet, vote.json, by the ``vote.method``.

    Methods that load the champion (``self_judge``) also need the prompts and ``model_dir``; supervised
    ones (``reference``) the audit file.
    """
    method: VoteMethod = VOTE_METHODS.get(config.method)
    samples = io.read_rows(samples_path, schemas.SAMPLES)
    truth = read_truth(audit_path) if audit_path is not None and Path(audit_path).exists() else None
    if method.supervised and truth is None:
        raise io.InputError(audit_path or "vote", f"vote.method={config.method} needs the audit file of labels "
                            "(--audit)", field="vote.method")
    if method.needs_model and (prompts_path is None or model_dir is None):
        raise io.InputError("vote", f"vote.method={config.method} needs the prompts and the champion "
                            "(--prompts, --model)", field="vote.method")
    ballot = method.run(samples, VoteInputs(task=task, config=config, truth=truth, prompts_path=prompts_path,
                                            model_dir=model_dir, device=device))
    summary = vote_summary(ballot.votes)
    summary["method"] = config.method
    summary["label_source"] = ballot.label_source
    summary.update(ballot.report)
    summary["supervised"] = method.supervised
    if truth is not None:
        summary["pseudo_label_precision"] = pseudo_label_precision(ballot.votes, truth, task.is_correct)
    with io.publish_together(out_dir) as staged:
        io.write_rows(staged(FILES.votes), ballot.votes, schemas.VOTES)
        io.write_rows(staged(FILES.agreement), ballot.agreement, schemas.AGREEMENT)
        io.write_json(staged(FILES.vote_summary), summary)
    return summary
