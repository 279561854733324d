"""What every training method shares: the trainer arguments set explicitly (precision, checkpointing, seeds,
threads; never inherited), the fit with its finite-loss guard and labelled progress bar, LoRA, full weights."""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from flywheel import io
from flywheel.config import TrainConfig
from flywheel.modeling import is_adapter, load_member
from flywheel.precision import resolve_precision, trainer_precision_args


@dataclass(frozen=True)
class TrainerSettings:
    """What every method's trainer arguments are made of: a round's from ``train`` (``of``), the seed's from
    ``seed``."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float = 0.0
    scheduler: str = "cosine"
    precision: str = "auto"
    gradient_checkpointing: bool = False

    @classmethod
    def of(cls, config: TrainConfig) -> "TrainerSettings":
        return cls(config.steps, config.batch_size, config.learning_rate, config.warmup_ratio, config.scheduler,
                   config.precision, config.gradient_checkpointing)


def trainer_args(settings: TrainerSettings, *, seed: int, progress: bool, device_type: str, scratch: str) -> dict:
    """The ``transformers.TrainingArguments`` every method shares.

    Precision and gradient checkpointing are always set here (``train.precision``, resolved for the
    device, and ``train.gradient_checkpointing``): TRL's configs default to bf16 and checkpointing on.
    """
    return dict(
        **trainer_precision_args(resolve_precision(settings.precision, device_type), settings.gradient_checkpointing),
        output_dir=scratch,
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=int(settings.warmup_ratio * settings.steps),
        weight_decay=0.0,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to=[],
        logging_steps=max(1, settings.steps // 10),
        disable_tqdm=not progress,
        use_cpu=device_type == "cpu",
        dataloader_num_workers=0,
        # Under torchrun (a TrainJob, train.num_nodes > 1): every trainable parameter takes part in a causal LM's
        # forward, so DDP need not walk the graph a second time each step looking for unused ones.
        ddp_find_unused_parameters=False,
    )


def fit_trainer(trainer, *, steps: int, rows: int, progress: bool) -> dict:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    # The trainer's own callbacks print every log dict ({'loss': ..., 'grad_norm': ...}); the loss goes to
    # the candidate's metadata and MLflow instead, and the console keeps one labelled bar.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(labelled_progress())
    guard = _finite_loss_guard()
    trainer.add_callback(guard)
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    # The loss curve as (step, loss, learning rate): MLflow plots it under the round's run (tracking.log_round).
    curve = [[int(e["step"]), float(e["loss"]), float(e.get("learning_rate", 0.0))]
             for e in trainer.state.log_history if "loss" in e and "step" in e]
    check_finite(trainer.model, guard.bad, float(output.training_loss), trainer.args.learning_rate)
    return {"train_loss": float(output.training_loss), "final_loss": curve[-1][1] if curve else None,
            "train_seconds": seconds, "steps": steps, "rows": rows, "loss_curve": curve}


def _finite_loss_guard():
    """Stops training at the first logged loss that is NaN or infinite (a diverged run trains no further)."""
    from transformers import TrainerCallback

    class FiniteLossGuard(TrainerCallback):
        bad: tuple | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss) and self.bad is None:
                self.bad = (state.global_step, loss)
                control.should_training_stop = True

    return FiniteLossGuard()


def check_finite(model, bad_log: tuple | None, training_loss: float, learning_rate: float) -> None:
    """One line, and no candidate written, when training diverged: a non-finite logged loss, mean loss or weight.
    Without it a NaN model is saved, scores 0 and reports a finite loss."""
    import torch

    where = None
    if bad_log is not None:
        where = f"the loss became {bad_log[1]} at step {bad_log[0]}"
    elif not math.isfinite(training_loss):
        where = f"the mean training loss is {training_loss}"
    else:
        for name, parameter in model.named_parameters():
            if not torch.isfinite(parameter.detach()).all():
                where = f"weight {name} holds NaN or infinity"
                break
    if where:
        raise io.InputError("train", f"training diverged: {where}; lower train.learning_rate (now {learning_rate:g})",
                         field="train.learning_rate")


# The training bar's label: the member loop sets it ("train member 1"), so the bars of a committee say whose
# they are without every method passing the index down to its trainer.
BAR_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("flywheel_train_bar", default="train")


def labelled_progress():
    """A training progress bar labelled with the member it trains and the latest loss as its postfix, never a
    printed dict. (Built here: transformers is imported only when a stage trains.)"""
    from transformers.trainer_callback import ProgressCallback

    label = BAR_LABEL.get()

    class LabelledProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description(label)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    return LabelledProgress()


def tokenize_processes(rows: int) -> int | None:
    """Processes for TRL's tokenisation of ``rows`` training rows: one per 20,000 rows, at most one per core.
    A seed set of 400k rows takes minutes in one process; a round's few thousand rows take under a second, where
    starting processes would cost more than it saves (None: in this process). The tokens are the same either way."""
    processes = min(os.cpu_count() or 1, rows // 20_000)
    return processes if processes > 1 else None


def peft_lora_config(config: TrainConfig):
    """peft's LoraConfig from ``train.lora``, or None when LoRA is off."""
    if not config.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=config.lora.r, lora_alpha=config.lora.alpha,
                      lora_dropout=config.lora.dropout, target_modules=list(config.lora.target_modules))


@contextlib.contextmanager
def full_weights(member: Path, device: str):
    """A directory with ``member``'s full weights: itself, or an adapter merged into a scratch copy.

    TRL builds reference models from ``model.config._name_or_path``; this makes it a full model.
    """
    if not is_adapter(member):
        yield member
        return
    with tempfile.TemporaryDirectory(prefix="flywheel-merged-") as scratch:
        model, tokenizer = load_member(member, device=device)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        yield Path(scratch)
