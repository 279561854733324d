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
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flywheel import io, model_copies, schemas
from flywheel.config import TrainConfig
from flywheel.layout import FILES
from flywheel.modeling import load_member, member_dirs, read_model_meta, write_adapter_meta, write_model_meta
from flywheel.precision import resolve_precision
from flywheel.registry import TRAIN_METHODS
from flywheel.rng import derive_seed
from flywheel.run_state import file_md5
from flywheel.stages.train.dpo import train_dpo
from flywheel.stages.train.grpo import check_grpo, majority_rewards, majority_vote_reward, train_grpo
from flywheel.stages.train.sft import sft, sft_tokens, train_sft
from flywheel.stages.train.trainer import BAR_LABEL, TrainerSettings, full_weights, peft_lora_config

# What the seed model, the tests and a user's method import from here (docs/extending.md).
__all__ = ["TrainMethod", "TrainerSettings", "majority_rewards", "majority_vote_reward", "run_train", "save_member",
           "sft", "sft_tokens", "student_or", "train_dpo", "train_grpo", "train_member", "train_sft"]


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
TRAIN_METHODS.add("grpo", TrainMethod(FILES.rl_prompts, schemas.RL_PROMPTS, _fit_grpo, needs_task=True,
                                      uses_vllm=lambda config: config.grpo.use_vllm, check=check_grpo))


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
                shutil.copytree(member, tmp / f"member-{index}", copy_function=model_copies.link_or_copy)
            write_model_meta(tmp, {"members": [f"member-{i}" for i in range(len(members))], "round": round_index,
                                   "init": str(init_dir), "format": "full", "trained": False})
        return {"train_loss": None, "train_seconds": 0.0, "train_rows": 0, "members": len(members)}
    if method.needs_task and task is None:
        raise ValueError(f"train.method={config.method} needs the task (it reads answers)")
    per_member, formats = [], []
    with _candidate_dir(out_dir) as tmp:
        for index, member in enumerate(members):
            label = BAR_LABEL.set(f"train member {index}")
            try:
                trained, tokenizer, metrics = train_member(
                    member, rows, config, task=task, seed=derive_seed(config.seed, round_index, index) % 2**31,
                    device=device, progress=progress)
            finally:
                BAR_LABEL.reset(label)
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
