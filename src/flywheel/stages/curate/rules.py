"""Curate's per-prompt rules, written once on a prompt's row and its verdict: the columnar curate
(``flywheel.stages.curate``) runs them a batch of rows at a time, as datatrove runs a filter's ``filter``.

What a rule reads of a prompt is what the task reads (``task.format_issue``), so these stay Python; everything
per sample is vectorised in ``flywheel.stages.curate.columns``.
"""

from __future__ import annotations

from collections import Counter

from flywheel.config import CurateConfig
from flywheel.layout import FILES


def ngrams(text: str, n: int, unit: str) -> set[tuple[str, ...]]:
    """The n-grams of ``text`` in words (whitespace-split) or characters; a shorter text is one n-gram."""
    tokens = text.split() if unit == "word" else list(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


class NgramIndex:
    """The n-grams of every eval prompt; a training prompt sharing any of them is contaminated."""

    def __init__(self, eval_texts, *, n: int, unit: str):
        self.n, self.unit = n, unit
        self.grams: set[tuple[str, ...]] = set()
        for text in eval_texts:
            self.grams |= ngrams(text, n, unit)

    def contaminated(self, text: str) -> bool:
        return not self.grams.isdisjoint(ngrams(text, self.n, self.unit))


class NearDuplicates:
    """MinHash LSH (datasketch) over character shingles: ``seen(text)`` is True for a near-duplicate
    of a text already added, else adds it. Deterministic (fixed MinHash seed, fixed insertion order)."""

    def __init__(self, *, threshold: float, shingle: int, num_perm: int):
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.shingle, self.num_perm, self.count = shingle, num_perm, 0

    def _minhash(self, text: str):
        from datasketch import MinHash

        k = self.shingle
        shingles = {text[i:i + k] for i in range(len(text) - k + 1)} if len(text) >= k else {text}
        signature = MinHash(num_perm=self.num_perm, seed=1)
        for shingle in sorted(shingles):
            signature.update(shingle.encode("utf-8"))
        return signature

    def seen(self, text: str) -> bool:
        signature = self._minhash(text)
        if self.lsh.query(signature):
            return True
        self.lsh.insert(str(self.count), signature)
        self.count += 1
        return False


def near_duplicates(config: CurateConfig) -> NearDuplicates | None:
    if not config.near_dedup:
        return None
    return NearDuplicates(threshold=config.near_dedup_threshold, shingle=config.near_dedup_shingle,
                          num_perm=config.near_dedup_num_perm)


def ngram_index(config: CurateConfig, eval_prompts) -> NgramIndex | None:
    return NgramIndex(eval_prompts, n=config.ngram_n, unit=config.ngram_unit) if config.ngram_decontaminate else None


def rl_rows(prompt_verdicts, config: CurateConfig, *, task, eval_prompts: set[str], keep) -> tuple[list, Counter]:
    """The GRPO prompts (ReST-RL's reward-variance filter) among (prompt row, its verdict or None) in prompt-id
    order, and the drops by reason; ``keep(prompt, verdict)`` is what is listed for a kept prompt."""
    near = near_duplicates(config)
    index = ngram_index(config, eval_prompts)
    kept, drops = [], Counter()
    for prompt, verdict in prompt_verdicts:
        if verdict is None:
            continue
        reason = None
        if verdict["majority_answer"] is None:
            reason = "vote:no_answer"
        elif verdict["vote_share"] < config.rl_min_vote_share:
            reason = "rl:low_share"
        elif verdict["vote_share"] >= config.rl_max_vote_share:
            reason = "rl:high_share"
        if reason is None:
            reason = prompt_reason(prompt, verdict, config, task, eval_prompts, index, check_share=False)
        if reason is None and near is not None and near.seen(prompt["prompt"]):
            reason = "dedup:near"
        if reason is not None:
            drops[reason] += 1
            continue
        kept.append(keep(prompt, verdict))
    return kept, drops


def prompt_reason(prompt: dict, verdict: dict, config: CurateConfig, task, eval_prompts: set[str],
                   index: NgramIndex | None = None, *, check_share: bool = True) -> str | None:
    if verdict["majority_answer"] is None:
        return "vote:no_answer"
    if check_share and verdict["vote_share"] < config.min_vote_share:
        return "vote:low_share"
    if config.format_filter:
        issue = task.format_issue(prompt, verdict["majority_answer"])
        if issue:
            return issue
    if config.decontaminate and prompt["prompt"] in eval_prompts:
        return "decontaminate:eval"
    if index is not None and index.contaminated(prompt["prompt"]):
        return "decontaminate:ngram"
    return None


def unvoted_error(prompt_id: str) -> str:
    """The error for samples of a prompt that has no vote: the votes are not the vote of these samples."""
    return (f"prompt {prompt_id!r} has samples but no vote in {FILES.votes} (is {FILES.votes} the vote of "
            f"{FILES.samples}?)")


