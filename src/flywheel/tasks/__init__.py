"""Tasks: what the prompts are, how an answer is read from a completion, when two answers agree.

One module per task, each registering its class in ``flywheel.registry.TASKS``: reversed-digit
addition (the embedded default, generated prompts), multiplication (the worked example of
docs/extending.md), math word problems and Python programming problems (prompts from the user's data,
see ``flywheel.data``). ``tasks.base`` holds the interface (``Task``) and its optional abilities with
their defaults (``TaskBase``).
"""

from __future__ import annotations

from flywheel.registry import TASKS
from flywheel.tasks.addition import ReversedAddition
from flywheel.tasks.base import Task, TaskBase, render_prompt, sft_row


def load_task(name: str, code=None) -> Task:
    """The registered task ``name``; ``code`` (a ``CodeConfig``) sets the sandbox of tasks that run code."""
    return TASKS.get(name).build(code)


__all__ = ["Task", "TaskBase", "ReversedAddition", "load_task", "render_prompt", "sft_row", "TASKS"]
