"""Curate: keep the samples the vote trusts, drop the rest with a counted reason.

Order of filters, per prompt then per sample (the first that applies is the reason):
  vote:no_answer          no sample of the prompt had an answer
  vote:low_share          the majority holds less than ``min_vote_share`` of the votes
  format:*                the task rejects the majority answer by form (e.g. wrong length)
  decontaminate:eval      the prompt is in the eval set
  vote:disagrees          the sample's answer is not the majority
  length:too_long         the completion is longer than ``max_completion_tokens``
  dedup:exact             the same (prompt, completion) was already kept
  cap:per_prompt          the prompt already has ``max_per_prompt`` kept completions
Counts are in samples; ``prompts_kept`` counts prompts with at least one kept sample.

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
from flywheel.seeding import derive_seed


def curate(prompts: list[dict], samples: list[dict], votes: list[dict], config: CurateConfig, *, task,
           eval_prompts: set[str], round_index: int) -> tuple[list[dict], Counter]:
    """Returns (curated rows ``schemas.CURATED``, drop counts by reason)."""
    by_id = {p["id"]: p for p in prompts}
    vote_by_id = {v["prompt_id"]: v for v in votes}
    drops: Counter = Counter()
    kept: list[dict] = []
    seen: set[tuple[str, str]] = set()
    ordered = sorted(samples, key=lambda s: (s["prompt_id"], s["voter"], s["sample_idx"]))
    per_prompt: Counter = Counter()
    for sample in ordered:
        prompt = by_id[sample["prompt_id"]]
        verdict = vote_by_id[sample["prompt_id"]]
        reason = _prompt_reason(prompt, verdict, config, task, eval_prompts)
        if reason is None:
            reason = _sample_reason(sample, verdict, config)
        key = (prompt["prompt"], sample["completion"])
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
    return kept, drops


def _prompt_reason(prompt: dict, verdict: dict, config: CurateConfig, task, eval_prompts: set[str]) -> str | None:
    if verdict["majority_answer"] is None:
        return "vote:no_answer"
    if verdict["vote_share"] < config.min_vote_share:
        return "vote:low_share"
    if config.format_filter:
        issue = task.format_issue(prompt, verdict["majority_answer"])
        if issue:
            return issue
    if config.decontaminate and prompt["prompt"] in eval_prompts:
        return "decontaminate:eval"
    return None


def _sample_reason(sample: dict, verdict: dict, config: CurateConfig) -> str | None:
    if sample["answer"] != verdict["majority_answer"]:
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


def run_curate(round_dir: Path, config: CurateConfig, *, task, eval_path: Path, round_index: int,
               previous_pool: Path | None, audit_path: Path | None = None) -> dict:
    """Shell: prompts, samples, votes of ``round_dir`` -> curated.parquet, pool.parquet, train.parquet, curation.json."""
    from flywheel.stages.vote import audit, read_truth

    prompts = io.read_rows(round_dir / "prompts.parquet", schemas.PROMPTS)
    samples = io.read_rows(round_dir / "samples.parquet", schemas.SAMPLES)
    votes = io.read_rows(round_dir / "votes.parquet", schemas.VOTES)
    eval_prompts = {row["prompt"] for row in io.read_rows(eval_path, schemas.PROMPTS)}
    kept, drops = curate(prompts, samples, votes, config, task=task, eval_prompts=eval_prompts,
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
    io.write_rows(round_dir / "curated.parquet", kept, schemas.CURATED)
    io.write_rows(round_dir / "pool.parquet", pool + kept, schemas.CURATED)
    io.write_rows(round_dir / "train.parquet", mix, schemas.CURATED)
    io.write_json(round_dir / "curation.json", report)
    return report
