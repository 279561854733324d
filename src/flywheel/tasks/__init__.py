"""Tasks: what the prompts are, how an answer is read from a completion, when two answers agree.

One task today (reversed-digit addition, the embedded default). ``load_task`` is an
explicit if-chain rather than a registry until there is a second implementation.
"""

from __future__ import annotations

from flywheel.tasks.addition import ReversedAddition
from flywheel.tasks.base import Task

TASKS = ("addition",)


def load_task(name: str) -> Task:
    if name == "addition":
        return ReversedAddition()
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")


__all__ = ["Task", "ReversedAddition", "load_task", "TASKS"]
