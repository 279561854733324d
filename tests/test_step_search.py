"""generate.search=step_beam: the K samples of a prompt grown a step at a time, each step chosen by how many of its
rollouts agree with the rollouts' majority; the rows are ordinary samples with the search's cost beside them."""

from collections import Counter

import pytest

from flywheel import io, schemas
from flywheel.config import GenerateConfig
from flywheel.errors import ConfigError
from flywheel.generation import Completion, Shard
from flywheel.stages.generate import generate, load_backends
from flywheel.rng import derive_seed
from flywheel.experimental.step_search import Offer, Slot, _advance, _budgets, step_beam
from flywheel.tasks import load_task

TASK = load_task("addition")


class CharTokenizer:
    """Counts one token per character, as the default model's tokenizer does."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [list(text) for text in texts]}


class Scripted:
    """A stand-in policy for the arithmetic only. A rollout whose seed is in ``wrong`` writes nines from where it
    starts; every other rollout writes the rest of ``truth`` from a prefix that is right so far, and nines from a
    wrong one. Every rollout ends with end of sequence unless ``max_new_tokens`` cuts it. Records each call's
    budget."""

    tokenizer = CharTokenizer()

    def __init__(self, truth: str, wrong: set[int] = frozenset()):
        self.truth, self.wrong = truth, set(wrong)
        self.calls = []

    def generate(self, prompts, seeds, *, temperature, max_new_tokens):
        self.calls.append(max_new_tokens)
        out = []
        for text, row in zip(prompts, seeds):
            prefix = text.split("=", 1)[1]
            completions = []
            for seed in row:
                right = seed not in self.wrong and self.truth.startswith(prefix)
                rest = self.truth[len(prefix):] if right else "9" * (len(self.truth) - len(prefix))
                cut = len(rest) >= max_new_tokens
                rest = rest[:max_new_tokens]
                completions.append(Completion(text=rest, n_tokens=len(rest) + (not cut), logprob=0.0,
                                              stopped=not cut))
            out.append(completions)
        return out

    def score(self, prompts, completions, *, temperature, stopped):
        return [(-float(len(c)), len(c) + end) for c, end in zip(completions, stopped)]


def search_seed(prompt_id, slot, depth, rollout, voter=0):
    return derive_seed("search", 1, prompt_id, voter, slot, depth, rollout)


def test_the_beam_keeps_the_steps_whose_rollouts_agree_with_the_majority_and_counts_every_token():
    prompts = [{"id": "p", "prompt": "123+111="}]  # 321 + 111 = 432, written "234"
    # At depth 0, 3 of the 8 rollouts go wrong (the second rollout of slots 0-2); at depth 1, slot 3's first.
    wrong = {search_seed("p", j, 0, 1) for j in range(3)} | {search_seed("p", 3, 1, 0)}
    policy = Scripted("234", wrong)
    config = GenerateConfig(search="step_beam", samples_per_prompt=4, search_rollouts=2)
    rows = step_beam(prompts, policy, config, task=TASK, round_index=1, voter=0)
    assert [r["sample_idx"] for r in rows] == [0, 1, 2, 3] and {r["voter"] for r in rows} == {0}
    assert [r["completion"] for r in rows] == ["234"] * 4  # a wrong digit never keeps a slot
    assert all(r["answer"] == TASK.extract_answer("234") for r in rows)
    # n_tokens and logprob are the finished completion's score; search_tokens is every rollout's tokens:
    # 4 slots x 2 rollouts of 4, then 3, then 2 tokens (end of sequence included)
    assert [(r["n_tokens"], r["logprob"]) for r in rows] == [(4, -3.0)] * 4
    assert sum(r["search_tokens"] for r in rows) == 8 * (4 + 3 + 2)
    # depth d continues d-digit prefixes within what they leave of max_new_tokens (32), rounded down to its 16th
    # (2 tokens): one call per depth here
    assert policy.calls == [32, 30, 30]
    for row in rows:
        schemas.SAMPLES.check(row, source="test")


def test_plain_majority_rule_without_the_beam_would_have_kept_wrong_digits():
    """The same policy drawn whole: the wrong rollouts stay samples (the test above is not vacuous)."""
    wrong = {search_seed("p", j, 0, 1) for j in range(3)}
    policy = Scripted("234", wrong)
    drawn = policy.generate(["123+111="], [[search_seed("p", j, 0, i) for j in range(4) for i in range(2)]],
                            temperature=1, max_new_tokens=32)[0]
    assert sorted(c.text for c in drawn) == ["234"] * 5 + ["999"] * 3


def offer(text, key, finished=False):
    return Offer(text=text, finished=finished, stopped=finished, key=key)


def test_slots_take_proposals_by_value_then_by_how_many_rollouts_made_them_then_by_order():
    slots = [Slot({"id": "p"}, j) for j in range(4)]
    seen = Counter()
    offers = [offer("1", "x"), offer("2", "y"), offer("3", "y"), offer("3", "y"), offer("4", "y"), offer("5", None)]
    _advance(slots[:3], offers, seen)  # majority "y": "3" (2 of 2 agree) first, twice, then "2" (1 of 1) before "4"
    assert [s.prefix for s in slots] == ["3", "3", "2", ""]
    assert seen == Counter({"y": 4, "x": 1})
    finished = [offer("77", "y", finished=True), offer("8", "x")]
    _advance(slots[:2], finished, seen)
    assert (slots[0].text, slots[0].stopped, slots[1].text, slots[1].prefix) == ("77", True, None, "8")


def test_a_sample_cut_at_the_budget_is_scored_without_an_end_of_sequence():
    policy = Scripted("2345678")
    config = GenerateConfig(search="step_beam", samples_per_prompt=2, search_rollouts=1, max_new_tokens=3)
    rows = step_beam([{"id": "p", "prompt": "1234567+1111111="}], policy, config, task=TASK, round_index=1, voter=2)
    assert [r["completion"] for r in rows] == ["234", "234"] and {r["voter"] for r in rows} == {2}
    assert [(r["n_tokens"], r["logprob"]) for r in rows] == [(3, -3.0)] * 2  # as generate records a cut sample
    assert policy.calls == [3, 2, 1]


def test_budgets_are_rounded_to_a_sixteenth_of_max_new_tokens():
    slots = [Slot({"id": "p"}, 0, prefix=prefix) for prefix in ("", "a", "a" * 32, "a" * 33, "a" * 512)]
    assert _budgets(slots, CharTokenizer(), 512) == [512, 480, 480, 448, 0]
    assert _budgets(slots[:2], CharTokenizer(), 24) == [24, 23]


def test_blank_lines_stay_with_the_step_before_them():
    math = load_task("math")
    assert math.steps("a\n\nb\n\n\nc") == ["a\n\n", "b\n\n\n", "c"]
    assert math.steps("\nx\n") == ["\n", "x\n"]


@pytest.mark.parametrize("override, field", [
    ({"temperature": 0}, "generate.temperature"), ({"views": 2}, "generate.views"),
    ({"backend": "vllm"}, "generate.backend"), ({"search": "tree"}, "generate.search"),
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
    # sharded generate (Kubeflow) searches every n-th prompt alone: the same samples, each an ordinary row; not
    # the same texts to the bit, since a depth's batches hold other prompts' slots (the kernels round per batch
    # shape, differently on each CPU: shard and whole agreed on Intel, not on AMD EPYC)
    halves = [generate(prompts, backends, config, task=TASK, round_index=1, shard=Shard(i, 2)) for i in (0, 1)]
    assert sorted(r["prompt_id"] for r in halves[0]) == sorted(3 * [p["id"] for p in prompts[0::2]] * len(backends))
    sharded = [row for half in halves for row in half]
    assert sorted((r["voter"], r["prompt_id"], r["sample_idx"]) for r in sharded) == sorted(
        (r["voter"], r["prompt_id"], r["sample_idx"]) for r in rows)
    for row in sharded:
        schemas.SAMPLES.check(row, source="test")


def test_a_step_is_a_line_for_chat_models(tiny_chat_model):
    task = load_task("math")
    [backend] = load_backends(tiny_chat_model, batch_size=64, device="cpu", progress=False, precision="fp32")
    config = GenerateConfig(search="step_beam", samples_per_prompt=2, search_rollouts=2, max_new_tokens=24,
                            temperature=1.0)
    prompts = [{"id": "q1", "prompt": "What is 2 + 3?"}, {"id": "q2", "prompt": "What is 7 * 6?"}]
    rows = step_beam(prompts, backend, config, task=task, round_index=1, voter=0)
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [("q1", 0), ("q1", 1), ("q2", 0), ("q2", 1)]
    for row in rows:  # within the budget however many lines the untrained model wrote, as generate counts it
        assert len(backend.tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) <= 24
        assert row["n_tokens"] <= 24 and row["search_tokens"] >= config.search_rollouts
        schemas.SAMPLES.check(row, source="test")
