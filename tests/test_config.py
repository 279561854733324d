from pathlib import Path

import pytest

from flywheel.config import FlywheelConfig, describe, load_config
from flywheel.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# The sections that make a recipe: all but loop (rounds, out_dir) and tracking, which each test checks as it needs.
RECIPE_SECTIONS = ("model", "seed", "prompts", "data", "code", "generate", "vote", "curate", "train", "evaluate",
                   "gate")


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
    for section in RECIPE_SECTIONS:
        assert getattr(params, section) == getattr(default, section), section


def test_the_default_is_the_committee_measured_and_one_model_is_the_default_before_it():
    """docs/experiments.md section 8 measured the default as the one-model recipe of section 7 plus these
    overrides (the vote's method last, in section 8's second table): the two files must stay those recipes,
    and the default's seed the shipped committee of three whose member 0 is the one-model seed."""
    import json

    committee_overrides = ["seed.path=seed/committee", "seed.members=3", "loop.rounds=4",
                           "generate.samples_per_prompt=4", "generate.views=4", "train.steps=250",
                           "vote.method=reliability"]
    measured = load_config(ROOT / "configs" / "one-model.yaml", overrides=committee_overrides)
    one_model = load_config(ROOT / "configs" / "one-model.yaml")
    default = load_config(ROOT / "configs" / "default.yaml")
    for section in RECIPE_SECTIONS:
        assert getattr(default, section) == getattr(measured, section), section
    assert default.loop.rounds == measured.loop.rounds == 4
    assert (one_model.seed.path, one_model.seed.members, one_model.loop.rounds) == ("seed/default", 1, 5)
    assert (one_model.generate.views, one_model.train.steps, one_model.vote.method) == (8, 400, "majority")
    assert one_model.tracking.registered_model != default.tracking.registered_model  # their champions apart
    committee = ROOT / "seed" / "committee"
    assert json.loads((committee / "flywheel-model.json").read_text())["members"] == [
        "member-0", "member-1", "member-2"]
    default_member = ROOT / "seed" / "default" / "member-0" / "model.safetensors"
    assert (committee / "member-0" / "model.safetensors").read_bytes() == default_member.read_bytes()


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
    (["vote.method=oracle"],
     "field 'vote.method': must be one of majority, weighted, reliability, self_judge, reference"),
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


# --- numeric ranges, overrides, YAML size ---------------------------------------------------------------------------

def numeric_keys() -> list[str]:
    """Every int or float config key (an optional one too), walked from the dataclasses themselves."""
    import dataclasses
    import typing

    keys = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if dataclasses.is_dataclass(kind):
                walk(kind, prefix + f.name + ".")
            elif {int, float} & set(typing.get_args(kind) or (kind,)):
                keys.append(prefix + f.name)

    walk(FlywheelConfig, "")
    return keys


# Keys where 1e9 is a sensible value: seeds (any 31-bit number) and learning rates (no resource at stake; one that
# diverges is caught while training, tests/test_bad_input.py).
ONE_BILLION_IS_FINE = {"prompts.seed", "data.seed", "vote.label_noise_seed", "train.seed", "evaluate.seed",
                       "gate.seed", "seed.learning_rate", "train.learning_rate"}


def refused(overrides) -> str:
    with pytest.raises(InputError) as error:
        load_config(None, overrides)
    message = str(error.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_every_numeric_key_has_a_documented_range():
    from flywheel.config import RANGES

    keys = set(numeric_keys())
    assert len(keys) > 90
    assert keys == set(RANGES)
    described = {key: help for key, _, help in describe()}
    for key in keys:
        assert f"Range: {RANGES[key]}" in described[key], key


@pytest.mark.parametrize("key", numeric_keys())
def test_every_numeric_key_refuses_what_is_out_of_range_in_one_line(key):
    from flywheel.config import RANGES

    for raw in ("nan", ".nan", ".inf", "-.inf", "abc", "true", "off", "[1]", "{a: 1}"):
        assert f"field '{key}'" in refused([f"{key}={raw}"]), raw
    for number in (-1, 0, 10**9, -10**30, 10**30):
        if number not in RANGES[key]:
            assert f"field '{key}'" in refused([f"{key}={number}"]), number
    if key not in ONE_BILLION_IS_FINE:
        assert 10**9 not in RANGES[key]
        assert f"field '{key}'" in refused([f"{key}={10**9}"])
    assert -1 not in RANGES[key] or key == "gate.min_gain"  # no count, share, size or seed is negative


def test_ranges_keep_the_shipped_values_and_refuse_what_exhausts_memory():
    for path in CONFIGS:
        load_config(path)  # every shipped value is inside its range
    for key in ("generate.samples_per_prompt", "prompts.per_round", "evaluate.per_bucket", "seed.examples",
                "prompts.replay_per_round", "gate.bootstrap_samples", "loop.rounds"):
        message = refused([f"{key}=1000000000"])
        assert f"field '{key}': must be <=" in message, message
    assert "field 'model.num_heads': must be > 0" in refused(["model.num_heads=0"])  # was a ZeroDivisionError
    assert "field 'curate.min_vote_share': must be in [0, 1]" in refused(["curate.min_vote_share=5.0"])
    assert "field 'gate.min_gain': must be in [-2, 2]" in refused(["gate.min_gain=5"])
    assert "field 'generate.temperature'" in refused(["generate.temperature=1e308"])


def test_a_range_is_also_checked_when_a_section_is_built_in_python():
    from flywheel.config import CurateConfig, GateConfig, GenerateConfig
    from flywheel.errors import ConfigError

    with pytest.raises(ConfigError, match="must be <="):
        GenerateConfig(samples_per_prompt=10**9)
    with pytest.raises(ConfigError, match="finite"):
        GateConfig(min_gain=float("nan"))
    with pytest.raises(ConfigError, match="curate.audit_thresholds"):
        CurateConfig(audit_thresholds=[0.5, "a"])


@pytest.mark.parametrize("value", ["[a]", "[.nan]", "[1.5]", "[true]", "[[0.5]]", "[0.5, -0.1]"])
def test_audit_thresholds_are_numbers_in_the_unit_interval(value):
    message = refused([f"curate.audit_thresholds={value}"])  # "[a]" was a TypeError
    assert "field 'curate.audit_thresholds': must be a list of numbers in [0, 1]" in message
    assert load_config(None, ["curate.audit_thresholds=[0, 0.5, 1]"]).curate.audit_thresholds == [0, 0.5, 1]


def test_an_override_error_names_the_override_not_the_file():
    with pytest.raises(InputError) as error:
        load_config(ROOT / "configs" / "smoke.yaml", ["loop.rounds=2", "nosuch.key=1"])
    assert str(error.value).startswith("-s nosuch.key=1: field 'nosuch': unknown config key"), str(error.value)
    assert "smoke.yaml" not in str(error.value)
    with pytest.raises(InputError) as error:
        load_config(ROOT / "configs" / "smoke.yaml", ["train.steps=0"])
    assert str(error.value) == "-s train.steps=0: field 'train.steps': must be > 0"
    with pytest.raises(InputError) as error:  # a section given whole on the command line
        load_config(ROOT / "configs" / "smoke.yaml", ["gate={alpha: 7}"])
    assert str(error.value).startswith("-s gate={alpha: 7}: field 'gate.alpha'"), str(error.value)


def test_a_file_error_still_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 0\n")
    with pytest.raises(InputError) as error:
        load_config(bad, ["loop.rounds=2"])
    assert str(error.value) == f"{bad}: field 'train.steps': must be > 0"


def test_a_malformed_override_value_is_one_line():
    message = refused(["train.steps=[1,"])  # was a yaml ScannerError traceback
    assert message.startswith("-s train.steps=[1,: field 'train.steps': malformed YAML"), message


def alias_bomb(levels: int) -> str:
    """A "billion laughs" value in flow style: each level lists the one before it nine times (9**levels values)."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    from flywheel.config import load_config_text

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("name: " + alias_bomb(6) + "\n")  # 9**6 values: small enough that today's code survives it
    with pytest.raises(InputError) as error:
        load_config(bomb)
    message = str(error.value)
    assert message.startswith(f"{bomb}: row ") and "expands to more than" in message and "\n" not in message
    with pytest.raises(InputError, match="expands to more than"):
        load_config_text("{name: " + alias_bomb(6) + "}")
    with pytest.raises(InputError, match="expands to more than"):
        load_config(None, ["kubeflow.image_pull_secrets=" + alias_bomb(6)])
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("kubeflow:\n  image_pull_secrets: &a [*a]\n")
    with pytest.raises(InputError, match="refers to itself"):
        load_config(recursive)


def test_aliases_that_stay_small_still_load(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("generate: &g {max_new_tokens: 12}\nevaluate: {<<: *g, batch_size: 64}\n"
                  "prompts: {advance_at: &share 0.5, skip_solved_at: *share}\n")
    config = load_config(ok)
    assert (config.evaluate.max_new_tokens, config.evaluate.batch_size) == (12, 64)
    assert config.prompts.skip_solved_at == 0.5


def test_a_huge_value_is_never_formatted_whole_into_a_message(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: [" + ", ".join(["'" + "x" * 1000 + "'"] * 200) + "]\n")
    with pytest.raises(InputError) as error:
        load_config(big)
    assert "field 'name': expected str, got list" in str(error.value) and len(str(error.value)) < 400
    big.write_text("k" * 1000 + ": 1\n")
    with pytest.raises(InputError) as error:
        load_config(big)
    assert "unknown config key" in str(error.value) and len(str(error.value)) < 600, str(error.value)


@pytest.mark.parametrize("written", ["off", "no", "Off", "false"])
def test_a_string_option_takes_the_words_yaml_1_1_reads_as_booleans(tmp_path, written):
    """`select: off` in a file, `-s curate.select=off`, and params.yaml as DVC writes it back (unquoted) all mean
    the documented 'off'; YAML 1.1 reads each as false."""
    from flywheel.config import config_file_text, load_config_text

    path = tmp_path / "c.yaml"
    path.write_text(f"curate: {{select: {written}}}\ncode: {{generated_tests: {written}}}\n")
    from_file = load_config(path)
    assert (from_file.curate.select, from_file.code.generated_tests) == ("off", "off")
    assert load_config(None, [f"curate.select={written}"]).curate.select == "off"
    assert load_config_text(config_file_text(from_file)) == from_file
    with pytest.raises(InputError, match="curate.select.*must be 'off', 'loss'"):
        load_config(None, ["curate.select=yes"])  # 'on': no such choice, and the error lists them


def test_a_runs_config_yaml_is_block_yaml_that_reads_back(tmp_path):
    """config.yaml of a run: one key a line, readable, and the same config when read back."""
    from flywheel.config import config_file_text, load_config_text

    config = load_config(ROOT / "configs" / "default.yaml")
    text = config_file_text(config)
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "curate:\n" in text and "  select: 'off'\n" in text
    assert load_config_text(text) == config
