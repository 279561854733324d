"""Arrow and numpy helpers the columnar stages share (vote and curate): rows in a fixed order, runs of equal
codes, string ranks, and a Python function applied once per distinct value. No stage logic here."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Rows turned into Python values at a time where the columnar stages call the task's Python rules (audits, and
# curate's per-prompt rules): a batch, never the whole round, is Python objects at once (a million prompts as
# dicts is ~1 GB).
BATCH = 65_536


class DuplicateSample(ValueError):
    """Two rows of the samples table share their key; the stage then lets the row reader name them."""


def sample_order(samples):
    """(row order, each ordered row's prompt code, the prompt ids by code) of a samples table: by prompt id,
    then voter, then sample index. The ids are sorted once as distinct values (their codes then order the
    rows), never row by row. Raises ``DuplicateSample`` when two rows share that key."""

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


def keys_of(values, key):
    """``key`` of every string, applied once per distinct value (null stays null)."""

    encoded = values.dictionary_encode()
    return pa.array([key(a) for a in encoded.dictionary.to_pylist()], pa.string()).take(encoded.indices)


def first_occurrences(codes):
    """A mask of the elements of ``codes`` (non-negative ints) that are the first of their value."""

    first = np.zeros(len(codes), dtype=bool)
    first[np.unique(codes, return_index=True)[1]] = True
    return first
