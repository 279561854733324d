"""Benchmark: how right the vote's labels are, by `generate.views` and vote-share threshold, from one model.

    python bench/label_quality.py --model runs/default/rounds/1/champion --bucket 7
    python bench/label_quality.py --model seed/default --bucket 6 --views 1 2 8 --prompts 1000

Draws a round's worth of unlabeled prompts of one digit length (the default task, mixed shapes, as
`prompts.*` makes them), samples `--samples` completions per prompt once for each `--views` value,
votes, drops majorities the task's format filter rejects (as `curate` does), and prints the precision
of the majority answers kept against the hidden truth and the share of prompts kept (yield) at each
threshold, then the precision of the labels kept at `--by-shape` by
problem shape: both operands of the full length with a carry out of the top digit (`n+n carry`),
without one (`n+n`), or one operand shorter (`mixed`). This is the audit `curate` writes each round
(`curation.json`), run on the same champion for several settings; it picks `generate.views` and
`curate.min_vote_share`. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter


SHAPES = ("mixed", "n+n", "n+n carry")


def shape(prompt: dict) -> str:
    a, b = prompt["prompt"].rstrip("=").split("+")
    if len(a) != len(b):
        return "mixed"
    return "n+n carry" if len(prompt["answer"]) > len(a) else "n+n"


def _precision(row: dict) -> str:
    """An audit row's precision, or "-" where it kept nothing."""
    return "-" if row["precision"] is None else f"{row['precision']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (a round's champion, the seed)")
    parser.add_argument("--bucket", type=int, required=True, help="digit length of the prompts")
    parser.add_argument("--prompts", type=int, default=600)
    parser.add_argument("--samples", type=int, default=8, help="K, samples per prompt")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.75, 0.9, 1.0])
    parser.add_argument("--by-shape", type=float, default=0.6, help="threshold of the by-shape table")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=12345, help="prompt seed (the demo's rounds use 1000 r + 1)")
    args = parser.parse_args()

    from flywheel.config import CurateConfig, GenerateConfig
    from flywheel.generation import HFBackend
    from flywheel.modeling import load_member, member_dirs
    from flywheel.stages.curate.rules import prompt_reason
    from flywheel.stages.generate import generate
    from flywheel.stages.vote import audit, vote
    from flywheel.tasks import ReversedAddition

    task = ReversedAddition()
    prompts = task.make_prompts(bucket=args.bucket, count=args.prompts, seed=args.seed, id_prefix="bench-", mixed=True)
    truth = {p["id"]: p["answer"] for p in prompts}
    by_id = {p["id"]: p for p in prompts}
    shape_of = {p["id"]: shape(p) for p in prompts}
    shapes = Counter(shape_of.values())
    backends = [HFBackend(*load_member(path)) for path in member_dirs(args.model)]
    print(f"{args.prompts} prompts of {args.bucket} digits ({dict(shapes)}), {len(backends)} member(s), "
          f"K={args.samples}, temperature {args.temperature}")
    print("views  " + "  ".join(f">={t:<4} prec/yield" for t in args.thresholds) + "   seconds")
    by_shape = {}
    for views in args.views:
        config = GenerateConfig(samples_per_prompt=args.samples, temperature=args.temperature, max_new_tokens=24,
                                views=views)
        start = time.perf_counter()
        samples = generate(prompts, backends, config, task=task, round_index=1)
        seconds = time.perf_counter() - start
        # What curate keeps before its vote-share filter (a majority, past the task's format filter).
        votes = [v for v in vote(samples)[0]
                 if prompt_reason(by_id[v["prompt_id"]], v, CurateConfig(), task, set(), check_share=False) is None]
        cells = []
        for row in audit(votes, truth, task.is_correct, args.thresholds):
            cells.append(f"{_precision(row):>5}/{row['kept'] / len(prompts):.2f}      ")
        print(f"{views:>5}  " + "  ".join(cells) + f" {seconds:6.1f}")
        by_shape[views] = {name: audit([v for v in votes if shape_of[v["prompt_id"]] == name], truth,
                                       task.is_correct, [args.by_shape])[0] for name in SHAPES}
    print(f"\nkept at >= {args.by_shape}: precision (labels kept / prompts of that shape)")
    for views, rows in by_shape.items():
        print(f"views {views:>2}: " + "   ".join(
            f"{name} {_precision(row)} "
            f"({row['kept']}/{shapes[name]})" for name, row in rows.items()))


if __name__ == "__main__":
    main()
