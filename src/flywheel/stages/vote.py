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
from pathlib import Path

from flywheel import io, schemas
from flywheel.config import VoteConfig

NO_ANSWER = None


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
        winner = min(answered, key=lambda k: (-answered[k], k)) if answered else None
        if sum(c for k, c in counts.items() if k is not NO_ANSWER) < min_answer_share * n:
            winner = None
        majority = None
        if winner is not None:
            answers = Counter(s["answer"] for s in group if keys[id(s)] == winner)
            majority = min(answers, key=lambda a: (-answers[a], a))
        votes.append({
            "prompt_id": prompt_id,
            "majority_answer": majority,
            "vote_share": answered.get(winner, 0.0) / total if total > 0 else 0.0,
            "entropy": -sum(c / n * math.log(c / n) for c in counts.values()),
            "n_samples": n,
            "n_answers": len(answered),
        })
        for s in sorted(group, key=lambda s: (s["voter"], s["sample_idx"])):
            agreement.append({"prompt_id": prompt_id, "sample_idx": s["sample_idx"], "voter": s["voter"],
                              "agrees": winner is not None and keys[id(s)] == winner})
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
        majority = (min(right, key=lambda a: (-right[a], a)) if right else label)
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


def run_vote(samples_path: Path, out_dir: Path, config: VoteConfig, *, task, audit_path: Path | None = None,
             prompts_path: Path | None = None, model_dir: Path | None = None, device: str = "cpu") -> dict:
    """Shell: samples.parquet -> votes.parquet, agreement.parquet, vote.json.

    ``self_judge`` also needs the prompts and the champion (``model_dir``); ``reference`` the audit file.
    """
    samples = io.read_rows(samples_path, schemas.SAMPLES)
    has_audit = audit_path is not None and Path(audit_path).exists()
    label_source = "majority vote of the samples (no labels)"
    reliability = None  # reliability voting: each voter's estimated accuracy, reported in vote.json
    if config.method == "reference":
        if not has_audit:
            raise io.InputError(audit_path or "vote", "vote.method=reference needs the audit file of labels "
                                "(--audit)", field="vote.method")
        votes, agreement = reference_vote(samples, read_truth(audit_path), task.is_correct)
        label_source = ("REFERENCE LABELS from the audit file: this round is SUPERVISED (ReST-EM with labels / "
                        "verifiable rewards), not self-training")
    else:
        weights = None
        if config.method == "weighted":
            weights = sample_weights(samples)
            label_source = "vote weighted by each sample's per-token probability, exp(logprob / n_tokens) (no labels)"
        elif config.method == "reliability":
            reliability = voter_reliability(samples, task.vote_key)
            weights = reliability_weights(samples, reliability)
            label_source = ("vote weighted by each committee member's accuracy as estimated from how often the "
                            "members agree with each other (no labels)")
        elif config.method == "self_judge":
            if prompts_path is None or model_dir is None:
                raise io.InputError("vote", "vote.method=self_judge needs the prompts and the champion "
                                    "(--prompts, --model)", field="vote.method")
            from flywheel.generation import member_judge

            prompts = {p["id"]: p["prompt"] for p in io.read_rows(prompts_path, schemas.PROMPTS)}
            judge = member_judge(model_dir, batch_size=config.judge_batch_size, device=device, task=task)
            weights = judge_weights(samples, prompts, judge)
            scores = {"yes_no": "P(yes) / (P(yes) + P(no)) of its yes/no judge prompt",
                      "logprob": "exp(mean token log-prob | prompt)"}
            label_source = ("vote weighted by the champion's own score of each candidate answer, "
                            + " and ".join(scores[kind] for kind in judge.kinds) + " (no labels)")
        votes, agreement = vote(samples, min_answer_share=config.min_answer_share, weights=weights,
                                key=task.vote_key)
    summary = vote_summary(votes)
    summary["method"] = config.method
    summary["label_source"] = label_source
    if reliability is not None:
        summary["voter_reliability"] = {str(v): round(p, 4) for v, p in reliability.items()}
    summary["supervised"] = config.method == "reference"
    if has_audit:
        truth = read_truth(audit_path)
        summary["pseudo_label_precision"] = pseudo_label_precision(votes, truth, task.is_correct)
    with io.publish_together(out_dir) as staged:
        io.write_rows(staged("votes.parquet"), votes, schemas.VOTES)
        io.write_rows(staged("agreement.parquet"), agreement, schemas.AGREEMENT)
        io.write_json(staged("vote.json"), summary)
    return summary
