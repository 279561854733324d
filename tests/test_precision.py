"""Precision is the recipe's: fp32 on CPU by default, never TRL's bf16/gradient-checkpointing defaults."""

import pytest
import torch

from flywheel.config import TrainConfig, load_config
from flywheel.modeling import build_tiny_model, load_member
from flywheel.precision import resolve_precision, trainer_precision_args
from flywheel.stages.train import train_member
from flywheel.tasks import ReversedAddition
from tests.conftest import ROOT

TASK = ReversedAddition()
ROWS = [row | {"completion": row["answer"], "round": 1}
        for row in TASK.make_prompts(bucket=2, count=40, seed=0, id_prefix="p-")]


def test_auto_is_fp32_on_cpu_and_names_pass_through():
    assert resolve_precision("auto", "cpu") == "fp32"
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, "cpu") == name
    with pytest.raises(ValueError):
        resolve_precision("fp64", "cpu")


def test_trainer_arguments_spell_out_precision_and_checkpointing():
    assert trainer_precision_args("fp32", False) == {"bf16": False, "fp16": False, "tf32": False,
                                                     "gradient_checkpointing": False}
    assert trainer_precision_args("bf16", True)["bf16"] is True


def test_default_recipe_trains_fp32_without_checkpointing(tmp_path, monkeypatch):
    """Two SFT steps with configs/default.yaml's train section: TRL gets bf16=False and no checkpointing,
    and every parameter stays fp32 on CPU (TRL's own default would be bf16 and checkpointing on)."""
    import trl

    config = load_config(ROOT / "configs" / "default.yaml", ["train.steps=2", "train.batch_size=4"])
    assert config.train.precision == "auto" and config.train.gradient_checkpointing is False
    model, tokenizer = build_tiny_model(config.model, seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    seen = {}
    original = trl.SFTTrainer.__init__

    def spy(self, *args, **kwargs):
        seen["args"] = kwargs["args"]
        original(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "__init__", spy)
    trained, _, metrics = train_member(tmp_path / "m", ROWS, config.train, task=TASK, seed=0, device="cpu",
                                       progress=False)
    assert metrics["steps"] == 2
    assert seen["args"].bf16 is False and seen["args"].fp16 is False
    assert seen["args"].gradient_checkpointing is False
    assert seen["args"].dataset_num_proc is None  # 40 rows: tokenised in this process
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    assert not getattr(trained, "is_gradient_checkpointing", False)


def test_large_training_sets_are_tokenised_by_one_process_per_20k_rows_up_to_the_cores(monkeypatch):
    from flywheel.stages.train import trainer as train

    monkeypatch.setattr(train.os, "cpu_count", lambda: 16)
    assert [train.tokenize_processes(n) for n in (0, 39_999, 40_000, 300_000, 10**7)] == [None, None, 2, 15, 16]
    monkeypatch.setattr(train.os, "cpu_count", lambda: 1)
    assert train.tokenize_processes(10**7) is None


def test_bf16_recipe_keeps_fp32_master_weights(tmp_path):
    """train.precision=bf16 is mixed precision: the stored weights stay fp32."""
    config = TrainConfig(steps=2, batch_size=4, precision="bf16")
    model, tokenizer = build_tiny_model(load_config(None).model, seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    trained, _, _ = train_member(tmp_path / "m", ROWS, config, task=TASK, seed=0, device="cpu", progress=False)
    assert {p.dtype for p in trained.parameters()} == {torch.float32}


def test_load_member_loads_the_requested_dtype_not_the_checkpoints(tmp_path):
    model, tokenizer = build_tiny_model(load_config(None).model, seed=0)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "m")  # a bf16 checkpoint, as most hub models are
    tokenizer.save_pretrained(tmp_path / "m")
    assert next(load_member(tmp_path / "m")[0].parameters()).dtype == torch.float32
    assert next(load_member(tmp_path / "m", precision="auto")[0].parameters()).dtype == torch.float32
    assert next(load_member(tmp_path / "m", precision="bf16")[0].parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("key", ["train.precision", "generate.dtype", "evaluate.dtype"])
def test_config_rejects_unknown_precision(key):
    from flywheel.errors import InputError

    with pytest.raises(InputError, match=key):
        load_config(None, [f"{key}=fp64"])


@pytest.mark.slow  # a benchmark's own check: 14 s of training at four settings (make test-slow)
def test_precision_bench_prints_one_row_per_setting(capsys, monkeypatch):
    """bench/precision.py on the shipped seed, 1 step per setting: four rows, TRL's default marked."""
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["precision.py", "--steps", "1", "--threads", "1", "--rows", "64"])
    runpy.run_path(str(ROOT / "bench" / "precision.py"), run_name="__main__")
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["fp32"], ["bf16"])]
    assert [(r[0], r[1]) for r in rows] == [("fp32", "False"), ("fp32", "True"), ("bf16", "False"), ("bf16", "True")]
    assert all(float(r[2]) > 0 for r in rows) and "TRL's own default" in out


def test_precision_bench_measures_a_fresh_model_where_the_seed_is_not_trained(capsys, monkeypatch, tmp_path):
    """configs/gpu-scale.yaml's seed is trained on the GPU machine: before that, the bench times a freshly
    initialised model of the config's size."""
    import runpy
    import sys

    config = tmp_path / "untrained.yaml"
    config.write_text((ROOT / "configs" / "smoke.yaml").read_text().replace("path: seed/smoke",
                                                                            f"path: {tmp_path / 'no-seed'}"))
    monkeypatch.setattr(sys, "argv", ["precision.py", "--config", str(config), "--steps", "1", "--threads", "1",
                                      "--rows", "16"])
    runpy.run_path(str(ROOT / "bench" / "precision.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "not trained yet: a fresh model of its size" in out
    assert sum(1 for line in out.splitlines() if line.split()[:1] in (["fp32"], ["bf16"])) == 4
    assert "(train.precision=auto here)" in out
