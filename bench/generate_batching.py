"""Benchmark: generation tokens/s by batching policy, on the prompts of a round of mixed lengths.

    python bench/generate_batching.py                          # the shipped seed, digits 1-10, K=8
    python bench/generate_batching.py --model <dir> --repeats 5

Each policy samples the same jobs (prompt, seed) with ``HFBackend``: fixed numbers of rows per
generate() call (``batch_tokens`` off), and token budgets (``generate.batch_tokens``: rows x (longest
prompt + max_new_tokens) per call). Jobs are always sorted by prompt length, so what differs is how
many sequences share a call. Also printed: the share of computed positions that are padding or that
run past a row's end-of-sequence (the waste a batch of mixed lengths pays), and the peak resident
memory. Samples are the same under every policy (each row has its own seed). The median of
``--repeats`` runs; prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def jobs_of(prompts: list[str], samples: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2**31) for _ in range(samples)] for _ in prompts]


def calls_and_waste(backend, prompt_lengths: list[int], results, max_new_tokens: int) -> tuple[int, float]:
    """(generate() calls, waste) of a policy: the share of the positions it computes (rows x (longest prompt +
    steps run)) that hold neither a prompt token nor a generated token: padding, and steps after a row's end
    while others still run. ``prompt_lengths``: each prompt's length in tokens."""
    from flywheel.generation import token_batches

    jobs = sorted((length, completion.n_tokens) for length, row in zip(prompt_lengths, results) for completion in row)
    batches = token_batches([length for length, _ in jobs], max_new_tokens=max_new_tokens,
                            batch_size=backend.batch_size, batch_tokens=backend.batch_tokens)
    computed = useful = 0
    for batch in batches:
        rows = jobs[batch.start:batch.stop]
        width = max(length for length, _ in rows) + max(n for _, n in rows)
        computed += len(rows) * width
        useful += sum(length + n for length, n in rows)
    return len(batches), 1 - useful / computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "seed" / "default"), help="a model directory (its first member)")
    parser.add_argument("--buckets", default="1-10", help="digit lengths of the prompts, e.g. 1-10")
    parser.add_argument("--per-bucket", type=int, default=100)
    parser.add_argument("--samples", type=int, default=8, help="K: samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--rows", default="128,512,2048", help="fixed rows per call to compare")
    parser.add_argument("--budgets", default="4096,8192,16384,32768,65536", help="batch_tokens to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from flywheel.generation import HFBackend
    from flywheel.modeling import load_member, member_dirs
    from flywheel.tasks import load_task

    torch.set_num_threads(args.threads)
    task = load_task("addition")
    low, high = (int(x) for x in args.buckets.split("-"))
    prompts = [p["prompt"] for bucket in range(low, high + 1)
               for p in task.make_prompts(bucket=bucket, count=args.per_bucket, seed=bucket, id_prefix=f"b{bucket}-")]
    random.Random(0).shuffle(prompts)
    seeds = jobs_of(prompts, args.samples, seed=1)
    model, tokenizer = load_member(member_dirs(args.model)[0], device="cpu", precision="fp32")
    prompt_lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    policies = [(f"{rows} rows", HFBackend(model, tokenizer, batch_size=rows, batch_tokens=2**62))
                for rows in (int(r) for r in args.rows.split(","))]
    policies += [(f"{budget} tokens", HFBackend(model, tokenizer, batch_size=1 << 20, batch_tokens=budget))
                 for budget in (int(b) for b in args.budgets.split(","))]
    print(f"{len(prompts)} prompts (digits {args.buckets}) x K={args.samples}, max_new_tokens {args.max_new_tokens}, "
          f"model {args.model}, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"{'policy':<14} {'calls':>6} {'seconds':>8} {'tokens/s':>9} {'waste':>6}")
    reference = None
    for name, backend in policies:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results = backend.generate(prompts, seeds, temperature=0.7, max_new_tokens=args.max_new_tokens)
            times.append(time.perf_counter() - start)
        texts = [[c.text for c in row] for row in results]
        reference = reference or texts
        same = sum(a == b for x, y in zip(texts, reference) for a, b in zip(x, y)) / sum(map(len, texts))
        tokens = sum(c.n_tokens for row in results for c in row)
        calls, wasted = calls_and_waste(backend, prompt_lengths, results, args.max_new_tokens)
        seconds = statistics.median(times)
        print(f"{name:<14} {calls:>6} {seconds:>8.2f} {tokens / seconds:>9,.0f} {wasted:>6.1%}"
              + ("" if same == 1 else f"  ({same:.2%} of samples as the first policy's)"))
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
