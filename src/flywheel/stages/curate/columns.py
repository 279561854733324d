"""Curate on columns: the per-sample filters, the DPO pairs and the training mix as numpy and Arrow operations
over a whole round (ten million samples in under 2 GB), each written once. The filters run in order, each on
the rows the ones before it kept (as a datatrove pipeline does); tests/reference_rows.py states every rule row
by row, and tests/test_curate_columnar.py holds the two equal on random rounds.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.columnar import BATCH, first_occurrences, run_starts
from flywheel.config import CurateConfig
from flywheel.stages.curate.rules import near_duplicates


def rows_at(per_prompt, positions):
    """(position, prompt row, verdict) of the prompts at ``positions`` as the row rules read them, converted a
    ``BATCH`` at a time."""

    for start in range(0, len(positions), BATCH):
        chunk = positions[start:start + BATCH]
        for i, r in zip(chunk.tolist(), per_prompt.take(pa.array(chunk, pa.int64())).to_pylist()):
            yield i, prompt_row(r), {"prompt_id": r["id"], "majority_answer": r["majority_answer"],
                                      "vote_share": r["vote_share"]}


def prompt_row(r: dict) -> dict:
    """A prompt as the task's rules read it (the answer hidden, as in the round's prompts.parquet)."""
    return {"id": r["id"], "prompt": r["prompt"], "bucket": r["bucket"], "meta": r["meta"], "answer": None}


def kept_label_precision(kept, kept_prompt, per_prompt, truth, task) -> float | None:
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
        correct += sum(task.is_correct(task.extract_answer(c, prompt_row(p)), label)
                       for p, c, label in zip(prompt_rows, completions, labels))
    return correct / len(audited) if len(audited) else None


# The reasons a sample of a kept prompt is dropped (codes 1..5 of ``sft_reasons`` and the filters after it; 0 is
# kept, and the prompts' own reasons are numbered after these).
SAMPLE_REASONS = ("", "vote:disagrees", "length:too_long", "dedup:exact", "cap:per_prompt", "dedup:near")
DISAGREES, TOO_LONG, DUPLICATE, CAPPED, NEAR = 1, 2, 3, 4, 5


def sft_reasons(prompt_reason, prompt_of, agrees, short, completion_code, config: CurateConfig):
    """Each sample's drop code (0: kept) for the SFT rows, in row order (by prompt id, voter, sample index): its
    prompt's reason, else disagreeing or too long, else exact dedup within the prompt and the per-prompt cap.
    Row by row, the rule is: a row is dropped if its (prompt, completion) was already kept, or if its prompt
    already has ``max_per_prompt`` kept rows. Within one prompt that means: a row is a duplicate iff the first
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
    first = first_occurrences(pair)
    seen_before = np.cumsum(first)  # a prompt's first candidate is always a first occurrence
    distinct_rank = seen_before - seen_before[start_of]
    first_rank = np.empty(int(pair.max(initial=-1)) + 1, dtype=np.int64)
    first_rank[pair[first]] = distinct_rank[first]
    kept_first = first_rank[pair] < config.max_per_prompt
    reason[candidate] = np.where(first, np.where(kept_first, 0, CAPPED), np.where(kept_first, DUPLICATE, CAPPED))
    return reason


def shared_text_duplicates(reason, text_code, prompt_of, completion_code) -> None:
    """``dedup:exact`` across prompts that share a text, on the rows still kept (reason 0): a (prompt text,
    completion) already kept by an earlier row (a prompt of the same text, earlier in id order) is dropped.
    Sets ``reason`` in place. With distinct texts it drops nothing: ``sft_reasons`` kept one row per (prompt,
    completion)."""

    kept = np.flatnonzero(reason == 0)
    width = int(completion_code.max(initial=0)) + 1
    reason[kept[~first_occurrences(text_code[prompt_of[kept]] * width + completion_code[kept])]] = DUPLICATE


def near_duplicate_rows(reason, prompt_of, texts, completions, near) -> None:
    """``dedup:near`` on the rows still kept, in row order: each (prompt text + completion) is checked against
    the rows kept before it (MinHash LSH, ``near_dedup``), a batch of rows turned into Python at a time. Sets
    ``reason`` in place."""

    kept = np.flatnonzero(reason == 0)
    for start in range(0, len(kept), BATCH):
        rows = kept[start:start + BATCH]
        pairs = zip(rows.tolist(), texts_of(texts, prompt_of[rows]), completions.take(pa.array(rows)).to_pylist())
        for row, text, completion in pairs:
            if near.seen(text + completion):
                reason[row] = NEAR


def texts_of(texts, positions) -> list[str]:
    """The strings of ``texts`` at ``positions`` (a numpy array), as Python values."""
    return texts.take(pa.array(positions, pa.int64())).to_pylist()


def pairs_table(prompt_of, agrees, short, completion_code, completions, prompt_reason, names, has_verdict,
                id_rank, per_prompt, config: CurateConfig, round_index: int):
    """The DPO pairs and their drops (in prompts): per prompt with samples and a verdict, in prompt-id order, its
    own reason, else ``pair:no_rejected``, ``pair:no_chosen``, else (``near_dedup``) ``dedup:near`` on the
    prompt and its first chosen completion; the distinct agreeing short completions (chosen) are then paired
    in order with the distinct disagreeing ones (rejected), up to ``max_pairs_per_prompt``."""

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
    drops = +drops  # without the zero counts: a reason is listed only where it dropped something
    valid = np.zeros(n_prompts, dtype=bool)
    valid[rest[(n_rejected[rest] > 0) & (n_chosen[rest] > 0)]] = True
    near = near_duplicates(config)
    if near is not None:  # the last rule, in prompt-id order: a prompt's fate depends on the ones before it
        first_chosen = np.zeros(n_prompts, dtype=np.int64)
        first_chosen[chosen_group[chosen_rank == 0]] = chosen[chosen_rank == 0]
        candidates = np.flatnonzero(valid)
        candidates = candidates[np.argsort(id_rank[candidates])]
        for prompt, text in zip(candidates.tolist(), texts_of(per_prompt.column("prompt"), candidates)):
            if near.seen(text + completions[int(first_chosen[prompt])].as_py()):
                valid[prompt] = False
                drops["dedup:near"] += 1
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
    order = np.lexsort((rank, id_rank[group]))  # by prompt id, as the rules walk the prompts
    prompt_index = pa.array(group[order])
    table = pa.table({"prompt": per_prompt.column("prompt").take(prompt_index),
                      "chosen": completions.take(pa.array(chosen_row[order])),
                      "rejected": completions.take(pa.array(rejected_row[order])),
                      "prompt_id": per_prompt.column("id").take(prompt_index),
                      "round": pa.array(np.full(len(order), round_index, dtype=np.int64)),
                      "bucket": per_prompt.column("bucket").take(prompt_index)})
    return table, drops


def training_mix_table(new, pool, config: CurateConfig, *, seed: int):
    """This round's rows plus, with ``accumulate``, earlier rows (the pool) so new rows are ``new_fraction`` of
    the mix: earlier rows drawn without replacement (all of them if the pool is smaller), then shuffled, with
    ``random.Random(seed)`` over row positions (the row oracle draws the same over rows)."""

    if not config.accumulate or not len(pool) or config.new_fraction >= 1:
        return new
    wanted = round(len(new) * (1 - config.new_fraction) / config.new_fraction)
    rng = random.Random(seed)
    earlier = rng.sample(range(len(pool)), min(wanted, len(pool)))
    mix = pa.concat_tables([new.cast(pool.schema), pool.take(pa.array(earlier, pa.int64()))])
    positions = list(range(len(mix)))
    rng.shuffle(positions)
    return mix.take(pa.array(positions, pa.int64()))
