"""The tiny chat model, chat-template rendering, conversational SFT, and models by hub name from the local cache."""

import json
import shutil

import pytest

from flywheel.errors import InputError
from flywheel.modeling import count_parameters, load_member, member_dirs, resolve_model
from flywheel.tasks import load_task, render_prompt, sft_row


def test_tiny_chat_model_has_a_template_and_round_trips_text(tiny_chat_model):
    model, tokenizer = load_member(tiny_chat_model)
    assert 30_000 < count_parameters(model) < 100_000
    assert tokenizer.chat_template
    text = "Tom has 3 apples.\nHow many?  {x} ~ \\boxed{3}"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_render_prompt_follows_the_task_and_the_tokenizer(tiny_chat_model):
    _, tokenizer = load_member(tiny_chat_model)
    math, addition = load_task("math"), load_task("addition")
    rendered = render_prompt(math, "What is 2+2?", tokenizer)
    assert rendered == tokenizer.apply_chat_template(
        [{"role": "user", "content": math.user_message("What is 2+2?")}], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<bos><|user|>\nWhat is 2+2?\n") and rendered.endswith("<|assistant|>\n")
    assert render_prompt(addition, "71+52=", tokenizer) == "71+52="  # addition never takes a template
    assert render_prompt(math, "What is 2+2?", None) == math.user_message("What is 2+2?")  # no template: plain text
    assert sft_row(addition, "71+52=", "24", tokenizer) == {"prompt": "71+52=", "completion": "24"}
    row = sft_row(math, "What is 2+2?", "\\boxed{4}", tokenizer)
    assert row["prompt"] == [{"role": "user", "content": math.user_message("What is 2+2?")}]
    assert row["completion"] == [{"role": "assistant", "content": "\\boxed{4}"}]
    # Training (TRL renders the conversational row) and generation see the same prompt tokens.
    trained = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True)["input_ids"]
    assert tokenizer(rendered)["input_ids"] == trained


def test_conversational_sft_trains_on_completions(tiny_chat_model):
    from flywheel.stages.train import TrainerSettings, sft

    model, tokenizer = load_member(tiny_chat_model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    rows = [{"prompt": f"What is {i}+1?", "completion": f"It is \\boxed{{{i + 1}}}"} for i in range(4)]
    settings = TrainerSettings(steps=2, batch_size=2, learning_rate=1e-3, scheduler="constant")
    metrics = sft(model, tokenizer, rows, settings, seed=0, progress=False, task=load_task("math"))
    assert metrics["steps"] == 2 and metrics["train_loss"] > 0
    assert any(not p.detach().equal(before[name]) for name, p in model.named_parameters())


def fake_hub_cache(cache, model_dir, repo_id="tiny-org/tiny-chat", commit="0" * 40):
    """The layout huggingface_hub writes: models--org--name/refs/main -> snapshots/<commit>/files."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_hub_name_resolves_from_the_local_cache_only(tiny_chat_model, tmp_path, monkeypatch):
    snapshot = fake_hub_cache(tmp_path / "hub", tiny_chat_model)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("tiny-org/tiny-chat") == snapshot
    assert member_dirs("tiny-org/tiny-chat") == [snapshot]
    model, tokenizer = load_member("tiny-org/tiny-chat")
    assert tokenizer.chat_template and count_parameters(model) > 0
    with pytest.raises(InputError, match="not in the local Hugging Face cache.*hf download tiny-org/absent"):
        resolve_model("tiny-org/absent")
    with pytest.raises(InputError, match="model directory not found$"):
        resolve_model("no/such/model")  # not a hub name: a missing local path


def test_cli_names_an_uncached_hub_model_in_one_line(tmp_path, monkeypatch, capsys):
    from flywheel.cli import main

    (tmp_path / "hub").mkdir()
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "a", "prompt": "12+34="}) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["generate", "--round", "1", "--prompts", "p.jsonl", "--model", "tiny-org/absent",
                 "--out", "samples.parquet"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "hf download tiny-org/absent" in err
    assert not (tmp_path / "samples.parquet").exists()


def test_train_stage_passes_the_task_to_sft(tiny_chat_model, tmp_path):
    from flywheel import io, schemas
    from flywheel.config import TrainConfig
    from flywheel.stages.train import run_train

    rows = [{"prompt": "What is 3+4?", "completion": "\\boxed{7}", "prompt_id": "a", "round": 1, "bucket": "all"}]
    io.write_rows(tmp_path / "train.parquet", rows, schemas.CURATED)
    result = run_train(tmp_path / "train.parquet", tiny_chat_model, tmp_path / "candidate",
                       TrainConfig(steps=1, batch_size=1), round_index=1, task=load_task("math"))
    assert result["train_rows"] == 1 and result["train_loss"] > 0
    (member,) = member_dirs(tmp_path / "candidate")
    _, tokenizer = load_member(member)
    assert tokenizer.chat_template  # the candidate keeps the template its prompts were rendered with
