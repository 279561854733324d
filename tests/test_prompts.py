"""The curriculum: which bucket a round offers, from the champion's metadata and held-out scores."""

import json

from flywheel import io, schemas
from flywheel.config import PromptsConfig
from flywheel.modeling import write_model_meta
from flywheel.stages.prompts import champion_accuracy, run_prompts
from flywheel.tasks import load_task


def test_bucket_after_stays_until_the_champion_reaches_advance_at():
    config = PromptsConfig(start_bucket=6, advance_at=0.8)
    assert config.bucket_after(None) == 6
    assert config.bucket_after(7, None) == 8  # no scores: advance (a champion from elsewhere)
    assert config.bucket_after(7, {"7": 0.41}) == 7
    assert config.bucket_after(7, {"7": 0.8}) == 8
    assert PromptsConfig(advance_at=0.0).bucket_after(7, {"7": 0.0}) == 8  # the default advances after every promotion


def test_skip_solved_at_offers_the_first_bucket_the_champion_has_not_solved():
    # The GPU-scale seed: trained on 1-8 digits, 100% at 9, 88% at 10, 18% at 11.
    seed = {"8": 1.0, "9": 1.0, "10": 0.88, "11": 0.18, "12": 0.01}
    config = PromptsConfig(start_bucket=9, advance_at=0.8, skip_solved_at=0.8)
    assert config.bucket_after(8, seed) == 11
    assert PromptsConfig(advance_at=0.8, skip_solved_at=0.95).bucket_after(8, seed) == 10
    assert PromptsConfig(advance_at=0.8).bucket_after(8, seed) == 9  # off: one bucket a round
    assert config.bucket_after(None, seed) == 11  # no curriculum record: from start_bucket, skipping too
    assert config.bucket_after(10, {"10": 0.5, "11": 0.9}) == 10  # not mastered: stay, never skip past it
    assert config.bucket_after(8, {"8": 1.0, "9": 1.0}) == 10  # past the eval's buckets nothing counts as solved
    assert config.bucket_after(8, None) == 9


def _round(tmp_path, *, promote: bool):
    here = tmp_path / "rounds" / "2"
    (here / "champion").mkdir(parents=True)
    write_model_meta(here / "champion", {"members": [], "curriculum_bucket": 7})
    io.write_json(here / "eval" / "metrics.json", {"candidate": {"buckets": {"6": 0.98, "7": 0.41}},
                                                   "champion": {"buckets": {"6": 0.94, "7": 0.30}}})
    io.write_json(here / "decision.json", {"promote": promote})
    return here / "champion"


def test_champion_accuracy_is_the_winners_side(tmp_path):
    assert champion_accuracy(_round(tmp_path, promote=True)) == {"6": 0.98, "7": 0.41}
    assert champion_accuracy(_round(tmp_path / "b", promote=False)) == {"6": 0.94, "7": 0.30}
    assert champion_accuracy(tmp_path / "elsewhere" / "champion") == {}


def test_a_round_re_offers_the_bucket_the_champion_has_not_mastered(tmp_path):
    champion = _round(tmp_path, promote=True)
    task = load_task("addition")
    stay = run_prompts(tmp_path / "r3", PromptsConfig(per_round=4, advance_at=0.8), task=task, round_index=3,
                       champion_dir=champion)
    advance = run_prompts(tmp_path / "r3b", PromptsConfig(per_round=4, advance_at=0.4), task=task, round_index=3,
                          champion_dir=champion)
    assert (stay["bucket"], advance["bucket"]) == (7, 8)
    assert json.loads((tmp_path / "r3" / "prompts.json").read_text())["bucket"] == 7


def test_a_round_skips_the_buckets_the_seed_already_solves(tmp_path):
    # Round 0's layout: the seed's own eval, no decision (the seed is champion without a gate).
    here = tmp_path / "rounds" / "0"
    (here / "champion").mkdir(parents=True)
    write_model_meta(here / "champion", {"members": [], "curriculum_bucket": 5})
    io.write_json(here / "eval" / "metrics.json", {"champion": {"buckets": {"5": 1.0, "6": 0.9, "7": 0.2}}})
    task = load_task("addition")
    summary = run_prompts(tmp_path / "r1", PromptsConfig(per_round=6, skip_solved_at=0.85, mixed=False), task=task,
                          round_index=1, champion_dir=here / "champion")
    assert summary["bucket"] == 7
    rows = io.read_rows(tmp_path / "r1" / "audit.parquet", schemas.PROMPTS)
    assert {r["bucket"] for r in rows} == {"7"}
    plain = run_prompts(tmp_path / "r1b", PromptsConfig(per_round=6), task=task, round_index=1,
                        champion_dir=here / "champion")
    assert plain["bucket"] == 6
