"""What the generate stage costs over a bare ``model.generate`` loop on the same model, batches and threads.

Each arm runs in a fresh process at fixed threads, alternating arms ``--repeats`` times:

  flywheel  ``stages.generate.generate``: what a round runs (views, seeded Gumbel sampling per sample, the
            log-probability recorder, answer extraction), one member of the shipped seed
  bare      the same prompts in the same batches (flywheel's job order and ``token_batches``) through
            ``model.generate(do_sample=True)`` and a decode, nothing else

Both run the shipped seed (``seed.path``, member 0) in fp32 on ``--prompts`` prompts of the first new length with
the default config's K samples. The ratio of the loops is the figure issue 31 asks for.

    python bench/generate_overhead.py                     # 200 prompts, 2 repeats, 2 threads
    python bench/generate_overhead.py --prompts 50 --repeats 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ARMS = ("flywheel", "bare")


def jobs_of(prompts, config, task, tokenizer):
    """flywheel's jobs: (question text, seed) per sample, rendered for the tokenizer, in its generate order."""
    from flywheel.rng import derive_seed
    from flywheel.tasks.base import render_prompt

    jobs = []
    for p in prompts:
        views = task.views(p["prompt"], min(config.views, config.samples_per_prompt))
        for v, question in enumerate(views):
            for j in range(v, config.samples_per_prompt, len(views)):
                jobs.append((render_prompt(task, question, tokenizer), derive_seed(1, p["id"], 0, j)))
    return jobs


def run_flywheel(model, tokenizer, prompts, config, task) -> tuple[float, int]:
    from flywheel.generation import HFBackend
    from flywheel.stages.generate import generate

    backend = HFBackend(model, tokenizer, batch_size=config.batch_size, batch_tokens=config.batch_tokens)
    start = time.perf_counter()
    rows = generate(prompts, [backend], config, task=task, round_index=1)
    return time.perf_counter() - start, sum(r["n_tokens"] for r in rows)


def run_bare(model, tokenizer, prompts, config, task) -> tuple[float, int]:
    import torch

    from flywheel.generation import token_batches

    jobs = jobs_of(prompts, config, task, tokenizer)
    texts = [t for t, _ in jobs]
    length = {text: len(ids) for text, ids in zip(texts, tokenizer(texts)["input_ids"])}
    order = sorted(range(len(jobs)), key=lambda i: (length[jobs[i][0]], i))  # flywheel's sort: length, then order
    batches = token_batches([length[jobs[i][0]] for i in order], max_new_tokens=config.max_new_tokens,
                            batch_size=config.batch_size, batch_tokens=config.batch_tokens)
    torch.manual_seed(0)
    tokens = 0
    start = time.perf_counter()
    with torch.no_grad():
        for positions in batches:
            texts = [jobs[order[k]][0] for k in positions]
            encoded = tokenizer(texts, return_tensors="pt", padding=True)
            sequences = model.generate(**encoded, do_sample=True, temperature=config.temperature, top_p=None,
                                       top_k=None, max_new_tokens=config.max_new_tokens,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = sequences[:, encoded["input_ids"].shape[1]:]
            tokenizer.batch_decode(new, skip_special_tokens=True)
            tokens += int((new != tokenizer.pad_token_id).sum())
    return time.perf_counter() - start, tokens


def child(arm: str, count: int, config_path: str) -> dict:
    import torch

    from flywheel.console import quiet_libraries
    from flywheel.config import load_config
    from flywheel.modeling import load_member, member_dirs
    from flywheel.tasks import load_task

    quiet_libraries()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    config = load_config(config_path)
    task = load_task(config.task)
    prompts = task.make_prompts(bucket=config.prompts.start_bucket, count=count, seed=0, id_prefix="g")
    model, tokenizer = load_member(member_dirs(ROOT / config.seed.path)[0], device="cpu", precision="fp32")
    seconds, tokens = (run_flywheel if arm == "flywheel" else run_bare)(model, tokenizer, prompts, config.generate,
                                                                       task)
    return {"arm": arm, "loop_s": seconds, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.prompts, args.config)))
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for _ in range(args.repeats):
        for arm in ARMS:
            out = subprocess.run([sys.executable, __file__, "--child", arm, "--prompts", str(args.prompts),
                                  "--config", args.config], env=env, capture_output=True, text=True, check=True)
            results[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU")
    print(f"{cpu}; {args.threads} threads; {args.prompts} prompts; best of {args.repeats} fresh processes per arm")
    print(f"{'arm':10} {'loop s':>8} {'tokens':>8} {'tok/s':>8}")
    best = {arm: min(runs, key=lambda r: r["loop_s"]) for arm, runs in results.items()}
    for arm in ARMS:
        print(f"{arm:10} {best[arm]['loop_s']:8.2f} {best[arm]['tokens']:8d} "
              f"{best[arm]['tokens'] / best[arm]['loop_s']:8.0f}")
    per_token = {arm: best[arm]["loop_s"] / best[arm]["tokens"] for arm in ARMS}
    print(f"ratio flywheel/bare: {best['flywheel']['loop_s'] / best['bare']['loop_s']:.3f} (loops), "
          f"per token {per_token['flywheel'] / per_token['bare']:.3f}")


if __name__ == "__main__":
    main()
