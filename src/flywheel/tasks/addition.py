"""Reversed-digit addition: the embedded default task (Lee et al., 2025).

A prompt of bucket ``n`` adds two ``n``-digit numbers, every number written least
significant digit first: 17 + 25 = 42 is the prompt ``"71+52="`` and the answer ``"24"``.
Reversal lets a left-to-right model emit each sum digit once it has seen the
carry, which is what makes length generalisation by self-training possible.

With ``mixed=True`` the two operands of bucket ``n`` have independent lengths, one
of them ``n`` and the other 1..n (Lee et al.'s training data draws both lengths
independently): a model cannot then find digit i by the prompt's total length and
has to align digits by counting, which is what carries over to longer problems.
"""

from __future__ import annotations

import json
import random
import re

from flywheel.registry import TASKS
from flywheel.tasks.base import TaskBase


# The longest operand a prompt may have: far beyond any model's context, short of Python's int() limit.
MAX_DIGITS = 1000
# Matched whole (``fullmatch``): ``$`` also matches before a final newline, and "12+34=\n" would pass.
_PROMPT = re.compile(r"[0-9]{1,%d}\+[0-9]{1,%d}=" % (MAX_DIGITS, MAX_DIGITS))
# ASCII digits only: ``str.isdigit`` also takes "²" and "١", which no sum is written with.
ANSWER_DIGITS = re.compile(r"[0-9]+")


@TASKS.register("addition")
class ReversedAddition(TaskBase):
    name = "addition"
    chat = False  # the char-level model reads "71+52=" as is

    def prompt_issue(self, question: str) -> str | None:
        """Why ``question`` is not an addition prompt (``<digits>+<digits>=``), else None."""
        return shape_issue(question, _PROMPT, "an addition prompt (<digits>+<digits>=")

    def make_prompts(self, *, bucket: int, count: int, seed: int, id_prefix: str, mixed: bool = False) -> list[dict]:
        if bucket < 1:
            raise ValueError(f"digit length must be >= 1, got {bucket}")
        rng = random.Random(f"addition:{seed}:{bucket}:{'mixed' if mixed else 'equal'}")
        rows = []
        for index in range(count):
            lengths = [bucket, rng.randint(1, bucket) if mixed else bucket]
            rng.shuffle(lengths)
            a, b = (random_number(rng, n) for n in lengths)
            rows.append({
                "id": f"{id_prefix}d{bucket}-{index}",
                "prompt": f"{reverse_digits(a)}+{reverse_digits(b)}=",
                "bucket": str(bucket),
                "meta": json.dumps({"digits": bucket}),
                "answer": reverse_digits(a + b),
            })
        return rows

    def extract_answer(self, completion: str, prompt: dict | None = None) -> str | None:
        answer = completion.strip()
        return answer if ANSWER_DIGITS.fullmatch(answer) else None

    def format_issue(self, prompt: dict, answer: str) -> str | None:
        # The sum of numbers of at most n digits (one of them n) has n or n+1 digits. Models extrapolating
        # past their training lengths mostly fail by stopping early, which this catches
        # without looking at the truth (Lee et al.'s length filter).
        digits = max(len(operand) for operand in prompt["prompt"].rstrip("=").split("+"))
        if len(answer) not in (digits, digits + 1):
            return "format:length"
        return leading_zero_issue(answer)

    def views(self, question: str, count: int) -> list[str]:
        # Questions with the same sum. First b+a (addition commutes; the reversed sum is the same text
        # either way), then the sum split anew, a'+b' = a+b with b' of a random length up to the prompt's
        # digits, and its b'+a'. The model's errors depend on the operands and their shape, so a wrong sum
        # that one question's samples agree on rarely wins the others' votes too.
        a, b = question.rstrip("=").split("+")
        out = [question] if a == b else [question, f"{b}+{a}="]
        total, digits = int(a[::-1]) + int(b[::-1]), max(len(a), len(b))
        rng = random.Random(f"views:{question}")  # the same question always gets the same views
        for _ in range(8 * count):  # tiny sums have few splits: stop trying rather than loop forever
            if len(out) >= count:
                break
            length = rng.randint(1, digits)
            low, high = max(_lowest(length), total - (10**digits - 1)), min(10**length - 1, total - 1)
            if low > high:
                continue
            second = rng.randint(low, high)
            split_a, split_b = reverse_digits(total - second), reverse_digits(second)
            for view in (f"{split_a}+{split_b}=", f"{split_b}+{split_a}="):
                if view not in out and len(out) < count:
                    out.append(view)
        return out[:count]

    def is_correct(self, answer: str | None, truth: str | None) -> bool:
        return answer is not None and answer == truth

    def steps(self, completion: str) -> list[str]:
        return list(completion)  # a step is a digit of the sum: the carry decision the model makes there

    def similar_prompts(self, prompt: dict, count: int, seed: int) -> list[dict]:
        # Similar = the same operand lengths and a carry out of exactly the same digits: what makes a sum
        # hard for these models is how far its carries run, so the new prompts pose the same difficulty
        # with fresh digits.
        a, b = prompt["prompt"].rstrip("=").split("+")
        carries = carry_pattern(a, b)
        rng = random.Random(f"similar:{seed}:{prompt['prompt']}")
        rows = []
        for k in range(count):
            x, y = operands_with_carries(rng, len(a), len(b), carries)
            rows.append({"id": f"{prompt['id']}-sim{k}", "prompt": f"{x}+{y}=", "bucket": prompt.get("bucket"),
                         "meta": json.dumps({"digits": max(len(a), len(b)), "similar_to": prompt["id"]}),
                         "answer": reverse_digits(int(x[::-1]) + int(y[::-1]))})
        return rows


def carry_pattern(a: str, b: str) -> list[bool]:
    """Whether each digit position of the reversed operands ``a`` + ``b`` carries into the next."""
    carries, carry = [], 0
    for i in range(max(len(a), len(b))):
        carry = int((int(a[i]) if i < len(a) else 0) + (int(b[i]) if i < len(b) else 0) + carry >= 10)
        carries.append(bool(carry))
    return carries


def operands_with_carries(rng: random.Random, length_a: int, length_b: int, carries: list[bool]) -> tuple[str, str]:
    """Two reversed operands of these lengths whose sum carries exactly at ``carries``: each position's digit pair
    is drawn uniformly from the pairs that give its carry (a pair always exists when ``carries`` came from operands
    of these lengths)."""
    def digits(length: int, i: int) -> range:
        if i >= length:
            return range(0, 1)  # past the operand's end: a 0 that is not written
        return range(1 if i == length - 1 and length > 1 else 0, 10)  # no leading zero

    a, b, carry_in = [], [], 0
    for i, carry_out in enumerate(carries):
        pairs = [(x, y) for x in digits(length_a, i) for y in digits(length_b, i)
                 if (x + y + carry_in >= 10) == carry_out]
        x, y = rng.choice(pairs)
        a.append(str(x))
        b.append(str(y))
        carry_in = int(carry_out)
    return "".join(a[:length_a]), "".join(b[:length_b])


def shape_issue(question: str, pattern: re.Pattern, shape: str) -> str | None:
    """Why ``question`` does not match ``pattern`` (``shape`` says what it should be), else None. Digit tasks."""
    if pattern.fullmatch(question):
        return None
    shown = question if len(question) <= 40 else question[:37] + "..."
    return f"not {shape}, at most {MAX_DIGITS} digits each): {shown!r} ({len(question)} characters)"


def leading_zero_issue(answer: str) -> str | None:
    """A reversed-digit answer ending in 0 has a leading zero: no number is written that way."""
    return "format:leading_zero" if len(answer) > 1 and answer.endswith("0") else None


def random_number(rng: random.Random, digits: int) -> int:
    """A uniformly drawn number of exactly ``digits`` digits (0-9 for one digit)."""
    return rng.randint(_lowest(digits), 10**digits - 1)


def _lowest(digits: int) -> int:
    return 0 if digits == 1 else 10 ** (digits - 1)


def reverse_digits(number: int) -> str:
    """``number`` written least-significant digit first (how these tasks write numbers)."""
    return str(number)[::-1]
