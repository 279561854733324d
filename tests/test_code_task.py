"""Code answers: programs from ```python fences, run on the prompt's test inputs; behaviour is the vote's answer."""

import json

import pytest

from flywheel.errors import InputError
from flywheel.stages.vote import vote
from flywheel.tasks import load_task
from flywheel.tasks.code import extract_program

code = load_task("code")

CALL_TESTS = [{"call": "add(1, 2)", "expected": 3}, {"call": "add('a', 'b')", "expected": "ab"},
              {"call": "add([1], [2])", "expected": [1, 2]}]
STDIN_TESTS = [{"stdin": "3 4\n", "stdout": "7\n"}, {"stdin": "10 -2\n", "stdout": "8"}]


def prompt_with(tests):
    inputs, answer = code.split_tests(tests, source="t.jsonl", row=1, field="tests")
    return {"id": "p", "prompt": "...", "meta": json.dumps({"tests": inputs})}, answer


def fenced(body: str) -> str:
    return f"Here is my solution.\n```python\n{body}\n```\nDone."


def test_split_tests_keeps_expected_outputs_out_of_the_prompt():
    prompt, answer = prompt_with(CALL_TESTS)
    assert json.loads(prompt["meta"]) == {"tests": [{"call": "add(1, 2)"}, {"call": "add('a', 'b')"},
                                                    {"call": "add([1], [2])"}]}
    assert json.loads(answer) == ["3", "'ab'", "[1, 2]"]
    prompt, answer = prompt_with(STDIN_TESTS)
    assert "stdout" not in prompt["meta"] and json.loads(answer) == ["7", "8"]
    _, answer = prompt_with([{"call": "f(1)"}])
    assert answer is None  # no expected output: unlabeled


@pytest.mark.parametrize("tests, message", [
    ([], "non-empty list"),
    ("not json", "JSON list"),
    ([{"input": "x"}], '"stdin"'),
    ([{"call": "f(1)", "expected": 1}, {"stdin": "1"}], "mix"),
])
def test_split_tests_rejects_bad_tests(tests, message):
    with pytest.raises(InputError, match=message):
        code.split_tests(tests, source="t.jsonl", row=3, field="tests")


def test_extract_program_takes_the_last_python_fence():
    text = "```python\nx = 1\n```\nbetter:\n```py\nx = 2\n```\n```\nplain fence\n```"
    assert extract_program(text) == "x = 2\n"
    assert extract_program("no code here") is None


def test_programs_that_behave_alike_vote_together():
    prompt, truth = prompt_with(CALL_TESTS)
    completions = [
        fenced("def add(a, b):\n    return a + b"),
        fenced("def add(x, y):\n    total = x\n    total = total + y\n    return total"),
        fenced("def add(a, b):\n    return b + a"),  # differs on strings and lists
        fenced("def add(a, b):\n    raise ValueError"),  # fails every test: no answer
        "I don't know.",
    ]
    answers = [code.extract_answer(c, prompt) for c in completions]
    assert answers[0] == answers[1] == json.dumps(["3", "'ab'", "[1, 2]"])
    assert answers[2] == json.dumps(["3", "'ba'", "[2, 1]"])
    assert answers[3] is None and answers[4] is None
    assert [code.is_correct(a, truth) for a in answers] == [True, True, False, False, False]
    votes, _ = vote([{"prompt_id": "p", "sample_idx": i, "voter": 0, "answer": a} for i, a in enumerate(answers)])
    assert votes[0]["majority_answer"] == answers[0] and votes[0]["vote_share"] == pytest.approx(2 / 5)


def test_stdin_programs_and_failures_in_the_signature():
    prompt, truth = prompt_with(STDIN_TESTS)
    good = code.extract_answer(fenced("a, b = map(int, input().split())\nprint(a + b)  "), prompt)
    assert code.is_correct(good, truth)
    partial = code.extract_answer(fenced("a, b = map(int, input().split())\nassert b > 0\nprint(a + b)"), prompt)
    assert json.loads(partial) == ["7", "error:crash"] and not code.is_correct(partial, truth)


def test_no_tests_means_no_answer():
    assert code.extract_answer(fenced("print(1)"), {"id": "p", "prompt": "x", "meta": None}) is None
