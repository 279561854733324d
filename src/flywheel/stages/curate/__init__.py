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
  dedup:exact             (prompts sharing a text) an earlier prompt of the same text kept the completion
  dedup:near              it is a near-duplicate of a kept row (MinHash LSH, ``near_dedup``)
  select:known            the champion already knows it (``select``: lowest loss; curate/select.py)
  select:redundant        its cluster of the champion's hidden states is crowded (``select``)
  step:weak               its weakest step's rollouts mostly miss its answer (``step_rollouts``; process_rewards)
Each filter runs on what the ones before it kept, as a datatrove pipeline's filters do (a row dropped as a
near-duplicate still took its prompt's place under the cap). Counts are in samples; ``prompts_kept`` counts
prompts with at least one kept sample.

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

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel import io, schemas
from flywheel.columnar import DuplicateSample, keys_of, ranks, sample_order
from flywheel.config import CurateConfig, GenerateConfig
from flywheel.experimental.process_rewards import run_process_rewards
from flywheel.layout import FILES
from flywheel.rng import derive_seed
from flywheel.stages.curate.columns import (SAMPLE_REASONS, kept_label_precision, near_duplicate_rows, pairs_table,
                                            rows_at, sft_reasons, shared_text_duplicates, training_mix_table)
from flywheel.stages.curate.rules import (NearDuplicates, NgramIndex, near_duplicates, ngram_index, ngrams,
                                          prompt_reason, rl_rows, unvoted_error)
from flywheel.stages.curate.select import run_select
from flywheel.stages.vote import audit_columns
from flywheel.tasks.base import vote_key_of

__all__ = ["NearDuplicates", "NgramIndex", "ngrams", "run_curate"]


def run_curate(round_dir: Path, config: CurateConfig, *, task, eval_path: Path | list[Path], round_index: int,
               previous_pool: Path | None, audit_path: Path | None = None, model_dir: Path | None = None,
               device: str = "cpu", generate: GenerateConfig | None = None) -> dict:
    """Shell: prompts, samples, votes of ``round_dir`` -> curated.parquet, pool.parquet, train.parquet,
    pairs.parquet, rl_prompts.parquet, curation.json. ``eval_path``: one eval set or several.

    Samples and prompts stay Arrow columns and numpy arrays (a round of ten million samples curates in under
    2 GB); the task's per-prompt rules (``rules``) run on a batch of rows at a time, the per-sample filters on
    columns (``columns``). tests/reference_rows.py states the same rules row by row, and
    tests/test_curate_columnar.py holds the two equal. ``curate.select`` then scores the kept rows with the
    champion at ``model_dir`` (``flywheel.stages.curate.select``), and ``curate.step_rollouts`` scores their
    steps by the champion's rollouts, sampled as ``generate`` says (``flywheel.experimental.process_rewards``).
    """

    prompts = io.read_table(round_dir / FILES.prompts, schemas.PROMPTS)
    texts = prompts.column("prompt").combine_chunks()
    shared_texts = pc.count_distinct(texts).as_py() != len(texts)
    ids = prompts.column("id").combine_chunks()
    votes = io.read_table(round_dir / FILES.votes, schemas.VOTES)
    vote_at = pc.index_in(ids, value_set=votes.column("prompt_id").combine_chunks())  # per prompt: its vote's row
    # One row per prompt: what the task's rules read of it and of its verdict (null where it has none).
    per_prompt = pa.table({"id": ids, "prompt": texts, "bucket": prompts.column("bucket"),
                           "meta": prompts.column("meta"),
                           "majority_answer": votes.column("majority_answer").take(vote_at),
                           "vote_share": votes.column("vote_share").take(vote_at)})
    has_verdict = vote_at.is_valid().to_numpy(zero_copy_only=False)
    id_rank = ranks(ids)  # the rules walk prompts in id order
    del prompts, vote_at
    eval_paths = eval_path if isinstance(eval_path, (list, tuple)) else [eval_path]
    eval_prompts = {text for path in eval_paths for text in io.read_table(path, schemas.PROMPTS).column("prompt")
                    .to_pylist()}
    index = ngram_index(config, eval_prompts)

    names = list(SAMPLE_REASONS)
    prompt_drop = np.zeros(len(ids), dtype=np.int64)  # 0: none; else an index into names
    for i, row, verdict in rows_at(per_prompt, np.flatnonzero(has_verdict)):
        reason = prompt_reason(row, verdict, config, task, eval_prompts, index)
        if reason is not None:
            if reason not in names:
                names.append(reason)
            prompt_drop[i] = names.index(reason)

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
    prompt_of = where.to_numpy()[g]  # per sample, in row order: its prompt's position
    del g, where, sample_prompts
    # The votes must be this round's: of its prompts, one for every sampled prompt.
    strangers = pc.is_null(pc.index_in(votes.column("prompt_id"), value_set=ids))
    if pc.any(strangers).as_py():
        row = pc.index(strangers, True).as_py()
        raise io.InputError(round_dir / FILES.votes, f"prompt {votes.column('prompt_id')[row].as_py()!r} is not in "
                            f"{FILES.prompts}", row=row + 1, field="prompt_id")
    unvoted = np.flatnonzero(~has_verdict[prompt_of])
    if len(unvoted):  # rows are in prompt-id order: the least such id
        missing = ids[int(prompt_of[unvoted[0]])].as_py()
        raise io.InputError(round_dir / FILES.samples, unvoted_error(missing),
                            row=pc.index(samples.column("prompt_id"), missing).as_py() + 1, field="prompt_id")

    # Per sample, in row order (by prompt id, voter, sample index): does it vote with its prompt's majority, is it
    # short enough.
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
        answer_keys = keys_of(answers, key)
        majority_keys = keys_of(majority, key).take(pa.array(prompt_of))
        agrees = (pc.fill_null(pc.equal(answer_keys, majority_keys), False).to_numpy(zero_copy_only=False)
                  & answers.is_valid().to_numpy(zero_copy_only=False))
        del answer_keys, majority_keys
    del answers

    # SFT rows: the prompt's reason, else the sample's; then exact dedup and the per-prompt cap among the rest;
    # then exact dedup across prompts of one text, and near dedup, each on what the filters before it kept.
    completion_code = completions.dictionary_encode().indices.to_numpy().astype(np.int64)
    reason = sft_reasons(prompt_drop[prompt_of], prompt_of, agrees, short, completion_code, config)
    if config.dedup and shared_texts:
        text_code = texts.dictionary_encode().indices.to_numpy().astype(np.int64)
        shared_text_duplicates(reason, text_code, prompt_of, completion_code)
    near = near_duplicates(config)
    if near is not None:
        near_duplicate_rows(reason, prompt_of, texts, completions, near)
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
    pairs, pair_drops = pairs_table(prompt_of, agrees, short, completion_code, completions, prompt_drop, names,
                                    has_verdict, id_rank, per_prompt, config, round_index)
    del prompt_of, agrees, short, completion_code, completions

    # GRPO prompts: the rules in prompt-id order, a batch of rows at a time.
    by_id = np.argsort(id_rank)
    voted_by_id = by_id[has_verdict[by_id]]
    rl_kept, rl_drops = rl_rows(((row, verdict) for _, row, verdict in rows_at(per_prompt, voted_by_id)),
                                config, task=task, eval_prompts=eval_prompts,
                                keep=lambda prompt, verdict: prompt["id"])
    rl_index = pc.index_in(pa.array(rl_kept, pa.string()), value_set=ids)
    del rl_kept
    rl_table = pa.table({"prompt": texts.take(rl_index), "prompt_id": ids.take(rl_index),
                         "vote_share": per_prompt.column("vote_share").take(rl_index),
                         "round": pa.array(np.full(len(rl_index), round_index, dtype=np.int64)),
                         "bucket": per_prompt.column("bucket").take(rl_index),
                         "meta": per_prompt.column("meta").take(rl_index)})
    pool = (io.read_table(previous_pool, schemas.CURATED) if previous_pool and Path(previous_pool).exists()
            else pa.table({n: pa.array([], t) for n, t in zip(schemas.CURATED.names, schemas.CURATED.arrow().types)}))
    mix = training_mix_table(kept, pool, config, seed=derive_seed("mix", round_index))
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
        "rl_prompts": {"prompts_kept": len(rl_table), "drops": dict(sorted(rl_drops.items()))},
    }
    if steps is not None:
        report["process_rewards"] = {**steps.summary, "generate_tokens": generate_tokens}
    if audit_path is not None and Path(audit_path).exists():
        truth = io.read_table(audit_path, schemas.PROMPTS)
        voted = per_prompt.filter(pa.array(has_verdict))
        report["thresholds"] = audit_columns(voted.column("id"), voted.column("majority_answer").combine_chunks(),
                                             voted.column("vote_share"), truth, task.is_correct,
                                             config.audit_thresholds)
        report["kept_label_precision"] = kept_label_precision(kept, kept_prompt, per_prompt, truth, task)
    with io.publish_together(round_dir) as staged:
        io.write_table(staged(FILES.curated), kept, schemas.CURATED)
        io.write_table(staged(FILES.pool), pa.concat_tables([pool, kept.cast(pool.schema)]), schemas.CURATED)
        io.write_table(staged(FILES.mix), mix, schemas.CURATED)
        io.write_table(staged(FILES.pairs), pairs, schemas.CURATED_PAIRS)
        io.write_table(staged(FILES.rl_prompts), rl_table, schemas.RL_PROMPTS)
        io.write_json(staged(FILES.curation), report)
    return report
