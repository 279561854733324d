"""The columnar curate (``run_curate``) against the rules stated row by row (``reference_rows.run_curate_rows``,
the oracle): every file it writes and every figure of curation.json identical on randomized rounds and options."""

import json
import random

import pytest

from flywheel import io, schemas
from flywheel.config import CurateConfig
from flywheel.stages.curate import run_curate
from reference_rows import run_curate_rows
from flywheel.tasks import load_task
from string_encodings import ENCODINGS, reencode

FILES = ("curated.parquet", "pool.parquet", "train.parquet", "pairs.parquet", "rl_prompts.parquet")
SCHEMAS = (schemas.CURATED, schemas.CURATED, schemas.CURATED, schemas.CURATED_PAIRS, schemas.RL_PROMPTS)


def random_round(rng: random.Random, here, task) -> None:
    """prompts, samples, votes (by the real vote) of a random addition round, and an eval set."""
    from flywheel.config import VoteConfig
    from flywheel.stages.vote import run_vote

    prompts = task.make_prompts(bucket=rng.randint(1, 3), count=rng.randint(1, 30), seed=rng.randint(0, 10**6),
                                id_prefix="r1-", mixed=True)
    prompts = list({p["prompt"]: p for p in prompts}.values())
    if prompts and rng.random() < 0.4:  # prompts that share a text under other ids: exact dedup spans them
        prompts += [{**p, "id": f"{p['id']}-again{i}"} for i, p in enumerate(rng.sample(prompts, rng.randint(1, 3))
                                                                           if len(prompts) >= 3 else prompts)]
    samples = []
    for p in prompts:
        if rng.random() < 0.1:
            continue  # a prompt without samples has no verdict
        for voter in range(rng.randint(1, 3)):
            for index in range(rng.randint(1, 6)):
                answer = rng.choice([p["answer"], p["answer"], p["answer"][::-1], "7", "70", None])
                completion = rng.choice([answer or "?", (answer or "?") + " ", "junk"])
                samples.append({"prompt_id": p["id"], "sample_idx": index, "voter": voter, "completion": completion,
                                "answer": answer, "n_tokens": rng.randint(1, 8), "logprob": -rng.random()})
    rng.shuffle(samples)
    io.write_rows(here / "prompts.parquet", [{**p, "answer": None} for p in prompts], schemas.PROMPTS)
    io.write_rows(here / "audit.parquet", prompts, schemas.PROMPTS)
    io.write_rows(here / "samples.parquet", samples, schemas.SAMPLES)
    run_vote(here / "samples.parquet", here, VoteConfig(), task=task)
    evals = rng.sample(prompts, min(len(prompts), rng.randint(0, 3)))
    io.write_rows(here / "eval.parquet", evals or task.make_prompts(bucket=5, count=2, seed=1, id_prefix="e-"),
                  schemas.PROMPTS)


class ZerosAgree(type(load_task("addition"))):
    """Addition where answers that differ only in trailing zeros vote together (a task whose vote key is not the
    answer itself, as the code task's is not): the columnar curate's key path."""

    def vote_key(self, answer):
        return None if answer is None else answer.rstrip("0") or "0"


@pytest.mark.parametrize("seed", range(8))
def test_columnar_curate_writes_what_the_rows_write(seed, tmp_path, monkeypatch):
    rng = random.Random(seed)
    if seed % 4 == 3:  # the task's rules read rows a batch at a time: batch edges in the middle of a round
        monkeypatch.setattr("flywheel.stages.curate.columns.BATCH", 3)
        monkeypatch.setattr("flywheel.stages.vote.labels.BATCH", 3)  # the audit's batches too
    task = load_task("addition") if seed % 2 else ZerosAgree()
    for trial in range(6):
        here = tmp_path / f"t{trial}"
        here.mkdir()
        random_round(rng, here, task)
        config = CurateConfig(min_vote_share=rng.choice([0.0, 0.4, 0.7]), max_per_prompt=rng.randint(1, 3),
                              max_completion_tokens=rng.randint(2, 8), dedup=rng.random() < 0.7,
                              format_filter=rng.random() < 0.5, decontaminate=rng.random() < 0.7,
                              accumulate=rng.random() < 0.7, new_fraction=rng.choice([0.3, 0.5, 1.0]),
                              max_pairs_per_prompt=rng.randint(1, 2), rl_min_vote_share=rng.choice([0.0, 0.3]),
                              rl_max_vote_share=rng.choice([0.9, 1.0]), near_dedup=rng.random() < 0.4,
                              near_dedup_threshold=rng.choice([0.5, 0.8]), near_dedup_shingle=rng.choice([1, 2]))
        pool = None
        if rng.random() < 0.6:
            pool = here / "previous_pool.parquet"
            io.write_rows(pool, [{"prompt": f"{i}+1=", "completion": str(i), "prompt_id": f"r0-{i}", "round": 0,
                                  "bucket": "1"} for i in range(rng.randint(0, 12))], schemas.CURATED)
        results = {}
        for name, curate in (("rows", run_curate_rows), ("columns", run_curate)):
            out = tmp_path / f"t{trial}-{name}"
            out.mkdir()
            for file in ("prompts.parquet", "samples.parquet", "votes.parquet", "agreement.parquet", "audit.parquet"):
                (out / file).write_bytes((here / file).read_bytes())
            report = curate(out, config, task=task, eval_path=here / "eval.parquet", round_index=1,
                            previous_pool=pool, audit_path=out / "audit.parquet")
            results[name] = (report, json.loads((out / "curation.json").read_text()),
                             [io.read_rows(out / file, schema) for file, schema in zip(FILES, SCHEMAS)])
        assert results["columns"][0] == results["rows"][0], (seed, trial, config)
        assert results["columns"][1] == results["rows"][1]
        for file, rows, expected in zip(FILES, results["columns"][2], results["rows"][2]):
            assert rows == expected, (file, seed, trial, config)


def test_a_round_without_samples_or_answers_curates_like_the_rows(tmp_path):
    task = load_task("addition")
    prompts = task.make_prompts(bucket=2, count=3, seed=5, id_prefix="r1-")
    for name, samples in (("none", []), ("unanswered", [
            {"prompt_id": p["id"], "sample_idx": 0, "voter": 0, "completion": "?", "answer": None, "n_tokens": 1,
             "logprob": -1.0} for p in prompts])):
        outputs = []
        for curate in (run_curate_rows, run_curate):
            here = tmp_path / f"{name}-{curate.__name__}"
            here.mkdir()
            io.write_rows(here / "prompts.parquet", [{**p, "answer": None} for p in prompts], schemas.PROMPTS)
            io.write_rows(here / "samples.parquet", samples, schemas.SAMPLES)
            from flywheel.config import VoteConfig
            from flywheel.stages.vote import run_vote

            run_vote(here / "samples.parquet", here, VoteConfig(), task=task)
            io.write_rows(here / "eval.parquet", prompts[:1], schemas.PROMPTS)
            report = curate(here, CurateConfig(), task=task, eval_path=here / "eval.parquet", round_index=1,
                            previous_pool=None)
            outputs.append((report, [io.read_rows(here / f, s) for f, s in zip(FILES, SCHEMAS)]))
        assert outputs[0] == outputs[1], name


def test_a_sample_of_an_unknown_prompt_is_one_line_naming_its_row(tmp_path):
    from flywheel.config import VoteConfig
    from flywheel.errors import InputError
    from flywheel.stages.vote import run_vote

    task = load_task("addition")
    prompts = task.make_prompts(bucket=2, count=2, seed=5, id_prefix="r1-")
    samples = [{"prompt_id": pid, "sample_idx": 0, "voter": 0, "completion": "5", "answer": "5", "n_tokens": 1,
                "logprob": -1.0} for pid in (prompts[0]["id"], "stranger", prompts[1]["id"])]
    for curate in (run_curate_rows, run_curate):
        here = tmp_path / curate.__name__
        here.mkdir()
        io.write_rows(here / "prompts.parquet", [{**p, "answer": None} for p in prompts], schemas.PROMPTS)
        io.write_rows(here / "samples.parquet", samples, schemas.SAMPLES)
        run_vote(here / "samples.parquet", here, VoteConfig(), task=task)
        io.write_rows(here / "eval.parquet", prompts[:1], schemas.PROMPTS)
        with pytest.raises(InputError) as error:
            curate(here, CurateConfig(), task=task, eval_path=here / "eval.parquet", round_index=1, previous_pool=None)
        assert str(error.value) == (f"{here / 'samples.parquet'}: row 2: field 'prompt_id': prompt 'stranger' is not "
                                    "in prompts.parquet")
        assert not (here / "curated.parquet").exists()


@pytest.mark.parametrize("encoding", [*ENCODINGS, "pandas"])
def test_curate_reads_every_string_encoding_as_the_plain_files(encoding, tmp_path):
    """prompts, samples, votes, the eval set and the pool as pandas, Polars or DuckDB may write them."""
    if encoding == "pandas":
        pytest.importorskip("pandas")
    task = load_task("addition")
    here = tmp_path / "round"
    here.mkdir()
    random_round(random.Random(11), here, task)
    pool = here / "previous_pool.parquet"
    io.write_rows(pool, [{"prompt": f"{i}+1=", "completion": str(i), "prompt_id": f"r0-{i}", "round": 0,
                          "bucket": "1"} for i in range(5)], schemas.CURATED)
    results = []
    for name in ("plain", encoding):
        out = tmp_path / name
        out.mkdir()
        for file in ("prompts.parquet", "samples.parquet", "votes.parquet", "audit.parquet", "eval.parquet",
                     "previous_pool.parquet"):
            (out / file).write_bytes((here / file).read_bytes())
            if name != "plain":
                reencode(out / file, encoding)
        report = run_curate(out, CurateConfig(), task=task, eval_path=out / "eval.parquet", round_index=1,
                            previous_pool=out / "previous_pool.parquet", audit_path=out / "audit.parquet")
        results.append((report, [io.read_rows(out / file, schema) for file, schema in zip(FILES, SCHEMAS)]))
    assert results[0] == results[1]
