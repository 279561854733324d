"""The interface every task implements. Stages only talk to a task through it."""

from __future__ import annotations

from typing import Protocol


class Task(Protocol):
    name: str

    def make_prompts(self, *, bucket: int, count: int, seed: int, id_prefix: str, mixed: bool = False) -> list[dict]:
        """``count`` prompt rows (``schemas.PROMPTS``) of difficulty ``bucket``; deterministic in ``seed``.

        ``mixed``: vary the problem's shape within the bucket (for addition: operand lengths).

        Rows carry the hidden ``answer`` so the same call makes eval and audit sets;
        the generate stage never shows it to the model and curate never keeps it.
        """
        ...

    def extract_answer(self, completion: str) -> str | None:
        """The answer in a completion, normalised so equal answers compare equal; None if there is none."""
        ...

    def format_issue(self, prompt: dict, answer: str) -> str | None:
        """A stable reason string if ``answer`` cannot be right for ``prompt`` by its form alone, else None.

        Uses only the prompt, never the hidden truth (this is a filter, not a label).
        """
        ...

    def is_correct(self, answer: str | None, truth: str) -> bool:
        """Whether ``answer`` is equivalent to the reference ``truth`` (for evaluation and audits only)."""
        ...
