"""generate.search=step_beam: the K samples of a prompt grown a step at a time, each step chosen by how many of its
rollouts agree with the rollouts' majority; the rows are ordinary samples with the search's cost beside them."""

import pytest

from flywheel import io, schemas
from flywheel.config import GenerateConfig
from flywheel.errors import ConfigError
from flywheel.generation import Completion
from flywheel.stages.generate import generate, load_backends
from flywheel.stages.step_search import step_beam
from flywheel.tasks import load_task

TASK = load_task("addition")


class CharTokenizer:
    """Counts one token per character, as the default model's tokenizer does."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [list(text) for text in texts]}


class Scripted:
    """A stand-in policy for the arithmetic only. From the empty prefix, a rollout whose seed is divisible by
    ``wrong_every`` starts with a wrong digit and goes on wrong; every other rollout writes ``truth``. From a
    prefix that is right so far it finishes right; from a wrong one it writes nines. Records what it was asked."""

    tokenizer = CharTokenizer()

    def __init__(self, truth: str, wrong_every: int):
        self.truth, self.wrong_every = truth, wrong_every
        self.calls = []

    def generate(self, prompts, seeds, *, temperature, max_new_tokens):
        self.calls.append((prompts, max_new_tokens))
        out = []
        for text, row in zip(prompts, seeds):
            prefix = text.split("=", 1)[1]
            completions = []
            for seed in row:
                if not prefix and seed % self.wrong_every == 0:
                    rest = "9" * len(self.truth)
                elif self.truth.startswith(prefix):
                    rest = self.truth[len(prefix):]
                else:
                    rest = "9" * (len(self.truth) - len(prefix))
                rest = rest[:max_new_tokens]
                completions.append(Completion(text=rest, n_tokens=len(rest) + 1, logprob=0.0))
            out.append(completions)
        return out

    def score(self, prompts, completions, *, temperature):
        return [(-float(len(c)), len(c) + 1) for c in completions]


def test_the_beam_keeps_the_steps_whose_rollouts_agree_with_the_majority_and_counts_every_token():
    prompts = [{"id": "p", "prompt": "123+111="}]  # 321 + 111 = 432, written "234"
    policy = Scripted("234", wrong_every=3)
    config = GenerateConfig(search="step_beam", samples_per_prompt=4, search_rollouts=2)
    rows = step_beam(prompts, policy, config, task=TASK, round_index=1, voter=0)
    first_depth = policy.generate(["123+111="], [[1, 2, 3, 4, 5, 6, 7, 8]], temperature=1, max_new_tokens=9)[0]
    assert "999" in [c.text for c in first_depth]  # the policy does go wrong from the empty prefix
    assert [r["sample_idx"] for r in rows] == [0, 1, 2, 3] and {r["voter"] for r in rows} == {0}
    assert [r["completion"] for r in rows] == ["234"] * 4  # the wrong first digit never keeps a slot
    assert all(r["answer"] == TASK.extract_answer("234") for r in rows)
    # n_tokens and logprob are the finished completion's score; search_tokens is every rollout's tokens:
    # 4 slots x 2 rollouts of 4, then 3, then 2 tokens (end of sequence included)
    assert [(r["n_tokens"], r["logprob"]) for r in rows] == [(4, -3.0)] * 4
    assert sum(r["search_tokens"] for r in rows) == 8 * (4 + 3 + 2)
    # depth d continues d-digit prefixes within what they leave of max_new_tokens: one call per depth here
    assert [budget for _, budget in policy.calls[:3]] == [32, 31, 30] and len(policy.calls) == 4
    for row in rows:
        schemas.SAMPLES.check(row, source="test")


def test_a_prefix_that_used_every_token_is_a_sample_as_it_stands():
    policy = Scripted("2345678", wrong_every=10**9)
    config = GenerateConfig(search="step_beam", samples_per_prompt=2, search_rollouts=1, max_new_tokens=3)
    rows = step_beam([{"id": "p", "prompt": "1234567+1111111="}], policy, config, task=TASK, round_index=1, voter=2)
    assert [r["completion"] for r in rows] == ["234", "234"] and {r["voter"] for r in rows} == {2}
    assert [budget for _, budget in policy.calls] == [3, 2, 1]


@pytest.mark.parametrize("override, field", [
    ({"views": 2}, "generate.views"), ({"backend": "vllm"}, "generate.backend"), ({"search": "tree"}, "generate.search"),
    ({"search_rollouts": 0}, "generate.search_rollouts")])
def test_settings_the_search_cannot_honour_are_config_errors(override, field):
    with pytest.raises(ConfigError) as error:
        GenerateConfig(**{"search": "step_beam", **override})
    assert field in str(error.value)


def test_the_search_on_the_tiny_model_writes_ordinary_samples_deterministically(tiny_seed, tmp_path):
    prompts = TASK.make_prompts(bucket=2, count=4, seed=0, id_prefix="p")
    backends = load_backends(tiny_seed, batch_size=64, device="cpu", progress=False, precision="fp32")
    config = GenerateConfig(search="step_beam", samples_per_prompt=3, search_rollouts=2, max_new_tokens=8)
    rows = generate(prompts, backends, config, task=TASK, round_index=1)
    assert rows == generate(prompts, backends, config, task=TASK, round_index=1)
    assert len(rows) == len(prompts) * 3 * len(backends)
    io.write_rows(tmp_path / "samples.parquet", rows, schemas.SAMPLES)
    assert io.read_rows(tmp_path / "samples.parquet", schemas.SAMPLES) == rows
    plain = generate(prompts, backends, GenerateConfig(samples_per_prompt=3, max_new_tokens=8), task=TASK,
                     round_index=1)
    assert all(r.get("search_tokens") is None for r in plain)  # plain sampling: the cost is n_tokens
    # the search spends more than drawing the samples whole: a sample of S digits (S + 1 tokens) kept its slot
    # open S steps, each running search_rollouts rollouts of at least one token
    assert sum(r["search_tokens"] for r in rows) > sum(r["n_tokens"] for r in plain)
    assert all(r["search_tokens"] >= config.search_rollouts * (r["n_tokens"] - 1) for r in rows)
    # a searched sample's score is what generation records for the same text: the vote weighs both alike
    drawn = plain[0]
    [(logprob, n_tokens)] = backends[0].score([prompts[0]["prompt"]], [drawn["completion"]],
                                              temperature=config.temperature)
    assert n_tokens == drawn["n_tokens"] and logprob == pytest.approx(drawn["logprob"], abs=1e-4)


def test_a_step_is_a_line_for_chat_models_and_each_budget_gets_its_own_call(tiny_chat_model):
    task = load_task("math")
    [backend] = load_backends(tiny_chat_model, batch_size=64, device="cpu", progress=False, precision="fp32")
    config = GenerateConfig(search="step_beam", samples_per_prompt=2, search_rollouts=2, max_new_tokens=24,
                            temperature=1.0)
    prompts = [{"id": "q1", "prompt": "What is 2 + 3?"}, {"id": "q2", "prompt": "What is 7 * 6?"}]
    rows = step_beam(prompts, backend, config, task=task, round_index=1, voter=0)
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [("q1", 0), ("q1", 1), ("q2", 0), ("q2", 1)]
    for row in rows:  # within the budget however many lines the untrained model wrote
        assert len(backend.tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) <= 24
        assert row["search_tokens"] >= config.search_rollouts
        schemas.SAMPLES.check(row, source="test")
