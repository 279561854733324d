"""Training methods (sft, dpo, grpo), LoRA output formats, and one round of each shipped method config."""

import json
import shutil

import pytest
import torch

from flywheel.config import TrainConfig
from flywheel.modeling import is_adapter, load_member, member_dirs
from flywheel.stages.train import majority_rewards, majority_vote_reward, save_member, train_member
from flywheel.tasks import ReversedAddition
from tests.conftest import ROOT

TASK = ReversedAddition()


# --- the GRPO reward: agreement with the majority of the completion's own group --------------------------------

def test_majority_reward_by_hand():
    answers = ["12", "12", "13", None, "7", "8", "7", "7"]
    groups = ["p", "p", "p", "p", "q", "q", "q", "q"]
    assert majority_rewards(answers, groups) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def test_majority_reward_ties_and_all_different_go_to_the_smallest_answer():
    # as stages/vote/count.py: most votes, ties to the lexicographically smallest answer
    assert majority_rewards(["9", "10", "9", "10"], ["g"] * 4) == [0.0, 1.0, 0.0, 1.0]
    assert majority_rewards(["3", "1", "2"], ["g"] * 3) == [0.0, 1.0, 0.0]


def test_no_answer_is_never_the_majority():
    assert majority_rewards([None, None, None, "5"], ["g"] * 4) == [0.0, 0.0, 0.0, 1.0]
    assert majority_rewards([None, None], ["g"] * 2) == [0.0, 0.0]


def test_groups_are_prompts_not_positions():
    answers = ["1", "2", "2", "1", "1"]
    assert majority_rewards(answers, ["a", "b", "b", "a", "b"]) == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_trl_reward_function_extracts_answers_through_the_task():
    reward = majority_vote_reward(TASK)
    completions = ["42", " 42 ", "43", "x", "5"]
    assert reward(prompts=["a"] * 4 + ["b"], completions=completions, completion_ids=None,
                  prompt_id=["a", "a", "a", "a", "b"]) == [1.0, 1.0, 0.0, 0.0, 1.0]
    # without prompt ids the prompt text groups the completions
    assert reward(prompts=["a", "a", "b"], completions=["1", "1", "2"], completion_ids=None) == [1.0, 1.0, 1.0]


# --- LoRA: both output forms load and generate what the in-memory model generates --------------------------------

PROMPTS = ["12+34=", "5+5=", "99+1=", "7+80="]


def _greedy(model, tokenizer):
    model.eval()
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**encoded, do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
    return out[:, encoded["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def init_member(tmp_path_factory, tiny_seed):
    return member_dirs(tiny_seed)[0]


def _rows():
    return [{"prompt": p, "completion": TASK.make_prompts(bucket=1, count=1, seed=i, id_prefix="x")[0]["answer"]}
            for i, p in enumerate(PROMPTS * 4)]


def test_lora_adapter_and_merged_forms_match_the_trained_model(tmp_path, init_member):
    config = TrainConfig(steps=4, batch_size=8, learning_rate=5e-2)
    config.lora = type(TrainConfig().lora)(enabled=True, r=4, alpha=8, merge=False)
    trained, tokenizer, metrics = train_member(init_member, _rows(), config, task=TASK, seed=0, device="cpu",
                                               progress=False)
    assert type(trained).__name__ == "PeftModelForCausalLM" and metrics["steps"] == 4
    expected = _greedy(trained, tokenizer)
    base, _ = load_member(init_member)
    probe = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():  # training moved the adapter: the test below would be vacuous otherwise
        assert not torch.allclose(trained(**probe).logits, base(**probe).logits, atol=1e-4)

    adapter_dir = tmp_path / "tree" / "candidate" / "member-0"
    assert save_member(trained, tokenizer, adapter_dir, config=config, base=init_member,
                       final_dir=adapter_dir) == "adapter"
    assert is_adapter(adapter_dir) and not (adapter_dir / "model.safetensors").exists()
    meta = json.loads((adapter_dir / "flywheel-model.json").read_text())
    assert meta["format"] == "adapter" and meta["base"] == str(init_member.resolve())
    config.lora.merge = True
    merged_dir = tmp_path / "merged"
    assert save_member(trained, tokenizer, merged_dir, config=config, base=init_member, final_dir=merged_dir) == "full"
    assert not is_adapter(merged_dir) and (merged_dir / "model.safetensors").exists()

    for path in (adapter_dir, merged_dir):
        model, tok = load_member(path)
        assert _greedy(model, tok) == expected, path


def test_an_adapter_tree_moved_elsewhere_still_finds_its_base(tmp_path, tiny_seed):
    """The base is also stored relative to the adapter, so a copied round tree (base included) loads."""
    from flywheel.modeling import write_adapter_meta

    tree = tmp_path / "a"
    shutil.copytree(tiny_seed, tree / "rounds" / "0" / "champion")
    config = TrainConfig(steps=2, batch_size=8, learning_rate=5e-2)
    config.lora = type(config.lora)(enabled=True, r=2, alpha=4, merge=False)
    base = tree / "rounds" / "0" / "champion" / "member-0"
    trained, tokenizer, _ = train_member(base, _rows(), config, task=TASK, seed=0, device="cpu", progress=False)
    target = tree / "rounds" / "1" / "candidate" / "member-0"
    save_member(trained, tokenizer, target, config=config, base=base, final_dir=target)
    expected = _greedy(*load_member(target))
    moved = tmp_path / "b"
    shutil.move(tree, moved)
    assert _greedy(*load_member(moved / "rounds" / "1" / "candidate" / "member-0")) == expected
    from flywheel.errors import InputError

    orphan = tmp_path / "orphan"  # an adapter whose base is gone: a one-line error, not a peft traceback
    shutil.copytree(moved / "rounds" / "1" / "candidate" / "member-0", orphan)
    write_adapter_meta(orphan, base=tmp_path / "gone", final_dir=orphan)
    with pytest.raises(InputError, match="base model is not found"):
        load_member(orphan)


def test_dpo_with_lora_trains_against_the_disabled_adapter(init_member):
    config = TrainConfig(method="dpo", steps=2, batch_size=4, learning_rate=1e-2)
    config.lora = type(config.lora)(enabled=True, r=2, alpha=4)
    rows = [{"prompt": p, "chosen": "12", "rejected": "3"} for p in PROMPTS]
    trained, _, metrics = train_member(init_member, rows, config, task=TASK, seed=0, device="cpu", progress=False)
    assert type(trained).__name__ == "PeftModelForCausalLM" and metrics["train_loss"] > 0


# --- one round of each shipped method config on the smoke setup --------------------------------------------------

def smoke_overrides(seed_path, out):
    """Make a full method recipe (configs/<method>.yaml) run in seconds: the smoke sizes, the tiny seed."""
    return [f"seed.path={seed_path}", f"loop.out_dir={out}", "loop.rounds=1", "loop.progress=false",
            "prompts.start_bucket=3", "prompts.per_round=16", "prompts.replay_per_round=8",
            "generate.samples_per_prompt=4", "generate.max_new_tokens=8", "generate.batch_size=64",
            "evaluate.min_bucket=1", "evaluate.max_bucket=3", "evaluate.per_bucket=8", "evaluate.max_new_tokens=8",
            "curate.min_vote_share=0.3", "curate.format_filter=false",
            "train.steps=2", "train.batch_size=8", "train.grpo.num_generations=4",
            "train.grpo.max_completion_tokens=8",
            "gate.min_gain=-1.0", "gate.alpha=0.999", "gate.max_bucket_drop=1.0"]


@pytest.mark.parametrize("recipe, extra, method, fmt", [
    ("dpo.yaml", [], "dpo", "full"),
    ("grpo.yaml", ["curate.rl_min_vote_share=0.0", "train.lora.enabled=true", "train.lora.merge=false",
                   "vote.method=weighted"], "grpo", "adapter"),
    ("sft-lora.yaml", ["train.lora.merge=true", "vote.method=self_judge", "curate.near_dedup=true",
                       "curate.ngram_decontaminate=true", "curate.ngram_unit=char", "curate.ngram_n=6"], "sft", "full"),
])
def test_one_round_of_each_method_through_the_cli(tmp_path, init_member, recipe, extra, method, fmt, capsys):
    from flywheel import io, schemas
    from flywheel.cli import main

    out = tmp_path / "out"
    # One member of the tiny seed committee: a plain HF directory is a valid champion too.
    argv = ["run", "-c", str(ROOT / "configs" / recipe), "--no-track"]
    for override in smoke_overrides(init_member, out) + extra:
        argv += ["-s", override]
    assert main(argv) == 0
    here = out / "rounds" / "1"
    meta = json.loads((here / "candidate" / "flywheel-model.json").read_text())
    assert meta["method"] == method and meta["format"] == fmt and meta["trained"] is True
    for member in member_dirs(here / "candidate"):
        assert is_adapter(member) == (fmt == "adapter")
        assert member_dirs(member) == [member]  # one member, an adapter too, is a model of its own
        load_member(member)  # the candidate loads (an adapter through peft, over its base)
    decision = json.loads((here / "decision.json").read_text())
    assert {"promote", "reason", "p_value"} <= set(decision)
    curation = json.loads((here / "curation.json").read_text())
    prompts = len(io.read_rows(here / "prompts.parquet", schemas.PROMPTS))
    assert curation["samples_kept"] + sum(curation["drops"].values()) == curation["samples_in"]
    assert curation["pairs"]["prompts_kept"] + sum(curation["pairs"]["drops"].values()) == prompts
    assert curation["rl_prompts"]["prompts_kept"] + sum(curation["rl_prompts"]["drops"].values()) == prompts
    vote = json.loads((here / "vote.json").read_text())
    assert vote["method"] == dict(o.split("=") for o in extra).get("vote.method", "majority")
    if method == "grpo":
        assert 0.0 <= meta["train_metrics"][0]["mean_reward"] <= 1.0


def _ttsi_ran(here):
    ttsi = json.loads((here / "prompts.json").read_text())["ttsi"]
    assert ttsi["probed"] == 24 and ttsi["similar"] == 2 * ttsi["uncertain"] > 0


def _middo_ran(here):
    assert json.loads((here / "curation.json").read_text())["drops"].get("select:known", 0) > 0


def _process_rewards_ran(here):
    steps = json.loads((here / "curation.json").read_text())["process_rewards"]
    assert steps["rows_scored"] > 0 and steps["rollout_tokens"] > 0


def _step_beam_ran(here):
    from flywheel import io, schemas

    samples = io.read_rows(here / "samples.parquet", schemas.SAMPLES)
    assert len(samples) == 24 * 4 and all(s["search_tokens"] >= 2 for s in samples)
    assert sum(s["search_tokens"] for s in samples) > 2 * sum(s["n_tokens"] for s in samples)  # the search's cost


SELF_TRAINING_RECIPES = {  # the efficacy benchmark's methods (docs/methods.md): overrides, what shows it ran
    "ttsi.yaml": (["prompts.uncertain_below=1.0"], _ttsi_ran),
    "middo.yaml": (["curate.min_vote_share=0"], _middo_ran),
    "process-rewards.yaml": (["curate.min_vote_share=0"], _process_rewards_ran),
    "step-beam.yaml": ([], _step_beam_ran),
}  # configs/weak-to-strong.yaml: test_weak_to_strong_trains_the_student_until_one_is_promoted


@pytest.mark.parametrize("recipe", sorted(SELF_TRAINING_RECIPES))
def test_one_round_of_each_self_training_recipe_through_the_cli(tmp_path, init_member, recipe):
    from flywheel.cli import main

    out = tmp_path / "out"
    argv = ["run", "-c", str(ROOT / "configs" / recipe), "--no-track"]
    extra, ran = SELF_TRAINING_RECIPES[recipe]
    for override in smoke_overrides(init_member, out) + extra:
        argv += ["-s", override]
    assert main(argv) == 0
    ran(out / "rounds" / "1")
    assert (out / "rounds" / "1" / "decision.json").is_file()


def test_weak_to_strong_trains_the_student_until_one_is_promoted(tmp_path, init_member):
    """configs/weak-to-strong.yaml: the tiny seed's member (the weak champion) votes; the candidate is the larger
    student fine-tuned on those votes; once a trained student is champion, rounds continue from the champion."""
    from flywheel.cli import main
    from flywheel.config import load_config
    from flywheel.modeling import build_tiny_model, count_parameters, write_model_meta
    from flywheel.stages.train import student_or

    smoke = load_config(ROOT / "configs" / "smoke.yaml")
    model, tokenizer = build_tiny_model(type(smoke.model)(**{**smoke.model.__dict__, "hidden_size": 48,
                                                             "intermediate_size": 96}), seed=5)
    student = tmp_path / "student"
    model.save_pretrained(student)
    tokenizer.save_pretrained(student)
    out = tmp_path / "out"
    argv = ["run", "-c", str(ROOT / "configs" / "weak-to-strong.yaml"), "--no-track"]
    for override in smoke_overrides(init_member, out) + [f"train.student={student}", "curate.min_vote_share=0"]:
        argv += ["-s", override]
    assert main(argv) == 0
    candidate = out / "rounds" / "1" / "candidate"
    meta = json.loads((candidate / "flywheel-model.json").read_text())
    assert meta["init"] == str(student) and meta["trained"] is True
    assert count_parameters(load_member(member_dirs(candidate)[0])[0]) == count_parameters(model)
    assert count_parameters(load_member(init_member)[0]) < count_parameters(model)  # weak votes, strong student
    config = load_config(None, [f"train.student={student}"]).train
    assert student_or(init_member, config) == student  # the seed (no round recorded) is still champion
    (tmp_path / "promoted").mkdir()
    write_model_meta(tmp_path / "promoted", {"round": 1})
    assert student_or(tmp_path / "promoted", config) == tmp_path / "promoted"
    assert student_or(init_member, load_config(None, []).train) == init_member  # no student: as before


def test_a_missing_student_is_a_one_line_error_before_any_work(tmp_path):
    from flywheel.config import load_config
    from flywheel.errors import InputError
    from flywheel.machine_checks import check_stage

    with pytest.raises(InputError, match="train.student .* is not a model directory"):
        check_stage(load_config(None, [f"train.student={tmp_path / 'nowhere'}"]), "train")


def test_grpo_reward_on_code_runs_programs_on_the_prompts_test_inputs():
    """Programs agree by their outputs (as in the vote stage), not by their text: the rows carry meta."""
    import json

    from flywheel.stages.train import majority_vote_reward
    from flywheel.tasks.code import CodeTask

    programs = ["```python\nprint(int(input())*2)\n```", "```python\nx=int(input())\nprint(x+x)\n```",
                "```python\nprint(int(input())+1)\n```"]
    meta = json.dumps({"tests": [{"stdin": "3\n"}], "style": "stdin"})
    reward = majority_vote_reward(CodeTask())
    assert reward(["q"] * 3, programs, prompt_id=["p"] * 3, meta=[meta] * 3) == [1.0, 1.0, 0.0]


def test_sft_tokens_equal_trls_own_preparation(tmp_path):
    """flywheel tokenises plain SFT rows itself (two batched calls, stages.train.sft_tokens); TRL's SFTTrainer must
    have prepared exactly the same tokens and labels from the raw rows, truncation and dropping included."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from flywheel.stages.train import sft_tokens
    from flywheel.tasks.base import sft_row

    model, tokenizer = load_member(member_dirs(ROOT / "seed" / "default")[0], device="cpu")
    task = ReversedAddition()
    prompts = task.make_prompts(bucket=3, count=40, seed=1, id_prefix="t")
    rows = [sft_row(task, p["prompt"], p["answer"], tokenizer) for p in prompts]
    rows += [{"prompt": "1+1=", "completion": "2" + tokenizer.eos_token},  # an EOS already there is not doubled
             {"prompt": "12345678+1=", "completion": "12345679"}]  # cut by max_length below: its prompt fills it
    for max_length in (1024, 10):
        args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, max_length=max_length, report_to=[],
                         use_cpu=True)
        prepared = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer).train_dataset
        ours = sft_tokens(rows, tokenizer, max_length=max_length)
        assert [r["input_ids"] for r in ours] == prepared["input_ids"]
        assert [r["labels"] for r in ours] == prepared["labels"]
    assert len(sft_tokens(rows, tokenizer, max_length=10)) < len(rows)  # the truncation case was exercised
