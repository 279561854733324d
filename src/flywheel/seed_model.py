"""The seed: round 0's champion, the one place labels are used for training.

Trains ``seed.members`` freshly initialised models (different init seeds, different
data orders) on labeled problems of buckets ``min_bucket .. max_bucket`` and saves
them as one committee directory. ``make seed`` runs this; the demo ships its output.
"""

from __future__ import annotations

import random
from pathlib import Path

from flywheel import io
from flywheel.config import FlywheelConfig
from flywheel.modeling import build_tiny_model, count_parameters, write_model_meta
from flywheel.rng import derive_seed
from flywheel.stages.train import TrainerSettings, sft


def labeled_rows(task, config: FlywheelConfig) -> list[dict]:
    seed = config.seed
    buckets = list(range(seed.min_bucket, seed.max_bucket + 1))
    rows = []
    for bucket in buckets:
        count = seed.examples // len(buckets)
        for row in task.make_prompts(bucket=bucket, count=count, seed=derive_seed("seed-data", bucket) % 10**6,
                                     id_prefix="seed-", mixed=seed.mixed):
            rows.append({"prompt": row["prompt"], "completion": row["answer"]})
    random.Random(0).shuffle(rows)
    return rows


def train_seed(config: FlywheelConfig, *, task, out_dir: Path | None = None, device: str = "cpu",
               progress: bool = False) -> dict:
    out_dir = Path(out_dir or config.seed.path)
    rows = labeled_rows(task, config)
    results = []
    settings = TrainerSettings(steps=config.seed.steps, batch_size=config.seed.batch_size,
                               learning_rate=config.seed.learning_rate, warmup_ratio=0.05, scheduler="cosine")
    with io.atomic_dir(out_dir) as tmp:
        for member in range(config.seed.members):
            member_seed = derive_seed("seed-member", member) % 2**31
            model, tokenizer = build_tiny_model(config.model, seed=member_seed)
            model.to(device)
            metrics = sft(model, tokenizer, rows, settings, seed=member_seed, progress=progress)
            model.save_pretrained(tmp / f"member-{member}")
            tokenizer.save_pretrained(tmp / f"member-{member}")
            results.append(metrics)
        write_model_meta(tmp, {
            "members": [f"member-{i}" for i in range(config.seed.members)],
            "round": 0,
            "format": "full",
            "parameters_per_member": count_parameters(model),
            "labeled_buckets": [config.seed.min_bucket, config.seed.max_bucket],
            "mixed_lengths": config.seed.mixed,
            "curriculum_bucket": config.seed.max_bucket,
            "train": {"steps": config.seed.steps, "batch_size": config.seed.batch_size,
                      "learning_rate": config.seed.learning_rate, "examples": len(rows)},
        })
    return {"members": len(results), "train_loss": [r["train_loss"] for r in results],
            "train_seconds": sum(r["train_seconds"] for r in results), "path": str(out_dir)}
