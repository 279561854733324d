"""Programming problems: the model writes a Python program; its behaviour on test inputs is its vote.

Tests in the user's data are split when loaded (``split_tests``):
  * tests WITH an expected value -- ``{"stdin", "stdout"}``, ``{"call", "expected"}`` or an
    ``"assert f(1) == 2"`` string (``{"assert": ...}`` too) -- are hidden grading: they become the
    prompt's hidden ``answer`` (audit and eval files only) and never reach the model or the vote;
  * tests WITHOUT one -- ``{"stdin"}`` or ``{"call"}`` -- are plain inputs in the prompt's ``meta``.
A prompt row's ``meta`` is ``{"tests": [inputs], "style": "stdin" | "call"}``; the generate stage
may add ``"generated_tests"``: inputs the model wrote itself (CodeT-style, ``code.generated_tests``;
``test_message`` asks for them, ``extract_test_inputs`` reads them).

The extracted answer is JSON ``{"inputs", "outputs", "program"}``: the program's outputs on the
vote inputs (meta tests + generated tests; stdout trimmed per line, ``repr`` for calls,
``error:<Type>`` / ``error:crash`` / ``error:timeout`` for failures), run in ``flywheel.sandbox``.
``vote_key`` is what votes: the outputs, so programs that behave alike on the inputs vote together
whatever their text (with no inputs at all, only identical programs agree). A program failing every
input, or a completion without a ```python fence, has no answer. ``is_correct`` runs the answer's
program on the hidden tests: correct when every one passes.
"""

from __future__ import annotations

import ast
import json
import re

from flywheel.errors import InputError
from flywheel.sandbox import Limits, run_program
from flywheel.registry import TASKS
from flywheel.tasks.base import TaskBase, judge_message

INSTRUCTION = "Write a complete Python solution in one ```python code block."
FENCE = re.compile(r"```(?:python|py)[^\n]*\n(.*?)```", re.DOTALL)
ANY_FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
TEST_INSTRUCTIONS = {
    "call": ("Do not solve it. Write {count} different calls of the function it asks for, covering ordinary "
             "and edge cases: one call per line inside one ```python code block, arguments only "
             "(no expected values, no assert, no print)."),
    "stdin": ("Do not solve it. Write {count} different inputs for the program it asks for, covering ordinary "
              "and edge cases: each input in its own ``` code block, exactly as the program reads it "
              "from standard input (no expected outputs)."),
}


@TASKS.register("code")
class CodeTask(TaskBase):
    name = "code"
    chat = True
    generates_prompts = False  # prompts come from the user's data (data.prompts, data.eval)
    takes_tests = True  # prompt rows carry tests (split_tests); code.generated_tests asks the model for more
    judge_message = staticmethod(judge_message)

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        # Sampled programs repeat (low temperature, K samples, audits re-read answers): run each once.
        self._outputs: dict[tuple[str, str], list[str]] = {}
        self._grades: dict[tuple[str, str], bool] = {}

    @classmethod
    def build(cls, code=None) -> "CodeTask":
        """With ``code``'s sandbox limits; a sandbox this machine cannot provide fails here, before any stage."""
        from flywheel.sandbox import require

        task = cls() if code is None else cls(limits=code.limits())
        require(task.limits)
        return task

    def user_message(self, question: str) -> str:
        return f"{question}\n{INSTRUCTION}"

    def test_message(self, question: str, style: str, count: int) -> str:
        """The request for self-generated test inputs (the model sees the question, never a test)."""
        return f"{question}\n{TEST_INSTRUCTIONS[style].format(count=count)}"

    def extract_answer(self, completion: str, prompt: dict | None = None) -> str | None:
        program = extract_program(completion)
        if program is None:
            return None
        inputs = vote_inputs(prompt)
        outputs = self._run(program, inputs) if inputs else []
        if inputs and all(output.startswith("error:") for output in outputs):
            return None
        return json.dumps({"inputs": inputs, "outputs": outputs, "program": program})

    def vote_key(self, answer: str | None) -> str | None:
        """The part of an answer that votes: the outputs; without inputs, the program text itself."""
        if answer is None:
            return None
        parsed = json.loads(answer)
        return json.dumps(parsed["outputs"]) if parsed["outputs"] else "program:" + parsed["program"]

    def is_correct(self, answer: str | None, truth: str | None) -> bool:
        """Every hidden test passes when the answer's program runs on it (evaluation and audits only)."""
        if answer is None or truth is None:
            return False
        key = (json.loads(answer)["program"], truth)
        if key not in self._grades:
            if len(self._grades) >= 50_000:
                self._grades.clear()
            self._grades[key] = passes(key[0], json.loads(truth), self.limits)
        return self._grades[key]

    def _run(self, program: str, inputs: list[dict]) -> list[str]:
        key = (program, json.dumps(inputs))
        if key not in self._outputs:
            if len(self._outputs) >= 50_000:
                self._outputs.clear()
            self._outputs[key] = run_tests(program, inputs, self.limits)
        return self._outputs[key]

    def split_tests(self, tests, *, source, row: int, field: str) -> tuple[dict, str | None]:
        """User tests -> (``meta``: unlabeled inputs and their style; hidden answer: JSON list of the
        labeled tests, or None when there are none)."""
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError:
                raise InputError(source, "tests must be a JSON list", row=row, field=field) from None
        if not isinstance(tests, list) or not tests:
            raise InputError(source, "tests must be a non-empty list", row=row, field=field)
        inputs, hidden, styles = [], [], set()
        for test in tests:
            if isinstance(test, str) or (isinstance(test, dict) and isinstance(test.get("assert"), str)):
                source_text = test if isinstance(test, str) else test["assert"]
                if assert_expression(source_text) is None:
                    raise InputError(source, f"not a single assert statement: {source_text!r:.60}", row=row,
                                     field=field)
                hidden.append({"assert": source_text})
                styles.add("call")
            elif isinstance(test, dict) and isinstance(test.get("stdin"), str):
                if test.get("stdout") is None:
                    inputs.append({"stdin": test["stdin"]})
                else:
                    hidden.append({"stdin": test["stdin"], "stdout": normalise_stdout(str(test["stdout"]))})
                styles.add("stdin")
            elif isinstance(test, dict) and isinstance(test.get("call"), str):
                if "expected" in test:
                    hidden.append({"call": test["call"], "expected": repr(test["expected"])})
                else:
                    inputs.append({"call": test["call"]})
                styles.add("call")
            else:
                raise InputError(source, 'each test needs "stdin" (+"stdout"), "call" (+"expected") or is an '
                                 '"assert ..." string', row=row, field=field)
        if len(styles) > 1:
            raise InputError(source, "tests mix stdin and call/assert styles", row=row, field=field)
        return {"tests": inputs, "style": styles.pop()}, json.dumps(hidden) if hidden else None


def vote_inputs(prompt: dict | None) -> list[dict]:
    """The inputs programs vote on: the prompt's unlabeled tests, then its generated ones."""
    meta = prompt_meta(prompt)
    return list(meta.get("tests") or []) + list(meta.get("generated_tests") or [])


def prompt_meta(prompt: dict | None) -> dict:
    if not prompt or not prompt.get("meta"):
        return {}
    try:
        meta = json.loads(prompt["meta"])
    except json.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def input_style(prompt: dict | None) -> str:
    """'call' or 'stdin': the style of the prompt's tests; problems that ship none are scripts (stdin)."""
    return prompt_meta(prompt).get("style") or "stdin"


def extract_test_inputs(completion: str, style: str, max_tests: int) -> list[dict]:
    """Test inputs from a test-writing completion: de-duplicated, at most ``max_tests``.

    call: every line of a fenced block that is one bare call expression (``f(1, [2])``; a comparison
    or an assert is not one, so no expected value the model wrote is kept). stdin: the content of each
    fenced block that is not Python.
    """
    found: list[dict] = []
    for tag, body in ANY_FENCE.findall(completion):
        if style == "call":
            for line in body.splitlines():
                line = line.strip()
                if line and _is_call(line):
                    found.append({"call": line})
        elif tag.strip().lower() not in ("python", "py") and body.strip():
            found.append({"stdin": body if body.endswith("\n") else body + "\n"})
    unique = list({json.dumps(t, sort_keys=True): t for t in found}.values())
    return unique[:max_tests]


def _is_call(line: str) -> bool:
    try:
        tree = ast.parse(line, mode="eval")
    except (SyntaxError, ValueError):
        return False
    return isinstance(tree.body, ast.Call)


def assert_expression(source: str) -> str | None:
    """The tested expression of a one-statement ``assert`` (its message dropped), or None."""
    try:
        tree = ast.parse(source.strip())
    except (SyntaxError, ValueError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    return ast.unparse(tree.body[0].test)


def extract_program(completion: str) -> str | None:
    """The last ```python fenced block (models often sketch first, then give the final program)."""
    blocks = [b for b in FENCE.findall(completion) if b.strip()]
    return blocks[-1] if blocks else None


def normalise_stdout(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def run_tests(program: str, tests: list[dict], limits: Limits) -> list[str]:
    """Outputs of ``program`` on each test input (one sandbox run per stdin test, one for all calls)."""
    if "call" in tests[0]:
        result = run_program(program, calls=[t["call"] for t in tests], limits=limits)
        if result.results is not None:
            return result.results
        failure = "error:timeout" if result.timed_out else "error:crash"
        return [failure] * len(tests)
    outputs = []
    for test in tests:
        result = run_program(program, stdin=test["stdin"], limits=limits)
        if result.timed_out:
            outputs.append("error:timeout")
        elif result.returncode != 0:
            outputs.append("error:crash")
        else:
            outputs.append(normalise_stdout(result.stdout))
    return outputs


def passes(program: str, hidden: list[dict], limits: Limits) -> bool:
    """Whether ``program`` passes every hidden test: stdout equals, the call's repr equals, the assert holds."""
    stdin_tests = [t for t in hidden if "stdin" in t]
    if stdin_tests:
        outputs = run_tests(program, stdin_tests, limits)
        if any(o != t["stdout"] for o, t in zip(outputs, stdin_tests)):
            return False
    call_tests = [t for t in hidden if "stdin" not in t]
    if call_tests:
        # An assert becomes the call bool(<its expression>); it holds when that returns True.
        calls = [t["call"] if "call" in t else f"bool({assert_expression(t['assert'])})" for t in call_tests]
        wanted = [t["expected"] if "call" in t else "True" for t in call_tests]
        if run_tests(program, [{"call": c} for c in calls], limits) != wanted:
            return False
    return bool(hidden)
