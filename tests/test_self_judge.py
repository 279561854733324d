"""vote.method=self_judge for chat tasks: the champion answers a yes/no judge prompt, score = P(yes)/(P(yes)+P(no)).

Non-chat tasks (addition) keep the log-prob judge.
"""

import math

import pytest
import torch

from flywheel import io, schemas
from flywheel.config import VoteConfig
from flywheel.stages.vote.judge import judge_token_ids, judge_yes_probabilities, member_judge, yes_share
from flywheel.modeling import load_member
from flywheel.stages.vote import judge_weights, run_vote, vote
from flywheel.tasks import load_task
from flywheel.tasks.base import render_message

QUESTION = "What is 2 + 3?"


def test_yes_share_by_hand():
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0, 0.5])
    assert yes_share(logits, [1], [2]) == pytest.approx(math.exp(2) / (math.exp(2) + math.exp(1)))
    # several spellings: their probabilities add up
    both = (math.exp(2) + math.exp(0.5)) / (math.exp(2) + math.exp(0.5) + math.exp(1) + math.exp(-1))
    assert yes_share(logits, [1, 4], [2, 3]) == pytest.approx(both)
    # the rest of the vocabulary does not matter, and tiny probabilities do not underflow
    assert yes_share(torch.tensor([500.0, -300.0, -301.0]), [1], [2]) == pytest.approx(1 / (1 + math.exp(-1)))


class SplittingTokenizer:
    """A tokenizer that splits words into characters, as a char-level vocabulary does."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_judge_tokens_are_first_tokens_without_the_shared_space(tiny_chat_model):
    _, tokenizer = load_member(tiny_chat_model)
    yes, no = judge_token_ids(tokenizer)
    first = {text: tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in "yYnN "}
    assert yes == sorted({first["y"], first["Y"]}) and no == sorted({first["n"], first["N"]})
    assert first[" "] not in yes + no
    assert judge_token_ids(SplittingTokenizer()) == ([ord("Y"), ord("y")], [ord("N"), ord("n")])


def test_judge_prompt_is_the_chat_template_of_the_judge_message(tiny_chat_model):
    task = load_task("math")
    _, tokenizer = load_member(tiny_chat_model)
    text = render_message(task, task.judge_message(QUESTION, "It is \\boxed{5}."), tokenizer)
    assert text.endswith("<|assistant|>\n") and QUESTION in text and "\\boxed{5}" in text
    assert "Reply with yes or no." in text


def test_member_judge_scores_are_yes_probabilities(tiny_chat_model):
    task = load_task("math")
    pairs = [(QUESTION, "\\boxed{5}"), (QUESTION, "\\boxed{6}"), ("Name a prime.", "7")]
    judge = member_judge(tiny_chat_model, batch_size=2, device="cpu", task=task)
    assert judge.kinds == ["yes_no"]
    scores = judge(pairs)
    assert all(0 < p < 1 for p in scores)
    # by hand: one unpadded forward pass per pair, softmax of the last position
    model, tokenizer = load_member(tiny_chat_model)
    yes, no = judge_token_ids(tokenizer)
    for (question, completion), score in zip(pairs, scores):
        ids = torch.tensor([tokenizer(render_message(task, task.judge_message(question, completion), tokenizer))
                            ["input_ids"]])
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)
        assert score == pytest.approx(float(probs[yes].sum() / (probs[yes].sum() + probs[no].sum())), rel=1e-4)
    assert judge_yes_probabilities(model, tokenizer, [], batch_size=2) == []


def test_addition_keeps_the_logprob_judge(tiny_seed):
    judge = member_judge(tiny_seed, batch_size=4, device="cpu", task=load_task("addition"))
    assert judge.kinds == ["logprob"]
    (score,) = judge([("12+34=", "64")])
    assert 0 < score <= 1


def test_the_vote_is_weighted_by_the_judge(tiny_chat_model, tmp_path):
    task = load_task("math")
    completions = ["\\boxed{5}", "so \\boxed{5}", "\\boxed{6}", "\\boxed{7}", "no idea"]
    samples = [{"prompt_id": "p", "sample_idx": i, "voter": 0, "completion": c, "answer": task.extract_answer(c),
                "n_tokens": 4, "logprob": -1.0} for i, c in enumerate(completions)]
    judge = member_judge(tiny_chat_model, batch_size=8, device="cpu", task=task)
    five, six, seven, none = judge([(QUESTION, c) for c in ("\\boxed{5}", "\\boxed{6}", "\\boxed{7}", "no idea")])
    weights = judge_weights(samples, {"p": QUESTION}, judge)
    assert weights == pytest.approx([five, five, six, seven, none])  # an answer is scored by its first completion
    expected = max([("5", 2 * five), ("6", six), ("7", seven)], key=lambda kv: (kv[1], -int(kv[0])))
    total = 2 * five + six + seven + none
    io.write_rows(tmp_path / "samples.parquet", samples, schemas.SAMPLES)
    io.write_rows(tmp_path / "prompts.parquet", [{"id": "p", "prompt": QUESTION}], schemas.PROMPTS)
    summary = run_vote(tmp_path / "samples.parquet", tmp_path, VoteConfig(method="self_judge"), task=task,
                       prompts_path=tmp_path / "prompts.parquet", model_dir=tiny_chat_model)
    assert "P(yes) / (P(yes) + P(no))" in summary["label_source"]
    (verdict,) = io.read_rows(tmp_path / "votes.parquet", schemas.VOTES)
    assert verdict["majority_answer"] == expected[0]
    assert verdict["vote_share"] == pytest.approx(expected[1] / total, rel=1e-6)
    assert verdict["vote_share"] == pytest.approx(vote(samples, weights=weights)[0][0]["vote_share"])
