"""Train: fine-tune every champion member on the curated set with TRL's SFTTrainer.

Prompt-completion rows, so SFTTrainer computes the loss on completion tokens only.
Member i of round r trains with seed ``derive_seed(train.seed, r, i)``: the members
see the data in different orders and stay independent voters. ``init='champion'``
continues from the champion (Lee et al.); ``'base'`` restarts from the seed model
each round (ReST-EM).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from flywheel import io, schemas
from flywheel.config import TrainConfig
from flywheel.modeling import load_member, member_dirs, write_model_meta
from flywheel.seeding import derive_seed
from flywheel.tasks.base import sft_row


def sft(model, tokenizer, rows: list[dict], *, steps: int, batch_size: int, learning_rate: float,
        warmup_ratio: float, scheduler: str, seed: int, progress: bool, task=None) -> dict:
    """Run SFTTrainer in place on ``model``; returns the final training metrics.

    With ``task``, rows are shown as generation showed them (``tasks.base.sft_row``: conversational
    rows for a chat task on a model with a chat template, which TRL renders itself).
    """
    import datasets
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # the map() bars of tokenisation drown the training bar
    if task is None:
        examples = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    else:
        examples = [sft_row(task, r["prompt"], r["completion"], tokenizer) for r in rows]
    dataset = datasets.Dataset.from_list(examples)
    with tempfile.TemporaryDirectory(prefix="flywheel-sft-") as scratch:
        args = SFTConfig(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            lr_scheduler_type=scheduler,
            warmup_steps=int(warmup_ratio * steps),
            weight_decay=0.0,
            seed=seed,
            data_seed=seed,
            completion_only_loss=True,
            save_strategy="no",
            report_to=[],
            logging_steps=max(1, steps // 10),
            disable_tqdm=not progress,
            use_cpu=model.device.type == "cpu",
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        if not progress:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
        start = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"train_loss": float(output.training_loss), "final_loss": float(losses[-1]) if losses else None,
            "train_seconds": seconds, "steps": steps, "rows": len(rows)}


def run_train(train_path: Path, init_dir: Path, out_dir: Path, config: TrainConfig, *, round_index: int,
              device: str = "cpu", progress: bool = False, task=None) -> dict:
    """Shell: train.parquet + the init model (champion or base) -> candidate directory (a committee)."""
    rows = io.read_rows(train_path, schemas.CURATED)
    members = member_dirs(init_dir)
    if not rows:
        # Nothing survived curation (e.g. a strict vote threshold on a hard bucket). The candidate is the
        # init model unchanged, marked untrained, and the gate declines it with that reason.
        print(f"flywheel: warning: {train_path}: no curated rows; the candidate is {init_dir} unchanged",
              file=sys.stderr)
        with io.atomic_dir(out_dir) as tmp:
            for index, member in enumerate(members):
                shutil.copytree(member, tmp / f"member-{index}", copy_function=_link_or_copy)
            write_model_meta(tmp, {"members": [f"member-{i}" for i in range(len(members))], "round": round_index,
                                   "init": str(init_dir), "format": "full", "trained": False})
        return {"train_loss": None, "train_seconds": 0.0, "train_rows": 0, "members": len(members)}
    per_member = []
    with io.atomic_dir(out_dir) as tmp:
        for index, member in enumerate(members):
            model, tokenizer = load_member(member, device=device)
            model.train()
            metrics = sft(model, tokenizer, rows, steps=config.steps, batch_size=config.batch_size,
                          learning_rate=config.learning_rate, warmup_ratio=config.warmup_ratio,
                          scheduler=config.scheduler, seed=derive_seed(config.seed, round_index, index) % 2**31,
                          progress=progress, task=task)
            target = tmp / f"member-{index}"
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)
            per_member.append(metrics)
        write_model_meta(tmp, {
            "members": [f"member-{i}" for i in range(len(members))],
            "round": round_index,
            "init": str(init_dir),
            "format": "full",  # merged full weights, not an adapter
            "trained": True,
            # The hardest bucket among this round's rows: the next round offers the one after it.
            "curriculum_bucket": _hardest_bucket(rows, round_index),
            "train": json.loads(json.dumps(config.__dict__)),
        })
    return {
        "train_loss": sum(m["train_loss"] for m in per_member) / len(per_member),
        "train_seconds": sum(m["train_seconds"] for m in per_member),
        "train_rows": len(rows),
        "members": len(members),
    }


def _hardest_bucket(rows: list[dict], round_index: int) -> int | None:
    buckets = [int(r["bucket"]) for r in rows if r.get("round") == round_index and str(r.get("bucket")).isdigit()]
    return max(buckets, default=None)


def _link_or_copy(src, dst) -> None:
    """Hard-link a model file where the filesystem allows (models are large), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_or_copy_tree(source: Path, target: Path) -> None:
    """Copy a model directory atomically, file by file with ``_link_or_copy``."""
    with io.atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)
