"""What pinning the CPU kernels costs, and whether it gives the same numbers on another CPU.

flywheel pins MKL's and ATen's AVX2 paths on import (``flywheel.cpu_kernels``) so that every x86 CPU of the
machine kind computes the same bits. This times a bare training loop of the default model (the demo's model,
batch and fp32, ``--steps`` AdamW steps on 6-digit sums, fixed threads) under each setting, in a fresh process
each, and prints a digest of the trained weights and of a greedy decode. Run it on two CPUs: where their
digests for ``flywheel`` (the pinned default) agree, the CPUs compute the same numbers.

    python bench/cpu_kernels.py                    # 100 steps, 2 repeats, 2 threads
    python bench/cpu_kernels.py --steps 30 --repeats 1 --threads 1
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

# name -> the environment a run gets (on top of a clean copy without the pinned variables)
SETTINGS = {
    "native": {"FLYWHEEL_CPU_KERNELS": "native"},  # each library's own choice for this CPU
    "flywheel": {},  # what `import flywheel` sets: MKL_CBWR=AVX2, ATEN_CPU_CAPABILITY=avx2
    "mkl-avx2-only": {"FLYWHEEL_CPU_KERNELS": "native", "MKL_CBWR": "AVX2"},
    "mkl-compatible": {"FLYWHEEL_CPU_KERNELS": "native", "MKL_CBWR": "COMPATIBLE"},
}


def child(steps: int, threads: int) -> dict:
    """One timed loop in this process (its environment already set); returns seconds and digests."""
    import hashlib

    import flywheel  # noqa: F401  (pins the kernels unless FLYWHEEL_CPU_KERNELS=native)
    import torch

    from flywheel.config import load_config
    from flywheel.modeling import build_tiny_model
    from flywheel.tasks import load_task

    torch.set_num_threads(threads)
    config = load_config(ROOT / "configs" / "default.yaml")
    model, tokenizer = build_tiny_model(config.model, seed=0)
    task = load_task("addition")
    rows = task.make_prompts(bucket=6, count=config.train.batch_size * 8, seed=0, id_prefix="b")
    texts = [r["prompt"] + r["answer"] + tokenizer.eos_token for r in rows]
    batches = [tokenizer(texts[i:i + config.train.batch_size], return_tensors="pt", padding=True)
               for i in range(0, len(texts), config.train.batch_size)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.learning_rate)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        batch = batches[step % len(batches)]
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    weights = hashlib.md5()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    model.eval()
    prompts = tokenizer([r["prompt"] for r in rows[:64]], return_tensors="pt", padding=True)
    with torch.no_grad():
        decoded = model.generate(**prompts, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id)
    return {"seconds": seconds, "loss": float(loss), "weights_md5": weights.hexdigest(),
            "decode_md5": hashlib.md5(decoded.numpy().tobytes()).hexdigest(),
            "aten": torch.backends.cpu.get_cpu_capability(), "MKL_CBWR": os.environ.get("MKL_CBWR", "")}


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting (the table shows the fastest)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.threads)))
        return
    base = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "FLYWHEEL_CPU_KERNELS")}
    base.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"CPU: {cpu_name()}; {args.steps} steps of the default model and batch (configs/default.yaml), fp32, "
          f"{args.threads} threads, fastest of {args.repeats}")
    print(f"{'setting':<16} {'seconds':>8} {'x native':>9} {'aten':>6} {'MKL_CBWR':>11}  weights md5 / decode md5")
    native = None
    for name in args.settings.split(","):
        runs = []
        for _ in range(args.repeats):
            done = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps),
                                   "--threads", str(args.threads)], env={**base, **SETTINGS[name]},
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        best = min(runs, key=lambda r: r["seconds"])
        assert len({(r["weights_md5"], r["decode_md5"]) for r in runs}) == 1, f"{name}: runs differ"
        native = native or (best["seconds"] if name == "native" else None)
        ratio = f"{best['seconds'] / native:.2f}" if native else "-"
        print(f"{name:<16} {best['seconds']:>8.2f} {ratio:>9} {best['aten']:>6} {best['MKL_CBWR'] or 'unset':>11}  "
              f"{best['weights_md5'][:12]} / {best['decode_md5'][:12]}")


if __name__ == "__main__":
    main()
