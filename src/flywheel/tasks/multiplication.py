"""Reversed-digit multiplication: the worked example of docs/extending.md (a task in one module).

Prompts are ``a*b=`` with both operands written least-significant digit first, and the answer is the
product written the same way (``21*3=`` asks 12 * 3, answer ``63``): the carry then flows in the
direction the model writes, as in the addition task. Difficulty (``bucket``) is the longer operand's
digit count. The embedded model learns it from its own seed: ``configs/multiplication.yaml`` gives the
tokenizer the ``*`` character (``model.alphabet``) and ``flywheel seed`` trains that seed.
"""

from __future__ import annotations

import json
import random
import re

from flywheel.registry import TASKS
from flywheel.tasks.addition import (ANSWER_DIGITS, MAX_DIGITS, leading_zero_issue, random_number, reverse_digits,
                                     shape_issue)
from flywheel.tasks.base import TaskBase

_PROMPT = re.compile(r"[0-9]{1,%d}\*[0-9]{1,%d}=" % (MAX_DIGITS, MAX_DIGITS))  # matched whole (shape_issue)


@TASKS.register("multiplication")
class ReversedMultiplication(TaskBase):
    name = "multiplication"
    chat = False  # a char-level model reads "21*3=" as is; an instruct model gets the same text

    def prompt_issue(self, question: str) -> str | None:
        return shape_issue(question, _PROMPT, "a multiplication prompt (<digits>*<digits>=")

    def make_prompts(self, *, bucket: int, count: int, seed: int, id_prefix: str, mixed: bool = False) -> list[dict]:
        if bucket < 1:
            raise ValueError(f"digit length must be >= 1, got {bucket}")
        rng = random.Random(f"multiplication:{seed}:{bucket}:{'mixed' if mixed else 'equal'}")
        rows = []
        for index in range(count):
            # One operand has ``bucket`` digits; the other 1..bucket (always mixed: a square product of two
            # long numbers is far harder than the bucket says).
            lengths = [bucket, rng.randint(1, bucket)]
            rng.shuffle(lengths)
            a, b = (random_number(rng, n) for n in lengths)
            rows.append({"id": f"{id_prefix}d{bucket}-{index}", "prompt": f"{reverse_digits(a)}*{reverse_digits(b)}=",
                         "bucket": str(bucket), "meta": json.dumps({"digits": bucket}),
                         "answer": reverse_digits(a * b)})
        return rows

    def extract_answer(self, completion: str, prompt: dict | None = None) -> str | None:
        answer = completion.strip()
        return answer if ANSWER_DIGITS.fullmatch(answer) else None

    def format_issue(self, prompt: dict, answer: str) -> str | None:
        # A product of an m-digit and an n-digit number has m+n-1 or m+n digits (a zero operand: one digit).
        a, b = prompt["prompt"].rstrip("=").split("*")
        if int(a[::-1]) == 0 or int(b[::-1]) == 0:
            return None if answer == "0" else "format:length"
        if len(answer) not in (len(a) + len(b) - 1, len(a) + len(b)):
            return "format:length"
        return leading_zero_issue(answer)

    def steps(self, completion: str) -> list[str]:
        return list(completion)  # a step is a digit of the product

    def similar_prompts(self, prompt: dict, count: int, seed: int) -> list[dict]:
        # Similar = the same operand lengths, fresh digits.
        a, b = prompt["prompt"].rstrip("=").split("*")
        rng = random.Random(f"similar:{seed}:{prompt['prompt']}")
        rows = []
        for k in range(count):
            x, y = random_number(rng, len(a)), random_number(rng, len(b))
            rows.append({"id": f"{prompt['id']}-sim{k}", "prompt": f"{reverse_digits(x)}*{reverse_digits(y)}=",
                         "bucket": prompt.get("bucket"),
                         "meta": json.dumps({"digits": max(len(a), len(b)), "similar_to": prompt["id"]}),
                         "answer": reverse_digits(x * y)})
        return rows

    def views(self, question: str, count: int) -> list[str]:
        # b*a asks the same product; its samples' errors differ from a*b's, so they vote together.
        a, b = question.rstrip("=").split("*")
        return [question] if a == b or count < 2 else [question, f"{b}*{a}="]

    def is_correct(self, answer: str | None, truth: str | None) -> bool:
        return answer is not None and answer == truth
