"""Math word problems (GSM8K / MATH style): the answer is the last ``\\boxed{...}`` or ``#### ...``.

Only locating the answer span is done by hand (the last ``\\boxed{`` with balanced
braces, or the text after the last ``####`` on its line). Reading the span and
deciding equivalence is math-verify's job (``parse`` / ``verify``; its LaTeX parser,
latex2sympy2_extended, ships a grammar for the antlr4 4.9.3 runtime installed here).

Voting needs equal strings for equivalent answers, so ``extract_answer`` returns a
canonical string derived from math-verify's parsed sympy value: decimals become
exact rationals ("0.5", "1/2", "\\frac{1}{2}", "\\dfrac12" all give "1/2"), an
equation ``x=3`` gives its right-hand side "3", thousands separators and units
math-verify drops ("5 cm", "\\$5") give "5". Answers math-verify cannot parse give
None (no answer), never a hand-made guess.
"""

from __future__ import annotations

import threading

from flywheel.registry import TASKS
from flywheel.tasks.base import TaskBase, judge_message

INSTRUCTION = "Solve the problem step by step, then give the final answer as \\boxed{answer}."


@TASKS.register("math")
class MathTask(TaskBase):
    name = "math"
    chat = True
    generates_prompts = False  # prompts come from the user's data (data.prompts, data.eval)
    judge_message = staticmethod(judge_message)

    def user_message(self, question: str) -> str:
        return f"{question}\n{INSTRUCTION}"

    def extract_answer(self, completion: str, prompt: dict | None = None) -> str | None:
        span = answer_span(completion)
        return None if span is None else canonical(span)

    # views: the question alone (no rephrasing whose completion is sure to answer the original);
    # vote_key: the answer itself, already canonical (equivalent answers are equal strings).

    def is_correct(self, answer: str | None, truth: str | None) -> bool:
        """math-verify's ``verify(gold, prediction)``; a truth without a boxed/#### span is read whole."""
        if answer is None or truth is None:
            return False
        from math_verify import verify

        gold = _parse(answer_span(truth) or truth)
        predicted = _parse(answer)
        return bool(gold and predicted and verify(gold, predicted, timeout_seconds=_timeout()))


def answer_span(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces allowed), else of the last ``#### ...`` line."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth, index = 0, start + len("\\boxed")
        for index in range(start + len("\\boxed"), len(text)):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    content = text[start + len("\\boxed{"):index].strip()
                    if content:
                        return content
                    break
        start = text.rfind("\\boxed{", 0, start)  # unbalanced or empty: try an earlier one
    marker = text.rfind("####")
    if marker != -1:
        content = text[marker + 4:].splitlines()[0].strip() if text[marker + 4:].strip() else ""
        return content or None
    return None


def _parse(span: str) -> list:
    """math-verify's parse of a span: as LaTeX (``$...$``) first, then as a plain expression."""
    from math_verify import parse

    for text in (f"${span}$", span):
        try:
            parsed = parse(text, parsing_timeout=_timeout())
        except Exception:  # math-verify raises on pathological input; that is "no answer"
            parsed = []
        if parsed and _usable(parsed[0]):
            return parsed
    return []


def _timeout() -> int | None:
    """math-verify's time limit uses SIGALRM, which only the main thread may set; elsewhere it would
    raise on every call (and every answer would silently read as none), so threads run without one."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _usable(value) -> bool:
    """A parse worth voting on: a sympy value whose free symbols are not text read letter by letter."""
    import sympy  # sympy loads when a math answer is read, not when the task registry lists the tasks

    if not isinstance(value, sympy.Basic):
        return False
    value = _rhs(value)
    # "18 dollars" in LaTeX mode reads as 18*d*o*l*l*a*r*s; the plain-text reading (18) is the answer.
    return len(value.free_symbols) <= 1 if isinstance(value, sympy.Expr) else True


def _rhs(value):
    import sympy

    if isinstance(value, sympy.Eq) and isinstance(value.lhs, sympy.Symbol):
        return value.rhs  # "x = 3" answers 3
    return value


def canonical(span: str) -> str | None:
    """One string per value: exact rationals for numbers, sympy's printing for the rest."""
    import sympy

    parsed = _parse(span)
    if not parsed:
        return None
    value = _rhs(parsed[0])
    if isinstance(value, sympy.Expr):
        try:
            value = value.doit()
            if value.is_number:
                value = sympy.nsimplify(value, rational=True) if value.has(sympy.Float) else sympy.simplify(value)
        except Exception:  # sympy can fail on odd expressions; the unsimplified value still votes
            pass
    return sympy.sstr(value)
