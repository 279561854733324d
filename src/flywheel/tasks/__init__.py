"""Tasks: what the prompts are, how an answer is read from a completion, when two answers agree.

Three tasks: reversed-digit addition (the embedded default, generated prompts), math
word problems and Python programming problems (prompts from the user's data, see
``flywheel.data``). ``load_task`` is an explicit if-chain rather than a registry.
"""

from __future__ import annotations

from flywheel.tasks.addition import ReversedAddition
from flywheel.tasks.base import Task, render_prompt, sft_row

TASKS = ("addition", "math", "code")
DATA_TASKS = ("math", "code")  # tasks without a prompt generator: data.prompts and data.eval are required


def load_task(name: str, code=None) -> Task:
    """The task ``name``; ``code`` (a ``CodeConfig``) sets the code task's sandbox limits."""
    if name == "addition":
        return ReversedAddition()
    if name == "math":
        from flywheel.tasks.math import MathTask  # math-verify and sympy load only when used

        return MathTask()
    if name == "code":
        from flywheel.sandbox import require
        from flywheel.tasks.code import CodeTask

        task = CodeTask() if code is None else CodeTask(limits=code.limits())
        require(task.limits)  # a sandbox this machine cannot provide fails before any stage's work
        return task
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")


__all__ = ["Task", "ReversedAddition", "load_task", "render_prompt", "sft_row", "TASKS", "DATA_TASKS"]
