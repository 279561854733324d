"""Benchmark: wall time and peak memory of `flywheel vote` and `flywheel curate` on a synthetic round.

    python bench/vote_curate.py --prompts 125000 --samples-per-prompt 8      # 1M samples
    python bench/vote_curate.py --prompts 1250000 --samples-per-prompt 8     # 10M samples
    python bench/vote_curate.py --prompts 125000 --samples-per-prompt 8 --method weighted

The round is reversed-digit addition (6 digits, one model): per prompt, each sample answers the truth with
probability 0.6, else one of three wrong sums, and 3% of the samples have no answer. Each stage runs as the
CLI command `dvc repro` runs (its own process: parsing, reading, validating, voting or curating, writing),
timed from outside; peak memory is the process's maximum resident set (os.wait4). Prints figures; asserts
nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic_round(here: Path, *, prompts: int, samples_per_prompt: int, seed: int = 0) -> None:
    """prompts.parquet, audit.parquet, samples.parquet of one round, and an eval set, built column by column."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flywheel.layout import FILES
    from flywheel.schemas import PROMPTS, SAMPLES
    from flywheel.tasks import load_task

    rng = np.random.default_rng(seed)
    a = rng.integers(100_000, 1_000_000, prompts)
    b = rng.integers(100_000, 1_000_000, prompts)
    ids = [f"r1-d6-{i:07d}" for i in range(prompts)]
    questions = [f"{str(x)[::-1]}+{str(y)[::-1]}=" for x, y in zip(a.tolist(), b.tolist())]
    truth = a + b
    # Four candidate answers per prompt (the truth, then three wrong sums), reversed as the task writes them.
    offsets = np.array([0, 1, 10, 100_000])
    candidates = [str(int(t + o))[::-1] for t in truth.tolist() for o in offsets.tolist()]
    here.mkdir(parents=True, exist_ok=True)
    prompt_table = pa.table({"id": ids, "prompt": questions, "bucket": ["6"] * prompts,
                             "meta": ['{"digits": 6}'] * prompts, "answer": pa.nulls(prompts, pa.string())},
                            schema=PROMPTS.arrow())
    pq.write_table(prompt_table, here / FILES.prompts)
    pq.write_table(prompt_table.set_column(4, "answer", pa.array(candidates[::4])), here / FILES.audit)
    total = prompts * samples_per_prompt
    prompt_index = np.repeat(np.arange(prompts), samples_per_prompt)
    choice = rng.choice(4, size=total, p=[0.6, 0.2, 0.1, 0.1])
    answers = pa.array(candidates).take(pa.array(prompt_index * 4 + choice))
    missing = rng.random(total) < 0.03
    answers = pa.compute.if_else(pa.array(missing), pa.nulls(total, pa.string()), answers)
    completions = pa.compute.if_else(pa.array(missing), pa.scalar("?"), answers)
    samples = pa.table({
        "prompt_id": pa.array(ids).take(pa.array(prompt_index)),
        "sample_idx": pa.array(np.tile(np.arange(samples_per_prompt), prompts)),
        "voter": pa.array(np.zeros(total, dtype=np.int64)),
        "completion": completions, "answer": answers,
        "n_tokens": pa.array(np.full(total, 8, dtype=np.int64)),
        "logprob": pa.array(-rng.gamma(2.0, 1.0, total)),
        "search_tokens": pa.nulls(total, pa.int64()),  # sampled, not searched
    }, schema=SAMPLES.arrow())
    pq.write_table(samples, here / FILES.samples, row_group_size=1 << 20)
    eval_rows = load_task("addition").make_prompts(bucket=6, count=1000, seed=99, id_prefix="eval-")
    pq.write_table(pa.Table.from_pylist(eval_rows, schema=PROMPTS.arrow()), here.parent.parent / "eval.parquet")


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of one process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


REFERENCE_VOTE = """
from pathlib import Path
from flywheel import io, schemas
from flywheel.config import load_config
from flywheel.stages.vote import reliability_weights, sample_weights, vote_summary, voter_reliability
from reference_rows import vote_rows as vote
from flywheel.tasks import load_task
config, task = load_config("{config}", ["vote.method={method}"]), load_task("addition")
rows = io.read_rows("{samples}", schemas.SAMPLES)
weights = {{"majority": lambda: None, "weighted": lambda: sample_weights(rows),
           "reliability": lambda: reliability_weights(rows, voter_reliability(rows, task.vote_key))}}["{method}"]()
votes, agreement = vote(rows, min_answer_share=config.vote.min_answer_share, weights=weights, key=task.vote_key)
summary = vote_summary(votes)
io.write_rows(Path("{out}") / "votes.rows.parquet", votes, schemas.VOTES)
io.write_rows(Path("{out}") / "agreement.rows.parquet", agreement, schemas.AGREEMENT)
"""
REFERENCE_CURATE = """
from pathlib import Path
from flywheel.config import load_config
from reference_rows import run_curate_rows
from flywheel.tasks import load_task
here = Path("{here}")
run_curate_rows(here, load_config("{config}").curate, task=load_task("addition"), eval_path=Path("{eval}"),
                round_index=1, previous_pool=None, audit_path=here / "audit.parquet")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=125_000)
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--method", default="majority", help="vote.method (majority, weighted, reliability)")
    parser.add_argument("-c", "--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--stages", default="vote,curate", help="which to run (curate reads vote's output)")
    parser.add_argument("--reference", action="store_true",
                        help="also run the row implementations the columnar ones replaced (tests compare the two)")
    args = parser.parse_args()

    from flywheel.layout import RoundLayout, RunLayout

    with tempfile.TemporaryDirectory(prefix="flywheel-vote-bench-") as scratch:
        this = RoundLayout(Path(scratch), 1)
        start = time.perf_counter()
        synthetic_round(this.dir, prompts=args.prompts, samples_per_prompt=args.samples_per_prompt)
        print(f"synthetic round: {args.prompts} prompts x {args.samples_per_prompt} = "
              f"{args.prompts * args.samples_per_prompt:,} samples, {this.samples.stat().st_size / 2**20:.0f} MiB "
              f"Parquet (built in {time.perf_counter() - start:.1f} s)")
        flywheel = [sys.executable, "-m", "flywheel.cli"]
        common = ["-c", args.config, "-s", f"vote.method={args.method}", "-q"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
        commands = {
            "vote": ["vote", *common, "--samples", str(this.samples), "--out-dir", str(this.dir),
                     "--audit", str(this.audit)],
            "curate": ["curate", *common, "--round", "1", "--round-dir", str(this.dir),
                       "--eval", str(RunLayout(Path(scratch)).eval_set), "--audit", str(this.audit)]}
        results = {name: timed(flywheel + commands[name], env) for name in args.stages.split(",")}
        if args.reference:
            # The same work on Python rows: the oracle the tests hold the columnar stages to
            # (tests/reference_rows.py: vote_rows, run_curate_rows), same inputs, same outputs.
            reference = {
                "vote (rows)": REFERENCE_VOTE.format(samples=this.samples, out=this.dir, config=args.config,
                                                     method=args.method),
                "curate (rows)": REFERENCE_CURATE.format(here=this.dir, config=args.config,
                                                         eval=RunLayout(Path(scratch)).eval_set)}
            for name, code in reference.items():
                if name.split()[0] in args.stages.split(","):
                    results[name] = timed([sys.executable, "-c", code], env)
        print(f"{'stage':<14} {'seconds':>8} {'peak MiB':>9}")
        for name, (seconds, mib) in results.items():
            print(f"{name:<14} {seconds:>8.1f} {mib:>9.0f}")
        columnar = [results[name] for name in ("vote", "curate") if name in results]
        if len(columnar) > 1:
            print(f"{'vote+curate':<14} {sum(r[0] for r in columnar):>8.1f} {max(r[1] for r in columnar):>9.0f}")


if __name__ == "__main__":
    main()
