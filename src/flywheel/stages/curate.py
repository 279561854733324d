"""Curate: keep the samples the vote trusts, drop the rest with a counted reason.

Curate writes one view of the vote per training method (``train.method`` picks one):
train.parquet (SFT rows), pairs.parquet (DPO pairs), rl_prompts.parquet (GRPO prompts).

SFT rows: order of filters, per prompt then per sample (the first that applies is the reason):
  vote:no_answer          no sample of the prompt had an answer
  vote:low_share          the majority holds less than ``min_vote_share`` of the votes
  format:*                the task rejects the majority answer by form (e.g. wrong length)
  decontaminate:eval      the prompt is in an eval set
  decontaminate:ngram     the prompt shares an n-gram with an eval prompt (``ngram_decontaminate``)
  vote:disagrees          the sample's answer is not the majority
  length:too_long         the completion is longer than ``max_completion_tokens``
  dedup:exact             the same (prompt, completion) was already kept
  cap:per_prompt          the prompt already has ``max_per_prompt`` kept completions
  dedup:near              it is a near-duplicate of a kept row (MinHash LSH, ``near_dedup``)
Counts are in samples; ``prompts_kept`` counts prompts with at least one kept sample.

DPO pairs (counts in prompts): the prompt filters above, then
  pair:no_rejected        every sample agrees with the majority (nothing to prefer it over)
  pair:no_chosen          no agreeing completion is short enough
  dedup:near              (prompt + chosen) is a near-duplicate of a kept pair
GRPO prompts (counts in prompts; ReST-RL's reward-variance filter):
  vote:no_answer, rl:low_share (share < ``rl_min_vote_share``), rl:high_share (share >=
  ``rl_max_vote_share``: all completions would earn the same reward, no gradient),
  format:*, decontaminate:eval, decontaminate:ngram, dedup:near (on the prompt).

The training mix departs from plain ReST-EM as Lee et al. do: with ``accumulate``,
``new_fraction`` of it is this round's data and the rest is drawn from earlier
rounds' curated data (the pool). Nothing here reads hidden truth.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from flywheel import io, schemas
from flywheel.config import CurateConfig
from flywheel.layout import FILES
from flywheel.rng import derive_seed


def ngrams(text: str, n: int, unit: str) -> set[tuple[str, ...]]:
    """The n-grams of ``text`` in words (whitespace-split) or characters; a shorter text is one n-gram."""
    tokens = text.split() if unit == "word" else list(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


class NgramIndex:
    """The n-grams of every eval prompt; a training prompt sharing any of them is contaminated."""

    def __init__(self, eval_texts, *, n: int, unit: str):
        self.n, self.unit = n, unit
        self.grams: set[tuple[str, ...]] = set()
        for text in eval_texts:
            self.grams |= ngrams(text, n, unit)

    def contaminated(self, text: str) -> bool:
        return not self.grams.isdisjoint(ngrams(text, self.n, self.unit))


class NearDuplicates:
    """MinHash LSH (datasketch) over character shingles: ``seen(text)`` is True for a near-duplicate
    of a text already added, else adds it. Deterministic (fixed MinHash seed, fixed insertion order)."""

    def __init__(self, *, threshold: float, shingle: int, num_perm: int):
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.shingle, self.num_perm, self.count = shingle, num_perm, 0

    def _minhash(self, text: str):
        from datasketch import MinHash

        k = self.shingle
        shingles = {text[i:i + k] for i in range(len(text) - k + 1)} if len(text) >= k else {text}
        signature = MinHash(num_perm=self.num_perm, seed=1)
        for shingle in sorted(shingles):
            signature.update(shingle.encode("utf-8"))
        return signature

    def seen(self, text: str) -> bool:
        signature = self._minhash(text)
        if self.lsh.query(signature):
            return True
        self.lsh.insert(str(self.count), signature)
        self.count += 1
        return False


def _near_duplicates(config: CurateConfig) -> NearDuplicates | None:
    if not config.near_dedup:
        return None
    return NearDuplicates(threshold=config.near_dedup_threshold, shingle=config.near_dedup_shingle,
                          num_perm=config.near_dedup_num_perm)


def ngram_index(config: CurateConfig, eval_prompts) -> NgramIndex | None:
    return NgramIndex(eval_prompts, n=config.ngram_n, unit=config.ngram_unit) if config.ngram_decontaminate else None


def curate(prompts: list[dict], samples: list[dict], votes: list[dict], config: CurateConfig, *, task,
           eval_prompts: set[str], round_index: int) -> tuple[list[dict], Counter]:
    """Returns (curated rows ``schemas.CURATED``, drop counts by reason)."""
    by_id = {p["id"]: p for p in prompts}
    vote_by_id = {v["prompt_id"]: v for v in votes}
    drops: Counter = Counter()
    kept: list[dict] = []
    seen: set[tuple[str, str]] = set()
    near = _near_duplicates(config)
    index = ngram_index(config, eval_prompts)
    ordered = sorted(samples, key=lambda s: (s["prompt_id"], s["voter"], s["sample_idx"]))
    per_prompt: Counter = Counter()
    for sample in ordered:
        prompt = by_id[sample["prompt_id"]]
        verdict = vote_by_id[sample["prompt_id"]]
        reason = _prompt_reason(prompt, verdict, config, task, eval_prompts, index)
        if reason is None:
            reason = _sample_reason(sample, verdict, config, task)
        key = (prompt["prompt"], sample["completion"])
        if reason is None and config.dedup and key in seen:
            reason = "dedup:exact"
        if reason is None and per_prompt[prompt["id"]] >= config.max_per_prompt:
            reason = "cap:per_prompt"
        if reason is None and near is not None and near.seen(prompt["prompt"] + sample["completion"]):
            reason = "dedup:near"
        if reason is not None:
            drops[reason] += 1
            continue
        seen.add(key)
        per_prompt[prompt["id"]] += 1
        kept.append({"prompt": prompt["prompt"], "completion": sample["completion"], "prompt_id": prompt["id"],
                     "round": round_index, "bucket": prompt.get("bucket")})
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
    near = _near_duplicates(config)
    index = ngram_index(config, eval_prompts)
    pairs, drops = [], Counter()
    for prompt in sorted(prompts, key=lambda p: p["id"]):
        group, verdict = by_prompt.get(prompt["id"], []), vote_by_id.get(prompt["id"])
        if verdict is None or not group:
            continue
        reason = _prompt_reason(prompt, verdict, config, task, eval_prompts, index)
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
    near = _near_duplicates(config)
    index = ngram_index(config, eval_prompts)
    kept, drops = [], Counter()
    for prompt in sorted(prompts, key=lambda p: p["id"]):
        verdict = vote_by_id.get(prompt["id"])
        if verdict is None:
            continue
        reason = None
        if verdict["majority_answer"] is None:
            reason = "vote:no_answer"
        elif verdict["vote_share"] < config.rl_min_vote_share:
            reason = "rl:low_share"
        elif verdict["vote_share"] >= config.rl_max_vote_share:
            reason = "rl:high_share"
        if reason is None:
            reason = _prompt_reason(prompt, verdict, config, task, eval_prompts, index, check_share=False)
        if reason is None and near is not None and near.seen(prompt["prompt"]):
            reason = "dedup:near"
        if reason is not None:
            drops[reason] += 1
            continue
        kept.append({"prompt": prompt["prompt"], "prompt_id": prompt["id"], "vote_share": verdict["vote_share"],
                     "round": round_index, "bucket": prompt.get("bucket"), "meta": prompt.get("meta")})
    return kept, drops


def _distinct(texts) -> list[str]:
    return list(dict.fromkeys(texts))


def _prompt_reason(prompt: dict, verdict: dict, config: CurateConfig, task, eval_prompts: set[str],
                   index: NgramIndex | None = None, *, check_share: bool = True) -> str | None:
    if verdict["majority_answer"] is None:
        return "vote:no_answer"
    if check_share and verdict["vote_share"] < config.min_vote_share:
        return "vote:low_share"
    if config.format_filter:
        issue = task.format_issue(prompt, verdict["majority_answer"])
        if issue:
            return issue
    if config.decontaminate and prompt["prompt"] in eval_prompts:
        return "decontaminate:eval"
    if index is not None and index.contaminated(prompt["prompt"]):
        return "decontaminate:ngram"
    return None


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


def run_curate(round_dir: Path, config: CurateConfig, *, task, eval_path: Path | list[Path], round_index: int,
               previous_pool: Path | None, audit_path: Path | None = None) -> dict:
    """Shell: prompts, samples, votes of ``round_dir`` -> curated.parquet, pool.parquet, train.parquet,
    pairs.parquet, rl_prompts.parquet, curation.json. ``eval_path``: one eval set or several."""
    from flywheel.stages.vote import audit, read_truth

    prompts = io.read_rows(round_dir / FILES.prompts, schemas.PROMPTS)
    samples = io.read_rows(round_dir / FILES.samples, schemas.SAMPLES)
    votes = io.read_rows(round_dir / FILES.votes, schemas.VOTES)
    eval_paths = eval_path if isinstance(eval_path, (list, tuple)) else [eval_path]
    eval_prompts = {row["prompt"] for path in eval_paths for row in io.read_rows(path, schemas.PROMPTS)}
    kept, drops = curate(prompts, samples, votes, config, task=task, eval_prompts=eval_prompts,
                         round_index=round_index)
    pairs, pair_drops = preference_pairs(prompts, samples, votes, config, task=task, eval_prompts=eval_prompts,
                                         round_index=round_index)
    rl_rows, rl_drops = rl_prompts(prompts, votes, config, task=task, eval_prompts=eval_prompts,
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
        "rl_prompts": {"prompts_kept": len(rl_rows), "drops": dict(sorted(rl_drops.items()))},
    }
    if audit_path is not None and Path(audit_path).exists():
        truth = read_truth(audit_path)
        by_id = {p["id"]: p for p in prompts}  # code answers are read by running the prompt's tests
        report["thresholds"] = audit(votes, truth, task.is_correct, config.audit_thresholds)
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
        io.write_rows(staged(FILES.rl_prompts), rl_rows, schemas.RL_PROMPTS)
        io.write_json(staged(FILES.curation), report)
    return report
