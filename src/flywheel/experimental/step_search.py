"""Step-level beam search guided by Monte Carlo step values: ``generate.search: step_beam``.

Where it departs from the papers (AlphaMath, ReST-MCTS*; tree search with step values):

1. A beam of K slots per prompt, a step at a time, not a Monte Carlo tree (no selection by UCB, no backup).
2. A step's value is counted from rollouts, never predicted: no value model or value head is trained.
3. The rollouts' majority answer stands in for the verifier; no label is read.
4. The search only samples: its values are not trained on (curate sees finished completions, as from sampling).

The sampling side of process rewards (OmegaPRM, AlphaMath, ReST-MCTS*): where ``curate.step_rollouts`` scores
the steps of finished samples, this grows each sample a step at a time and keeps the steps whose rollouts
do best. Per prompt and champion member, K slots (``generate.samples_per_prompt``; slot j becomes sample j)
start from the empty prefix. At every depth d:

1. Each open slot's prefix (its first d steps) is continued ``generate.search_rollouts`` times to the end
   (rollout i of slot j drawn with ``derive_seed("search", r, p, m, j, d, i)``), within the tokens its prefix
   leaves of ``generate.max_new_tokens`` (rounded down to a 16th of it, so a depth makes at most 16 calls).
2. A rollout proposes its prefix plus its own next step (``task.steps``: a digit for addition, a line for
   chat tasks), or, where it ended at that step, a finished completion.
3. A proposal's value is the share of the rollouts that made it whose answer agrees with the majority of all
   the prompt's rollouts so far (the vote stands in for a verifier; no label is read).
4. The prompt's open slots take the best of its rollouts' proposals: highest value first, then the proposal
   most rollouts made, then the first made (a proposal fills as many slots as rollouts made it, at most).
   A slot that takes a finished completion is done.

A slot still open when its prefix leaves no budget is done as it stands. Each sample's ``search_tokens`` is
every token its slot's rollouts generated; its ``n_tokens`` and ``logprob`` are the finished completion's,
scored in one forward pass at ``generate.temperature`` (``HFBackend.score``; the end of sequence counted
only where the model wrote it), so the vote reads a searched sample as it reads a drawn one.

The cost against plain sampling: a completion of S steps costs about ``search_rollouts`` x (S + 2) / 2 of
its own length per slot instead of one, and the vote that follows is not an independent poll: the beam
follows the majority, so vote shares run higher than plain sampling's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from flywheel.config import GenerateConfig
from flywheel.experimental import warn_experimental
from flywheel.rng import derive_seed
from flywheel.tasks.base import render_prompt


@dataclass
class Slot:
    """One sample being grown: its prompt row, its index (the sample's ``sample_idx``), the whole steps so far,
    the finished completion once there is one, and the tokens its rollouts generated."""

    prompt: dict
    index: int
    prefix: str = ""
    text: str | None = None
    search_tokens: int = 0
    stopped: bool = False  # the finished text ended with the model's end of sequence, not at a token budget


@dataclass
class Proposal:
    """A next prefix (or finished completion) some rollouts made, and how many of them agree with the majority."""

    text: str
    finished: bool
    stopped: bool  # (finished ones) the first rollout making it ended with end of sequence
    rollouts: int = 0
    agreeing: int = 0

    @property
    def value(self) -> float:
        return self.agreeing / self.rollouts


def step_beam(prompts: list[dict], backend, config: GenerateConfig, *, task, round_index: int,
              voter: int) -> list[dict]:
    """``config.samples_per_prompt`` searched samples per prompt from one member (``backend``), as sample rows."""
    warn_experimental("generate.search=step_beam", "step_search")
    tokenizer = backend.tokenizer
    questions = {p["id"]: render_prompt(task, p["prompt"], tokenizer) for p in prompts}
    slots = {p["id"]: [Slot(p, j) for j in range(config.samples_per_prompt)] for p in prompts}
    answers_seen = {p["id"]: Counter() for p in prompts}
    depth = 0
    while depth < config.max_new_tokens:  # a step is at least one token: a bound the budgets below reach first
        open_slots = [s for p in prompts for s in slots[p["id"]] if s.text is None]
        budgets = _budgets(open_slots, tokenizer, config.max_new_tokens)
        for slot, budget in zip(open_slots, budgets):
            if budget <= 0:  # the prefix has used every token a sample may have: done as it stands
                slot.text = slot.prefix
        open_slots = [s for s, budget in zip(open_slots, budgets) if budget > 0]
        if not open_slots:
            break
        made = _rollouts(open_slots, questions, [b for b in budgets if b > 0], backend, config,
                         round_index=round_index, voter=voter, depth=depth)
        offers_of: dict[str, list[Offer]] = {}  # per prompt, every rollout's, as made
        for slot, row in zip(open_slots, made):
            slot.search_tokens += sum(r.n_tokens for r in row)
            offers_of.setdefault(slot.prompt["id"], []).extend(_offer(task, slot, r, depth) for r in row)
        for prompt_id, offers in offers_of.items():
            _advance([s for s in slots[prompt_id] if s.text is None], offers, answers_seen[prompt_id])
        depth += 1
    every = [s for p in prompts for s in slots[p["id"]]]
    for slot in every:
        slot.text = slot.prefix if slot.text is None else slot.text
    scored = backend.score([questions[s.prompt["id"]] for s in every], [s.text for s in every],
                           temperature=config.temperature, stopped=[s.stopped for s in every]) if every else []
    return [{"prompt_id": s.prompt["id"], "sample_idx": s.index, "voter": voter, "completion": s.text,
             "answer": task.extract_answer(s.text, s.prompt), "n_tokens": n_tokens, "logprob": logprob,
             "search_tokens": s.search_tokens}
            for s, (logprob, n_tokens) in zip(every, scored)]


@dataclass(frozen=True)
class Offer:
    """What one rollout proposes: the prefix with one more step, or (``finished``) the whole completion where
    it ended at that step; whether the model ended it; and the vote key of the rollout's answer."""

    text: str
    finished: bool
    stopped: bool
    key: str | None


def _advance(waiting: list[Slot], offers: list[Offer], answers_seen: Counter) -> None:
    """One prompt's open slots take the best of its rollouts' ``offers``, each proposal valued by the share of
    the rollouts making it that agree with the majority of every rollout so far (``answers_seen``, updated
    here); ties go to the proposal more rollouts made, then to the first made. A proposal made by several
    rollouts can fill as many slots."""
    answers_seen.update(offer.key for offer in offers if offer.key is not None)
    majority = _majority(answers_seen)
    proposals: dict[tuple[str, bool], Proposal] = {}
    made = []
    for offer in offers:
        proposal = proposals.setdefault((offer.text, offer.finished),
                                        Proposal(offer.text, offer.finished, offer.stopped))
        proposal.rollouts += 1
        proposal.agreeing += offer.key is not None and offer.key == majority
        made.append(proposal)
    ranked = sorted(made, key=lambda p: (-p.value, -p.rollouts))  # stable: ties keep the order they were made
    for slot, chosen in zip(waiting, ranked):
        slot.prefix = chosen.text
        if chosen.finished:
            slot.text, slot.stopped = chosen.text, chosen.stopped


def _offer(task, slot: Slot, rollout, depth: int) -> Offer:
    """What ``rollout`` (a ``Completion`` from ``slot``'s prefix of ``depth`` steps) proposes."""
    whole = slot.prefix + rollout.text
    steps = task.steps(whole)
    finished = len(steps) <= depth + 1
    return Offer(text=whole if finished else "".join(steps[:depth + 1]), finished=finished,
                 stopped=rollout.stopped, key=task.vote_key(task.extract_answer(whole, slot.prompt)))


def _budgets(slots: list[Slot], tokenizer, max_new_tokens: int) -> list[int]:
    """New tokens each slot's rollouts may generate: what its prefix leaves of ``max_new_tokens``, rounded down
    to a multiple of max_new_tokens // 16 (at least 1) so that one depth makes at most 16 backend calls, not
    one per prefix length (chat tasks' lines differ in length; a digit is one token: no rounding at 24)."""
    prefixes = [s.prefix for s in slots]
    used = [len(ids) for ids in tokenizer(prefixes, add_special_tokens=False)["input_ids"]] if any(prefixes) else \
        [0] * len(slots)
    grain = max(1, max_new_tokens // 16)
    return [max_new_tokens - -(-n // grain) * grain for n in used]  # the prefix's tokens rounded up to the grain


def _rollouts(slots: list[Slot], questions: dict[str, str], budgets: list[int], backend, config: GenerateConfig, *,
              round_index: int, voter: int, depth: int) -> list[list]:
    """``config.search_rollouts`` completions from each slot's prefix, one backend call per distinct budget (one
    per depth where a step is a token, as for addition)."""
    made: list[list | None] = [None] * len(slots)
    for budget in sorted(set(budgets)):
        members = [k for k, b in enumerate(budgets) if b == budget]
        texts = [questions[slots[k].prompt["id"]] + slots[k].prefix for k in members]
        seeds = [[derive_seed("search", round_index, slots[k].prompt["id"], voter, slots[k].index, depth, i)
                  for i in range(config.search_rollouts)] for k in members]
        for k, row in zip(members, backend.generate(texts, seeds, temperature=config.temperature,
                                                    max_new_tokens=budget)):
            made[k] = row
    return made  # type: ignore[return-value]


def _majority(counts: Counter) -> str | None:
    """The commonest answer (ties: the one seen first); None when no rollout had one."""
    return max(counts, key=counts.__getitem__) if counts else None
