"""Train: fine-tune every champion member on what curate kept, with TRL.

``train.method``:
  sft   SFTTrainer on vote-accepted (prompt, completion) rows, loss on completion tokens
        only (ReST-EM / STaR with the vote as the verifier). Reads train.parquet.
  dpo   DPOTrainer on (prompt, chosen, rejected) pairs: chosen agrees with the prompt's
        majority, rejected does not (self-rewarding without a judge model); the reference
        model is the init model. Reads pairs.parquet.
  grpo  GRPOTrainer on the prompts whose vote showed disagreement; the reward of a
        completion is 1 if its answer is the majority of its own group of
        ``num_generations`` completions, else 0 (TTRL / MM-UPT: no labels). Reads rl_prompts.parquet.
Each method can train LoRA adapters (``train.lora``): saved merged (format 'full') or as
the adapter plus a reference to its base (format 'adapter', see ``modeling.load_member``).

Member i of round r trains with seed ``derive_seed(train.seed, r, i)``: the members
see the data in different orders and stay independent voters. ``init='champion'``
continues from the champion (Lee et al.); ``'base'`` restarts from the seed model
each round (ReST-EM).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import math
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flywheel import io, schemas
from flywheel.config import TrainConfig
from flywheel.layout import FILES
from flywheel.errors import ConfigError
from flywheel.modeling import (check_alphabet, is_adapter, load_member, member_dirs, read_model_meta,
                               write_adapter_meta, write_model_meta)
from flywheel.precision import resolve_precision, trainer_precision_args
from flywheel.run_state import file_md5
from flywheel.rng import derive_seed
from flywheel.registry import TRAIN_METHODS
from flywheel.stages.vote import winner
from flywheel.tasks.base import sft_row


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


def _trainer_args(settings: TrainerSettings, *, seed: int, progress: bool, device_type: str, scratch: str) -> dict:
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


def _fit(trainer, *, steps: int, rows: int, progress: bool) -> dict:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    # The trainer's own callbacks print every log dict ({'loss': ..., 'grad_norm': ...}); the loss goes to
    # the candidate's metadata and MLflow instead, and the console keeps one labelled bar.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(_labelled_progress())
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
_BAR_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("flywheel_train_bar", default="train")


def _labelled_progress():
    """A training progress bar labelled with the member it trains and the latest loss as its postfix, never a
    printed dict. (Built here: transformers is imported only when a stage trains.)"""
    from transformers.trainer_callback import ProgressCallback

    label = _BAR_LABEL.get()

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
                         **_trainer_args(settings, seed=seed, progress=progress, device_type=model.device.type,
                                         scratch=scratch))
        trainer = _sft_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                       peft_config=peft_config)
        metrics = _fit(trainer, steps=settings.steps, rows=len(rows), progress=progress)
    return trainer.accelerator.unwrap_model(trainer.model), metrics


def sft(model, tokenizer, rows: list[dict], settings: TrainerSettings, *, seed: int, progress: bool,
        task=None) -> dict:
    """Run SFTTrainer in place on ``model`` (full weights); returns the final training metrics."""
    return train_sft(model, tokenizer, rows, settings, seed=seed, progress=progress, task=task)[1]


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
        args = DPOConfig(beta=config.dpo.beta, loss_type=[config.dpo.loss_type], **_trainer_args(
            TrainerSettings.of(config), seed=seed, progress=progress, device_type=model.device.type, scratch=scratch))
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config)
        metrics = _fit(trainer, steps=config.steps, rows=len(rows), progress=progress)
    return trainer.accelerator.unwrap_model(trainer.model), metrics


def majority_rewards(answers: list[str | None], groups: list) -> list[float]:
    """1.0 for an answer that is its group's majority, else 0.0 (TTRL's label-free reward).

    ``groups[i]`` names sample i's group (its prompt). The majority is decided by the vote's own
    rule (``stages.vote.winner``): most votes, ties to the lexicographically smallest answer, and
    no-answer (None) is never the majority, so it always earns 0.0.
    """
    members: dict = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    rewards = [0.0] * len(answers)
    for indices in members.values():
        majority = winner(Counter(answers[i] for i in indices))
        if majority is None:
            continue
        for i in indices:
            rewards[i] = 1.0 if answers[i] == majority else 0.0
    return rewards


def majority_vote_reward(task):
    """A TRL reward function: completions grouped by ``prompt_id`` (one group = one prompt's generations).

    TRL calls it once per generation batch of each process; with one process a batch
    holds whole groups. Across several processes a group may be split, and each part
    then votes on its own (a known departure from TTRL's global vote).
    """

    def majority_vote(prompts, completions, prompt_id=None, meta=None, **kwargs) -> list[float]:
        groups = prompt_id if prompt_id is not None else [str(p) for p in prompts]
        metas = meta if meta is not None else [None] * len(completions)
        # Conversational rows (chat tasks) come back as [{"role": "assistant", "content": ...}].
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        # The prompt row's meta carries what the answer needs (the code task's test inputs: programs
        # agree by their outputs, as in the vote stage).
        answers = [task.extract_answer(t, {"meta": m}) for t, m in zip(texts, metas)]
        return majority_rewards([task.vote_key(a) for a in answers], groups)

    return majority_vote


def train_grpo(model, tokenizer, rows: list[dict], *, config: TrainConfig, task, seed: int, progress: bool,
               peft_config=None) -> tuple:
    """GRPOTrainer on prompts with the majority-vote reward; the reward never sees a label."""
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    datasets.disable_progress_bars()
    examples = [{"prompt": sft_row(task, r["prompt"], "", tokenizer)["prompt"],
                 "prompt_id": r.get("prompt_id") or r["prompt"], "meta": r.get("meta") or ""} for r in rows]
    # A step takes batch_size / num_generations distinct prompts and TRL's sampler drops an incomplete
    # step, so fewer prompts than one step needs would train nothing: repeat them to fill one step.
    per_step = config.batch_size // config.grpo.num_generations
    examples = (examples * -(-per_step // len(examples)))[:max(per_step, len(examples))]
    dataset = datasets.Dataset.from_list(examples)
    vllm = {}
    if config.grpo.use_vllm:
        from flywheel.generation import vllm_available

        usable, why = vllm_available()
        if not usable:
            raise io.InputError("config", f"train.grpo.use_vllm=true but {why}", field="train.grpo.use_vllm")
        vllm = dict(use_vllm=True, vllm_mode="colocate",
                    vllm_gpu_memory_utilization=config.grpo.vllm_gpu_memory_utilization)
    with tempfile.TemporaryDirectory(prefix="flywheel-grpo-") as scratch:
        args = GRPOConfig(num_generations=config.grpo.num_generations, temperature=config.grpo.temperature,
                          max_completion_length=config.grpo.max_completion_tokens, beta=config.grpo.beta, **vllm,
                          **_trainer_args(TrainerSettings.of(config), seed=seed, progress=progress,
                                          device_type=model.device.type, scratch=scratch))
        trainer = GRPOTrainer(model=model, reward_funcs=majority_vote_reward(task), args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config)
        metrics = _fit(trainer, steps=config.steps, rows=len(rows), progress=progress)
        rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
        metrics["mean_reward"] = sum(rewards) / len(rewards) if rewards else None
    return trainer.accelerator.unwrap_model(trainer.model), metrics


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


@dataclass(frozen=True)
class TrainMethod:
    """A ``train.method``: the round's file it trains on (written by curate), that file's contract, and
    ``fit(model, tokenizer, rows, init=..., config=..., task=..., seed=..., progress=..., peft_config=...,
    device=...)`` returning (trained model, metrics). ``init`` is the init model's directory (full weights)."""

    data_file: str
    schema: schemas.Schema
    fit: Callable[..., tuple]
    needs_task: bool = False  # its reward or rows read answers with the task
    uses_vllm: Callable[[TrainConfig], bool] = lambda config: False  # generates with vLLM (flywheel.machine_checks)
    check: Callable[[TrainConfig], None] = lambda config: None  # the method's own config rules (config.py)


def _fit_sft(model, tokenizer, rows, *, init, config: TrainConfig, task, seed, progress, peft_config, device):
    return train_sft(model, tokenizer, rows, TrainerSettings.of(config), seed=seed, progress=progress,
                     peft_config=peft_config, task=task)


def _fit_dpo(model, tokenizer, rows, *, init, config: TrainConfig, task, seed, progress, peft_config, device):
    # The reference is the init model; with LoRA, TRL disables the adapters instead of holding a copy.
    reference = None if peft_config is not None else load_member(init, device=device)[0]
    return train_dpo(model, reference, tokenizer, rows, config=config, seed=seed, progress=progress,
                     peft_config=peft_config, task=task)


def _fit_grpo(model, tokenizer, rows, *, init, config: TrainConfig, task, seed, progress, peft_config, device):
    return train_grpo(model, tokenizer, rows, config=config, task=task, seed=seed, progress=progress,
                      peft_config=peft_config)


# The registered training methods (flywheel.registry; the module docstring says what each does).
TRAIN_METHODS.add("sft", TrainMethod(FILES.mix, schemas.CURATED, _fit_sft))
TRAIN_METHODS.add("dpo", TrainMethod(FILES.pairs, schemas.CURATED_PAIRS, _fit_dpo))
def _check_grpo(config: TrainConfig) -> None:
    if config.batch_size % config.grpo.num_generations:
        raise ConfigError("train.batch_size", "must be a multiple of train.grpo.num_generations (whole groups per step)")


TRAIN_METHODS.add("grpo", TrainMethod(FILES.rl_prompts, schemas.RL_PROMPTS, _fit_grpo, needs_task=True,
                                      uses_vllm=lambda config: config.grpo.use_vllm, check=_check_grpo))


def train_member(member: Path, rows: list[dict], config: TrainConfig, *, task, seed: int, device: str,
                 progress: bool) -> tuple:
    """Train one member with ``config.method``. Returns (trained model, maybe a PeftModel; tokenizer; metrics)."""
    method: TrainMethod = TRAIN_METHODS.get(config.method)
    peft_config = peft_lora_config(config)
    with full_weights(member, device) as path:
        model, tokenizer = load_member(path, device=device)
        model.train()
        trained, metrics = method.fit(model, tokenizer, rows, init=path, config=config, task=task, seed=seed,
                                      progress=progress, peft_config=peft_config, device=device)
    return trained, tokenizer, metrics


def save_member(trained, tokenizer, target: Path, *, config: TrainConfig, base: Path, final_dir: Path) -> str:
    """Write a trained member; returns its format ('full' or 'adapter')."""
    if config.lora.enabled and not config.lora.merge:
        trained.save_pretrained(target)  # adapter_config.json + adapter weights only
        tokenizer.save_pretrained(target)
        write_adapter_meta(target, base=base, final_dir=final_dir)
        return "adapter"
    if config.lora.enabled:
        trained = trained.merge_and_unload()
    trained.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return "full"


def student_or(init_dir: Path, config: TrainConfig) -> Path:
    """Weak-to-strong (``train.student``): the student while ``init_dir`` is still round 0's model (its
    flywheel-model.json records round 0 or nothing: no candidate promoted yet), else ``init_dir``.

    Decided here, when the round runs, rather than in ``TrainConfig.start_from``: the Argo door compiles the
    init path into its TrainJob before any round has run."""
    if config.student and read_model_meta(init_dir).get("round", 0) == 0:
        return Path(config.student)
    return init_dir


def run_train(data_path: Path, init_dir: Path, out_dir: Path, config: TrainConfig, *, round_index: int,
              device: str = "cpu", progress: bool = False, task=None) -> dict:
    """Shell: the method's curated file + the init model (champion or base) -> candidate directory (a committee).

    ``data_path`` is train.parquet (sft), pairs.parquet (dpo) or rl_prompts.parquet (grpo);
    grpo also needs the ``task`` (its reward extracts answers).
    """
    method: TrainMethod = TRAIN_METHODS.get(config.method)
    rows = io.read_rows(data_path, method.schema)
    init_dir = student_or(init_dir, config)
    members = member_dirs(init_dir)
    if not rows:
        # Nothing survived curation (e.g. a strict vote threshold on a hard bucket). The candidate is the
        # init model unchanged, marked untrained, and the gate declines it with that reason.
        print(f"flywheel: warning: {data_path}: no curated rows; the candidate is {init_dir} unchanged",
              file=sys.stderr)
        with _candidate_dir(out_dir) as tmp:  # rank 0 only under torchrun
            for index, member in enumerate(members):
                shutil.copytree(member, tmp / f"member-{index}", copy_function=io.link_or_copy)
            write_model_meta(tmp, {"members": [f"member-{i}" for i in range(len(members))], "round": round_index,
                                   "init": str(init_dir), "format": "full", "trained": False})
        return {"train_loss": None, "train_seconds": 0.0, "train_rows": 0, "members": len(members)}
    if method.needs_task and task is None:
        raise ValueError(f"train.method={config.method} needs the task (it reads answers)")
    per_member, formats = [], []
    with _candidate_dir(out_dir) as tmp:
        for index, member in enumerate(members):
            label = _BAR_LABEL.set(f"train member {index}")
            try:
                trained, tokenizer, metrics = train_member(
                    member, rows, config, task=task, seed=derive_seed(config.seed, round_index, index) % 2**31,
                    device=device, progress=progress)
            finally:
                _BAR_LABEL.reset(label)
            formats.append(save_member(trained, tokenizer, tmp / f"member-{index}", config=config, base=member,
                                       final_dir=Path(out_dir) / f"member-{index}"))
            per_member.append(metrics)
        meta = {
            "members": [f"member-{i}" for i in range(len(members))],
            "round": round_index,
            "init": str(init_dir),
            "format": formats[0],  # 'full': merged full weights; 'adapter': LoRA adapters over `base`
            "method": config.method,
            "trained": True,
            # The hardest bucket among this round's rows: the next round offers the one after it.
            "curriculum_bucket": _hardest_bucket(rows, round_index),
            "train": json.loads(json.dumps(config.__dict__, default=lambda o: o.__dict__)),
            # What 'auto' became on this machine: the precision the weights were trained in.
            "precision": resolve_precision(config.precision, device),
            "data_md5": file_md5(data_path),  # the training file's md5, as dvc.lock records it
            "train_metrics": per_member,
        }
        if formats[0] == "adapter":
            meta["base"] = [str(Path(m).resolve()) for m in members]
        write_model_meta(tmp, meta)
    result = {
        "train_loss": sum(m["train_loss"] for m in per_member) / len(per_member),
        "train_seconds": sum(m["train_seconds"] for m in per_member),
        "train_rows": len(rows),
        "members": len(members),
        "method": config.method,
        "format": formats[0],
        "precision": resolve_precision(config.precision, device),
        "gradient_checkpointing": config.gradient_checkpointing,
    }
    if any("mean_reward" in m for m in per_member):  # methods trained on a reward (grpo) report its mean
        rewards = [m["mean_reward"] for m in per_member if m.get("mean_reward") is not None]
        result["mean_reward"] = sum(rewards) / len(rewards) if rewards else None
    return result


@contextlib.contextmanager
def _candidate_dir(out_dir: Path):
    """Where this process writes the candidate: ``out_dir`` atomically, except on the non-zero ranks of a
    multi-node ``torchrun`` (a Kubeflow Trainer TrainJob, ``train.num_nodes > 1``), which trained the same
    weights with DDP and write to a scratch directory that is thrown away, so only rank 0 renames onto
    the shared volume."""
    if int(os.environ.get("RANK", "0")) == 0:
        with io.atomic_dir(out_dir) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory(prefix="flywheel-rank-") as scratch:
            yield Path(scratch)


def _hardest_bucket(rows: list[dict], round_index: int) -> int | None:
    buckets = [int(r["bucket"]) for r in rows if r.get("round") == round_index and str(r.get("bucket")).isdigit()]
    return max(buckets, default=None)
