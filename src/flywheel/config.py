"""Typed configuration: one dataclass per stage, loaded from YAML with dotted overrides.

Every field has help text (``flywheel config --help`` prints it) and is checked in
``__post_init__``. A stage reads only its own section; ``dvc.yaml`` lists exactly
those params. Unknown keys and wrong types are ``InputError``s naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flywheel.errors import ConfigError, InputError
from flywheel.modeling import TinyModelConfig


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class SeedConfig:
    """The round-0 champion, taught with labels on short problems (the only labeled training)."""

    path: str = _f("seed/default", "Directory of the seed model (a committee or one HF model). "
                   "`flywheel seed` writes it; a real model is any local HF directory.")
    members: int = _f(3, "Independently seeded models in the committee; they vote together.")
    min_bucket: int = _f(1, "Shortest labeled problem (digits).")
    max_bucket: int = _f(5, "Longest labeled problem (digits).")
    mixed: bool = _f(True, "Vary problem shape within a bucket (addition: operand lengths drawn independently).")
    examples: int = _f(200_000, "Labeled examples drawn for seed training.")
    steps: int = _f(8000, "Optimizer steps per member.")
    batch_size: int = _f(64, "Sequences per step.")
    learning_rate: float = _f(1e-3, "Peak learning rate (cosine schedule, 5% warm-up).")

    def __post_init__(self):
        _check(self.members >= 1, "seed.members", "must be >= 1")
        _check(1 <= self.min_bucket <= self.max_bucket, "seed.max_bucket", "must be >= seed.min_bucket >= 1")
        _positive(self, "examples", "steps", "batch_size", "learning_rate")


@dataclass
class PromptsConfig:
    """The unlabeled prompt pool of each round: a curriculum one bucket past what the champion learned.

    The champion records the hardest bucket it was trained on (``curriculum_bucket`` in
    flywheel-model.json); a round offers the next one. A declined round leaves the champion,
    so the next round offers the same bucket again with fresh prompts.
    """

    start_bucket: int = _f(6, "Bucket offered when the champion records none (e.g. a plain Hugging Face model).")
    per_round: int = _f(1000, "New prompts of the round's bucket.")
    replay_per_round: int = _f(0, "Prompts of easier buckets (1 .. round's bucket - 1), self-labeled like the "
                               "rest, so the candidate keeps what it knew without seeing any label.")
    mixed: bool = _f(True, "Vary problem shape within the bucket (addition: one operand of the bucket's length, "
                     "the other 1..bucket digits).")
    seed: int = _f(1, "Seed of the prompt generator (differs from the eval set's).")

    def __post_init__(self):
        _check(self.start_bucket >= 1, "prompts.start_bucket", "must be >= 1")
        _positive(self, "per_round")
        _check(self.replay_per_round >= 0, "prompts.replay_per_round", "must be >= 0")

    def bucket_after(self, champion_bucket: int | None) -> int:
        return self.start_bucket if champion_bucket is None else champion_bucket + 1


@dataclass
class GenerateConfig:
    """Sampling K completions per prompt from every champion member."""

    samples_per_prompt: int = _f(4, "K: completions per prompt per committee member.")
    temperature: float = _f(0.7, "Sampling temperature; 0 means greedy (then K should be 1).")
    max_new_tokens: int = _f(32, "Longest completion in tokens.")
    batch_size: int = _f(512, "Sequences per generate() call.")
    backend: str = _f("hf", "Generation backend: 'hf' (transformers).")

    def __post_init__(self):
        _positive(self, "samples_per_prompt", "max_new_tokens", "batch_size")
        _check(self.temperature >= 0, "generate.temperature", "must be >= 0")
        _check(self.backend in ("hf",), "generate.backend", "must be 'hf'")


@dataclass
class VoteConfig:
    """Majority vote over all samples of a prompt (all members' samples together)."""

    min_answer_share: float = _f(0.0, "Samples without an extractable answer are votes too; a prompt whose "
                                 "answered share is below this gets no pseudo-label.")

    def __post_init__(self):
        _check(0 <= self.min_answer_share <= 1, "vote.min_answer_share", "must be in [0, 1]")


@dataclass
class CurateConfig:
    """What survives into training. Every drop is counted under a stable reason string."""

    min_vote_share: float = _f(0.6, "Keep a prompt only if its majority holds at least this share of votes.")
    max_per_prompt: int = _f(1, "At most this many distinct agreeing completions per prompt.")
    max_completion_tokens: int = _f(64, "Drop completions longer than this (tokens).")
    format_filter: bool = _f(True, "Drop answers the task rejects by form alone (e.g. wrong length).")
    dedup: bool = _f(True, "Drop exact duplicate (prompt, completion) pairs.")
    decontaminate: bool = _f(True, "Drop prompts that appear in the eval set.")
    accumulate: bool = _f(True, "Mix in earlier rounds' curated data.")
    new_fraction: float = _f(0.5, "With accumulate: share of the mix from this round (Lee et al.: half).")
    audit_thresholds: list = _f([0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                                "Vote-share thresholds at which yield and pseudo-label precision are reported.")

    def __post_init__(self):
        _check(0 <= self.min_vote_share <= 1, "curate.min_vote_share", "must be in [0, 1]")
        _check(0 < self.new_fraction <= 1, "curate.new_fraction", "must be in (0, 1]")
        _positive(self, "max_per_prompt", "max_completion_tokens")
        _check(all(0 <= t <= 1 for t in self.audit_thresholds), "curate.audit_thresholds", "must be in [0, 1]")


@dataclass
class TrainConfig:
    """Supervised fine-tuning with TRL's SFTTrainer on the curated set, loss on completions only."""

    init: str = _f("champion", "Start from 'champion' (continue training, Lee et al.) or 'base' (the seed).")
    steps: int = _f(1500, "Optimizer steps per member.")
    batch_size: int = _f(64, "Sequences per step.")
    learning_rate: float = _f(5e-4, "Peak learning rate.")
    warmup_ratio: float = _f(0.05, "Share of steps for linear warm-up.")
    scheduler: str = _f("cosine", "Learning-rate schedule (a transformers scheduler name).")
    seed: int = _f(0, "Base seed; member i of round r trains with a seed derived from (seed, r, i).")

    def __post_init__(self):
        _check(self.init in ("champion", "base"), "train.init", "must be 'champion' or 'base'")
        _positive(self, "steps", "batch_size", "learning_rate")
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")


@dataclass
class EvaluateConfig:
    """Candidate and champion on a held-out labeled eval set, per bucket and overall."""

    min_bucket: int = _f(1, "Shortest eval bucket.")
    max_bucket: int = _f(10, "Longest eval bucket.")
    per_bucket: int = _f(100, "Eval prompts per bucket.")
    seed: int = _f(12345, "Seed of the eval set (never the prompts' seed).")
    batch_size: int = _f(512, "Sequences per generate() call.")
    max_new_tokens: int = _f(32, "Longest completion in tokens.")

    def __post_init__(self):
        _check(1 <= self.min_bucket <= self.max_bucket, "evaluate.max_bucket", "must be >= evaluate.min_bucket >= 1")
        _positive(self, "per_bucket", "batch_size", "max_new_tokens")


@dataclass
class GateConfig:
    """Promote the candidate only on a significant, non-regressing win."""

    min_gain: float = _f(0.01, "Candidate accuracy must exceed the champion's by at least this (absolute).")
    alpha: float = _f(0.05, "Significance level of the paired test (one-sided).")
    test: str = _f("mcnemar", "Paired test: 'mcnemar' (exact) or 'bootstrap' (paired bootstrap).")
    bootstrap_samples: int = _f(2000, "Resamples for the paired bootstrap.")
    max_bucket_drop: float = _f(0.05, "Decline if any bucket's accuracy drops by more than this.")
    seed: int = _f(0, "Seed of the bootstrap.")

    def __post_init__(self):
        _check(self.test in ("mcnemar", "bootstrap"), "gate.test", "must be 'mcnemar' or 'bootstrap'")
        _check(0 < self.alpha < 1, "gate.alpha", "must be in (0, 1)")
        _check(self.max_bucket_drop >= 0, "gate.max_bucket_drop", "must be >= 0")
        _positive(self, "bootstrap_samples")


@dataclass
class TrackingConfig:
    """MLflow: a parent run per loop, a nested run per round, every candidate registered."""

    enabled: bool = _f(True, "Log to MLflow.")
    uri: str = _f("sqlite:///mlflow.db", "Tracking URI (a sqlite file by default; http://host:5000 for a server).")
    experiment: str = _f("flywheel", "Experiment name.")
    registered_model: str = _f("flywheel-addition", "Registered model that every candidate becomes a version of.")


@dataclass
class LoopConfig:
    rounds: int = _f(3, "Self-training rounds after the seed.")
    out_dir: str = _f("runs/default", "Where `flywheel run` writes rounds, reports and models.")
    device: str = _f("cpu", "Torch device for generation and training ('cpu', 'cuda').")
    progress: bool = _f(True, "Show progress bars.")
    stop_on_decline: bool = _f(False, "Stop after the first round whose gate declines (the Kubeflow `flywheel` "
                               "pipeline always does); by default later rounds retry with fresh prompts.")

    def __post_init__(self):
        _positive(self, "rounds")


@dataclass
class FlywheelConfig:
    name: str = _f("default", "Name of this recipe (used for run names).")
    task: str = _f("addition", "Task: 'addition' (reversed-digit addition).")
    model: TinyModelConfig = field(default_factory=TinyModelConfig, metadata={"help": "Embedded default architecture."})
    seed: SeedConfig = field(default_factory=SeedConfig, metadata={"help": SeedConfig.__doc__})
    prompts: PromptsConfig = field(default_factory=PromptsConfig, metadata={"help": PromptsConfig.__doc__})
    generate: GenerateConfig = field(default_factory=GenerateConfig, metadata={"help": GenerateConfig.__doc__})
    vote: VoteConfig = field(default_factory=VoteConfig, metadata={"help": VoteConfig.__doc__})
    curate: CurateConfig = field(default_factory=CurateConfig, metadata={"help": CurateConfig.__doc__})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": TrainConfig.__doc__})
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig, metadata={"help": EvaluateConfig.__doc__})
    gate: GateConfig = field(default_factory=GateConfig, metadata={"help": GateConfig.__doc__})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": TrackingConfig.__doc__})
    loop: LoopConfig = field(default_factory=LoopConfig, metadata={"help": "The whole loop (`flywheel run`)."})

    def __post_init__(self):
        from flywheel.tasks import TASKS

        _check(self.task in TASKS, "task", f"must be one of {', '.join(TASKS)}")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _positive(section, *names: str) -> None:
    prefix = {v: k for k, v in _SECTIONS.items()}.get(type(section), "")
    for name in names:
        _check(getattr(section, name) > 0, f"{prefix}.{name}", "must be > 0")


_SECTIONS = {"seed": SeedConfig, "prompts": PromptsConfig, "generate": GenerateConfig, "vote": VoteConfig,
             "curate": CurateConfig, "train": TrainConfig, "evaluate": EvaluateConfig, "gate": GateConfig,
             "tracking": TrackingConfig, "loop": LoopConfig, "model": TinyModelConfig}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> FlywheelConfig:
    """Read a YAML config (or the defaults), apply ``key.sub=value`` overrides, build and validate it."""
    source = str(path) if path else "config"
    raw: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            raise InputError(path, f"malformed YAML ({getattr(exc, 'problem', exc)})",
                             row=None if line is None else line + 1) from None
        if not isinstance(raw, dict):
            raise InputError(path, "expected a mapping at the top level")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise InputError("<command line>", f"override {override!r} is not key=value", field=override)
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else "")
    try:
        return _build(FlywheelConfig, raw, source, prefix="")
    except ConfigError as exc:
        raise InputError(source, exc.message, field=exc.key) from None


def load_config_text(text: str, source: str = "config") -> FlywheelConfig:
    """Build a config from YAML text (what ``dump_config`` wrote; a Kubeflow component's ``config_yaml``)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(source, f"malformed YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        return _build(FlywheelConfig, raw, source, prefix="")
    except ConfigError as exc:
        raise InputError(source, exc.message, field=exc.key) from None


def dump_config(config: FlywheelConfig) -> str:
    """The resolved config as one line of YAML (flow style), every key explicit; ``load_config_text`` reads it
    back. One line because KFP copies parameter defaults into a comment header of the compiled pipeline."""
    return yaml.safe_dump(to_dict(config), sort_keys=True, default_flow_style=True, width=float("inf")).strip()


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError("<command line>", "cannot set a sub-key of a scalar", field=key)
    node[parts[-1]] = value


def _build(cls, raw: Any, source: str, prefix: str):
    if not isinstance(raw, dict):
        raise InputError(source, f"expected a mapping, got {type(raw).__name__}", field=prefix.rstrip(".") or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise InputError(source, f"unknown config key (known: {', '.join(fields)})", field=prefix + str(key))
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, source, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, kind, source, prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise InputError(source, exc.message, field=exc.key) from None


def _coerce(value: Any, kind, source: str, key: str):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        except ValueError:
            pass
    base = typing.get_origin(kind) or kind
    if base in (typing.Union, types.UnionType):
        allowed = typing.get_args(kind)
        if value is None and type(None) in allowed:
            return None
        base = next(a for a in allowed if a is not type(None))
    ok = isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))
    if not ok:
        raise InputError(source, f"expected {getattr(base, '__name__', base)}, got {type(value).__name__} {value!r:.40}",
                         field=key)
    return value


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def describe(config_cls=FlywheelConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every field: what `flywheel config` prints."""
    rows = []
    default = config_cls()
    for f in dataclasses.fields(config_cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(type(value), prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, value, f.metadata.get("help", "")))
    return rows
