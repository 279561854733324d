"""The interface every task implements. Stages only talk to a task through it.

A prompt row (``schemas.PROMPTS``) holds the bare question in ``prompt``; how the
model sees it is decided at generation and training time, per tokenizer, by
``render_prompt`` and ``sft_row`` below, so the same data serves a char-level model
and an instruct model with a chat template.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Protocol


class Task(Protocol):
    name: str
    chat: bool  # wrap prompts in the model's chat template when it has one (addition: False, raw text)

    def make_prompts(self, *, bucket: int, count: int, seed: int, id_prefix: str, mixed: bool = False) -> list[dict]:
        """``count`` prompt rows (``schemas.PROMPTS``) of difficulty ``bucket``; deterministic in ``seed``.

        ``mixed``: vary the problem's shape within the bucket (for addition: operand lengths).

        Rows carry the hidden ``answer`` so the same call makes eval and audit sets;
        the generate stage never shows it to the model and curate never keeps it.
        Tasks without a generator (math, code) raise ``InputError``: their prompts come
        from the user's data (``data.prompts``, ``data.eval``; see ``flywheel.data``).
        """
        ...

    def user_message(self, question: str) -> str:
        """The text the model is asked: the question plus the task's answer-format instruction."""
        ...

    def extract_answer(self, completion: str, prompt: dict | None = None) -> str | None:
        """The answer in a completion in canonical form, so equivalent answers are equal strings; None if none.

        The vote groups samples by this string. ``prompt`` is the prompt row (code needs its tests).
        """
        ...

    def format_issue(self, prompt: dict, answer: str) -> str | None:
        """A stable reason string if ``answer`` cannot be right for ``prompt`` by its form alone, else None.

        Uses only the prompt, never the hidden truth (this is a filter, not a label).
        """
        ...

    def views(self, question: str, count: int) -> list[str]:
        """Up to ``count`` questions with the same answer as ``question``, itself first; deterministic.

        Addition: ``b+a=``, then the same sum split into other operands. ``generate.views`` splits a
        prompt's samples across them, so one question's systematic errors meet the others' votes.
        ``[question]`` when the task knows none."""
        ...

    def vote_key(self, answer: str | None) -> str | None:
        """The part of ``answer`` that votes (equal keys agree). The answer itself for addition and math;
        code answers carry their program for grading, and only the program's outputs vote."""
        ...

    def is_correct(self, answer: str | None, truth: str | None) -> bool:
        """Whether ``answer`` is equivalent to the reference ``truth`` (for evaluation and audits only)."""
        ...


class TaskBase:
    """The optional abilities of a task, with their defaults; a task class subclasses this and implements
    the rest of ``Task``. Stages ask these attributes instead of a task's name (docs/extending.md).

    ``generates_prompts``: ``make_prompts`` makes prompts; False: they come from the user's data
    (``data.prompts`` and ``data.eval`` are then required). ``takes_tests``: prompt rows carry a tests
    column (``split_tests``; code), which also enables ``code.generated_tests``. ``judge_message``: the
    yes/no request ``vote.method=self_judge`` asks a chat model (None: the judge scores log-probs).
    ``similar_prompts``: TT-SI's new prompts like an uncertain one (None: the champion writes them from
    ``similar_message``, which only a chat task can ask).
    """

    name: ClassVar[str]
    chat: ClassVar[bool] = False
    generates_prompts: ClassVar[bool] = True
    takes_tests: ClassVar[bool] = False
    judge_message: ClassVar[Callable[[str, str], str] | None] = None

    @classmethod
    def build(cls, code=None) -> "TaskBase":
        """The task for a config; ``code`` (a ``CodeConfig``) matters only to tasks that run programs."""
        return cls()

    def make_prompts(self, *, bucket: int, count: int, seed: int, id_prefix: str, mixed: bool = False) -> list[dict]:
        from flywheel.errors import InputError

        raise InputError("config", f"the {self.name} task has no prompt generator; set data.prompts and data.eval",
                         field="data.prompts")

    def user_message(self, question: str) -> str:
        return question

    def prompt_issue(self, question: str) -> str | None:
        """Why the task cannot pose ``question`` (checked on every prompt file), else None: any text."""
        return None

    def format_issue(self, prompt: dict, answer: str) -> str | None:
        return None

    def views(self, question: str, count: int) -> list[str]:
        return [question]

    def vote_key(self, answer: str | None) -> str | None:
        return answer

    def steps(self, completion: str) -> list[str]:
        """A completion cut into its reasoning steps (they join back to it): one per line, the newline kept, and
        blank lines kept with the line before them (a paragraph break is not a step of its own).
        ``curate.step_rollouts`` scores each step by rollouts from the prefix that ends with it;
        ``generate.search: step_beam`` grows a sample a step at a time."""
        steps: list[str] = []
        for line in completion.splitlines(keepends=True):
            if steps and not line.strip():
                steps[-1] += line
            else:
                steps.append(line)
        return steps

    def similar_prompts(self, prompt: dict, count: int, seed: int) -> list[dict] | None:
        """TT-SI: ``count`` new prompt rows of the same kind and difficulty as ``prompt`` (ids ``<id>-sim<k>``,
        the hidden ``answer`` where the task knows it), deterministic in ``seed``. None: the task has no
        generator of its own, and the champion writes them from ``similar_message`` (chat tasks)."""
        return None

    def similar_message(self, question: str) -> str:
        """TT-SI for tasks without a generator: what the champion is asked to write one new prompt like ``question``."""
        return (f"Here is a problem:\n\n{question}\n\nWrite one new problem of the same kind and difficulty, "
                "with different details. Reply with the new problem only, without solving it.")


def vote_key_of(task):
    """The task's ``vote_key``, or None when it is the answer itself (the columnar vote then skips mapping every
    distinct answer through Python)."""
    return None if getattr(type(task), "vote_key", None) is TaskBase.vote_key else task.vote_key


JUDGE_INSTRUCTION = "Is the candidate answer correct? Reply with yes or no."


def check_prompts(task, rows: list[dict], source, field: str = "prompt") -> list[dict]:
    """Every prompt row's question is one the task can pose (``task.prompt_issue``): a bad row is one
    line naming the file, the row and the field."""
    from flywheel.errors import InputError

    for index, row in enumerate(rows, start=1):
        problem = task.prompt_issue(row["prompt"])
        if problem:
            raise InputError(source, problem, row=index, field=field)
    return rows


def judge_message(question: str, completion: str) -> str:
    """The yes/no judge request of ``vote.method=self_judge`` for chat tasks (math and code use it)."""
    return f"Question:\n{question}\n\nCandidate answer:\n{completion}\n\n{JUDGE_INSTRUCTION}"


def uses_chat_template(task, tokenizer) -> bool:
    """A chat task on a model whose tokenizer carries a chat template (instruct models)."""
    return bool(task.chat and tokenizer is not None and getattr(tokenizer, "chat_template", None))


def render_prompt(task, question: str, tokenizer) -> str:
    """The exact text generation feeds the tokenizer for ``question``.

    Non-chat tasks (addition) get the question unchanged. Chat tasks get the chat
    template with the generation prompt when the tokenizer has one, else the plain
    user message. The template usually writes the BOS token itself; a tokenizer that
    also adds BOS on encoding (Llama 3) would then see two, so it is removed from the
    text here -- TRL tokenizes templates with ``add_special_tokens=False`` for the same reason.
    """
    if not task.chat:
        return question
    return render_message(task, task.user_message(question), tokenizer)


def render_message(task, message: str, tokenizer) -> str:
    """A chat task's user ``message`` as generation feeds it: the chat template with the generation prompt
    when the tokenizer has one (BOS handled as in ``render_prompt``), else the message itself."""
    if not uses_chat_template(task, tokenizer):
        return message
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def sft_row(task, question: str, completion: str, tokenizer) -> dict:
    """One SFTTrainer prompt-completion row matching what ``render_prompt`` showed at generation.

    With a chat template the row is conversational and TRL applies the template itself
    (the loss still covers the completion only); otherwise prompt and completion are text.
    """
    if uses_chat_template(task, tokenizer):
        return {"prompt": [{"role": "user", "content": task.user_message(question)}],
                "completion": [{"role": "assistant", "content": completion}]}
    return {"prompt": render_prompt(task, question, tokenizer), "completion": completion}
