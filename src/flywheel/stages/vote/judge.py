"""The champion as judge, for ``vote.method=self_judge``: how likely it finds a candidate answer (chat models:
P(yes) of its yes/no judge prompt; otherwise the completion's mean token log-probability)."""

from __future__ import annotations

import torch

from flywheel.generation import completion_logprobs

JUDGE_YES = ("yes", "Yes", " yes", " Yes", "YES")
JUDGE_NO = ("no", "No", " no", " No", "NO")


def judge_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids that start a "yes" and a "no" reply: the first token of each spelling.

    A word the tokenizer splits into several tokens counts by its first. A first token both
    share (a character tokenizer starts " yes" and " no" with the same space) says nothing
    and is dropped from both.
    """
    def first_tokens(words):
        ids = (tokenizer(word, add_special_tokens=False)["input_ids"] for word in words)
        return {tokens[0] for tokens in ids if tokens}

    yes, no = first_tokens(JUDGE_YES), first_tokens(JUDGE_NO)
    shared = yes & no
    yes, no = sorted(yes - shared), sorted(no - shared)
    if not yes or not no:
        raise ValueError("the tokenizer has no distinct first token for 'yes' and 'no'")
    return yes, no


def yes_share(next_token_logits: torch.Tensor, yes_ids: list[int], no_ids: list[int]) -> float:
    """P(yes) / (P(yes) + P(no)) of one next-token distribution (log-space, so tiny mass is fine)."""
    logits = next_token_logits.double()
    yes = torch.logsumexp(logits[yes_ids], dim=0)
    no = torch.logsumexp(logits[no_ids], dim=0)
    return float(torch.sigmoid(yes - no))


@torch.no_grad()
def judge_yes_probabilities(model, tokenizer, texts: list[str], *, batch_size: int = 256) -> list[float]:
    """``yes_share`` of the model's next token after each rendered judge prompt (tokenised as generation does)."""
    yes_ids, no_ids = judge_token_ids(tokenizer)
    scores = []
    for start in range(0, len(texts), batch_size):
        rows = [tokenizer(text)["input_ids"] for text in texts[start:start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right padding: the last real position predicts the reply's first token
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        scores += [yes_share(logits[i, len(row) - 1], yes_ids, no_ids) for i, row in enumerate(rows)]
    return scores


def member_judge(model_dir, *, batch_size: int, device: str, task=None):
    """A scorer for ``self_judge`` voting: (question, completion) pairs -> mean over members of a score in (0, 1].

    A chat task on a member with a chat template: the member is asked the task's yes/no judge
    message (``task.judge_message``) through its template, and the score is P(yes) / (P(yes) + P(no))
    of its next token (``judge_yes_probabilities``). Otherwise (addition, or no template):
    exp(mean token log-prob) of the completion given the question. ``score.kinds`` says which ran.
    """
    import math

    from flywheel.modeling import load_member, member_dirs
    from flywheel.tasks.base import render_message, uses_chat_template

    members = [load_member(path, device=device) for path in member_dirs(model_dir)]
    yes_no = [task is not None and task.judge_message is not None and uses_chat_template(task, tokenizer)
              for _, tokenizer in members]

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        totals = [0.0] * len(pairs)
        for (model, tokenizer), asks in zip(members, yes_no):
            if asks:
                texts = [render_message(task, task.judge_message(q, c), tokenizer) for q, c in pairs]
                member_scores = judge_yes_probabilities(model, tokenizer, texts, batch_size=batch_size)
            else:
                member_scores = [math.exp(logprob / count) for logprob, count in
                                 completion_logprobs(model, tokenizer, pairs, batch_size=batch_size)]
            totals = [t + m for t, m in zip(totals, member_scores)]
        return [t / len(members) for t in totals]

    score.kinds = sorted({"yes_no" if asks else "logprob" for asks in yes_no})
    return score
