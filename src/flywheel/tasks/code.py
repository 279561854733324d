"""Programming problems: the model writes a Python program; tests decide what it does.

A prompt row's ``meta`` holds the test *inputs* (never the expected outputs, which are
the hidden ``answer``), in one of two styles:
  {"tests": [{"stdin": "1 2\\n"}, ...]}        the program is a script; its stdout is the output
  {"tests": [{"call": "add(1, 2)"}, ...]}      the program defines functions; ``repr`` of each call is the output
The user's data gives tests as ``[{"stdin": ..., "stdout": ...}]`` or ``[{"call": ..., "expected": <JSON value>}]``;
``split_tests`` turns them into those inputs plus the answer (a JSON list of expected outputs).

The extracted answer of a completion is the canonical signature of its behaviour:
the JSON list of its outputs on the prompt's test inputs (stdout with trailing
whitespace trimmed per line, ``repr`` for calls, ``error:<Type>`` / ``error:timeout``
for failures), run in ``flywheel.sandbox``. Programs that behave the same vote
together whatever their text; the vote never sees expected outputs. A program that
fails every test, or a completion without a ```python fence, has no answer.
``is_correct``: every output equals the expected one (all given tests pass).
Not done: self-generated tests for problems that ship none.
"""

from __future__ import annotations

import json
import re

from flywheel.errors import InputError
from flywheel.sandbox import Limits, run_program

INSTRUCTION = "Write a complete Python solution in one ```python code block."
FENCE = re.compile(r"```(?:python|py)[^\n]*\n(.*?)```", re.DOTALL)


class CodeTask:
    name = "code"
    chat = True

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        # Sampled programs repeat (low temperature, K samples, evaluate re-reads curated rows): run each once.
        self._outputs: dict[tuple[str, str], list[str]] = {}

    def make_prompts(self, *, bucket: int, count: int, seed: int, id_prefix: str, mixed: bool = False) -> list[dict]:
        raise InputError("config", "the code task has no prompt generator; set data.prompts and data.eval",
                         field="data.prompts")

    def user_message(self, question: str) -> str:
        return f"{question}\n{INSTRUCTION}"

    def extract_answer(self, completion: str, prompt: dict | None = None) -> str | None:
        program = extract_program(completion)
        tests = _test_inputs(prompt)
        if program is None or not tests:
            return None
        key = (program, json.dumps(tests))
        if key not in self._outputs:
            if len(self._outputs) >= 50_000:
                self._outputs.clear()
            self._outputs[key] = run_tests(program, tests, self.limits)
        outputs = self._outputs[key]
        if all(output.startswith("error:") for output in outputs):
            return None
        return json.dumps(outputs)

    def format_issue(self, prompt: dict, answer: str) -> str | None:
        return None

    def is_correct(self, answer: str | None, truth: str | None) -> bool:
        if answer is None or truth is None:
            return False
        outputs, expected = json.loads(answer), json.loads(truth)
        return len(outputs) == len(expected) and all(o == e for o, e in zip(outputs, expected))

    def split_tests(self, tests, *, source, row: int, field: str) -> tuple[list[dict], str | None]:
        """User tests -> (test inputs for ``meta``, answer: JSON list of expected outputs, None if any is missing)."""
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError:
                raise InputError(source, "tests must be a JSON list", row=row, field=field) from None
        if not isinstance(tests, list) or not tests:
            raise InputError(source, "tests must be a non-empty list", row=row, field=field)
        inputs, expected = [], []
        for test in tests:
            if isinstance(test, dict) and isinstance(test.get("stdin"), str):
                inputs.append({"stdin": test["stdin"]})
                expected.append(None if test.get("stdout") is None else normalise_stdout(str(test["stdout"])))
            elif isinstance(test, dict) and isinstance(test.get("call"), str):
                inputs.append({"call": test["call"]})
                expected.append(repr(test["expected"]) if "expected" in test else None)
            else:
                raise InputError(source, 'each test needs "stdin" (+"stdout") or "call" (+"expected")',
                                 row=row, field=field)
        styles = {next(iter(t)) for t in inputs}
        if len(styles) > 1:
            raise InputError(source, "tests mix stdin and call styles", row=row, field=field)
        return inputs, None if any(e is None for e in expected) else json.dumps(expected)


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


def _test_inputs(prompt: dict | None) -> list[dict]:
    if not prompt or not prompt.get("meta"):
        return []
    try:
        meta = json.loads(prompt["meta"])
    except json.JSONDecodeError:
        return []
    return meta.get("tests") or [] if isinstance(meta, dict) else []
