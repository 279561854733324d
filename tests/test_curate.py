from collections import Counter

from flywheel.config import CurateConfig
from reference_rows import curate_rows as curate, training_mix
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


# --- curation extras: near-dedup, n-gram decontamination, DPO pairs, GRPO prompts ------------------------------

def test_ngrams_by_hand():
    from flywheel.stages.curate import NgramIndex, ngrams

    assert ngrams("a b c d", 3, "word") == {("a", "b", "c"), ("b", "c", "d")}
    assert ngrams("a b", 3, "word") == {("a", "b")}  # shorter than n: the whole text is one n-gram
    assert ngrams("abcd", 3, "char") == {("a", "b", "c"), ("b", "c", "d")}
    index = NgramIndex(["what is the sum of 12 and 34 ?"], n=4, unit="word")
    assert index.contaminated("tell me what is the sum of 99 and 1")  # shares "what is the sum"
    assert not index.contaminated("what is the product of 99 and 1 ?")  # no 4 words in a row in common


def test_near_dedup_is_minhash_over_shingles():
    from flywheel.stages.curate import NearDuplicates

    near = NearDuplicates(threshold=0.7, shingle=3, num_perm=128)
    text = "the quick brown fox jumps over the lazy dog and keeps running far away"
    assert not near.seen(text)
    assert near.seen(text.replace("far away", "far awa."))  # one character changed: Jaccard ~0.95
    assert not near.seen("an entirely different sentence about adding numbers")


def test_sft_rows_drop_near_duplicates_and_ngram_contamination():
    long = "please add these two numbers written in reverse digit order for me"
    prompts = [prompt("a", long + " 12+34="), prompt("b", long + " 12+35="), prompt("c", "eval words here 1+1="),
               prompt("d", "9+9=")]
    samples = [sample("a", 0, "46"), sample("b", 0, "47"), sample("c", 0, "2"), sample("d", 0, "81")]
    kept, drops = run(prompts, samples, eval_prompts={"some eval words here now"}, min_vote_share=0.5,
                      near_dedup=True, near_dedup_threshold=0.8, near_dedup_shingle=5,
                      ngram_decontaminate=True, ngram_n=3, ngram_unit="word", format_filter=False)
    assert [k["prompt_id"] for k in kept] == ["a", "d"]
    assert drops == Counter({"dedup:near": 1, "decontaminate:ngram": 1})


def test_preference_pairs_by_hand():
    from reference_rows import preference_pairs

    prompts = [prompt("p", "12+34="), prompt("u", "11+11="), prompt("l", "55+55="), prompt("z", "1+1=")]
    samples = [
        sample("p", 0, "46"), sample("p", 1, "46 "), sample("p", 2, "47"), sample("p", 3, "x"),  # 2 of 4 agree
        sample("u", 0, "22"), sample("u", 1, "22"),  # unanimous: nothing to reject
        sample("l", 0, "1"), sample("l", 1, "2"), sample("l", 2, "3"),  # share 1/3 < 0.5
        sample("z", 0, "2", n_tokens=99), sample("z", 1, "2", n_tokens=99), sample("z", 2, "3"),  # chosen too long
    ]
    votes, _ = vote(samples)
    pairs, drops = preference_pairs(prompts, samples, votes, CurateConfig(min_vote_share=0.5, max_pairs_per_prompt=2,
                                                                          max_completion_tokens=10),
                                    task=TASK, eval_prompts=set(), round_index=3)
    assert [(r["chosen"], r["rejected"]) for r in pairs] == [("46", "47"), ("46 ", "x")]
    assert pairs[0]["prompt"] == "12+34=" and pairs[0]["round"] == 3
    assert drops == Counter({"pair:no_rejected": 1, "vote:low_share": 1, "pair:no_chosen": 1})


def test_rl_prompts_keep_disagreement_only():
    from reference_rows import rl_prompts

    votes = [{"prompt_id": "unanimous", "majority_answer": "2", "vote_share": 1.0},
             {"prompt_id": "split", "majority_answer": "3", "vote_share": 0.5},
             {"prompt_id": "chaos", "majority_answer": "4", "vote_share": 0.25},
             {"prompt_id": "none", "majority_answer": None, "vote_share": 0.0},
             {"prompt_id": "leak", "majority_answer": "5", "vote_share": 0.5}]
    prompts = [prompt(v["prompt_id"], f"{i}+{i}=") for i, v in enumerate(votes)]
    kept, drops = rl_prompts(prompts, votes, CurateConfig(rl_min_vote_share=0.3, rl_max_vote_share=1.0,
                                                          format_filter=False),
                             task=TASK, eval_prompts={"4+4="}, round_index=1)
    assert [k["prompt_id"] for k in kept] == ["split"] and kept[0]["vote_share"] == 0.5
    assert drops == Counter({"rl:high_share": 1, "rl:low_share": 1, "vote:no_answer": 1, "decontaminate:eval": 1})


def test_run_curate_writes_every_view_and_counts(tmp_path):
    from flywheel import io, schemas
    from flywheel.stages.curate import run_curate

    prompts = [prompt("p", "12+34="), prompt("q", "11+11=")]
    samples = [sample("p", 0, "46"), sample("p", 1, "46"), sample("p", 2, "47"), sample("q", 0, "22"),
               sample("q", 1, "22")]
    votes, _ = vote(samples)
    io.write_rows(tmp_path / "prompts.parquet", prompts, schemas.PROMPTS)
    io.write_rows(tmp_path / "samples.parquet", samples, schemas.SAMPLES)
    io.write_rows(tmp_path / "votes.parquet", votes, schemas.VOTES)
    io.write_rows(tmp_path / "eval-a.parquet", [prompt("e", "1+1=")], schemas.PROMPTS)
    io.write_rows(tmp_path / "eval-b.parquet", [prompt("f", "11+11=")], schemas.PROMPTS)
    report = run_curate(tmp_path, CurateConfig(min_vote_share=0.5), task=TASK, round_index=1, previous_pool=None,
                        eval_path=[tmp_path / "eval-a.parquet", tmp_path / "eval-b.parquet"])
    assert report["drops"] == {"decontaminate:eval": 2, "dedup:exact": 1, "vote:disagrees": 1}
    assert report["pairs"] == {"pairs": 1, "prompts_kept": 1, "drops": {"decontaminate:eval": 1}}
    assert report["rl_prompts"] == {"prompts_kept": 1, "drops": {"rl:high_share": 1}}  # share filters come first
    assert io.read_rows(tmp_path / "pairs.parquet", schemas.CURATED_PAIRS)[0]["rejected"] == "47"
    assert io.read_rows(tmp_path / "rl_prompts.parquet", schemas.RL_PROMPTS)[0]["prompt_id"] == "p"


def test_prompts_that_share_a_text_keep_a_completion_once_and_near_dedup_runs_last(tmp_path):
    """Filters run in order, each on what the ones before it kept: exact dedup spans prompts of one text, and
    a row dropped as a near-duplicate has already taken its prompt's place under the cap."""
    from flywheel import io, schemas
    from flywheel.stages.curate import run_curate

    prompts = [prompt("a", "12+34="), prompt("b", "12+34=")]  # one question asked twice, under two ids
    samples = [sample("a", 0, "46"), sample("a", 1, "46"), sample("b", 0, "46"), sample("b", 1, "46 ")]
    votes, _ = vote(samples)
    io.write_rows(tmp_path / "prompts.parquet", prompts, schemas.PROMPTS)
    io.write_rows(tmp_path / "samples.parquet", samples, schemas.SAMPLES)
    io.write_rows(tmp_path / "votes.parquet", votes, schemas.VOTES)
    io.write_rows(tmp_path / "eval.parquet", [prompt("e", "1+1=")], schemas.PROMPTS)
    report = run_curate(tmp_path, CurateConfig(max_per_prompt=1), task=TASK, round_index=1, previous_pool=None,
                        eval_path=tmp_path / "eval.parquet")
    # a keeps "46"; a's second "46" is a duplicate; b's "46" (its one place) is a's row again: dropped, not
    # replaced by b's "46 " (the cap already counted it).
    assert report["drops"] == {"dedup:exact": 2, "cap:per_prompt": 1}
    assert [(r["prompt_id"], r["completion"]) for r in io.read_rows(tmp_path / "curated.parquet", schemas.CURATED)] \
        == [("a", "46")]
    near = run_curate(tmp_path, CurateConfig(max_per_prompt=2, near_dedup=True, near_dedup_shingle=1,
                                             near_dedup_threshold=0.5), task=TASK, round_index=1,
                      previous_pool=None, eval_path=tmp_path / "eval.parquet")
    assert near["drops"] == {"dedup:exact": 2, "dedup:near": 1}  # b's "46 " is near a's "46"
