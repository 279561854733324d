"""Process rewards from rollouts (OmegaPRM, AlphaMath, ReST-MCTS*): score the steps of a kept row, drop weak ones.

Where it departs from the paper (OmegaPRM, Luo et al., 2024):

1. The vote's label stands in for the gold answer that decides a rollout's correctness.
2. Every step but the last is rolled out; OmegaPRM binary-searches for the first wrong step inside its MCTS.
3. The step scores filter the rows (``step:weak``); no process reward model is trained on them.
4. Only champion member 0 rolls out, at ``generate.temperature``.

``curate.step_rollouts`` > 0 runs after every other curation rule (``curate.select`` included), on the SFT
rows they kept. A row's completion is cut into steps by the task (``task.steps``: a digit for addition, a
line for math). For every step but the last, champion member 0 continues the row from the prefix that ends
with that step, ``step_rollouts`` times at ``generate.temperature`` (rollout j of step i of a row drawn with
``derive_seed("steps", r, prompt id, i, j)``); the step's score is the share of those rollouts whose answer
votes like the row's (the vote's label: no truth is read). This is the Monte Carlo step value of OmegaPRM
(Luo et al., 2024) with the vote standing in for the verifier, as TTRL does for outcome rewards.

A row's weakest step is its lowest score (1.0 for a one-step completion: nothing to continue from). A row
whose weakest step scores below ``curate.min_step_score`` is dropped as ``step:weak``: its label is right
only if the champion gets past a step it mostly gets wrong. curation.json's ``process_rewards`` records the
weakest-step distribution and the rollouts' cost in generated tokens, beside what generate spent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flywheel.config import CurateConfig, GenerateConfig
from flywheel.experimental import warn_experimental
from flywheel.rng import derive_seed
from flywheel.tasks.base import render_prompt


@dataclass(frozen=True)
class StepScores:
    """Which rows stay (``keep``, a mask over the rows given), the drops, each row's step scores and weakest step,
    and what curation.json records of them (``summary``: the rollouts' cost among it)."""

    keep: np.ndarray
    drops: Counter
    scores: list[list[float]]
    weakest: np.ndarray
    summary: dict


def step_scores(prompts: list[dict], completions: list[str], backend, config: CurateConfig, generate: GenerateConfig,
                *, task, round_index: int) -> tuple[list[list[float]], int, int]:
    """Each row's per-step scores (one per step but the last), the rollouts run and the tokens they generated.

    ``prompts[i]`` is row i's prompt row (``id``, ``prompt`` and, for code, ``meta``); ``completions[i]`` its text.
    """
    tokenizer = getattr(backend, "tokenizer", None)
    jobs = []  # (row, step, text the champion continues, the prefix)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        steps = task.steps(completion)
        question = render_prompt(task, prompt["prompt"], tokenizer)
        for step in range(1, len(steps)):
            prefix = "".join(steps[:step])
            jobs.append((row, step, question + prefix, prefix))
    seeds = [[derive_seed("steps", round_index, prompts[row]["id"], step, j) for j in range(config.step_rollouts)]
             for row, step, _, _ in jobs]
    outcomes = backend.generate([text for _, _, text, _ in jobs], seeds, temperature=generate.temperature,
                                max_new_tokens=generate.max_new_tokens) if jobs else []
    labels = [task.vote_key(task.extract_answer(c, p)) for p, c in zip(prompts, completions)]
    scores: list[list[float]] = [[] for _ in prompts]
    tokens = 0
    for (row, _, _, prefix), rollouts in zip(jobs, outcomes):
        agree = 0
        for rollout in rollouts:
            tokens += rollout.n_tokens
            agree += task.vote_key(task.extract_answer(prefix + rollout.text, prompts[row])) == labels[row]
        scores[row].append(agree / len(rollouts))
    return scores, len(jobs) * config.step_rollouts, tokens


def run_process_rewards(prompts: list[dict], completions: list[str], config: CurateConfig,
                        generate: GenerateConfig | None, *, task, model_dir: Path | None, device: str,
                        round_index: int) -> StepScores:
    """Shell: champion member 0's rollouts score the rows' steps; rows whose weakest step is weak go."""
    from flywheel.errors import InputError
    from flywheel.modeling import member_dirs
    from flywheel.stages.generate import load_backends

    warn_experimental("curate.step_rollouts", "process_rewards")
    if model_dir is None:
        raise InputError("config", "curate.step_rollouts continues rows with the champion, and no champion was given "
                         "to curate", field="curate.step_rollouts")
    generate = generate or GenerateConfig()
    scores, rollouts, tokens = [], 0, 0
    if prompts:
        member = member_dirs(model_dir)[0]  # a committee's member 0 alone: the others are never asked
        backend = load_backends(member, batch_size=generate.batch_size, device=device, progress=False,
                                precision=generate.dtype, config=generate, batch_tokens=generate.batch_tokens)[0]
        scores, rollouts, tokens = step_scores(prompts, completions, backend, config, generate, task=task,
                                               round_index=round_index)
    weakest = np.array([min(s, default=1.0) for s in scores])
    keep = weakest >= config.min_step_score
    drops = Counter({"step:weak": int((~keep).sum())}) if (~keep).any() else Counter()
    summary = {
        "rows_scored": len(scores), "rollouts": rollouts, "rollout_tokens": tokens,
        "mean_weakest_step": float(weakest.mean()) if len(weakest) else None,
        # where a row's weakest step falls, as a share of its steps (0: the first; 1: the last scored)
        "weakest_step_position": _mean_position(scores),
        "dropped": int((~keep).sum()),
    }
    return StepScores(keep=keep, drops=drops, scores=scores, weakest=weakest, summary=summary)


def _mean_position(scores: list[list[float]]) -> float | None:
    positions = [int(np.argmin(s)) / (len(s) - 1) for s in scores if len(s) > 1 and min(s) < 1.0]
    return float(np.mean(positions)) if positions else None
