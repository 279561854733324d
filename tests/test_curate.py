from collections import Counter

from flywheel.config import CurateConfig
from flywheel.stages.curate import curate, training_mix
from flywheel.stages.vote import vote
from flywheel.tasks import ReversedAddition

TASK = ReversedAddition()


def prompt(pid, text):
    return {"id": pid, "prompt": text}


def sample(pid, idx, completion, voter=0, n_tokens=3):
    return {"prompt_id": pid, "sample_idx": idx, "voter": voter, "completion": completion,
            "answer": TASK.extract_answer(completion), "n_tokens": n_tokens, "logprob": -1.0}


def run(prompts, samples, eval_prompts=frozenset(), **config):
    votes, _ = vote(samples)
    return curate(prompts, samples, votes, CurateConfig(**config), task=TASK, eval_prompts=set(eval_prompts),
                  round_index=1)


def test_every_drop_has_its_reason_by_hand():
    prompts = [
        prompt("keep", "12+34="),      # 2-digit operands: answers of 2 or 3 digits pass the format filter
        prompt("split", "11+11="),     # 2 votes of 4 for the majority: below 0.6
        prompt("short", "55+55="),     # majority answer "1" has 1 digit: format:length
        prompt("leak", "21+21="),      # in the eval set
        prompt("none", "99+99="),      # no answer at all
    ]
    samples = [
        sample("keep", 0, "46"), sample("keep", 1, "46"), sample("keep", 2, "46"), sample("keep", 3, "47"),
        sample("split", 0, "22"), sample("split", 1, "22"), sample("split", 2, "23"), sample("split", 3, "24"),
        sample("short", 0, "1"), sample("short", 1, "1"),
        sample("leak", 0, "42"), sample("leak", 1, "42"),
        sample("none", 0, "x"), sample("none", 1, ""),
    ]
    kept, drops = run(prompts, samples, eval_prompts={"21+21="}, min_vote_share=0.6, max_per_prompt=1)
    assert kept == [{"prompt": "12+34=", "completion": "46", "prompt_id": "keep", "round": 1, "bucket": None}]
    assert drops == Counter({"vote:low_share": 4, "vote:disagrees": 1, "dedup:exact": 2, "format:length": 2,
                             "decontaminate:eval": 2, "vote:no_answer": 2})
    assert sum(drops.values()) + len(kept) == len(samples)


def test_cap_per_prompt_and_too_long():
    prompts = [prompt("p", "1+1=")]
    samples = [sample("p", 0, "2", n_tokens=2), sample("p", 1, "2 ", n_tokens=2), sample("p", 2, "2  ", n_tokens=3),
               sample("p", 3, "2   ", n_tokens=99)]
    kept, drops = run(prompts, samples, max_per_prompt=2, max_completion_tokens=10)
    assert [k["completion"] for k in kept] == ["2", "2 "]
    assert drops == Counter({"cap:per_prompt": 1, "length:too_long": 1})


def test_filters_can_be_switched_off():
    prompts = [prompt("short", "55+55=")]
    samples = [sample("short", 0, "1"), sample("short", 1, "1")]
    kept, drops = run(prompts, samples, format_filter=False, dedup=False, max_per_prompt=5)
    assert len(kept) == 2 and not drops


def test_training_mix_is_half_new_by_default():
    new = [{"prompt": f"n{i}", "completion": "1"} for i in range(10)]
    pool = [{"prompt": f"o{i}", "completion": "1"} for i in range(100)]
    mix = training_mix(new, pool, CurateConfig(), seed=0)
    assert len(mix) == 20 and sum(r["prompt"].startswith("n") for r in mix) == 10
    assert mix == training_mix(new, pool, CurateConfig(), seed=0)  # seeded
    assert len(training_mix(new, pool[:3], CurateConfig(), seed=0)) == 13  # small pool: all of it
    assert training_mix(new, pool, CurateConfig(accumulate=False), seed=0) == new
