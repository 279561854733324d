"""``train.method=dpo``: DPOTrainer on (prompt, chosen, rejected) pairs from the vote; the reference model is the
init model."""

from __future__ import annotations

import tempfile

from flywheel.config import TrainConfig
from flywheel.stages.train.trainer import TrainerSettings, fit_trainer, trainer_args
from flywheel.tasks.base import sft_row


def _preference_row(task, row: dict, tokenizer) -> dict:
    """A DPO row shown as generation showed the prompt (conversational for chat tasks, like ``sft_row``)."""
    if task is None:
        return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
    chosen, rejected = (sft_row(task, row["prompt"], row[k], tokenizer) for k in ("chosen", "rejected"))
    return {"prompt": chosen["prompt"], "chosen": chosen["completion"], "rejected": rejected["completion"]}


def train_dpo(model, ref_model, tokenizer, rows: list[dict], *, config: TrainConfig, seed: int, progress: bool,
              peft_config=None, task=None) -> tuple:
    """DPOTrainer on (prompt, chosen, rejected) rows against ``ref_model`` (None with LoRA: adapters off)."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_list([_preference_row(task, r, tokenizer) for r in rows])
    with tempfile.TemporaryDirectory(prefix="flywheel-dpo-") as scratch:
        args = DPOConfig(beta=config.dpo.beta, loss_type=[config.dpo.loss_type], **trainer_args(
            TrainerSettings.of(config), seed=seed, progress=progress, device_type=model.device.type, scratch=scratch))
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config)
        metrics = fit_trainer(trainer, steps=config.steps, rows=len(rows), progress=progress)
    return trainer.accelerator.unwrap_model(trainer.model), metrics
