"""``train.method=sft``: SFTTrainer on vote-accepted (prompt, completion) rows, loss on completion tokens only
(ReST-EM / STaR with the vote as the verifier); also the seed model's training."""

from __future__ import annotations

import tempfile

from flywheel.modeling import check_alphabet
from flywheel.stages.train.trainer import TrainerSettings, fit_trainer, tokenize_processes, trainer_args
from flywheel.tasks.base import sft_row


def _sft_trainer_class():
    """TRL's SFTTrainer with the model's own loss.

    TRL 1.16 computes SFT's loss through its tiled "fused LM head" (``trl.trainer.utils.add_fused_lm_head``), which
    also computes every position's entropy and top-1 agreement for its logged metrics, with a ``.item()`` for each
    every step. flywheel reads only the loss (the candidate's metadata, MLflow's curve). The model's own loss is
    the same quantity (the mean negative log-likelihood of the completion tokens: the collator sets every other
    label to -100), so this keeps that and drops the rest: ``bench/train_overhead.py`` measures the difference."""
    from transformers import Trainer
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return ModelLossSFTTrainer


def sft_tokens(examples: list[dict], tokenizer, *, max_length: int | None) -> list[dict] | None:
    """Plain prompt-completion rows tokenised exactly as TRL's SFTTrainer prepares them (the EOS appended to the
    completion, the loss on the completion's tokens only, truncated to ``max_length`` from the end, rows left
    without a completion token dropped), in two batched tokenizer calls instead of TRL's five passes of
    ``datasets.map`` over the rows (2.5 s for 3,000 rows on 2 cores: more than a tenth of a 150-step fit).
    tests/test_methods.py holds the two equal. None for conversational rows: TRL renders those itself."""
    if not examples or not all(isinstance(e["prompt"], str) for e in examples):
        return None
    eos = tokenizer.eos_token
    completions = [c if c.endswith(eos) else c + eos for c in (e["completion"] for e in examples)]
    prompt_ids = tokenizer([e["prompt"] for e in examples])["input_ids"]
    full_ids = tokenizer([e["prompt"] + c for e, c in zip(examples, completions)])["input_ids"]
    tokens = []
    for prompt, full in zip(prompt_ids, full_ids):
        shared = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
        labels = [-100] * shared + full[shared:]  # where the two diverge the completion starts, as TRL decides
        full, labels = full[:max_length], labels[:max_length]
        if any(label != -100 for label in labels):
            tokens.append({"input_ids": full, "labels": labels})
    return tokens


def train_sft(model, tokenizer, rows: list[dict], settings: TrainerSettings, *, seed: int, progress: bool,
              peft_config=None, task=None) -> tuple:
    """SFTTrainer on prompt-completion rows (loss on completions). Returns (trained model, metrics).

    With ``task``, rows are shown as generation showed them (``tasks.base.sft_row``: conversational
    rows for a chat task on a model with a chat template, which TRL renders itself).
    """
    import datasets
    from trl import SFTConfig

    datasets.disable_progress_bars()  # the map() bars of tokenisation drown the training bar
    check_alphabet(tokenizer, (r["prompt"] + r["completion"] for r in rows), "training row")
    if task is None:
        examples = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    else:
        examples = [sft_row(task, r["prompt"], r["completion"], tokenizer) for r in rows]
    max_length = SFTConfig.max_length  # TRL's default: 1024 tokens
    tokens = sft_tokens(examples, tokenizer, max_length=max_length)
    dataset = datasets.Dataset.from_list(tokens if tokens is not None else examples)
    with tempfile.TemporaryDirectory(prefix="flywheel-sft-") as scratch:
        args = SFTConfig(completion_only_loss=True, dataset_num_proc=tokenize_processes(len(rows)),
                         max_length=max_length, dataset_kwargs={"skip_prepare_dataset": tokens is not None},
                         **trainer_args(settings, seed=seed, progress=progress, device_type=model.device.type,
                                         scratch=scratch))
        trainer = _sft_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                       peft_config=peft_config)
        metrics = fit_trainer(trainer, steps=settings.steps, rows=len(rows), progress=progress)
    return trainer.accelerator.unwrap_model(trainer.model), metrics


def sft(model, tokenizer, rows: list[dict], settings: TrainerSettings, *, seed: int, progress: bool,
        task=None) -> dict:
    """Run SFTTrainer in place on ``model`` (full weights); returns the final training metrics."""
    return train_sft(model, tokenizer, rows, settings, seed=seed, progress=progress, task=task)[1]
