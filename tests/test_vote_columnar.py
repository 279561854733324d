"""The columnar vote (``vote_table``, what ``run_vote`` runs) against the row implementation it replaced, kept as
the reference (``vote``, ``sample_weights``, ``voter_reliability``): identical votes, agreement and vote.json, bit
for bit, on randomized rounds (shuffled files, several voters, missing answers, keys that merge answers, weights,
answer-share floors, non-ASCII answers)."""

import json
import math
import random

import pyarrow as pa
import pytest

from flywheel import io, schemas
from flywheel.config import VoteConfig
from flywheel.stages.vote import (pseudo_label_precision, reliability_weights, run_vote, sample_weights, vote_summary,
                                  vote_table, voter_reliability)
from flywheel.tasks import load_task
from reference_rows import vote_rows as vote
from string_encodings import ENCODINGS, reencode


def bits(rows: list[dict]) -> list[dict]:
    """Rows with every float as its exact bits (so -0.0 and 0.0, or a last-bit difference, do not compare equal)."""
    return [{k: v.hex() if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def random_round(rng: random.Random) -> list[dict]:
    rows, seen = [], set()
    answers = rng.choice([[None, "1", "2", "10", "01", "x", "é", "ß", "100"], [None], [None, "1"]])
    for p in range(rng.randint(1, 40)):
        prompt_id = f"p{rng.randint(0, 9)}-{p}"
        favourite = rng.choice(answers)
        for voter in range(rng.randint(1, 4)):
            for index in range(rng.randint(1, 8)):
                if (prompt_id, voter, index) in seen:
                    continue
                seen.add((prompt_id, voter, index))
                answer = favourite if rng.random() < 0.5 else rng.choice(answers)
                rows.append({"prompt_id": prompt_id, "sample_idx": index, "voter": voter, "completion": f"c{answer}",
                             "answer": answer, "n_tokens": rng.randint(0, 6), "logprob": -rng.random() * 5})
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_vote_table_equals_the_row_vote(seed):
    rng = random.Random(seed)
    for _ in range(60):
        rows = random_round(rng)
        key = rng.choice([None, lambda a: None if a is None else str(len(a)), lambda a: a and a.lstrip("0")])
        weights = rng.choice([None, sample_weights(rows), [rng.random() for _ in rows]])
        share = rng.choice([0.0, 0.3, 0.5, 0.99])
        expected_votes, expected_agreement = vote(rows, min_answer_share=share, weights=weights, key=key)
        votes, agreement = vote_table(pa.Table.from_pylist(rows, schema=schemas.SAMPLES.arrow()), weights=weights,
                                      key=key, min_answer_share=share)
        assert bits(votes.to_pylist()) == bits(expected_votes)
        assert agreement.to_pylist() == expected_agreement


@pytest.mark.parametrize("method", ["majority", "weighted", "reliability"])
def test_run_vote_writes_what_the_row_reference_computes(method, tmp_path):
    rng = random.Random(method)
    task = load_task("addition")
    for trial in range(15):
        rows = random_round(rng)
        here = tmp_path / str(trial)
        io.write_rows(here / "samples.parquet", rows, schemas.SAMPLES)
        # Labels for some prompts (user data may label only some), some answers right
        truth = {pid: rng.choice(["1", "2", "10", "é"]) for pid in sorted({r["prompt_id"] for r in rows})
                 if rng.random() < 0.7}
        io.write_rows(here / "audit.parquet", [{"id": pid, "prompt": f"q{pid}", "bucket": "1", "meta": None,
                                                "answer": answer} for pid, answer in truth.items()], schemas.PROMPTS)
        config = VoteConfig(method=method, min_answer_share=rng.choice([0.0, 0.5]))
        summary = run_vote(here / "samples.parquet", here, config, task=task, audit_path=here / "audit.parquet")
        weights = {"majority": None, "weighted": sample_weights(rows),
                   "reliability": reliability_weights(rows, voter_reliability(rows, task.vote_key))}[method]
        expected_votes, expected_agreement = vote(rows, min_answer_share=config.min_answer_share, weights=weights,
                                                  key=task.vote_key)
        assert bits(io.read_rows(here / "votes.parquet", schemas.VOTES)) == bits(expected_votes)
        assert io.read_rows(here / "agreement.parquet", schemas.AGREEMENT) == expected_agreement
        expected_summary = vote_summary(expected_votes)
        assert {k: summary[k] for k in expected_summary} == expected_summary
        assert summary["pseudo_label_precision"] == pseudo_label_precision(expected_votes, truth, task.is_correct)
        assert json.loads((here / "vote.json").read_text())["prompts"] == len(expected_votes)
        if method == "reliability":
            reliability = voter_reliability(rows, task.vote_key)
            assert summary["voter_reliability"] == {str(v): round(p, 4) for v, p in reliability.items()}


def test_rounds_without_any_answer_or_without_samples():
    rows = [{"prompt_id": p, "sample_idx": i, "voter": 0, "completion": "?", "answer": None, "n_tokens": 1,
             "logprob": -0.1} for p in ("a", "b") for i in range(3)]
    for chosen in (rows, rows[:1], []):
        votes, agreement = vote_table(pa.Table.from_pylist(chosen, schema=schemas.SAMPLES.arrow()))
        expected_votes, expected_agreement = vote(chosen)
        assert bits(votes.to_pylist()) == bits(expected_votes) and agreement.to_pylist() == expected_agreement


def test_a_unanimous_prompt_has_entropy_minus_zero_as_before():
    rows = [{"prompt_id": "p", "sample_idx": i, "voter": 0, "completion": "5", "answer": "5", "n_tokens": 1,
             "logprob": -0.1} for i in range(3)]
    votes, _ = vote_table(pa.Table.from_pylist(rows, schema=schemas.SAMPLES.arrow()))
    assert math.copysign(1.0, votes.column("entropy")[0].as_py()) == math.copysign(1.0, vote(rows)[0][0]["entropy"])


@pytest.mark.parametrize("encoding", [*ENCODINGS, "pandas"])
def test_run_vote_reads_every_string_encoding_as_the_plain_file(encoding, tmp_path):
    """pandas writes large_string, Polars string_view, DuckDB dictionaries: the vote is the plain file's."""
    if encoding == "pandas":
        pytest.importorskip("pandas")
    task = load_task("addition")
    rows = random_round(random.Random(encoding))
    outputs = []
    for name in ("plain", encoding):
        here = tmp_path / name
        io.write_rows(here / "samples.parquet", rows, schemas.SAMPLES)
        io.write_rows(here / "audit.parquet", [{"id": r["prompt_id"], "prompt": "q", "answer": "1"}
                                               for r in rows if r["sample_idx"] == 0 and r["voter"] == 0],
                      schemas.PROMPTS)
        if name != "plain":
            reencode(here / "samples.parquet", encoding)
            reencode(here / "audit.parquet", encoding)
        for method in ("majority", "weighted"):
            summary = run_vote(here / "samples.parquet", here, VoteConfig(method=method), task=task,
                               audit_path=here / "audit.parquet")
            outputs.append((name, summary, bits(io.read_rows(here / "votes.parquet", schemas.VOTES)),
                            io.read_rows(here / "agreement.parquet", schemas.AGREEMENT)))
    assert [o[1:] for o in outputs[:2]] == [o[1:] for o in outputs[2:]]
