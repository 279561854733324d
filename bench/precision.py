"""Seconds per SFT step of the default recipe by training precision and gradient checkpointing.

Why it exists: TRL's SFTConfig defaults to bf16=True and gradient_checkpointing=True. On a CPU
without AVX512-BF16/AMX, bf16 is emulated; this prints what each setting costs here, and which
bf16 instructions the CPU has. The recipe's default is train.precision=auto (fp32 on CPU) and
train.gradient_checkpointing=false.

    python bench/precision.py                 # 60 steps of configs/default.yaml's train section
    python bench/precision.py --steps 20 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def cpu_bf16_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return ", ".join(found) or "none (bf16 is emulated)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the machine's cores)")
    parser.add_argument("--rows", type=int, default=4000, help="training rows (6-digit sums with their labels)")
    args = parser.parse_args()

    import torch

    from flywheel.cli import _quiet_libraries
    from flywheel.config import load_config
    from flywheel.modeling import member_dirs
    from flywheel.stages.train import train_member
    from flywheel.tasks import load_task

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    _quiet_libraries()
    config = load_config(args.config, [f"train.steps={args.steps}"])
    task = load_task(config.task)
    rows = [{**r, "completion": r["answer"], "round": 1}
            for r in task.make_prompts(bucket=6, count=args.rows, seed=7, id_prefix="b-", mixed=True)]
    seed = member_dirs(ROOT / config.seed.path)[0]
    print(f"CPU bf16 instructions: {cpu_bf16_flags()}; torch threads: {torch.get_num_threads()}; "
          f"{args.steps} SFT steps of {config.train.batch_size} sequences")
    # Warm-up, not reported: the first trainer in a process pays one-off costs (kernels, tokenisation).
    warm = load_config(args.config, [f"train.steps={min(5, args.steps)}", "train.precision=fp32"]).train
    train_member(seed, rows, warm, task=task, seed=0, device="cpu", progress=False)
    print(f"{'precision':<10} {'checkpointing':<14} {'seconds':>8} {'s/step':>7} {'final loss':>11}")
    for precision, checkpointing in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
        settings = load_config(args.config, [f"train.steps={args.steps}", f"train.precision={precision}",
                                             f"train.gradient_checkpointing={str(checkpointing).lower()}"]).train
        start = time.perf_counter()
        _, _, metrics = train_member(seed, rows, settings, task=task, seed=0, device="cpu", progress=False)
        seconds = time.perf_counter() - start
        note = "   (TRL's own default)" if (precision, checkpointing) == ("bf16", True) else \
            "   (train.precision=auto on CPU)" if (precision, checkpointing) == ("fp32", False) else ""
        print(f"{precision:<10} {str(checkpointing):<14} {seconds:>8.1f} {seconds / args.steps:>7.3f} "
              f"{metrics['final_loss']:>11.4f}{note}")


if __name__ == "__main__":
    main()
