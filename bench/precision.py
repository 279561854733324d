"""Seconds per SFT step of the default recipe by training precision and gradient checkpointing.

Why it exists: TRL's SFTConfig defaults to bf16=True and gradient_checkpointing=True. On a CPU
without AVX512-BF16/AMX, bf16 is emulated; this prints what each setting costs here, and which
bf16 instructions the CPU has. The recipe's default is train.precision=auto (fp32 on CPU) and
train.gradient_checkpointing=false.

    python bench/precision.py                 # 60 steps of configs/default.yaml's train section
    python bench/precision.py --steps 20 --threads 1
    python bench/precision.py --config configs/gpu-scale.yaml --device cuda --steps 200

A config whose seed is not trained yet is measured on a freshly initialised model of its size (the same
seconds per step; the losses are a fresh model's).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
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
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    args = parser.parse_args()

    import torch

    from flywheel.console import quiet_libraries
    from flywheel.config import load_config
    from flywheel.modeling import build_tiny_model, count_parameters, member_dirs
    from flywheel.precision import resolve_precision
    from flywheel.stages.train import train_member
    from flywheel.tasks import load_task

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    quiet_libraries()
    config = load_config(args.config, [f"train.steps={args.steps}"])
    task = load_task(config.task)
    rows = [{**r, "completion": r["answer"], "round": 1}
            for r in task.make_prompts(bucket=6, count=args.rows, seed=7, id_prefix="b-", mixed=True)]
    seed = ROOT / config.seed.path
    if not (seed / "flywheel-model.json").is_file():  # not trained yet: a fresh model of the config's size
        model, tokenizer = build_tiny_model(config.model, seed=0)
        seed = Path(tempfile.mkdtemp(prefix="flywheel-precision-"))
        model.save_pretrained(seed)
        tokenizer.save_pretrained(seed)
        print(f"{config.seed.path} not trained yet: a fresh model of its size ({count_parameters(model):,} "
              f"parameters)")
    seed = member_dirs(seed)[0]
    hardware = (f"GPU: {torch.cuda.get_device_name()}" if args.device.startswith("cuda")
                else f"CPU bf16 instructions: {cpu_bf16_flags()}")
    print(f"{hardware}; torch threads: {torch.get_num_threads()}; "
          f"{args.steps} SFT steps of {config.train.batch_size} sequences")
    # Warm-up, not reported: the first trainer in a process pays one-off costs (kernels, tokenisation).
    warm = load_config(args.config, [f"train.steps={min(5, args.steps)}", "train.precision=fp32"]).train
    train_member(seed, rows, warm, task=task, seed=0, device=args.device, progress=False)
    auto = resolve_precision("auto", args.device)
    print(f"{'precision':<10} {'checkpointing':<14} {'seconds':>8} {'s/step':>7} {'final loss':>11}")
    for precision, checkpointing in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
        settings = load_config(args.config, [f"train.steps={args.steps}", f"train.precision={precision}",
                                             f"train.gradient_checkpointing={str(checkpointing).lower()}"]).train
        start = time.perf_counter()
        _, _, metrics = train_member(seed, rows, settings, task=task, seed=0, device=args.device, progress=False)
        seconds = time.perf_counter() - start
        note = "   (TRL's own default)" if (precision, checkpointing) == ("bf16", True) else \
            "   (train.precision=auto here)" if (precision, checkpointing) == (auto, False) else ""
        print(f"{precision:<10} {str(checkpointing):<14} {seconds:>8.1f} {seconds / args.steps:>7.3f} "
              f"{metrics['final_loss']:>11.4f}{note}")


if __name__ == "__main__":
    main()
