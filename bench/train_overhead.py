"""What the training stage costs over a bare PyTorch loop on the same model, batch, precision and threads.

A round's training (``train.method: sft``) goes through TRL's SFTTrainer. This times, in one run, each arm in a
fresh process at fixed threads, alternating arms ``--repeats`` times:

  flywheel  ``stages.train.train_sft``: what a round runs (trainer set-up, tokenisation, the loop)
  bare      the same steps by hand: tokenise prompt + completion (loss on the completion only), pad each batch
            to its longest row, AdamW at the same learning rate and schedule, gradient clipping at 1.0

Both train the shipped seed (``seed.path``) in fp32 on ``--rows`` rows of the first new length (6-digit sums with
their answers as completions, as curate would keep them). Each prints its wall time from a loaded model to a
trained one, set-up included, and its loop's time alone; the ratio of the walls is the figure issue 31 asks for.

    python bench/train_overhead.py                       # 150 steps, 2 repeats, 2 threads
    python bench/train_overhead.py --steps 60 --repeats 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ARMS = ("flywheel", "bare")


def training_rows(config, count: int) -> list[dict]:
    """Curated-looking rows: 6-digit sums with their true answers as the completion."""
    from flywheel.tasks import load_task

    task = load_task(config.task)
    prompts = task.make_prompts(bucket=config.prompts.start_bucket, count=count, seed=0, id_prefix="t")
    return [{**p, "completion": p["answer"], "round": 1} for p in prompts]


def run_flywheel(model, tokenizer, rows, config, task) -> float:
    """The stage's own call; returns the seconds its loop took (TrainerOutput's clock)."""
    from dataclasses import replace

    from flywheel.stages.train import TrainerSettings, train_sft

    settings = replace(TrainerSettings.of(config.train), precision="fp32", gradient_checkpointing=False)
    _, metrics = train_sft(model, tokenizer, rows, settings, seed=0, progress=False, task=task)
    return metrics["train_seconds"]


def run_bare(model, tokenizer, rows, config, task) -> float:
    """The same training by hand; returns the loop's seconds."""
    import torch

    from flywheel.tasks.base import render_prompt

    t = config.train
    examples = []
    for row in rows:
        prompt = tokenizer(render_prompt(task, row["prompt"], tokenizer))["input_ids"]
        completion = tokenizer(row["completion"])["input_ids"] + [tokenizer.eos_token_id]
        examples.append((prompt + completion, [-100] * len(prompt) + completion))
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=0.0)
    warmup = int(t.warmup_ratio * t.steps)

    def cosine_with_warmup(step: int) -> float:  # train.scheduler's default, 'cosine'
        if step < warmup:
            return step / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, t.steps - warmup)))

    assert t.scheduler == "cosine", "the bare loop writes the cosine schedule only"
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup)
    pad = tokenizer.pad_token_id
    order: list[int] = []
    model.train()
    start = time.perf_counter()
    for _ in range(t.steps):
        if len(order) < t.batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        batch = [examples[i] for i in order[:t.batch_size]]
        del order[:t.batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def child(arm: str, steps: int, rows: int, config_path: str) -> dict:
    """One arm in this process (threads already pinned by the parent's environment)."""
    import torch

    from flywheel.console import quiet_libraries
    from flywheel.config import load_config
    from flywheel.modeling import load_member, member_dirs
    from flywheel.tasks import load_task

    quiet_libraries()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    config = load_config(config_path, [f"train.steps={steps}"])
    task = load_task(config.task)
    data = training_rows(config, rows)
    model, tokenizer = load_member(member_dirs(ROOT / config.seed.path)[0], device="cpu")
    torch.manual_seed(0)
    start = time.perf_counter()
    loop = (run_flywheel if arm == "flywheel" else run_bare)(model, tokenizer, data, config, task)
    return {"arm": arm, "wall_s": time.perf_counter() - start, "loop_s": loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rows", type=int, default=3000, help="training rows (a round's new prompts)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.rows, args.config)))
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for _ in range(args.repeats):
        for arm in ARMS:
            out = subprocess.run([sys.executable, __file__, "--child", arm, "--steps", str(args.steps), "--rows",
                                  str(args.rows), "--config", args.config], env=env, capture_output=True, text=True,
                                 check=True)
            results[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU")
    print(f"{cpu}; {args.threads} threads; {args.steps} steps of batch 64 on {args.rows} rows; "
          f"best of {args.repeats} fresh processes per arm")
    print(f"{'arm':10} {'wall s':>8} {'loop s':>8} {'ms/step':>8}")
    best = {arm: min(runs, key=lambda r: r["wall_s"]) for arm, runs in results.items()}
    for arm in ARMS:
        print(f"{arm:10} {best[arm]['wall_s']:8.2f} {best[arm]['loop_s']:8.2f} "
              f"{1000 * best[arm]['loop_s'] / args.steps:8.1f}")
    for arm in ARMS:  # every run, to show the spread on a shared machine
        print(f"  {arm} walls: " + ", ".join(f"{r['wall_s']:.2f}" for r in results[arm])
              + "; loops: " + ", ".join(f"{r['loop_s']:.2f}" for r in results[arm]))
    walls = {arm: statistics.median(r["wall_s"] for r in runs) for arm, runs in results.items()}
    print(f"ratio flywheel/bare: {best['flywheel']['wall_s'] / best['bare']['wall_s']:.3f} (best walls), "
          f"{walls['flywheel'] / walls['bare']:.3f} (median walls), "
          f"{best['flywheel']['loop_s'] / best['bare']['loop_s']:.3f} (loops alone)")


if __name__ == "__main__":
    main()
