from pathlib import Path

import pytest

from flywheel.config import FlywheelConfig, describe, load_config
from flywheel.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "smoke.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    config = load_config(path)
    assert isinstance(config, FlywheelConfig)


def test_params_yaml_is_the_default_config():
    # dvc.yaml's params come from params.yaml; it must be the same recipe as configs/default.yaml
    # apart from where the loop writes.
    params = load_config(ROOT / "params.yaml")
    default = load_config(ROOT / "configs" / "default.yaml")
    for section in ("model", "seed", "prompts", "data", "code", "generate", "vote", "curate", "train", "evaluate",
                    "gate"):
        assert getattr(params, section) == getattr(default, section), section


def test_dotted_overrides_are_typed():
    config = load_config(None, ["train.steps=7", "curate.min_vote_share=1", "loop.progress=false",
                                "train.learning_rate=1e-3"])
    assert config.train.steps == 7 and config.curate.min_vote_share == 1.0 and config.loop.progress is False
    assert config.train.learning_rate == 0.001


@pytest.mark.parametrize("override, message", [
    ("train.stepz=1", "field 'train.stepz': unknown config key"),
    ("train.steps=many", "field 'train.steps': expected int, got str"),
    ("gate.alpha=2", "field 'gate.alpha': must be in (0, 1]"),
    ("gate.test=ttest", "field 'gate.test': must be 'mcnemar' or 'bootstrap'"),
    ("model.hidden_size=30", "field 'model.hidden_size': must be divisible by model.num_heads"),
    ("train=3", "field 'train': expected a mapping"),
    ("nonsense", "is not key=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(InputError, match=None) as error:
        load_config(None, [override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_yaml_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1,\n")
    with pytest.raises(InputError) as error:
        load_config(bad)
    assert str(bad) in str(error.value) and "malformed YAML" in str(error.value)
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_has_help():
    for key, _, help in describe():
        assert help.strip(), key


@pytest.mark.parametrize("overrides, message", [
    (["train.method=ppo"], "field 'train.method': must be one of sft, dpo, grpo"),
    (["vote.method=oracle"], "field 'vote.method': must be one of majority, weighted, reliability, self_judge, reference"),
    (["generate.backend=tpu"], "field 'generate.backend': must be 'hf', 'vllm' or 'auto'"),
    (["curate.ngram_unit=byte"], "field 'curate.ngram_unit': must be 'word' or 'char'"),
    (["curate.near_dedup_threshold=0"], "field 'curate.near_dedup_threshold': must be in (0, 1]"),
    (["curate.rl_min_vote_share=0.9", "curate.rl_max_vote_share=0.5"], "field 'curate.rl_max_vote_share'"),
    (["train.lora.r=0"], "field 'train.lora.r': must be > 0"),
    (["train.lora.target_modules=[]"], "field 'train.lora.target_modules': must be a non-empty list"),
    (["train.lora.rank=8"], "field 'train.lora.rank': unknown config key"),
    (["train.dpo.beta=0"], "field 'train.dpo.beta': must be > 0"),
    (["train.grpo.num_generations=1"], "field 'train.grpo.num_generations': must be >= 2"),
    (["train.method=grpo", "train.batch_size=10"], "field 'train.batch_size': must be a multiple of"),
])
def test_method_fields_are_validated(overrides, message):
    with pytest.raises(InputError) as error:
        load_config(None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_method_fields_load_from_yaml_and_overrides():
    config = load_config(ROOT / "configs" / "sft-lora.yaml", ["train.lora.merge=true", "vote.method=weighted"])
    assert config.train.lora.enabled and config.train.lora.merge and config.train.lora.r == 16
    assert config.vote.method == "weighted"
    assert load_config(ROOT / "configs" / "grpo.yaml").train.grpo.num_generations == 8
    assert load_config(None).train.method == "sft" and not load_config(None).train.lora.enabled
