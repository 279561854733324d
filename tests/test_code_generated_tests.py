"""Self-generated test inputs for the code task (CodeT-style) and the `code` config section.

The model writes test inputs (asked through the task's chat prompt, never shown a given test);
inputs are extracted, de-duplicated and capped; every sampled program runs on them and programs
vote by their outputs. Labeled tests stay hidden grading.
"""

import json

import pytest

from flywheel.config import CodeConfig, GenerateConfig, load_config
from flywheel.errors import InputError
from flywheel.generation import Completion
from flywheel.sandbox import Limits
from flywheel.rng import derive_seed
from flywheel.stages.generate import generate, with_generated_tests
from flywheel.stages.vote import vote
from flywheel.tasks import load_task
from flywheel.tasks.code import extract_test_inputs

code = load_task("code")
QUESTION = "Write a function add(a, b) that returns a + b."
HIDDEN = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]


class ScriptedModel:
    """A generation backend that answers from a script (test-writing requests get ``tests_reply``,
    solution requests the next program in turn) and records what it was asked."""

    tokenizer = None  # no chat template: the task's plain user message is the prompt

    def __init__(self, tests_reply: str, programs: list[str]):
        self.tests_reply, self.programs, self.asked = tests_reply, programs, []

    def generate(self, prompts, seeds, *, temperature, max_new_tokens):
        self.asked.append((list(prompts), [list(s) for s in seeds]))
        out = []
        for prompt, row_seeds in zip(prompts, seeds):
            if "Do not solve it" in prompt:
                out.append([Completion(self.tests_reply, 5, -1.0) for _ in row_seeds])
            else:
                out.append([Completion(f"```python\n{self.programs[j % len(self.programs)]}\n```", 5, -1.0)
                            for j, _ in enumerate(row_seeds)])
        return out


def labeled_prompt(prompt_id="p"):
    meta, answer = code.split_tests(HIDDEN, source="t", row=1, field="tests")
    return {"id": prompt_id, "prompt": QUESTION, "meta": json.dumps(meta)}, answer


def test_call_inputs_are_bare_calls_deduplicated_and_capped():
    reply = ("Tests:\n```python\nadd(1, 2)\nadd(1, 2)\nassert add(5, 5) == 10\nadd(0, 0) == 0\nprint('x')\n"
             "add('a', 'b')\nx = add(3, 3)\nadd(-1,\n```\nadd(7, 7) outside a fence\n```\nadd([1], [2])\n```")
    assert extract_test_inputs(reply, "call", 10) == [
        {"call": "add(1, 2)"}, {"call": "print('x')"}, {"call": "add('a', 'b')"}, {"call": "add([1], [2])"}]
    assert extract_test_inputs(reply, "call", 2) == [{"call": "add(1, 2)"}, {"call": "print('x')"}]


def test_stdin_inputs_are_non_python_fenced_blocks():
    reply = "```\n3 4\n```\n```text\n3 4\n```\n```python\nprint(1)\n```\n```\n10 -2```\n```\n\n```"
    assert extract_test_inputs(reply, "stdin", 10) == [{"stdin": "3 4\n"}, {"stdin": "10 -2\n"}]


def test_test_writing_prompt_shows_the_question_never_a_given_test():
    prompt, _ = labeled_prompt()
    model = ScriptedModel("```python\nadd(1, 2)\n```", ["def add(a, b):\n    return a + b"])
    with_generated_tests([prompt], [model], GenerateConfig(), CodeConfig(), task=code, round_index=3)
    (texts, seeds), = model.asked
    assert QUESTION in texts[0] and "Do not solve it" in texts[0]
    assert "add(1, 2)" not in texts[0] and "== 3" not in texts[0]
    assert seeds == [[derive_seed("tests", 3, "p", 0, 0)]]


def test_missing_always_off():
    labeled, _ = labeled_prompt("labeled")
    unlabeled = {"id": "unlabeled", "prompt": QUESTION,
                 "meta": json.dumps({"tests": [{"call": "add(9, 9)"}], "style": "call"})}
    reply = "```python\nadd(1, 2)\nadd(2, 3)\n```"

    def generated(mode):
        model = ScriptedModel(reply, ["pass"])
        out = with_generated_tests([labeled, unlabeled], [model], GenerateConfig(), CodeConfig(generated_tests=mode),
                                   task=code, round_index=1)
        return {p["id"]: json.loads(p["meta"]).get("generated_tests") for p in out}

    # missing: only the problem without unlabeled inputs (its labeled asserts never vote) gets generated ones
    assert generated("missing") == {"labeled": [{"call": "add(1, 2)"}, {"call": "add(2, 3)"}], "unlabeled": None}
    assert generated("always")["unlabeled"] == [{"call": "add(1, 2)"}, {"call": "add(2, 3)"}]
    samples = generate([labeled], [ScriptedModel(reply, ["def add(a, b):\n    return a + b"])],
                       GenerateConfig(samples_per_prompt=1), task=code, round_index=1,
                       code=CodeConfig(generated_tests="off"))
    assert json.loads(samples[0]["answer"])["inputs"] == []


def test_members_pool_their_inputs_up_to_the_cap():
    prompt, _ = labeled_prompt()
    first = ScriptedModel("```python\nadd(1, 2)\nadd(2, 3)\n```", ["pass"])
    second = ScriptedModel("```python\nadd(2, 3)\nadd(4, 5)\nadd(6, 7)\n```", ["pass"])
    (out,) = with_generated_tests([prompt], [first, second], GenerateConfig(),
                                  CodeConfig(max_tests=3, test_samples=2), task=code, round_index=1)
    assert json.loads(out["meta"])["generated_tests"] == [{"call": "add(1, 2)"}, {"call": "add(2, 3)"},
                                                          {"call": "add(4, 5)"}]
    assert second.asked[0][1] == [[derive_seed("tests", 1, "p", 1, j) for j in range(2)]]


def test_programs_vote_on_generated_inputs_and_hidden_asserts_grade():
    prompt, truth = labeled_prompt()
    programs = ["def add(a, b):\n    return a + b",
                "def add(x, y):\n    return sum([x, y])",  # same behaviour on the generated ints
                "def add(a, b):\n    return a * b"]  # agrees on add(2, 2) only
    model = ScriptedModel("```python\nadd(2, 2)\nadd(1, 5)\nadd(3, 3)\n```", programs)
    samples = generate([prompt], [model], GenerateConfig(samples_per_prompt=3), task=code, round_index=1,
                       code=CodeConfig())
    answers = [json.loads(s["answer"]) for s in samples]
    assert all(a["inputs"] == [{"call": "add(2, 2)"}, {"call": "add(1, 5)"}, {"call": "add(3, 3)"}] for a in answers)
    assert [a["outputs"] for a in answers] == [["4", "6", "6"], ["4", "6", "6"], ["4", "5", "9"]]
    (verdict,), agreement = vote(samples, key=code.vote_key)
    assert verdict["vote_share"] == pytest.approx(2 / 3) and [a["agrees"] for a in agreement] == [True, True, False]
    assert code.is_correct(verdict["majority_answer"], truth)  # the hidden asserts grade the winning program
    assert not code.is_correct(samples[2]["answer"], truth)


def test_generated_inputs_are_deterministic_on_the_tiny_chat_model(tiny_chat_model):
    from flywheel.stages.generate import load_backends

    prompt, _ = labeled_prompt()
    backends = load_backends(tiny_chat_model, batch_size=4, device="cpu", progress=False, precision="fp32")
    config, settings = GenerateConfig(temperature=1.0), CodeConfig(test_max_new_tokens=16, test_samples=2)
    first = with_generated_tests([prompt], backends, config, settings, task=code, round_index=1)
    again = with_generated_tests([prompt], backends, config, settings, task=code, round_index=1)
    assert first == again and "generated_tests" in json.loads(first[0]["meta"])


def test_code_config_threads_to_the_sandbox():
    config = load_config(None, ["code.timeout_s=2.5", "code.cpu_s=2", "code.memory_mb=256", "code.file_mb=1"])
    assert load_task("code", config.code).limits == Limits(wall_seconds=2.5, cpu_seconds=2, memory_mb=256, file_mb=1)
    assert load_task("code").limits == Limits()
    slow = load_task("code", load_config(None, ["code.timeout_s=1"]).code)
    prompt = {"id": "p", "prompt": "x", "meta": json.dumps({"tests": [{"stdin": ""}, {"stdin": "1"}]})}
    loop = "```python\nimport sys\nif sys.stdin.read():\n    while True:\n        pass\nprint(1)\n```"
    assert json.loads(slow.extract_answer(loop, prompt))["outputs"] == ["1", "error:timeout"]


@pytest.mark.parametrize("override, message", [
    ("code.timeout_s=0", "field 'code.timeout_s': must be > 0"),
    ("code.memory_mb=10", "field 'code.memory_mb': must be >= 64"),
    ("code.max_tests=0", "field 'code.max_tests': must be > 0"),
    ("code.generated_tests=sometimes", "field 'code.generated_tests': must be one of off, missing, always"),
    ("code.timeout_s=soon", "field 'code.timeout_s': expected float"),
])
def test_bad_code_settings_are_one_line_config_errors(override, message):
    with pytest.raises(InputError, match=message) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_cli_reports_a_bad_code_setting_with_exit_2(capsys):
    from flywheel.cli import main

    assert main(["config", "-s", "code.memory_mb=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flywheel: error:") and "code.memory_mb" in err and "\n" not in err
