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
  select:known            the champion already knows it (``select``: lowest loss; flywheel.stages.select)
  select:redundant        its cluster of the champion's hidden states is crowded (``select``)
  step:weak               its weakest step's rollouts mostly miss its answer (``step_rollouts``; process_rewards)
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel import io, schemas
from flywheel.config import CurateConfig, GenerateConfig
from flywheel.layout import FILES
from flywheel.rng import derive_seed
from flywheel.experimental.process_rewards import run_process_rewards
from flywheel.stages.select import run_select
from flywheel.stages.vote import (BATCH, DuplicateSample, audit, audit_columns, ranks, read_truth, run_starts,
                                  sample_order)
from flywheel.tasks.base import vote_key_of


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
    return _rl_rows(((p, vote_by_id.get(p["id"])) for p in sorted(prompts, key=lambda p: p["id"])), config,
                    task=task, eval_prompts=eval_prompts, keep=lambda prompt, verdict: {
                        "prompt": prompt["prompt"], "prompt_id": prompt["id"], "vote_share": verdict["vote_share"],
                        "round": round_index, "bucket": prompt.get("bucket"), "meta": prompt.get("meta")})


def _rl_rows(prompt_verdicts, config: CurateConfig, *, task, eval_prompts: set[str], keep) -> tuple[list, Counter]:
    """``rl_prompts`` over (prompt row, its verdict or None) in prompt-id order; ``keep(prompt, verdict)`` is
    what is listed for a kept prompt (a row, or for the columnar curate just its id)."""
    near = _near_duplicates(config)
    index = ngram_index(config, eval_prompts)
    kept, drops = [], Counter()
    for prompt, verdict in prompt_verdicts:
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
        kept.append(keep(prompt, verdict))
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


def _unvoted(prompt_id: str) -> str:
    """The error for samples of a prompt that has no vote: the votes are not the vote of these samples."""
    return (f"prompt {prompt_id!r} has samples but no vote in {FILES.votes} (is {FILES.votes} the vote of "
            f"{FILES.samples}?)")


def run_curate_rows(round_dir: Path, config: CurateConfig, *, task, eval_path: Path | list[Path], round_index: int,
                    previous_pool: Path | None, audit_path: Path | None = None, model_dir: Path | None = None,
                    device: str = "cpu", generate: GenerateConfig | None = None) -> dict:
    """``run_curate`` on Python rows: the reference the columnar ``run_curate`` is tested against, and what it
    runs for the options it does not vectorise (``near_dedup``; prompts that share a text)."""
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
        raise io.InputError(round_dir / FILES.samples, _unvoted(unvoted[0]), row=row, field="prompt_id")
    eval_paths = eval_path if isinstance(eval_path, (list, tuple)) else [eval_path]
    eval_prompts = {row["prompt"] for path in eval_paths for row in io.read_rows(path, schemas.PROMPTS)}
    kept, drops = curate(prompts, samples, votes, config, task=task, eval_prompts=eval_prompts,
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
    if steps is not None:
        report["process_rewards"] = {**steps.summary, "generate_tokens": schemas.generated_tokens(samples)}
    if audit_path is not None and Path(audit_path).exists():
        truth = read_truth(audit_path)
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


# --- columnar ---------------------------------------------------------------------------------------------------

def run_curate(round_dir: Path, config: CurateConfig, *, task, eval_path: Path | list[Path], round_index: int,
               previous_pool: Path | None, audit_path: Path | None = None, model_dir: Path | None = None,
               device: str = "cpu", generate: GenerateConfig | None = None) -> dict:
    """Shell: prompts, samples, votes of ``round_dir`` -> curated.parquet, pool.parquet, train.parquet,
    pairs.parquet, rl_prompts.parquet, curation.json. ``eval_path``: one eval set or several.

    Samples and prompts stay Arrow columns and numpy arrays (a round of ten million samples curates in under
    2 GB); the task's per-prompt rules run on a batch of rows at a time. Every file and figure equals
    ``run_curate_rows``'s (tests/test_curate_columnar.py); with ``near_dedup``, or prompts sharing a text, that
    reference runs instead (its order-dependent rules). ``curate.select`` then scores the kept rows with the
    champion at ``model_dir`` (``flywheel.stages.select``), and ``curate.step_rollouts`` scores their steps by
    the champion's rollouts, sampled as ``generate`` says (``flywheel.experimental.process_rewards``).
    """

    prompts = io.read_table(round_dir / FILES.prompts, schemas.PROMPTS)
    texts = prompts.column("prompt").combine_chunks()
    if config.near_dedup or pc.count_distinct(texts).as_py() != len(texts):
        return run_curate_rows(round_dir, config, task=task, eval_path=eval_path, round_index=round_index,
                               previous_pool=previous_pool, audit_path=audit_path, model_dir=model_dir,
                               device=device, generate=generate)
    ids = prompts.column("id").combine_chunks()
    votes = io.read_table(round_dir / FILES.votes, schemas.VOTES)
    vote_at = pc.index_in(ids, value_set=votes.column("prompt_id").combine_chunks())  # per prompt: its vote's row
    # One row per prompt: what the task's rules read of it and of its verdict (null where it has none).
    per_prompt = pa.table({"id": ids, "prompt": texts, "bucket": prompts.column("bucket"),
                           "meta": prompts.column("meta"),
                           "majority_answer": votes.column("majority_answer").take(vote_at),
                           "vote_share": votes.column("vote_share").take(vote_at)})
    has_verdict = vote_at.is_valid().to_numpy(zero_copy_only=False)
    id_rank = ranks(ids)  # the reference walks prompts in id order
    del prompts, vote_at
    eval_paths = eval_path if isinstance(eval_path, (list, tuple)) else [eval_path]
    eval_prompts = {text for path in eval_paths for text in io.read_table(path, schemas.PROMPTS).column("prompt")
                    .to_pylist()}
    index = ngram_index(config, eval_prompts)

    names = list(SAMPLE_REASONS)
    prompt_reason = np.zeros(len(ids), dtype=np.int64)  # 0: none; else an index into names
    for i, row, verdict in _rows_at(per_prompt, np.flatnonzero(has_verdict)):
        reason = _prompt_reason(row, verdict, config, task, eval_prompts, index)
        if reason is not None:
            if reason not in names:
                names.append(reason)
            prompt_reason[i] = names.index(reason)

    samples = io.read_table(round_dir / FILES.samples, schemas.SAMPLES,
                            columns=["prompt_id", "sample_idx", "voter", "completion", "answer", "n_tokens",
                                     "search_tokens"], check_key=False)
    try:
        order, g, sample_prompts = sample_order(samples)
    except DuplicateSample:
        io.read_rows(round_dir / FILES.samples, schemas.SAMPLES)  # the one-line error naming both rows
        raise
    where = pc.index_in(sample_prompts, value_set=ids)
    if where.null_count:
        unknown = sample_prompts.filter(where.is_null())[0].as_py()
        row = pc.index(samples.column("prompt_id"), unknown).as_py() + 1
        raise io.InputError(round_dir / FILES.samples, f"prompt {unknown!r} is not in {FILES.prompts}", row=row,
                            field="prompt_id")
    prompt_of = where.to_numpy()[g]  # per sample, in the reference's order: its prompt's position
    del g, where, sample_prompts
    # The votes must be this round's: of its prompts, one for every sampled prompt (the row path checks the same).
    strangers = pc.is_null(pc.index_in(votes.column("prompt_id"), value_set=ids))
    if pc.any(strangers).as_py():
        row = pc.index(strangers, True).as_py()
        raise io.InputError(round_dir / FILES.votes, f"prompt {votes.column('prompt_id')[row].as_py()!r} is not in "
                            f"{FILES.prompts}", row=row + 1, field="prompt_id")
    unvoted = np.flatnonzero(~has_verdict[prompt_of])
    if len(unvoted):  # the reference order is by prompt id: the least such id, as the row path names
        missing = ids[int(prompt_of[unvoted[0]])].as_py()
        raise io.InputError(round_dir / FILES.samples, _unvoted(missing),
                            row=pc.index(samples.column("prompt_id"), missing).as_py() + 1, field="prompt_id")

    # Per sample, in the reference's order: does it vote with its prompt's majority, is it short enough.
    completions = samples.column("completion").combine_chunks().take(pa.array(order))
    answers = samples.column("answer").combine_chunks().take(pa.array(order))
    n_tokens = samples.column("n_tokens").to_numpy()
    short = n_tokens[order] <= config.max_completion_tokens
    generate_tokens = schemas.generated_tokens(samples)
    n_samples = len(order)
    del samples, order, n_tokens
    majority = per_prompt.column("majority_answer").combine_chunks()
    key = vote_key_of(task)
    if key is None:
        agrees = pc.fill_null(pc.equal(answers, majority.take(pa.array(prompt_of))), False) \
            .to_numpy(zero_copy_only=False)
    else:
        answer_keys = _keys(answers, key)
        majority_keys = _keys(majority, key).take(pa.array(prompt_of))
        agrees = (pc.fill_null(pc.equal(answer_keys, majority_keys), False).to_numpy(zero_copy_only=False)
                  & answers.is_valid().to_numpy(zero_copy_only=False))
        del answer_keys, majority_keys
    del answers

    # SFT rows: the prompt's reason, else the sample's; then exact dedup and the per-prompt cap among the rest.
    completion_code = completions.dictionary_encode().indices.to_numpy().astype(np.int64)
    reason = _sft_reasons(prompt_reason[prompt_of], prompt_of, agrees, short, completion_code, config)
    kept_rows = np.flatnonzero(reason == 0)
    drops = Counter({names[code]: int(count) for code, count in enumerate(np.bincount(reason, minlength=len(names)))
                     if code and count})
    del reason
    kept_prompt = prompt_of[kept_rows]
    at_kept = pa.array(kept_prompt)
    kept = pa.table({"prompt": texts.take(at_kept), "completion": completions.take(pa.array(kept_rows)),
                     "prompt_id": ids.take(at_kept),
                     "round": pa.array(np.full(len(kept_rows), round_index, dtype=np.int64)),
                     "bucket": per_prompt.column("bucket").take(at_kept)})
    del kept_rows, at_kept
    if config.select != "off":
        chosen = run_select(kept.column("prompt").to_pylist(), kept.column("completion").to_pylist(), config,
                            task=task, model_dir=model_dir, device=device, round_index=round_index)
        kept, kept_prompt = kept.filter(pa.array(chosen.keep)), kept_prompt[chosen.keep]
        drops.update(chosen.drops)
    steps = None
    if config.step_rollouts:
        rows = per_prompt.select(["id", "prompt", "meta"]).take(pa.array(kept_prompt, pa.int64())).to_pylist()
        steps = run_process_rewards(rows, kept.column("completion").to_pylist(), config, generate, task=task,
                                    model_dir=model_dir, device=device, round_index=round_index)
        kept, kept_prompt = kept.filter(pa.array(steps.keep)), kept_prompt[steps.keep]
        drops.update(steps.drops)
    pairs, pair_drops = _pairs_columnar(prompt_of, agrees, short, completion_code, completions, prompt_reason, names,
                                        has_verdict, id_rank, per_prompt, config, round_index)
    del prompt_of, agrees, short, completion_code, completions

    # GRPO prompts: the reference's rules in its order (by prompt id), a batch of rows at a time.
    by_id = np.argsort(id_rank)
    voted_by_id = by_id[has_verdict[by_id]]
    rl_kept, rl_drops = _rl_rows(((row, verdict) for _, row, verdict in _rows_at(per_prompt, voted_by_id)),
                                 config, task=task, eval_prompts=eval_prompts,
                                 keep=lambda prompt, verdict: prompt["id"])
    rl_index = pc.index_in(pa.array(rl_kept, pa.string()), value_set=ids)
    del rl_kept
    rl_rows = pa.table({"prompt": texts.take(rl_index), "prompt_id": ids.take(rl_index),
                        "vote_share": per_prompt.column("vote_share").take(rl_index),
                        "round": pa.array(np.full(len(rl_index), round_index, dtype=np.int64)),
                        "bucket": per_prompt.column("bucket").take(rl_index),
                        "meta": per_prompt.column("meta").take(rl_index)})
    pool = (io.read_table(previous_pool, schemas.CURATED) if previous_pool and Path(previous_pool).exists()
            else pa.table({n: pa.array([], t) for n, t in zip(schemas.CURATED.names, schemas.CURATED.arrow().types)}))
    mix = _training_mix_table(kept, pool, config, seed=derive_seed("mix", round_index))
    report = {
        "samples_in": n_samples,
        "samples_kept": len(kept),
        "prompts_in": len(ids),
        "prompts_kept": len(np.unique(kept_prompt)),
        "drops": dict(sorted(drops.items())),
        "train_rows": len(mix),
        "train_rows_new": len(kept),
        "train_rows_earlier": len(mix) - len(kept),
        # The other methods' views of the same vote (counts in prompts).
        "pairs": {"pairs": len(pairs), "prompts_kept": pc.count_distinct(pairs.column("prompt_id")).as_py(),
                  "drops": dict(sorted(pair_drops.items()))},
        "rl_prompts": {"prompts_kept": len(rl_rows), "drops": dict(sorted(rl_drops.items()))},
    }
    if steps is not None:
        report["process_rewards"] = {**steps.summary, "generate_tokens": generate_tokens}
    if audit_path is not None and Path(audit_path).exists():
        truth = io.read_table(audit_path, schemas.PROMPTS)
        voted = per_prompt.filter(pa.array(has_verdict))
        report["thresholds"] = audit_columns(voted.column("id"), voted.column("majority_answer").combine_chunks(),
                                             voted.column("vote_share"), truth, task.is_correct,
                                             config.audit_thresholds)
        report["kept_label_precision"] = _kept_label_precision(kept, kept_prompt, per_prompt, truth, task)
    with io.publish_together(round_dir) as staged:
        io.write_table(staged(FILES.curated), kept, schemas.CURATED)
        io.write_table(staged(FILES.pool), pa.concat_tables([pool, kept.cast(pool.schema)]), schemas.CURATED)
        io.write_table(staged(FILES.mix), mix, schemas.CURATED)
        io.write_table(staged(FILES.pairs), pairs, schemas.CURATED_PAIRS)
        io.write_table(staged(FILES.rl_prompts), rl_rows, schemas.RL_PROMPTS)
        io.write_json(staged(FILES.curation), report)
    return report


def _rows_at(per_prompt, positions):
    """(position, prompt row, verdict) of the prompts at ``positions`` as the row rules read them, converted a
    ``BATCH`` at a time."""

    for start in range(0, len(positions), BATCH):
        chunk = positions[start:start + BATCH]
        for i, r in zip(chunk.tolist(), per_prompt.take(pa.array(chunk, pa.int64())).to_pylist()):
            yield i, _prompt_row(r), {"prompt_id": r["id"], "majority_answer": r["majority_answer"],
                                      "vote_share": r["vote_share"]}


def _prompt_row(r: dict) -> dict:
    """A prompt as the task's rules read it (the answer hidden, as in the round's prompts.parquet)."""
    return {"id": r["id"], "prompt": r["prompt"], "bucket": r["bucket"], "meta": r["meta"], "answer": None}


def _kept_label_precision(kept, kept_prompt, per_prompt, truth, task) -> float | None:
    """Share of the kept rows (of prompts the audit file labels) whose completion's answer is right."""

    label_at = pc.index_in(kept.column("prompt_id"), value_set=truth.column("id").combine_chunks())
    audited = np.flatnonzero(label_at.is_valid().to_numpy(zero_copy_only=False))
    correct = 0
    for start in range(0, len(audited), BATCH):
        batch = audited[start:start + BATCH]
        rows = pa.array(batch)
        prompt_rows = per_prompt.take(pa.array(kept_prompt[batch])).to_pylist()
        completions = kept.column("completion").take(rows).to_pylist()
        labels = truth.column("answer").take(label_at.take(rows)).to_pylist()
        correct += sum(task.is_correct(task.extract_answer(c, _prompt_row(p)), label)
                       for p, c, label in zip(prompt_rows, completions, labels))
    return correct / len(audited) if len(audited) else None


# The reasons a sample of a kept prompt is dropped (codes 1..4 of ``_sft_reasons``; 0 is kept, and the prompts'
# own reasons are numbered after these).
SAMPLE_REASONS = ("", "vote:disagrees", "length:too_long", "dedup:exact", "cap:per_prompt")
DISAGREES, TOO_LONG, DUPLICATE, CAPPED = 1, 2, 3, 4


def _sft_reasons(prompt_reason, prompt_of, agrees, short, completion_code, config: CurateConfig):
    """Each sample's drop code (0: kept) for the SFT rows, in the reference's row order: its prompt's reason,
    else disagreeing or too long, else exact dedup and the per-prompt cap. The reference keeps a set of the
    kept rows' (prompt, completion); within one prompt that means: a row is a duplicate iff the first
    occurrence of its completion was kept, and a first occurrence is kept iff fewer than ``max_per_prompt``
    distinct completions came before it."""

    reason = np.where(prompt_reason > 0, prompt_reason,
                      np.where(~agrees, DISAGREES, np.where(~short, TOO_LONG, 0)))
    candidate = np.flatnonzero(reason == 0)
    if not len(candidate):
        return reason
    group = prompt_of[candidate]
    _, start_of = run_starts(group)
    if not config.dedup:
        reason[candidate] = np.where(np.arange(len(candidate)) - start_of < config.max_per_prompt, 0, CAPPED)
        return reason
    width = int(completion_code.max(initial=0)) + 1
    pair = pa.array(group * width + completion_code[candidate]).dictionary_encode().indices.to_numpy()
    first = np.zeros(len(candidate), dtype=bool)
    first[np.unique(pair, return_index=True)[1]] = True
    seen_before = np.cumsum(first)  # a prompt's first candidate is always a first occurrence
    distinct_rank = seen_before - seen_before[start_of]
    first_rank = np.empty(int(pair.max(initial=-1)) + 1, dtype=np.int64)
    first_rank[pair[first]] = distinct_rank[first]
    kept_first = first_rank[pair] < config.max_per_prompt
    reason[candidate] = np.where(first, np.where(kept_first, 0, CAPPED), np.where(kept_first, DUPLICATE, CAPPED))
    return reason


def _keys(answers, key):
    """``key`` of every answer, applied once per distinct answer (null stays null)."""

    encoded = answers.dictionary_encode()
    return pa.array([key(a) for a in encoded.dictionary.to_pylist()], pa.string()).take(encoded.indices)


def _pairs_columnar(prompt_of, agrees, short, completion_code, completions, prompt_reason, names, has_verdict,
                    id_rank, per_prompt, config: CurateConfig, round_index: int):
    """``preference_pairs`` on columns: per prompt (with samples and a verdict) its reason, else the distinct
    agreeing short completions paired in order with the distinct disagreeing ones."""

    n_prompts = len(has_verdict)
    present = np.unique(prompt_of)
    present = present[has_verdict[present]]
    width = int(completion_code.max(initial=0)) + 1

    def distinct_ranked(mask):
        rows = np.flatnonzero(mask)
        pair = prompt_of[rows] * width + completion_code[rows]
        rows = rows[np.sort(np.unique(pair, return_index=True)[1])]  # first occurrences, in row order
        group = prompt_of[rows]
        rank = np.arange(len(rows)) - run_starts(group)[1]
        return rows, group, rank

    chosen, chosen_group, chosen_rank = distinct_ranked(agrees & short)
    rejected, rejected_group, rejected_rank = distinct_ranked(~agrees)
    n_chosen = np.bincount(chosen_group, minlength=n_prompts)
    n_rejected = np.bincount(rejected_group, minlength=n_prompts)
    # Each present prompt's fate, first rule that applies: its own reason, no rejected, no chosen, else valid.
    own = prompt_reason[present]
    drops = Counter({names[code]: int(count) for code, count in enumerate(np.bincount(own, minlength=len(names)))
                     if code and count})
    rest = present[own == 0]
    drops["pair:no_rejected"] += int((n_rejected[rest] == 0).sum())
    drops["pair:no_chosen"] += int(((n_rejected[rest] > 0) & (n_chosen[rest] == 0)).sum())
    drops = +drops  # without the zero counts, as the reference never adds them
    valid = np.zeros(n_prompts, dtype=bool)
    valid[rest[(n_rejected[rest] > 0) & (n_chosen[rest] > 0)]] = True
    # The r-th chosen of a prompt pairs with its r-th rejected, for r < max_pairs_per_prompt: match on (prompt, r).
    take_chosen = valid[chosen_group] & (chosen_rank < config.max_pairs_per_prompt)
    take_rejected = valid[rejected_group] & (rejected_rank < config.max_pairs_per_prompt)
    ranks_wide = int(max(chosen_rank.max(initial=0), rejected_rank.max(initial=0))) + 1
    chosen_key = chosen_group[take_chosen] * ranks_wide + chosen_rank[take_chosen]  # distinct
    rejected_key = rejected_group[take_rejected] * ranks_wide + rejected_rank[take_rejected]
    at = np.zeros(len(rejected_key), dtype=np.int64)  # the chosen row with the same key, where ``hit``
    hit = np.zeros(len(rejected_key), dtype=bool)
    if len(chosen_key):
        by_key = np.argsort(chosen_key)
        at = by_key[np.minimum(np.searchsorted(chosen_key, rejected_key, sorter=by_key), len(chosen_key) - 1)]
        hit = chosen_key[at] == rejected_key
    group, rank = rejected_group[take_rejected][hit], rejected_rank[take_rejected][hit]
    chosen_row, rejected_row = chosen[take_chosen][at[hit]], rejected[take_rejected][hit]
    order = np.lexsort((rank, id_rank[group]))  # by prompt id, as the reference walks the prompts
    prompt_index = pa.array(group[order])
    table = pa.table({"prompt": per_prompt.column("prompt").take(prompt_index),
                      "chosen": completions.take(pa.array(chosen_row[order])),
                      "rejected": completions.take(pa.array(rejected_row[order])),
                      "prompt_id": per_prompt.column("id").take(prompt_index),
                      "round": pa.array(np.full(len(order), round_index, dtype=np.int64)),
                      "bucket": per_prompt.column("bucket").take(prompt_index)})
    return table, drops


def _training_mix_table(new, pool, config: CurateConfig, *, seed: int):
    """``training_mix`` on tables: the same rows in the same order (``random.sample`` and ``shuffle`` draw
    positions from the lengths alone, so drawing them over indices picks what they pick over rows)."""

    if not config.accumulate or not len(pool) or config.new_fraction >= 1:
        return new
    wanted = round(len(new) * (1 - config.new_fraction) / config.new_fraction)
    rng = random.Random(seed)
    earlier = rng.sample(range(len(pool)), min(wanted, len(pool)))
    mix = pa.concat_tables([new.cast(pool.schema), pool.take(pa.array(earlier, pa.int64()))])
    positions = list(range(len(mix)))
    rng.shuffle(positions)
    return mix.take(pa.array(positions, pa.int64()))
