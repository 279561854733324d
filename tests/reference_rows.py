"""The vote's and curate's rules stated row by row, on Python dicts: the oracle the columnar stages are held to
(tests/test_vote_columnar.py, tests/test_curate_columnar.py, bench/vote_curate.py --reference). Not in the
package: the package writes each rule once, on columns (flywheel.stages.vote, flywheel.stages.curate). Slow and
plain on purpose; the per-prompt rules that are Python in the package too (flywheel.stages.curate.rules) are
shared, not restated.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from pathlib import Path

from flywheel import io, schemas
from flywheel.config import CurateConfig, GenerateConfig
from flywheel.experimental.process_rewards import run_process_rewards
from flywheel.layout import FILES
from flywheel.rng import derive_seed
from flywheel.stages.curate.rules import near_duplicates, ngram_index, prompt_reason, rl_rows, unvoted_error
from flywheel.stages.curate.select import run_select
from flywheel.stages.vote import NO_ANSWER, read_truth, winner


def vote_rows(samples: list[dict], *, min_answer_share: float = 0.0, weights: list[float] | None = None,
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


def audit_rows(votes: list[dict], truth: dict[str, str], is_correct, thresholds: list[float]) -> list[dict]:
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


def curate_rows(prompts: list[dict], samples: list[dict], votes: list[dict], config: CurateConfig, *, task,
           eval_prompts: set[str], round_index: int) -> tuple[list[dict], Counter]:
    """Returns (curated rows ``schemas.CURATED``, drop counts by reason)."""
    by_id = {p["id"]: p for p in prompts}
    vote_by_id = {v["prompt_id"]: v for v in votes}
    drops: Counter = Counter()
    kept: list[dict] = []
    seen: set[tuple[str, str]] = set()
    index = ngram_index(config, eval_prompts)
    ordered = sorted(samples, key=lambda s: (s["prompt_id"], s["voter"], s["sample_idx"]))
    per_prompt: Counter = Counter()
    for sample in ordered:
        prompt = by_id[sample["prompt_id"]]
        verdict = vote_by_id[sample["prompt_id"]]
        reason = prompt_reason(prompt, verdict, config, task, eval_prompts, index)
        if reason is None:
            reason = _sample_reason(sample, verdict, config, task)
        key = (prompt["id"], sample["completion"])
        if reason is None and config.dedup and key in seen:
            reason = "dedup:exact"
        if reason is None and per_prompt[prompt["id"]] >= config.max_per_prompt:
            reason = "cap:per_prompt"
        if reason is not None:
            drops[reason] += 1
            continue
        seen.add(key)
        per_prompt[prompt["id"]] += 1
        kept.append({"prompt": prompt["prompt"], "completion": sample["completion"], "prompt_id": prompt["id"],
                     "round": round_index, "bucket": prompt.get("bucket")})
    # The filters after the cap, each on what the ones before it kept.
    if config.dedup:  # prompts that share a text: an earlier prompt of the text kept the completion
        texts_seen: set[tuple[str, str]] = set()
        survivors = []
        for row in kept:
            if (row["prompt"], row["completion"]) in texts_seen:
                drops["dedup:exact"] += 1
                continue
            texts_seen.add((row["prompt"], row["completion"]))
            survivors.append(row)
        kept = survivors
    near = near_duplicates(config)
    if near is not None:
        survivors = []
        for row in kept:
            if near.seen(row["prompt"] + row["completion"]):
                drops["dedup:near"] += 1
                continue
            survivors.append(row)
        kept = survivors
    return kept, drops


def preference_pairs(prompts: list[dict], samples: list[dict], votes: list[dict], config: CurateConfig, *, task,
                     eval_prompts: set[str], round_index: int) -> tuple[list[dict], Counter]:
    """DPO pairs (``schemas.CURATED_PAIRS``) and drop counts by reason, in prompts.

    Chosen: distinct completions agreeing with the majority (not too long); rejected:
    distinct completions with another answer or none. The i-th chosen is paired with
    the i-th rejected (both in (voter, sample index) order), up to ``max_pairs_per_prompt``.
    """
    by_prompt: dict[str, list[dict]] = {}
    for sample in sorted(samples, key=lambda s: (s["prompt_id"], s["voter"], s["sample_idx"])):
        by_prompt.setdefault(sample["prompt_id"], []).append(sample)
    vote_by_id = {v["prompt_id"]: v for v in votes}
    near = near_duplicates(config)
    index = ngram_index(config, eval_prompts)
    pairs, drops = [], Counter()
    for prompt in sorted(prompts, key=lambda p: p["id"]):
        group, verdict = by_prompt.get(prompt["id"], []), vote_by_id.get(prompt["id"])
        if verdict is None or not group:
            continue
        reason = prompt_reason(prompt, verdict, config, task, eval_prompts, index)
        majority = verdict["majority_answer"]
        chosen = _distinct(s["completion"] for s in group
                           if agrees(task, s["answer"], majority) and s["n_tokens"] <= config.max_completion_tokens)
        rejected = _distinct(s["completion"] for s in group if not agrees(task, s["answer"], majority))
        if reason is None and not rejected:
            reason = "pair:no_rejected"
        if reason is None and not chosen:
            reason = "pair:no_chosen"
        if reason is None and near is not None and near.seen(prompt["prompt"] + chosen[0]):
            reason = "dedup:near"
        if reason is not None:
            drops[reason] += 1
            continue
        for good, bad in list(zip(chosen, rejected))[:config.max_pairs_per_prompt]:
            pairs.append({"prompt": prompt["prompt"], "chosen": good, "rejected": bad, "prompt_id": prompt["id"],
                          "round": round_index, "bucket": prompt.get("bucket")})
    return pairs, drops


def rl_prompts(prompts: list[dict], votes: list[dict], config: CurateConfig, *, task, eval_prompts: set[str],
               round_index: int) -> tuple[list[dict], Counter]:
    """GRPO prompts (``schemas.RL_PROMPTS``) whose vote share lies in [rl_min, rl_max), and drops by reason."""
    vote_by_id = {v["prompt_id"]: v for v in votes}
    return rl_rows(((p, vote_by_id.get(p["id"])) for p in sorted(prompts, key=lambda p: p["id"])), config,
                    task=task, eval_prompts=eval_prompts, keep=lambda prompt, verdict: {
                        "prompt": prompt["prompt"], "prompt_id": prompt["id"], "vote_share": verdict["vote_share"],
                        "round": round_index, "bucket": prompt.get("bucket"), "meta": prompt.get("meta")})


def _distinct(texts) -> list[str]:
    return list(dict.fromkeys(texts))


def agrees(task, answer: str | None, majority: str | None) -> bool:
    """Whether a sample's answer votes with the majority (equal ``task.vote_key``s; code: equal outputs)."""
    return majority is not None and answer is not None and task.vote_key(answer) == task.vote_key(majority)


def _sample_reason(sample: dict, verdict: dict, config: CurateConfig, task) -> str | None:
    if not agrees(task, sample["answer"], verdict["majority_answer"]):
        return "vote:disagrees"
    if sample["n_tokens"] > config.max_completion_tokens:
        return "length:too_long"
    return None


def training_mix(new: list[dict], pool: list[dict], config: CurateConfig, *, seed: int) -> list[dict]:
    """This round's rows plus, with ``accumulate``, earlier rows so new rows are ``new_fraction`` of the mix.

    Earlier rows are drawn without replacement; if the pool is smaller, all of it is used.
    """
    if not config.accumulate or not pool or config.new_fraction >= 1:
        return list(new)
    wanted = round(len(new) * (1 - config.new_fraction) / config.new_fraction)
    rng = random.Random(seed)
    earlier = rng.sample(pool, min(wanted, len(pool)))
    mix = list(new) + earlier
    rng.shuffle(mix)
    return mix


def run_curate_rows(round_dir: Path, config: CurateConfig, *, task, eval_path: Path | list[Path], round_index: int,
                    previous_pool: Path | None, audit_path: Path | None = None, model_dir: Path | None = None,
                    device: str = "cpu", generate: GenerateConfig | None = None) -> dict:
    """``run_curate`` on Python rows: every rule stated row by row, the oracle the columnar ``run_curate`` is
    held to (tests/test_curate_columnar.py)."""
    prompts = io.read_rows(round_dir / FILES.prompts, schemas.PROMPTS)
    samples = io.read_rows(round_dir / FILES.samples, schemas.SAMPLES)
    known = {p["id"] for p in prompts}
    for index, sample in enumerate(samples, start=1):
        if sample["prompt_id"] not in known:
            raise io.InputError(round_dir / FILES.samples, f"prompt {sample['prompt_id']!r} is not in {FILES.prompts}",
                                row=index, field="prompt_id")
    votes = io.read_rows(round_dir / FILES.votes, schemas.VOTES)
    for index, verdict in enumerate(votes, start=1):
        if verdict["prompt_id"] not in known:
            raise io.InputError(round_dir / FILES.votes, f"prompt {verdict['prompt_id']!r} is not in {FILES.prompts}",
                                row=index, field="prompt_id")
    unvoted = sorted({s["prompt_id"] for s in samples} - {v["prompt_id"] for v in votes})
    if unvoted:
        row = next(index for index, s in enumerate(samples, start=1) if s["prompt_id"] == unvoted[0])
        raise io.InputError(round_dir / FILES.samples, unvoted_error(unvoted[0]), row=row, field="prompt_id")
    eval_paths = eval_path if isinstance(eval_path, (list, tuple)) else [eval_path]
    eval_prompts = {row["prompt"] for path in eval_paths for row in io.read_rows(path, schemas.PROMPTS)}
    kept, drops = curate_rows(prompts, samples, votes, config, task=task, eval_prompts=eval_prompts,
                         round_index=round_index)
    if config.select != "off":
        chosen = run_select([r["prompt"] for r in kept], [r["completion"] for r in kept], config, task=task,
                            model_dir=model_dir, device=device, round_index=round_index)
        kept = [row for row, stays in zip(kept, chosen.keep) if stays]
        drops.update(chosen.drops)
    by_id = {p["id"]: p for p in prompts}  # code answers are read by running the prompt's tests
    steps = None
    if config.step_rollouts:
        steps = run_process_rewards([by_id[r["prompt_id"]] for r in kept], [r["completion"] for r in kept], config,
                                    generate, task=task, model_dir=model_dir, device=device, round_index=round_index)
        kept = [row for row, stays in zip(kept, steps.keep) if stays]
        drops.update(steps.drops)
    pairs, pair_drops = preference_pairs(prompts, samples, votes, config, task=task, eval_prompts=eval_prompts,
                                         round_index=round_index)
    rl_kept, rl_drops = rl_prompts(prompts, votes, config, task=task, eval_prompts=eval_prompts,
                                   round_index=round_index)
    pool = io.read_rows(previous_pool, schemas.CURATED) if previous_pool and Path(previous_pool).exists() else []
    mix = training_mix(kept, pool, config, seed=derive_seed("mix", round_index))
    report = {
        "samples_in": len(samples),
        "samples_kept": len(kept),
        "prompts_in": len(prompts),
        "prompts_kept": len({row["prompt_id"] for row in kept}),
        "drops": dict(sorted(drops.items())),
        "train_rows": len(mix),
        "train_rows_new": len(kept),
        "train_rows_earlier": len(mix) - len(kept),
        # The other methods' views of the same vote (counts in prompts).
        "pairs": {"pairs": len(pairs), "prompts_kept": len({r["prompt_id"] for r in pairs}),
                  "drops": dict(sorted(pair_drops.items()))},
        "rl_prompts": {"prompts_kept": len(rl_kept), "drops": dict(sorted(rl_drops.items()))},
    }
    if steps is not None:
        report["process_rewards"] = {**steps.summary, "generate_tokens": schemas.generated_tokens(samples)}
    if audit_path is not None and Path(audit_path).exists():
        truth = read_truth(audit_path)
        report["thresholds"] = audit_rows(votes, truth, task.is_correct, config.audit_thresholds)
        audited = [r for r in kept if r["prompt_id"] in truth]  # user data may label only some prompts
        report["kept_label_precision"] = (
            sum(task.is_correct(task.extract_answer(r["completion"], by_id[r["prompt_id"]]), truth[r["prompt_id"]])
                for r in audited) / len(audited)
            if audited else None)
    with io.publish_together(round_dir) as staged:
        io.write_rows(staged(FILES.curated), kept, schemas.CURATED)
        io.write_rows(staged(FILES.pool), pool + kept, schemas.CURATED)
        io.write_rows(staged(FILES.mix), mix, schemas.CURATED)
        io.write_rows(staged(FILES.pairs), pairs, schemas.CURATED_PAIRS)
        io.write_rows(staged(FILES.rl_prompts), rl_kept, schemas.RL_PROMPTS)
        io.write_json(staged(FILES.curation), report)
    return report
