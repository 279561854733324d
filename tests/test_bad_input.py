"""The bad-input and fault suite: every case is a stage command, `flywheel run` or a config a hostile or careless
user could send. Each must end with exit code 2 and one line on stderr naming the file (and the row and field
where there is one), raise nothing (an exception here is a traceback for the user), and change no file.

Cases run in-process through ``flywheel.cli.main`` (a process per case would cost ~3.5 s of imports each);
tests/test_cli_errors.py runs a few through the real entry point. ``CASES`` is the suite's table; the README
quotes its size.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel import io, schemas
from flywheel.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@dataclass
class Case:
    name: str
    args: list[str]  # `flywheel` arguments; {seed} {work} are filled in
    needles: tuple[str, ...]  # each must be in the error line
    setup: Callable[[Path], None] | None = None  # writes the bad input into the work directory
    extra: dict = field(default_factory=dict)


def _parquet(path: Path, rows: list[dict], types: dict | None = None) -> None:
    """Rows as Parquet with the given column types (Arrow), bypassing io.write_rows' contract on purpose."""
    table = pa.Table.from_pylist(rows, schema=pa.schema(types) if types else None)
    pq.write_table(table, path)


PROMPTS = [{"id": f"p{i}", "prompt": f"{i}{i}+{i + 1}=", "bucket": "2"} for i in range(1, 5)]
SAMPLE_TYPES = {"prompt_id": pa.string(), "sample_idx": pa.int64(), "voter": pa.int64(), "completion": pa.string(),
                "answer": pa.string(), "n_tokens": pa.int64(), "logprob": pa.float64()}
VOTE_TYPES = {"prompt_id": pa.string(), "majority_answer": pa.string(), "vote_share": pa.float64(),
              "entropy": pa.float64(), "n_samples": pa.int64(), "n_answers": pa.int64()}


def _samples(**change) -> list[dict]:
    rows = [{"prompt_id": p["id"], "sample_idx": k, "voter": v, "completion": "5", "answer": "5", "n_tokens": 2,
             "logprob": -1.0} for p in PROMPTS for v in range(2) for k in range(2)]
    rows[3].update(change)
    return rows


def _votes(**change) -> list[dict]:
    rows = [{"prompt_id": p["id"], "majority_answer": "5", "vote_share": 1.0, "entropy": 0.0, "n_samples": 4,
             "n_answers": 1} for p in PROMPTS]
    rows[2].update(change)
    return rows


def _write_samples(name: str, rows: list[dict]):
    return lambda work: _parquet(work / name, rows, SAMPLE_TYPES)


def _round_with_votes(votes: list[dict]):
    """A round directory curate reads, whose votes.parquet is ``votes``."""
    def setup(work: Path) -> None:
        here = work / "round"
        here.mkdir()
        io.write_rows(here / "prompts.parquet", PROMPTS, schemas.PROMPTS)
        _parquet(here / "samples.parquet", _samples(), SAMPLE_TYPES)
        _parquet(here / "votes.parquet", votes, VOTE_TYPES)
    return setup


def _parquet_bytes(rows: list[dict], types: dict) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(types)), sink)
    return sink.getvalue().to_pybytes()


def _with_column_twice(rows: list[dict], types: dict, name: str):
    """Parquet allows two columns of one name (pandas does not): which one a reader takes is its own choice."""
    def setup(work: Path) -> None:
        table = pa.Table.from_pylist(rows, schema=pa.schema(types))
        pq.write_table(table.append_column(name, table.column(name)), work / "s.parquet")
    return setup


def _round_with(**files: Callable[[Path], None]):
    """A good round directory (see ``_round_with_votes``) with the named files replaced: file name with '_' for '.'."""
    def setup(work: Path) -> None:
        _round_with_votes(_votes())(work)
        for name, write in files.items():
            write(work / "round" / name.replace("_", "."))
    return setup


def _text(name: str, content: str | bytes):
    def setup(work: Path) -> None:
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _model_copy(edit: Callable[[Path], None]):
    def setup(work: Path) -> None:
        shutil.copytree(work / "seed", work / "model")
        edit(work / "model")
    return setup


def _jsonl(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


GEN = ["generate", "-c", str(SMOKE), "--round", "1", "--model", "seed", "--out", "out/samples.parquet"]
VOTE = ["vote", "-c", str(SMOKE), "--out-dir", "out"]
CURATE = ["curate", "-c", str(SMOKE), "--round", "1", "--round-dir", "round", "--eval", "eval.parquet"]
EVAL = ["evaluate", "-c", str(SMOKE), "--candidate", "seed", "--champion", "seed", "--out-dir", "out/eval"]
CONFIG = ["config", "-c", str(SMOKE)]
PROMPTS_STAGE = ["prompts", "-c", str(SMOKE), "--round", "1", "--champion", "seed", "--out-dir", "out"]
GATE = ["gate", "-c", str(SMOKE), "--eval-dir", "ev", "--candidate", "seed", "--champion", "seed"]

CASES = [
    # --- the config: every float key finite, every key known and typed ------------------------------------------
    Case("config nan learning rate", [*CONFIG, "-s", "train.learning_rate=.nan"], ("train.learning_rate", "finite")),
    Case("config inf learning rate", [*CONFIG, "-s", "train.learning_rate=.inf"], ("train.learning_rate", "finite")),
    Case("config nan min_gain switches the gate off", [*CONFIG, "-s", "gate.min_gain=nan"],
         ("gate.min_gain", "finite")),
    Case("config nan alpha", [*CONFIG, "-s", "gate.alpha=.nan"], ("gate.alpha", "finite")),
    Case("config -inf temperature", [*CONFIG, "-s", "generate.temperature=-.inf"], ("generate.temperature", "finite")),
    Case("config nan vote share", [*CONFIG, "-s", "curate.min_vote_share=.NaN"], ("curate.min_vote_share", "finite")),
    Case("config inf timeout", [*CONFIG, "-s", "code.timeout_s=.inf"], ("code.timeout_s", "finite")),
    Case("config unknown key", [*CONFIG, "-s", "train.epochs=3"], ("train.epochs", "unknown config key")),
    Case("config wrong type", [*CONFIG, "-s", "train.steps=many"], ("train.steps", "expected int")),
    Case("config bool for int", [*CONFIG, "-s", "train.steps=true"], ("train.steps", "expected int")),
    Case("config negative steps", [*CONFIG, "-s", "train.steps=-5"], ("train.steps", "> 0")),
    Case("config vote share above 1", [*CONFIG, "-s", "curate.min_vote_share=1.5"], ("curate.min_vote_share",)),
    Case("config unknown vote method", [*CONFIG, "-s", "vote.method=loudest"], ("vote.method", "must be one of")),
    Case("config unknown precision", [*CONFIG, "-s", "train.precision=fp8"], ("train.precision",)),
    Case("config bad kubernetes quantity", [*CONFIG, "-s", "kubeflow.gpu_step_memory=lots"],
         ("kubeflow.gpu_step_memory", "quantity")),
    Case("config override without =", [*CONFIG, "-s", "train.steps"], ("train.steps", "not key=value")),
    Case("config file missing", ["config", "-c", "nowhere.yaml"], ("nowhere.yaml", "not found")),
    Case("config file malformed", ["config", "-c", "bad.yaml"], ("bad.yaml", "malformed YAML"),
         _text("bad.yaml", "train: {steps: [1,\n")),
    Case("config file a list", ["config", "-c", "list.yaml"], ("list.yaml", "mapping"), _text("list.yaml", "- 1\n")),
    Case("config file a directory", ["config", "-c", "adir"], ("adir",), lambda w: (w / "adir").mkdir()),
    Case("config section a scalar", ["config", "-c", "scalar.yaml"], ("scalar.yaml", "train"),
         _text("scalar.yaml", "train: 5\n")),
    # --- prompts (generate --prompts) -------------------------------------------------------------------------------
    Case("prompts malformed json", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 2", "malformed JSON"),
         _text("p.jsonl", _jsonl([PROMPTS[0], '{"id": "x", "prompt": ']))),
    Case("prompts missing prompt", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 1", "field 'prompt'"),
         _text("p.jsonl", _jsonl([{"id": "a"}]))),
    Case("prompts empty prompt", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 1", "must not be empty"),
         _text("p.jsonl", _jsonl([{"id": "a", "prompt": "  "}]))),
    Case("prompts numeric prompt", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 1", "expected str"),
         _text("p.jsonl", _jsonl([{"id": "a", "prompt": 5}]))),
    Case("prompts duplicate ids", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 3", "field 'id'", "duplicate"),
         _text("p.jsonl", _jsonl([PROMPTS[0], PROMPTS[1], PROMPTS[0]]))),
    Case("prompts not an object", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 1", "JSON object"),
         _text("p.jsonl", "[1, 2]\n")),
    Case("prompts not utf-8", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "UTF-8"), _text("p.jsonl", b"\xff\xfe{}\n")),
    Case("prompts garbage parquet", [*GEN, "--prompts", "p.parquet"], ("p.parquet", "Parquet"),
         _text("p.parquet", b"PAR1 not really")),
    Case("prompts a directory", [*GEN, "--prompts", "pdir"], ("pdir",), lambda w: (w / "pdir").mkdir()),
    Case("prompts missing file", [*GEN, "--prompts", "none.jsonl"], ("none.jsonl", "not found")),
    Case("prompt the task cannot parse", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 1", "field 'prompt'"),
         _text("p.jsonl", _jsonl([{"id": "a", "prompt": "hello world"}]))),
    Case("prompt of a 5 MB number", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 1", "field 'prompt'"),
         _text("p.jsonl", _jsonl([{"id": "a", "prompt": "1" * 5_000_000 + "+1="}]))),
    Case("prompt ending in a newline", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 2", "field 'prompt'"),
         _text("p.jsonl", _jsonl([PROMPTS[0], {"id": "b", "prompt": "12+34=\n"}]))),
    Case("prompt ending in a newline in parquet", [*GEN, "--prompts", "p.parquet"],
         ("p.parquet", "row 1", "field 'prompt'"),
         lambda w: _parquet(w / "p.parquet", [{"id": "a", "prompt": "1+2=\n"}])),
    Case("data.prompts ending in a newline", [*PROMPTS_STAGE, "-s", "data.prompts=p.jsonl"],
         ("p.jsonl", "row 2", "field 'prompt'"), _text("p.jsonl", _jsonl([PROMPTS[0], {"prompt": "12+34=\n"}]))),
    Case("prompts not utf-8 on line 2", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "row 2", "UTF-8"),
         _text("p.jsonl", _jsonl([PROMPTS[0]]).encode() + b'{"id": "b", "prompt": "1\xff+2="}\n')),
    Case("prompts a directory is called one", [*GEN, "--prompts", "p.jsonl"], ("p.jsonl", "is a directory"),
         lambda w: (w / "p.jsonl").mkdir()),
    # --- samples (vote --samples) ---------------------------------------------------------------------------------
    Case("samples nan logprob", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "row 4", "field 'logprob'", "finite"),
         _write_samples("s.parquet", _samples(logprob=math.nan))),
    Case("samples inf logprob", [*VOTE, "-s", "vote.method=weighted", "--samples", "s.parquet"],
         ("s.parquet", "row 4", "field 'logprob'", "finite"), _write_samples("s.parquet", _samples(logprob=math.inf))),
    Case("samples duplicate sample", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "row 4", "duplicate"),
         _write_samples("s.parquet", _samples(sample_idx=0))),
    Case("samples missing column", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "row 1", "field 'n_tokens'"),
         lambda w: _parquet(w / "s.parquet", [{k: v for k, v in r.items() if k != "n_tokens"} for r in _samples()])),
    Case("samples float voter", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "row 1", "field 'voter'"),
         lambda w: _parquet(w / "s.parquet", [{**r, "voter": 0.5} for r in _samples()])),
    Case("samples jsonl NaN token", [*VOTE, "--samples", "s.jsonl"], ("s.jsonl", "row 1", "field 'logprob'"),
         _text("s.jsonl", json.dumps(_samples()[0])[:-1].replace('"logprob": -1.0', '"logprob": NaN') + "}\n")),
    Case("samples empty file", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "Parquet"), _text("s.parquet", b"")),
    Case("samples json in a parquet file", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "Parquet"),
         _text("s.parquet", _jsonl(_samples()))),
    Case("samples truncated parquet", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "Parquet"),
         _text("s.parquet", _parquet_bytes(_samples(), SAMPLE_TYPES)[:-40])),
    Case("samples positive logprob overflows the weight", [*VOTE, "-s", "vote.method=weighted", "--samples",
                                                           "s.parquet"],
         ("s.parquet", "row 4", "field 'logprob'", "at most 0"), _write_samples("s.parquet", _samples(logprob=1e300))),
    Case("samples positive logprob in jsonl", [*VOTE, "--samples", "s.jsonl"], ("s.jsonl", "row 1", "field 'logprob'"),
         _text("s.jsonl", _jsonl([{**_samples()[0], "logprob": 2.5}]))),
    Case("samples negative n_tokens", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "row 4", "field 'n_tokens'"),
         _write_samples("s.parquet", _samples(n_tokens=-3))),
    Case("samples sample_idx past int64", [*VOTE, "--samples", "s.jsonl"],
         ("s.jsonl", "row 1", "field 'sample_idx'", "out of range"),
         _text("s.jsonl", _jsonl([{**_samples()[0], "sample_idx": 10**30}]))),
    Case("samples uint64 past int64", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "row 1", "field 'voter'"),
         lambda w: _parquet(w / "s.parquet", [{**r, "voter": 2**64 - 1 - i} for i, r in enumerate(_samples())],
                            {**SAMPLE_TYPES, "voter": pa.uint64()})),
    Case("samples a column twice", [*VOTE, "--samples", "s.parquet"], ("s.parquet", "field 'answer'", "2 times"),
         _with_column_twice(_samples(), SAMPLE_TYPES, "answer")),
    Case("samples json nested too deeply", [*VOTE, "--samples", "s.jsonl"], ("s.jsonl", "row 1", "nested"),
         _text("s.jsonl", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")),
    Case("samples a directory", [*VOTE, "--samples", "sdir"], ("sdir", "is a directory"),
         lambda w: (w / "sdir").mkdir()),
    Case("self_judge sample of a prompt not in the prompts", [*VOTE, "-s", "vote.method=self_judge", "--samples",
                                                              "s.parquet", "--prompts", "p.parquet", "--model", "seed"],
         ("s.parquet", "row 9", "field 'prompt_id'", "'p3'", "p.parquet"),
         lambda w: (_write_samples("s.parquet", _samples())(w), io.write_rows(w / "p.parquet", PROMPTS[:2],
                                                                              schemas.PROMPTS))),
    Case("reference vote with an audit file without labels", [*VOTE, "-s", "vote.method=reference", "--samples",
                                                              "s.parquet", "--audit", "a.parquet"],
         ("a.parquet", "field 'answer'", "labels none"),
         lambda w: (_write_samples("s.parquet", _samples())(w), _parquet(w / "a.parquet", PROMPTS))),
    Case("samples out-dir is a file", [*VOTE[:-1], "outfile", "--samples", "s.parquet"], ("outfile",),
         lambda w: (_write_samples("s.parquet", _samples())(w), (w / "outfile").write_text("x"))),
    # --- votes and the round (curate) -------------------------------------------------------------------------------
    Case("votes nan share", CURATE, ("votes.parquet", "row 3", "field 'vote_share'", "finite"),
         _round_with_votes(_votes(vote_share=math.nan))),
    Case("votes inf entropy", CURATE, ("votes.parquet", "row 3", "field 'entropy'", "finite"),
         _round_with_votes(_votes(entropy=math.inf))),
    Case("votes duplicate prompt", CURATE, ("votes.parquet", "row 3", "duplicate"),
         _round_with_votes(_votes(prompt_id="p1"))),
    Case("votes missing", CURATE, ("votes.parquet", "not found"),
         lambda w: (_round_with_votes(_votes())(w), (w / "round" / "votes.parquet").unlink())),
    Case("votes share above 1", CURATE, ("votes.parquet", "row 3", "field 'vote_share'", "at most 1"),
         _round_with_votes(_votes(vote_share=5.0))),
    Case("votes negative share", CURATE, ("votes.parquet", "row 3", "field 'vote_share'", "at least 0"),
         _round_with_votes(_votes(vote_share=-0.5))),
    Case("votes of another round's prompts", CURATE, ("votes.parquet", "row 1", "field 'prompt_id'", "'xp1'"),
         _round_with_votes([{**v, "prompt_id": "x" + v["prompt_id"]} for v in _votes()])),
    Case("votes of another round's prompts, row curate", [*CURATE, "-s", "curate.near_dedup=true"],
         ("votes.parquet", "row 1", "field 'prompt_id'", "'xp1'"),
         _round_with_votes([{**v, "prompt_id": "x" + v["prompt_id"]} for v in _votes()])),
    Case("votes missing a sampled prompt", CURATE,
         ("samples.parquet", "row 13", "field 'prompt_id'", "'p4'", "no vote"), _round_with_votes(_votes()[:3])),
    Case("votes missing a sampled prompt, row curate", [*CURATE, "-s", "curate.near_dedup=true"],
         ("samples.parquet", "row 13", "field 'prompt_id'", "'p4'", "no vote"), _round_with_votes(_votes()[:3])),
    Case("round samples truncated", CURATE, ("samples.parquet", "Parquet"),
         _round_with(samples_parquet=lambda p: p.write_bytes(p.read_bytes()[:100]))),
    Case("round votes are json", CURATE, ("votes.parquet", "Parquet"),
         _round_with(votes_parquet=lambda p: p.write_text(_jsonl(_votes())))),
    Case("round samples negative n_tokens pass the length filter", CURATE,
         ("samples.parquet", "row 4", "field 'n_tokens'"),
         _round_with(samples_parquet=lambda p: _parquet(p, _samples(n_tokens=-100), SAMPLE_TYPES))),
    Case("round prompts duplicated", CURATE, ("prompts.parquet", "duplicate"),
         lambda w: (_round_with_votes(_votes())(w),
                    _parquet(w / "round" / "prompts.parquet", PROMPTS + PROMPTS[:1]))),
    # --- the eval set (evaluate --eval) -----------------------------------------------------------------------------
    Case("eval duplicate ids", [*EVAL, "--eval", "e.parquet"], ("e.parquet", "row 5", "duplicate"),
         lambda w: _parquet(w / "e.parquet", [{**p, "answer": "1"} for p in PROMPTS + PROMPTS[:1]])),
    Case("eval missing", [*EVAL, "--eval", "none.parquet"], ("none.parquet", "not found")),
    Case("eval prompt ending in a newline", [*EVAL, "--eval", "e.jsonl"], ("e.jsonl", "row 1", "field 'prompt'"),
         _text("e.jsonl", _jsonl([{"id": "a", "prompt": "1+1=\n", "answer": "2"}]))),
    Case("eval answer a mapping", [*PROMPTS_STAGE, "-s", "data.prompts=p.jsonl", "-s", "data.eval=e.jsonl"],
         ("p.jsonl", "row 1", "field 'answer'", "text or a number"),
         lambda w: (_text("p.jsonl", _jsonl([{"prompt": "1+1=", "answer": {"value": 2}}]))(w))),
    Case("data.eval answer NaN", ["prepare", "-c", str(SMOKE), "-s", "seed.path=seed", "-s", "data.eval=e.parquet",
                                  "--root", "loop"], ("e.parquet", "row 1", "field 'answer'", "reference answer"),
         lambda w: _parquet(w / "e.parquet", [{"prompt": "1+1=", "answer": float("nan")}])),
    # --- model directories ------------------------------------------------------------------------------------------
    Case("model config.json not json", [*GEN, "--prompts", "p.jsonl", "--model", "model"], ("config.json", "JSON"),
         lambda w: (_text("p.jsonl", _jsonl(PROMPTS))(w),
                    _model_copy(lambda m: (m / "member-0" / "config.json").write_text("{not json"))(w))),
    Case("model metadata not json", [*GEN, "--prompts", "p.jsonl", "--model", "model"], ("flywheel-model.json",),
         lambda w: (_text("p.jsonl", _jsonl(PROMPTS))(w),
                    _model_copy(lambda m: (m / "flywheel-model.json").write_text("[[["))(w))),
    Case("model member missing", [*GEN, "--prompts", "p.jsonl", "--model", "model"], ("member-1",),
         lambda w: (_text("p.jsonl", _jsonl(PROMPTS))(w), _model_copy(lambda m: shutil.rmtree(m / "member-1"))(w))),
    Case("model directory missing", [*GEN, "--prompts", "p.jsonl", "--model", "nomodel"], ("nomodel",),
         _text("p.jsonl", _jsonl(PROMPTS))),
    Case("model a file", [*GEN, "--prompts", "p.jsonl", "--model", "p.jsonl"], ("p.jsonl",),
         _text("p.jsonl", _jsonl(PROMPTS))),
    # --- output paths, checked before any compute ------------------------------------------------------------------
    Case("generate out is a directory", [*GEN[:-1], "outdir", "--prompts", "p.jsonl"], ("outdir", "directory"),
         lambda w: (_text("p.jsonl", _jsonl(PROMPTS))(w), (w / "outdir").mkdir())),
    Case("generate out under a file", [*GEN[:-1], "afile/samples.parquet", "--prompts", "p.jsonl"], ("afile",),
         lambda w: (_text("p.jsonl", _jsonl(PROMPTS))(w), (w / "afile").write_text("x"))),
    Case("gate out is a directory", ["gate", "-c", str(SMOKE), "--eval-dir", "ev", "--candidate", "seed", "--champion",
                                     "seed", "--out", "decision", "--next-champion", "next"], ("decision", "directory"),
         lambda w: ((w / "decision").mkdir(), (w / "ev").mkdir())),
    # every stage: a directory (or a file) at one of its output paths fails before the compute, nothing written
    Case("prompts output is a directory", [*PROMPTS_STAGE], ("audit.parquet", "is a directory"),
         lambda w: (w / "out" / "audit.parquet").mkdir(parents=True)),
    Case("vote output is a directory", [*VOTE, "--samples", "s.parquet"], ("agreement.parquet", "is a directory"),
         lambda w: (_write_samples("s.parquet", _samples())(w), (w / "out" / "agreement.parquet").mkdir(parents=True))),
    Case("vote summary is a directory", [*VOTE, "--samples", "s.parquet"], ("vote.json", "is a directory"),
         lambda w: (_write_samples("s.parquet", _samples())(w), (w / "out" / "vote.json").mkdir(parents=True))),
    Case("curate output is a directory", CURATE, ("pairs.parquet", "is a directory"),
         lambda w: (_round_with_votes(_votes())(w), (w / "round" / "pairs.parquet").mkdir())),
    Case("curate summary is a directory", CURATE, ("curation.json", "is a directory"),
         lambda w: (_round_with_votes(_votes())(w), (w / "round" / "curation.json").mkdir())),
    Case("train output is a file", ["train", "-c", str(SMOKE), "--round", "1", "--data", "t.jsonl", "--init", "seed",
                                    "--out", "cand"], ("cand", "is a file"),
         lambda w: (_text("t.jsonl", _jsonl([{"prompt": "1+1=", "completion": "2"}]))(w),
                    (w / "cand").write_text("x"))),
    Case("evaluate output is a directory", [*EVAL, "--eval", "eval.parquet"], ("metrics.json", "is a directory"),
         lambda w: (w / "out" / "eval" / "metrics.json").mkdir(parents=True)),
    Case("evaluate predictions is a directory", [*EVAL, "--eval", "eval.parquet"],
         ("predictions.parquet", "is a directory"),
         lambda w: (w / "out" / "eval" / "predictions.parquet").mkdir(parents=True)),
    Case("gate next champion is a file", [*GATE, "--out", "decision.json", "--next-champion", "next"],
         ("next", "is a file"), lambda w: ((w / "ev").mkdir(), (w / "next").write_text("x"))),
    Case("prepare pool is a directory", ["prepare", "-c", str(SMOKE), "-s", "seed.path=seed", "--root", "loop"],
         ("pool.parquet", "is a directory"),
         lambda w: (w / "loop" / "rounds" / "0" / "pool.parquet").mkdir(parents=True)),
    Case("prepare eval set is a directory", ["prepare", "-c", str(SMOKE), "-s", "seed.path=seed", "--root", "loop"],
         ("eval.parquet", "is a directory"), lambda w: (w / "loop" / "eval.parquet").mkdir(parents=True)),
    Case("prepare champion is a file", ["prepare", "-c", str(SMOKE), "-s", "seed.path=seed", "--root", "loop"],
         ("champion", "is a file"), _text("loop/rounds/0/champion", "x")),
    # --- the gate's and train's inputs ------------------------------------------------------------------------------
    Case("gate without predictions", ["gate", "-c", str(SMOKE), "--eval-dir", "ev", "--candidate", "seed",
                                      "--champion", "seed", "--out", "decision.json", "--next-champion", "next"],
         ("predictions",), lambda w: (w / "ev").mkdir()),
    Case("train data missing", ["train", "-c", str(SMOKE), "--round", "1", "--data", "none.parquet", "--init", "seed",
                                "--out", "cand"], ("none.parquet", "not found")),
    Case("grpo prompts with a vote share of 7", ["train", "-c", str(SMOKE), "-s", "train.method=grpo", "--round", "1",
                                                 "--data", "t.jsonl", "--init", "seed", "--out", "cand"],
         ("t.jsonl", "row 1", "field 'vote_share'"), _text("t.jsonl", _jsonl([{"prompt": "1+1=", "vote_share": 7.0}]))),
    Case("train data empty completion", ["train", "-c", str(SMOKE), "--round", "1", "--data", "t.jsonl", "--init",
                                         "seed", "--out", "cand"], ("t.jsonl", "row 1", "field 'completion'"),
         _text("t.jsonl", _jsonl([{"prompt": "1+1=", "completion": ""}]))),
    Case("train diverges", ["train", "-c", str(SMOKE), "-s", "train.learning_rate=1e12", "-s", "train.steps=4",
                            "-s", "train.batch_size=4", "--round", "1", "--data", "t.jsonl", "--init", "seed",
                            "--out", "cand"], ("train.learning_rate", "diverged"),
         _text("t.jsonl", _jsonl([{"prompt": f"{i}+{i}=", "completion": str(2 * i)[::-1]} for i in range(10, 30)]))),
    # --- flywheel run -----------------------------------------------------------------------------------------------
    Case("run with a prompt ending in a newline keeps the earlier run",
         ["run", "-c", str(SMOKE), "-s", "seed.path=seed", "-s", "loop.out_dir=earlier", "-s", "data.prompts=p.jsonl",
          "--restart", "--no-track"], ("p.jsonl", "row 1", "field 'prompt'"),
         lambda w: (_text("p.jsonl", _jsonl([{"id": "a", "prompt": "12+34=\n"}]))(w),
                    _text("earlier/rounds/1/decision.json", '{"promote": true}\n')(w),
                    _text("earlier/state/inputs.json", '{"seed.path": "0"}\n')(w))),  # a run: --restart would delete it
    Case("run with a bad prompt file keeps the earlier run",
         ["run", "-c", str(SMOKE), "-s", "seed.path=seed", "-s", "loop.out_dir=earlier", "-s", "data.prompts=p.jsonl",
          "--restart", "--no-track"],
         ("p.jsonl", "row 2", "field 'prompt'"),
         lambda w: (_text("p.jsonl", _jsonl([PROMPTS[0], {"id": "b", "prompt": ""}]))(w),
                    _text("earlier/rounds/1/decision.json", '{"promote": true}\n')(w),
                    _text("earlier/state/inputs.json", '{"seed.path": "0"}\n')(w))),  # a run: --restart would delete it
    Case("run into a directory another run holds", ["run", "-c", str(SMOKE), "-s", "seed.path=seed",
                                                    "-s", "loop.out_dir=held", "--no-track"],
         ("held", "flywheel run", "pid"),
         lambda w: _held(w / "held")),
    Case("run into an earlier run without --resume", ["run", "-c", str(SMOKE), "-s", "seed.path=seed",
                                                      "-s", "loop.out_dir=earlier", "--no-track"],
         ("earlier", "--resume"), _text("earlier/state/inputs.json", '{"seed.path": null}')),
    Case("run with an unreachable mlflow server", ["run", "-c", str(SMOKE), "-s", "seed.path=seed",
                                                   "-s", "loop.out_dir=fresh", "-s", "tracking.uri=http://127.0.0.1:9"],
         ("http://127.0.0.1:9", "MLflow")),
    Case("run with a missing seed", ["run", "-c", str(SMOKE), "-s", "seed.path=nowhere", "--no-track"],
         ("nowhere", "seed")),
    # --- Kubeflow commands ------------------------------------------------------------------------------------------
    Case("pipeline bad cron", ["pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "61 * * * *"],
         ("--cron", "minute")),
    Case("pipeline too many rounds", ["pipeline", "compile", "--rounds", "50", "--out-dir", "kfp"],
         ("--rounds", "flywheel-round")),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts and p.name != "mlflow.db"}


def _held(root: Path) -> None:
    """Another run's hold on ``root``: its lock, taken by this process and kept until it exits."""
    from flywheel.run_lock import RunLock

    RunLock(root).__enter__()


@pytest.fixture(scope="module")
def seed_dir(tiny_seed) -> Path:
    return tiny_seed


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, seed_dir, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(seed_dir, work / "seed")
    io.write_rows(work / "eval.parquet", [{**p, "id": f"e{p['id']}", "answer": "1"} for p in PROMPTS], schemas.PROMPTS)
    if case.setup:
        case.setup(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    before = _snapshot(work)
    code = main(case.args)  # an exception escaping here is a traceback for the user
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("flywheel: error: "), err
    for needle in case.needles:
        assert needle in err[0], err[0]
    assert _snapshot(work) == before, "a failed command changed its inputs or left outputs behind"


def test_the_suite_is_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


def test_the_embedded_tokenizer_refuses_characters_it_cannot_read(seed_dir):
    """It would map them to padding and silently change the prompt (any other tokenizer has its own fallback)."""
    from transformers import AutoTokenizer

    from flywheel.errors import InputError
    from flywheel.modeling import check_alphabet, member_dirs

    tokenizer = AutoTokenizer.from_pretrained(member_dirs(seed_dir)[0])
    check_alphabet(tokenizer, ["12+34=", "0+0="])
    with pytest.raises(InputError) as error:
        check_alphabet(tokenizer, ["12+34=", "12*34="])
    assert str(error.value) == ("prompt: '12*34=' has characters the embedded model cannot read: '*' (its alphabet: "
                                "'+0123456789='; model.alphabet sets it when a seed is trained)")


def test_a_prepare_that_fails_in_the_seeds_evaluation_keeps_the_earlier_round_zero(seed_dir, tmp_path, monkeypatch,
                                                                                     capsys):
    """prepare publishes the eval set, the champion, the pool and the scores together: Ctrl-C during the
    evaluation must not leave a new eval set beside the earlier scores."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(seed_dir, tmp_path / "seed")
    command = ["prepare", "-c", str(SMOKE), "-s", "seed.path=seed", "--root", "loop", "-q"]
    assert main(command) == 0
    before = _snapshot(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C does in the middle of the evaluation

    monkeypatch.setattr("flywheel.loop.evaluate_model", interrupted)
    assert main([*command, "-s", "evaluate.per_bucket=3"]) == 130  # another eval set
    assert _snapshot(tmp_path) == before
