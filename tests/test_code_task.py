"""Code answers: programs from ```python fences, run on the prompt's unlabeled test inputs; behaviour votes.

Labeled tests (expected outputs, asserts) are hidden grading: never in ``meta``, never in a vote.
"""

import json

import pytest

from flywheel.errors import InputError
from flywheel.stages.vote import vote
from flywheel.tasks import load_task
from flywheel.tasks.code import extract_program

code = load_task("code")

CALL_TESTS = [{"call": "add(1, 2)", "expected": 3}, {"call": "add('a', 'b')", "expected": "ab"},
              {"call": "add([1], [2])", "expected": [1, 2]}]
CALL_INPUTS = [{"call": t["call"]} for t in CALL_TESTS]  # the same calls without expected values
STDIN_TESTS = [{"stdin": "3 4\n", "stdout": "7\n"}, {"stdin": "10 -2\n", "stdout": "8"}]
ASSERTS = ["assert add(1, 2) == 3", "assert add('a', 'b') == 'ab', 'strings concatenate'"]


def prompt_with(tests):
    meta, answer = code.split_tests(tests, source="t.jsonl", row=1, field="tests")
    return {"id": "p", "prompt": "...", "meta": json.dumps(meta)}, answer


def fenced(body: str) -> str:
    return f"Here is my solution.\n```python\n{body}\n```\nDone."


def test_labeled_tests_are_hidden_and_unlabeled_inputs_reach_meta():
    prompt, answer = prompt_with(CALL_TESTS)
    assert json.loads(prompt["meta"]) == {"tests": [], "style": "call"}  # nothing labeled reaches the prompt
    assert json.loads(answer) == [{"call": "add(1, 2)", "expected": "3"}, {"call": "add('a', 'b')", "expected": "'ab'"},
                                  {"call": "add([1], [2])", "expected": "[1, 2]"}]
    prompt, answer = prompt_with(STDIN_TESTS)
    assert json.loads(prompt["meta"]) == {"tests": [], "style": "stdin"}
    assert [t["stdout"] for t in json.loads(answer)] == ["7", "8"]
    prompt, answer = prompt_with([{"call": "f(1)"}, {"call": "f(2)", "expected": 4}])
    assert json.loads(prompt["meta"])["tests"] == [{"call": "f(1)"}] and json.loads(answer) == [
        {"call": "f(2)", "expected": "4"}]
    _, answer = prompt_with([{"call": "f(1)"}])
    assert answer is None  # no expected output: unlabeled


def test_assert_tests_are_hidden_grading_only():
    prompt, truth = prompt_with(ASSERTS + [{"assert": "assert add(0, 0) == 0"}])
    assert "assert" not in prompt["meta"] and json.loads(prompt["meta"]) == {"tests": [], "style": "call"}
    good = code.extract_answer(fenced("def add(a, b):\n    return a + b"), prompt)
    wrong = code.extract_answer(fenced("def add(a, b):\n    return 3"), prompt)
    # No vote inputs: both answers carry no outputs, so the asserts cannot have shaped them.
    assert json.loads(good)["outputs"] == [] == json.loads(wrong)["outputs"]
    assert code.is_correct(good, truth) and not code.is_correct(wrong, truth)
    crashing = code.extract_answer(fenced("def add(a, b):\n    raise ValueError"), prompt)
    assert not code.is_correct(crashing, truth)


@pytest.mark.parametrize("tests, message", [
    ([], "non-empty list"),
    ("not json", "JSON list"),
    ([{"input": "x"}], '"stdin"'),
    ([{"call": "f(1)", "expected": 1}, {"stdin": "1"}], "mix"),
    (["assert f(1) == 1", {"stdin": "1"}], "mix"),
    (["f(1) == 1"], "not a single assert statement"),
    (["assert f(1) == 1\nassert f(2) == 2"], "not a single assert statement"),
])
def test_split_tests_rejects_bad_tests(tests, message):
    with pytest.raises(InputError, match=message):
        code.split_tests(tests, source="t.jsonl", row=3, field="tests")


def test_extract_program_takes_the_last_python_fence():
    text = "```python\nx = 1\n```\nbetter:\n```py\nx = 2\n```\n```\nplain fence\n```"
    assert extract_program(text) == "x = 2\n"
    assert extract_program("no code here") is None


def test_programs_that_behave_alike_on_the_inputs_vote_together():
    prompt = {"id": "p", "prompt": "...", "meta": json.dumps({"tests": CALL_INPUTS, "style": "call"})}
    _, truth = prompt_with(CALL_TESTS)
    completions = [
        fenced("def add(a, b):\n    return a + b"),
        fenced("def add(x, y):\n    total = x\n    total = total + y\n    return total"),
        fenced("def add(a, b):\n    return b + a"),  # differs on strings and lists
        fenced("def add(a, b):\n    raise ValueError"),  # fails every input: no answer
        "I don't know.",
    ]
    answers = [code.extract_answer(c, prompt) for c in completions]
    keys = [code.vote_key(a) for a in answers]
    assert answers[0] != answers[1] and keys[0] == keys[1] == json.dumps(["3", "'ab'", "[1, 2]"])
    assert keys[2] == json.dumps(["3", "'ba'", "[2, 1]"])
    assert answers[3] is None and answers[4] is None and keys[3] is None
    assert [code.is_correct(a, truth) for a in answers] == [True, True, False, False, False]
    samples = [{"prompt_id": "p", "sample_idx": i, "voter": 0, "answer": a} for i, a in enumerate(answers)]
    (verdict,), agreement = vote(samples, key=code.vote_key)
    assert code.vote_key(verdict["majority_answer"]) == keys[0] and verdict["vote_share"] == pytest.approx(2 / 5)
    assert [a["agrees"] for a in agreement] == [True, True, False, False, False]
    assert verdict["n_answers"] == 2
    (plain,), _ = vote(samples)  # without the task's key every program text is its own answer
    assert plain["vote_share"] == pytest.approx(1 / 5)


def test_stdin_programs_and_failures_in_the_signature():
    inputs = {"id": "p", "prompt": "...", "meta": json.dumps({"tests": [{"stdin": "3 4\n"}, {"stdin": "10 -2\n"}],
                                                              "style": "stdin"})}
    _, truth = prompt_with(STDIN_TESTS)
    good = code.extract_answer(fenced("a, b = map(int, input().split())\nprint(a + b)  "), inputs)
    assert json.loads(good)["outputs"] == ["7", "8"] and code.is_correct(good, truth)
    partial = code.extract_answer(fenced("a, b = map(int, input().split())\nassert b > 0\nprint(a + b)"), inputs)
    assert json.loads(partial)["outputs"] == ["7", "error:crash"] and not code.is_correct(partial, truth)


def test_without_inputs_only_identical_programs_agree():
    bare = {"id": "p", "prompt": "x", "meta": None}
    one, same, other = (code.extract_answer(fenced(body), bare) for body in ("print(1)", "print(1)", "print( 1)"))
    assert one == same and code.vote_key(one) == code.vote_key(same) != code.vote_key(other)
    assert code.extract_answer("no program", bare) is None and not code.is_correct(one, None)
