"""``train.method=grpo``: GRPOTrainer with the majority-vote reward (TTRL / MM-UPT: no labels)."""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict

from flywheel import io
from flywheel.config import TrainConfig
from flywheel.errors import ConfigError
from flywheel.stages.train.trainer import TrainerSettings, fit_trainer, trainer_args
from flywheel.stages.vote import winner
from flywheel.tasks.base import sft_row


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
                          **trainer_args(TrainerSettings.of(config), seed=seed, progress=progress,
                                          device_type=model.device.type, scratch=scratch))
        trainer = GRPOTrainer(model=model, reward_funcs=majority_vote_reward(task), args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config)
        metrics = fit_trainer(trainer, steps=config.steps, rows=len(rows), progress=progress)
        rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
        metrics["mean_reward"] = sum(rewards) / len(rewards) if rewards else None
    return trainer.accelerator.unwrap_model(trainer.model), metrics


def check_grpo(config: TrainConfig) -> None:
    if config.batch_size % config.grpo.num_generations:
        raise ConfigError("train.batch_size",
                          "must be a multiple of train.grpo.num_generations (whole groups per step)")
