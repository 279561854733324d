"""Typed configuration: one dataclass per stage, loaded from YAML with dotted overrides.

Every field has help text (``flywheel config --help`` prints it) and is checked in
``__post_init__``. A stage reads only its own section; ``dvc.yaml`` lists exactly
those params. Unknown keys and wrong types are ``InputError``s naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flywheel.errors import ConfigError, InputError, one_line
from flywheel.modeling import TinyModelConfig
from flywheel.precision import PRECISIONS
from flywheel.registry import TASKS, TRAIN_METHODS, VOTE_METHODS


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts (``RANGES``): ``low`` to ``high``, each included unless ``*_open``.

    A domain (``whole``: a share, a probability) is refused naming the whole interval, "must be in [0, 1]";
    otherwise a count or a size, refused naming the side it broke, "must be > 0" or "must be <= 1024".
    """

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    whole: bool = False
    why: str = ""  # why the low end is where it is, when it is not obvious

    def __str__(self) -> str:
        opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{opening}{_number(self.low)}, {_number(self.high)}{closing}"

    def __contains__(self, value) -> bool:
        return self.problem(value) is None

    def problem(self, value) -> str | None:
        """What is wrong with ``value``, or None."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"must be a number, got {type(value).__name__}"
        if not math.isfinite(value):  # NaN fails every comparison: it would pass as in range
            return f"must be a finite number, got {value!r}"
        low = value < self.low or (self.low_open and value == self.low)
        high = value > self.high or (self.high_open and value == self.high)
        if self.whole and (low or high):
            return f"must be in {self}"
        if low:
            bound = f"must be {'>' if self.low_open else '>='} {_number(self.low)}"
            return bound + (f" ({self.why})" if self.why else "")
        if high:
            return f"must be {'<' if self.high_open else '<='} {_number(self.high)}"
        return None


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value == int(value) else str(value)


def _between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Range:
    """A domain: a share, a probability, a difference of two."""
    return Range(low, high, low_open, high_open, whole=True)


def _above(low: float, cap: float) -> Range:
    """More than ``low`` (a count: more than 0), up to a cap."""
    return Range(low, cap, low_open=True)


def _from(low: float, cap: float, why: str = "") -> Range:
    """At least ``low``, up to a cap."""
    return Range(low, cap, why=why)


@dataclass
class SeedConfig:
    """The round-0 champion, taught with labels on short problems (the only labeled training)."""

    path: str = _f("seed/default", "Directory of the seed model (a committee or one HF model). "
                   "`flywheel seed` writes it; a real model is any local HF directory or a hub name "
                   "(Qwen/Qwen2.5-0.5B-Instruct) already in the local HF cache (never downloaded).")
    members: int = _f(3, "Independently seeded models in the committee; they vote together.")
    min_bucket: int = _f(1, "Shortest labeled problem (digits).")
    max_bucket: int = _f(5, "Longest labeled problem (digits).")
    mixed: bool = _f(True, "Vary problem shape within a bucket (addition: operand lengths drawn independently).")
    examples: int = _f(200_000, "Labeled examples drawn for seed training.")
    steps: int = _f(8000, "Optimizer steps per member.")
    batch_size: int = _f(64, "Sequences per step.")
    learning_rate: float = _f(1e-3, "Peak learning rate (cosine schedule, 5% warm-up).")

    def __post_init__(self):
        _check_ranges(self, "seed")
        _check(self.min_bucket <= self.max_bucket, "seed.max_bucket", "must be >= seed.min_bucket >= 1")


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
    advance_at: float = _f(0.0, "Offer the next bucket only once the champion's held-out accuracy on the bucket "
                           "it was trained on reaches this; below it, the round re-offers that bucket with fresh "
                           "prompts. 0: advance after every promotion. (Model selection on the eval set, like "
                           "the gate; no label reaches training.)")
    skip_solved_at: float = _f(0.0, "Skip the buckets the champion already scores at least this on (held-out eval, "
                               "like advance_at): the round offers the first bucket past its own that it has not "
                               "solved, rather than spending a round on lengths a seed that extrapolates already "
                               "answers. 0: off (Lee et al.'s schedule, one bucket a round).")
    similar_per_uncertain: int = _f(0, "TT-SI: new prompts synthesised for each prompt the champion is unsure of, "
                                    "added to the round's prompts so they are voted on and trained on in the same "
                                    "round (task generator, or the champion writes them; docs/methods.md). 0: off.")
    uncertain_below: float = _f(0.75, "TT-SI: a prompt is uncertain when its commonest probe answer has less than "
                                "this share of the probe samples.")
    probe_samples: int = _f(4, "TT-SI: samples per member that measure each prompt's share (the question as "
                            "written, generate.temperature).")
    max_uncertain: int = _f(0, "TT-SI: most prompts that get similar ones, least sure first. 0: every uncertain one.")
    similar_max_new_tokens: int = _f(256, "TT-SI, chat tasks: longest new prompt the champion writes, in tokens.")

    def __post_init__(self):
        _check_ranges(self, "prompts")

    # The settings that make the prompts stage load the champion (TT-SI probes it for what it is unsure of): every
    # door places and checks the stage by needs_model (flywheel.stages.records).
    MODEL_SETTINGS: typing.ClassVar[tuple[str, ...]] = ("similar_per_uncertain",)

    def needs_model(self) -> bool:
        return self.similar_per_uncertain > 0

    def bucket_after(self, champion_bucket: int | None, champion_accuracy: dict[str, float] | None = None) -> int:
        """The round's bucket: the next one, or the champion's own while it scores below ``advance_at`` there;
        then, with ``skip_solved_at``, past every bucket it already scores that much on.

        ``champion_accuracy``: its held-out accuracy by bucket (``"7": 0.41``); empty or None for a champion
        from elsewhere, which then advances one bucket a round."""
        scores = champion_accuracy or {}
        if champion_bucket is None:
            bucket = self.start_bucket
        elif scores.get(str(champion_bucket), 1.0) < self.advance_at:
            return champion_bucket  # not mastered: the same bucket again, never skipped past
        else:
            bucket = champion_bucket + 1
        # A bucket the eval did not cover has no score and stops the skip: nothing says it is solved.
        while self.skip_solved_at and scores.get(str(bucket), 0.0) >= self.skip_solved_at:
            bucket += 1
        return bucket


@dataclass
class DataConfig:
    """Your own prompts and eval set (JSONL, Parquet or a `datasets.save_to_disk` directory); see flywheel/data.py.

    Empty paths mean the task generates them (addition). The math and code tasks need both.
    """

    prompts: str = _f("", "Unlabeled prompt file; each round takes data.per_round of its rows. "
                      "Empty: the task generates prompts (prompts.* settings).")
    eval: str = _f("", "Labeled eval file (needs the answer column, or tests for the code task). "
                   "Empty: the task generates the eval set (evaluate.* settings).")
    columns: dict = _f({}, "Column names in your files, by key: {id, prompt, answer, bucket, tests}; "
                       "an unmapped key reads the column of its own name, a missing id becomes the row index.")
    per_round: int = _f(0, "Prompts per round from data.prompts (0: all of them every round).")
    order: str = _f("slice", "'slice': round r takes the r-th successive slice (wrapping around); "
                    "'sample': a seeded random sample each round.")
    seed: int = _f(0, "Seed of order='sample'.")
    eval_limit: int = _f(0, "Use only the first N rows of data.eval (0: all).")

    def __post_init__(self):
        _check_ranges(self, "data")
        _check(self.order in ("slice", "sample"), "data.order", "must be 'slice' or 'sample'")
        from flywheel.data import DEFAULT_COLUMNS

        unknown = sorted(set(self.columns) - set(DEFAULT_COLUMNS))
        _check(not unknown, "data.columns", f"unknown key(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_COLUMNS)}")
        _check(all(isinstance(v, str) and v for v in self.columns.values()), "data.columns",
               "values must be column names")


SEARCHES = ("sample", "step_beam")


@dataclass
class GenerateConfig:
    """Sampling K completions per prompt from every champion member."""

    samples_per_prompt: int = _f(4, "K: completions per prompt per committee member.")
    temperature: float = _f(0.7, "Sampling temperature; 0 means greedy (then K should be 1).")
    max_new_tokens: int = _f(32, "Longest completion in tokens.")
    batch_size: int = _f(2048, "Most sequences per generate() call (batch_tokens usually binds first).")
    batch_tokens: int = _f(32768, "Tokens per generate() call: sequences sorted by prompt length share a call while "
                           "rows x (longest prompt + max_new_tokens) stays within this, so a call holds many "
                           "short sequences or few long ones. 32768 measured fastest for the default model on "
                           "2 CPU cores (bench/generate_batching.py); on a GPU, raise it to what memory holds.")
    views: int = _f(1, "Questions each prompt's K samples are split across: the prompt and up to views-1 others "
                    "the task knows have the same answer (addition: b+a=, then the sum split into other "
                    "operands; math, code: none). Sample j goes to question j mod their number, and the vote "
                    "pools them, so one question's systematic errors meet the others' votes. Training rows "
                    "keep the original prompt. 1: off.")
    backend: str = _f("hf", "Generation backend: 'hf' (transformers), 'vllm' (needs CUDA and the [gpu] extra) or "
                      "'auto' (vLLM when CUDA is available and vllm imports, else transformers).")
    vllm_gpu_memory_utilization: float = _f(0.85, "vLLM: share of GPU memory the engine may take (one member at "
                                            "a time; the engine is released before the next member loads).")
    vllm_max_model_len: int | None = _f(None, "vLLM: longest prompt + completion in tokens (None: the model's).")
    dtype: str = _f("auto", "Weights' dtype while sampling: 'fp32', 'bf16', 'fp16', or 'auto' (fp32 on CPU, bf16 on "
                    "a GPU that supports it). Never the checkpoint's or the library's default.")
    search: str = _f("sample", "How the K samples are drawn: 'sample' (K independent completions) or 'step_beam' "
                     "(a beam of K prefixes grown one step at a time: each prefix is continued search_rollouts "
                     "times, and the next steps whose rollouts agree most with the rollouts' majority answer are "
                     "kept; flywheel.experimental.step_search). step_beam costs about search_rollouts x "
                     "(steps + 2) / 2 times plain sampling's tokens (samples' search_tokens column; on the code "
                     "task every rollout's program runs on the tests) and needs generate.backend=hf.")
    search_rollouts: int = _f(2, "step_beam: rollouts per beam prefix per step; they both value the next steps and "
                              "propose them.")

    def __post_init__(self):
        _check_ranges(self, "generate")
        _check(self.dtype in PRECISIONS, "generate.dtype", f"must be one of {', '.join(PRECISIONS)}")
        _check(self.search in SEARCHES, "generate.search", f"must be one of {', '.join(SEARCHES)}")
        _check(self.search == "sample" or self.temperature > 0, "generate.temperature",
               "must be > 0 with generate.search=step_beam (greedy rollouts are all the same)")
        _check(self.search == "sample" or self.views == 1, "generate.views",
               "must be 1 with generate.search=step_beam (the beam grows the prompt's own question)")
        _check(self.search == "sample" or self.backend == "hf", "generate.backend",
               "must be 'hf' with generate.search=step_beam (it calls the backend once per step, and a vLLM engine "
               "is built per call)")
        _check(self.backend in ("hf", "vllm", "auto"), "generate.backend", "must be 'hf', 'vllm' or 'auto'")


GENERATED_TESTS = ("off", "missing", "always")


@dataclass
class CodeConfig:
    """The code task: sandbox limits of every program run, and self-generated test inputs (CodeT-style).

    Read by every stage that runs programs (generate, vote, curate, evaluate, prepare).
    """

    timeout_s: float = _f(10.0, "Wall-clock seconds per sandbox run (the process group is killed after it).")
    cpu_s: int = _f(5, "CPU seconds per sandbox run (RLIMIT_CPU).")
    memory_mb: int = _f(1024, "Address space per sandbox run in MB (RLIMIT_AS).")
    file_mb: int = _f(16, "MB a program may write: per file (RLIMIT_FSIZE) and in all (flywheel.sandbox).")
    sandbox: str = _f("strict", "'strict': each program in its own PID, mount and network namespaces with a private, "
                      "read-only view of the system and only its temporary directory writable (refuses to run "
                      "where the kernel allows no namespaces); 'weak' (opt-in): limits and a process group only, "
                      "the program can read and write the caller's files (flywheel.sandbox).")
    processes: int = _f(32, "Processes a program may run at once in the strict sandbox (RLIMIT_NPROC).")
    generated_tests: str = _f("missing", "Test inputs written by the model itself, on which the programs vote: "
                              "'missing' (only for problems with no unlabeled test inputs; tests with expected "
                              "outputs or asserts are hidden grading and never vote), 'always' (in addition to "
                              "the given inputs) or 'off'.")
    max_tests: int = _f(10, "At most this many generated test inputs per problem (after de-duplication).")
    test_samples: int = _f(1, "Test-writing completions per problem per champion member.")
    test_max_new_tokens: int = _f(256, "Longest test-writing completion in tokens.")

    def __post_init__(self):
        _check_ranges(self, "code")
        _check(self.generated_tests in GENERATED_TESTS, "code.generated_tests",
               f"must be one of {', '.join(GENERATED_TESTS)}")
        _positive(self, "timeout_s", "cpu_s", "memory_mb", "file_mb", "max_tests", "test_samples",
                  "test_max_new_tokens", "processes")
        _check(self.sandbox in ("strict", "weak"), "code.sandbox", "must be one of strict, weak")
        _check(self.memory_mb >= 64, "code.memory_mb", "must be >= 64 (the Python interpreter itself needs it)")

    def limits(self):
        from flywheel.sandbox import Limits

        return Limits(wall_seconds=self.timeout_s, cpu_seconds=self.cpu_s, memory_mb=self.memory_mb,
                      file_mb=self.file_mb, processes=self.processes, mode=self.sandbox)


@dataclass
class VoteConfig:
    """Majority vote over all samples of a prompt (all members' samples together)."""

    min_answer_share: float = _f(0.0, "Samples without an extractable answer are votes too; a prompt whose "
                                 "answered share is below this gets no pseudo-label.")
    method: str = _f("majority", "'majority' (one sample, one vote), 'weighted' (a sample's vote is its "
                     "per-token probability, exp(logprob / n_tokens)), 'reliability' (a committee member's vote is its "
                     "accuracy as estimated, without labels, from how often the members agree with each other; "
                     "fewer than 3 members: majority), 'self_judge' (the champion scores each "
                     "candidate answer and the score weights its votes: chat tasks on a chat model are asked a "
                     "yes/no judge prompt, score P(yes)/(P(yes)+P(no)); otherwise exp(mean token log-prob)) or "
                     "'reference' (SUPERVISED: the hidden "
                     "label is the pseudo-label; reads the audit file).")
    judge_batch_size: int = _f(256, "self_judge: sequences per scoring forward pass.")
    label_noise: float = _f(0.0, "reference only, a control of bench/efficacy.py: the share of prompts whose label "
                            "is replaced by a wrong one (the most frequent wrong answer among its samples; a prompt "
                            "with none gets no label), drawn per prompt from a seed derived from its id and "
                            "label_noise_seed.")
    label_noise_seed: int = _f(0, "Seed of label_noise's draws.")

    MODEL_SETTINGS: typing.ClassVar[tuple[str, ...]] = ("method",)  # self_judge scores with the champion

    def needs_model(self) -> bool:
        return VOTE_METHODS.get(self.method).needs_model

    def __post_init__(self):
        _check_ranges(self, "vote")
        VOTE_METHODS.check(self.method)
        _check(self.label_noise == 0 or VOTE_METHODS.get(self.method).supervised, "vote.label_noise",
               "swaps true labels for wrong ones: needs a supervised vote.method (reference)")


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
    near_dedup: bool = _f(False, "Drop near-duplicates (MinHash LSH over character shingles of prompt + "
                          "completion; for pairs prompt + chosen; for GRPO prompts the prompt).")
    near_dedup_threshold: float = _f(0.8, "Estimated Jaccard similarity at or above which a text is a near-duplicate.")
    near_dedup_shingle: int = _f(5, "Characters per shingle for near-dedup.")
    near_dedup_num_perm: int = _f(128, "MinHash permutations (more: closer Jaccard estimates, slower).")
    ngram_decontaminate: bool = _f(False, "Drop prompts sharing any n-gram with any eval prompt.")
    ngram_n: int = _f(13, "n of the decontamination n-grams (a text shorter than n is one n-gram).")
    ngram_unit: str = _f("word", "Decontamination n-grams of 'word's (whitespace) or 'char'acters.")
    max_pairs_per_prompt: int = _f(1, "DPO: at most this many (chosen, rejected) pairs per prompt.")
    rl_min_vote_share: float = _f(0.0, "GRPO: keep a prompt only if its vote share is >= this (ReST-RL).")
    rl_max_vote_share: float = _f(1.0, "GRPO: ... and < this; a unanimous prompt (share 1.0) gives every "
                                  "completion the same reward, so no gradient.")
    select: str = _f("off", "Model-informed selection of the SFT rows (Middo; flywheel.stages.curate.select): 'loss' "
                     "drops the select_known_share the champion finds easiest, 'diversity' trims crowded "
                     "clusters of the champion's hidden states, 'loss+diversity' both, 'off'. Loads the "
                     "champion in curate.")
    select_known_share: float = _f(0.3, "select 'loss': share of the kept rows with the lowest champion loss "
                                   "dropped as already known (select:known).")
    select_clusters: int = _f(16, "select 'diversity': k-means clusters of the rows' embeddings.")
    select_cluster_cap: float = _f(2.0, "select 'diversity': a cluster keeps at most this times the average "
                                   "cluster's rows; beyond it its easiest rows go (select:redundant).")
    step_rollouts: int = _f(0, "Process rewards (OmegaPRM-style): the champion continues each kept row from the "
                            "end of every step but the last (addition: a digit; math: a line) this many times; a "
                            "step's score is the share of those rollouts that reach the row's voted answer. 0: off "
                            "(docs/methods.md).")
    min_step_score: float = _f(0.5, "step_rollouts: a row whose weakest step scores below this is dropped "
                               "(step:weak).")

    # Curate loads the champion when selection scores the rows or step rollouts continue them. A new option that
    # needs the champion joins these two lines, and every door places and checks curate by them.
    MODEL_SETTINGS: typing.ClassVar[tuple[str, ...]] = ("select", "step_rollouts")

    def needs_model(self) -> bool:
        return self.select != "off" or self.step_rollouts > 0

    def __post_init__(self):
        _check_ranges(self, "curate")
        # Each threshold is a pass over the votes; a non-number (`[a]`) would fail deep in a comparison.
        _check(isinstance(self.audit_thresholds, list) and len(self.audit_thresholds) <= 100
               and all(t in _between(0, 1) for t in self.audit_thresholds), "curate.audit_thresholds",
               "must be a list of numbers in [0, 1] (at most 100)")
        _check(self.select in ("off", "loss", "diversity", "loss+diversity"), "curate.select",
               "must be 'off', 'loss', 'diversity' or 'loss+diversity'")
        _check(self.ngram_unit in ("word", "char"), "curate.ngram_unit", "must be 'word' or 'char'")
        _check(self.rl_min_vote_share < self.rl_max_vote_share, "curate.rl_max_vote_share",
               "must satisfy 0 <= curate.rl_min_vote_share < curate.rl_max_vote_share <= 1")


@dataclass
class LoraSettings:
    """LoRA adapters through peft, for any training method."""

    enabled: bool = _f(False, "Train LoRA adapters instead of every weight.")
    r: int = _f(8, "Adapter rank.")
    alpha: int = _f(16, "Adapter scaling numerator (scale = alpha / r).")
    dropout: float = _f(0.0, "Dropout on the adapter input.")
    target_modules: list = _f(["q_proj", "k_proj", "v_proj", "o_proj"],
                              "Module names that get adapters (Llama-style names by default).")
    merge: bool = _f(True, "Save merged full weights (format 'full'); false: save the adapter and a reference "
                     "to its base (format 'adapter'), loaded through peft.")

    def __post_init__(self):
        _check_ranges(self, "train.lora")
        _check(bool(self.target_modules) and all(isinstance(m, str) and m for m in self.target_modules),
               "train.lora.target_modules", "must be a non-empty list of module names")


@dataclass
class DpoSettings:
    """DPO on self-judged pairs: chosen agrees with the majority, rejected does not."""

    beta: float = _f(0.1, "Strength of the pull towards the reference (the init model).")
    loss_type: str = _f("sigmoid", "TRL DPO loss: 'sigmoid' (DPO), 'ipo' or 'hinge'.")

    def __post_init__(self):
        _check_ranges(self, "train.dpo")
        _check(self.loss_type in ("sigmoid", "ipo", "hinge"), "train.dpo.loss_type",
               "must be 'sigmoid', 'ipo' or 'hinge'")


@dataclass
class GrpoSettings:
    """GRPO with the majority vote of each prompt's own group as the reward (TTRL / MM-UPT), no labels."""

    num_generations: int = _f(4, "Completions per prompt per step (the group that votes).")
    temperature: float = _f(1.0, "Sampling temperature of the group.")
    max_completion_tokens: int = _f(32, "Longest completion in tokens.")
    beta: float = _f(0.0, "KL penalty towards the init model (0: none, and no reference model is held).")
    use_vllm: bool = _f(False, "Generate the groups with vLLM inside the trainer (TRL's colocate mode; CUDA and "
                        "the [gpu] extra). False: transformers generate.")
    vllm_gpu_memory_utilization: float = _f(0.3, "With use_vllm: GPU memory share of the colocated vLLM engine "
                                            "(the rest trains).")

    def __post_init__(self):
        _check_ranges(self, "train.grpo")


@dataclass
class TrainConfig:
    """Fine-tuning with TRL: SFT on the curated set (ReST-EM), DPO on vote pairs, or GRPO with a vote reward."""

    init: str = _f("champion", "Start from 'champion' (continue training, Lee et al.) or 'base' (the seed).")
    student: str = _f("", "Weak-to-strong (Burns et al., 2023): a model directory, usually larger than the seed, "
                      "that rounds fine-tune instead of their champion or base while the champion is still round "
                      "0's model; once a trained student is promoted, rounds continue from it (docs/methods.md). "
                      "On a cluster: a path every pod sees (the models volume). Empty: off.")
    steps: int = _f(1500, "Optimizer steps per member.")
    batch_size: int = _f(64, "Sequences per step.")
    learning_rate: float = _f(5e-4, "Peak learning rate.")
    warmup_ratio: float = _f(0.05, "Share of steps for linear warm-up.")
    scheduler: str = _f("cosine", "Learning-rate schedule (a transformers scheduler name).")
    seed: int = _f(0, "Base seed; member i of round r trains with a seed derived from (seed, r, i).")
    precision: str = _f("auto", "Training precision: 'fp32', 'bf16' or 'fp16' (mixed precision over fp32 master "
                        "weights), or 'auto': fp32 on CPU (bf16 is emulated, about 3x slower, on CPUs without "
                        "AVX512-BF16/AMX), bf16 on a GPU that supports it. Set here, never inherited from TRL.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, about "
                                      "30% more compute. Off for the embedded model (it fits); turn on for "
                                      "large models on small GPUs.")
    num_nodes: int = _f(1, "GPU nodes for fine-tuning on Kubernetes. 1: the pipeline's train step trains in its "
                        "own pod. >1: it submits a Kubeflow Trainer TrainJob of this many nodes (torch-distributed "
                        "runtime; flywheel.infra.trainjob, docs/kubeflow-infra.md). `flywheel run` and "
                        "`dvc repro` always train on this machine.")
    gpus_per_node: int = _f(1, "GPUs per node of a multi-node TrainJob (train.num_nodes > 1): one torchrun "
                            "process each. num_nodes x gpus_per_node must fit the GPU quota (infra/gpu/quota.yaml).")
    method: str = _f("sft", "'sft' (SFTTrainer on vote-accepted samples: ReST-EM), 'dpo' (DPOTrainer on "
                     "majority-vs-minority pairs) or 'grpo' (GRPOTrainer, reward = agreement with the group's "
                     "majority: TTRL).")
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": LoraSettings.__doc__})
    dpo: DpoSettings = field(default_factory=DpoSettings, metadata={"help": DpoSettings.__doc__})
    grpo: GrpoSettings = field(default_factory=GrpoSettings, metadata={"help": GrpoSettings.__doc__})

    def start_from(self, champion, base):
        """The model a round fine-tunes: the champion (``init: champion``) or the seed (``init: base``)."""
        return base if self.init == "base" else champion

    def __post_init__(self):
        _check_ranges(self, "train")
        TRAIN_METHODS.get(self.method).check(self)
        _check(self.init in ("champion", "base"), "train.init", "must be 'champion' or 'base'")
        _check(self.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}")


@dataclass
class EvaluateConfig:
    """Candidate and champion on a held-out labeled eval set, per bucket and overall."""

    min_bucket: int = _f(1, "Shortest eval bucket.")
    max_bucket: int = _f(10, "Longest eval bucket.")
    per_bucket: int = _f(100, "Eval prompts per bucket.")
    seed: int = _f(12345, "Seed of the eval set (never the prompts' seed).")
    batch_size: int = _f(2048, "Most sequences per generate() call (batch_tokens usually binds first).")
    batch_tokens: int = _f(32768, "Tokens per generate() call (as generate.batch_tokens).")
    max_new_tokens: int = _f(32, "Longest completion in tokens.")
    dtype: str = _f("auto", "Weights' dtype while scoring: 'fp32', 'bf16', 'fp16', or 'auto' (fp32 on CPU, bf16 on "
                    "a GPU that supports it). Candidate and champion are always scored in the same dtype.")

    def __post_init__(self):
        _check_ranges(self, "evaluate")
        _check(self.dtype in PRECISIONS, "evaluate.dtype", f"must be one of {', '.join(PRECISIONS)}")
        _check(self.min_bucket <= self.max_bucket, "evaluate.max_bucket", "must be >= evaluate.min_bucket >= 1")


@dataclass
class GateConfig:
    """Promote the candidate only on a significant, non-regressing win."""

    min_gain: float = _f(0.01, "Candidate accuracy must exceed the champion's by at least this (absolute).")
    alpha: float = _f(0.05, "Significance level of the paired test (one-sided); 1.0 switches the test off "
                      "(promote on min_gain and the bucket tolerance alone, as plain ReST-EM iterates).")
    test: str = _f("mcnemar", "Paired test: 'mcnemar' (exact) or 'bootstrap' (paired bootstrap).")
    bootstrap_samples: int = _f(2000, "Resamples for the paired bootstrap.")
    max_bucket_drop: float = _f(0.05, "Decline if any bucket's accuracy drops by more than this.")
    seed: int = _f(0, "Seed of the bootstrap.")

    def __post_init__(self):
        _check_ranges(self, "gate")
        _check(self.test in ("mcnemar", "bootstrap"), "gate.test", "must be 'mcnemar' or 'bootstrap'")


@dataclass
class TrackingConfig:
    """MLflow: a parent run per loop, a nested run per round, every candidate registered."""

    enabled: bool = _f(True, "Log to MLflow.")
    uri: str = _f("sqlite:///mlflow.db", "Tracking URI (a sqlite file by default; http://host:5000 for a server).")
    experiment: str = _f("flywheel", "Experiment name.")
    registered_model: str = _f("flywheel-addition", "Registered model that every candidate becomes a version of.")


# What kfp's set_cpu_*/set_memory_* accept (a subset of Kubernetes quantities; validated again there).
_CPU_QUANTITY = re.compile(r"^([0-9]*\.?[0-9]+m?)$")
_MEMORY_QUANTITY = re.compile(r"^([0-9]*\.?[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?)$")


@dataclass
class KubeflowConfig:
    """Kubeflow pipeline pods (read when a pipeline is compiled): resources, time limits, retries, scheduling."""

    cpu_step_cpu: str = _f("1", "CPU request of a CPU step (prompts, vote, curate, gate, track, report).")
    cpu_step_cpu_limit: str = _f("4", "CPU limit of a CPU step.")
    cpu_step_memory: str = _f("8Gi", "Memory request and limit of a CPU step (equal: never evicted for memory "
                              "it was promised).")
    gpu_step_cpu: str = _f("8", "CPU request of a GPU step (generate, train, evaluate; vote with self_judge).")
    gpu_step_cpu_limit: str = _f("16", "CPU limit of a GPU step.")
    gpu_step_memory: str = _f("64Gi", "Memory request and limit of a GPU step.")
    step_timeout_s: int = _f(7200, "A CPU step's pod is stopped after this many seconds (activeDeadlineSeconds).")
    gpu_step_timeout_s: int = _f(86400, "A GPU step's pod is stopped after this many seconds.")
    retries: int = _f(2, "Retries of a failed idempotent step (every stage writes atomically and can re-run); "
                      "never for gate and track, which decide and move the champion alias.")
    run_deadline_s: int = _f(7 * 86400, "The whole run is stopped after this many seconds (Argo "
                             "activeDeadlineSeconds).")
    ttl_s: int = _f(7 * 86400, "The finished run's Argo workflow (and its pods) is deleted after this many "
                    "seconds; the KFP UI keeps the run, its artifacts and archived logs.")
    image_pull_secrets: list = _f([], "Secrets the pods pull the images with (a private registry).")
    kueue_queue: str = _f("", "Kueue LocalQueue for GPU steps (pod label kueue.x-k8s.io/queue-name); empty: none.")

    def __post_init__(self):
        _check_ranges(self, "kubeflow")
        for name in ("cpu_step_cpu", "cpu_step_cpu_limit", "gpu_step_cpu", "gpu_step_cpu_limit"):
            _check(bool(_CPU_QUANTITY.match(getattr(self, name))), f"kubeflow.{name}",
                   "must be a Kubernetes CPU quantity such as '2' or '500m'")
        for name in ("cpu_step_memory", "gpu_step_memory"):
            _check(bool(_MEMORY_QUANTITY.match(getattr(self, name))), f"kubeflow.{name}",
                   "must be a Kubernetes memory quantity such as '8Gi' or '512Mi'")
        _check(all(isinstance(s, str) and s for s in self.image_pull_secrets), "kubeflow.image_pull_secrets",
               "must be a list of Secret names")


@dataclass
class LoopConfig:
    rounds: int = _f(3, "Self-training rounds after the seed.")
    out_dir: str = _f("runs/default", "Where `flywheel run` writes rounds, reports and models.")
    device: str = _f("cpu", "Torch device for generation and training ('cpu', 'cuda').")
    progress: bool = _f(True, "Show progress bars.")
    stop_on_decline: bool = _f(False, "Stop after the first round whose gate declines (the Kubeflow `flywheel` "
                               "pipeline always does); by default later rounds retry with fresh prompts.")

    def __post_init__(self):
        _check_ranges(self, "loop")


@dataclass
class FlywheelConfig:
    name: str = _f("default", "Name of this recipe (used for run names).")
    task: str = _f("addition", "Task: 'addition' (reversed-digit addition), 'math' (boxed/#### answers, "
                   "math-verify) or 'code' (Python programs run against tests in a sandbox).")
    model: TinyModelConfig = field(default_factory=TinyModelConfig, metadata={"help": "Embedded default architecture."})
    seed: SeedConfig = field(default_factory=SeedConfig, metadata={"help": SeedConfig.__doc__})
    prompts: PromptsConfig = field(default_factory=PromptsConfig, metadata={"help": PromptsConfig.__doc__})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": DataConfig.__doc__})
    code: CodeConfig = field(default_factory=CodeConfig, metadata={"help": CodeConfig.__doc__})
    generate: GenerateConfig = field(default_factory=GenerateConfig, metadata={"help": GenerateConfig.__doc__})
    vote: VoteConfig = field(default_factory=VoteConfig, metadata={"help": VoteConfig.__doc__})
    curate: CurateConfig = field(default_factory=CurateConfig, metadata={"help": CurateConfig.__doc__})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": TrainConfig.__doc__})
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig, metadata={"help": EvaluateConfig.__doc__})
    gate: GateConfig = field(default_factory=GateConfig, metadata={"help": GateConfig.__doc__})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": TrackingConfig.__doc__})
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig, metadata={"help": KubeflowConfig.__doc__})
    loop: LoopConfig = field(default_factory=LoopConfig, metadata={"help": "The whole loop (`flywheel run`)."})

    def __post_init__(self):
        TASKS.check(self.task)
        if not TASKS.get(self.task).generates_prompts:
            _check(bool(self.data.prompts), "data.prompts", f"task '{self.task}' has no prompt generator; set it")
            _check(bool(self.data.eval), "data.eval", f"task '{self.task}' has no eval generator; set it")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


# The range of every numeric key, checked on load (before a section's own cross-field checks) and again in its
# __post_init__; `flywheel config` prints it after the help. The caps are what one machine holds at this tool's
# scale, with ample headroom over the shipped configs: prompts, samples and eval rows are Python dicts in memory
# (about 1 KB each), so a typo such as 1e9 is refused in one line instead of exhausting memory minutes later.
_SEED = _from(0, 2**31 - 1)  # numpy, torch and vLLM take unsigned 32-bit seeds; prompts.seed is scaled by 1000
_BUCKET = _from(1, 1000)  # problem length in digits (addition): a 2000-token question
_ROWS = 1_000_000  # rows of one round or eval set
_TOKENS = 32_768  # one completion's length
_SEQUENCES = 1_048_576  # sequences of one generate() call
_BATCH_TOKENS = 67_108_864  # tokens of one generate() call (a large GPU holds a few million)
_PER_PROMPT = 1024  # samples, votes or completions of one prompt (x prompts x members = rows)
_SECONDS = 86_400  # one sandboxed program run
_POD_SECONDS = 31_536_000  # a Kubernetes deadline: a year
_SHARE = _between(0, 1)
_LEARNING_RATE = Range(0, math.inf, low_open=True)  # no resource at stake; a diverging one is caught in training

RANGES: dict[str, Range] = {
    "model.hidden_size": _above(0, 8192), "model.num_layers": _above(0, 128), "model.num_heads": _above(0, 256),
    "model.intermediate_size": _above(0, 32_768), "model.max_positions": _above(0, 131_072),

    "seed.members": _from(1, 64), "seed.min_bucket": _BUCKET, "seed.max_bucket": _BUCKET,
    "seed.examples": _above(0, 10 * _ROWS), "seed.steps": _above(0, 10_000_000), "seed.batch_size": _above(0, 65_536),
    "seed.learning_rate": _LEARNING_RATE,

    "prompts.start_bucket": _BUCKET, "prompts.per_round": _above(0, _ROWS), "prompts.replay_per_round": _from(0, _ROWS),
    "prompts.seed": _SEED, "prompts.advance_at": _SHARE, "prompts.skip_solved_at": _SHARE,
    "prompts.similar_per_uncertain": _from(0, 64), "prompts.uncertain_below": _between(0, 1, low_open=True),
    "prompts.probe_samples": _from(2, _PER_PROMPT, why="one sample has no share"),
    "prompts.max_uncertain": _from(0, _ROWS), "prompts.similar_max_new_tokens": _above(0, _TOKENS),

    "data.per_round": _from(0, 10 * _ROWS), "data.seed": _SEED, "data.eval_limit": _from(0, 10 * _ROWS),

    "code.timeout_s": _above(0, _SECONDS), "code.cpu_s": _above(0, _SECONDS),
    "code.memory_mb": _from(64, 1_048_576, why="the Python interpreter itself needs it"),
    "code.file_mb": _above(0, 1_048_576), "code.processes": _above(0, 65_536), "code.max_tests": _above(0, 1000),
    "code.test_samples": _above(0, _PER_PROMPT), "code.test_max_new_tokens": _above(0, _TOKENS),

    "generate.samples_per_prompt": _above(0, _PER_PROMPT), "generate.temperature": _from(0, 100),
    "generate.max_new_tokens": _above(0, _TOKENS), "generate.batch_size": _above(0, _SEQUENCES),
    "generate.batch_tokens": _above(0, _BATCH_TOKENS), "generate.views": _above(0, _PER_PROMPT),
    "generate.vllm_gpu_memory_utilization": _between(0, 1, low_open=True),
    "generate.vllm_max_model_len": _above(0, 1_048_576), "generate.search_rollouts": _above(0, 64),

    "vote.min_answer_share": _SHARE, "vote.judge_batch_size": _above(0, 65_536),
    "vote.label_noise": _between(0, 1, high_open=True), "vote.label_noise_seed": _SEED,

    "curate.min_vote_share": _SHARE, "curate.max_per_prompt": _above(0, _PER_PROMPT),
    "curate.max_completion_tokens": _above(0, 1_048_576), "curate.new_fraction": _between(0, 1, low_open=True),
    "curate.near_dedup_threshold": _between(0, 1, low_open=True), "curate.near_dedup_shingle": _above(0, 1000),
    "curate.near_dedup_num_perm": _above(0, 4096), "curate.ngram_n": _above(0, 1000),
    "curate.max_pairs_per_prompt": _above(0, _PER_PROMPT), "curate.rl_min_vote_share": _SHARE,
    "curate.rl_max_vote_share": _SHARE, "curate.select_known_share": _between(0, 1, high_open=True),
    "curate.select_clusters": _from(1, 4096), "curate.select_cluster_cap": _from(1, 1000),
    "curate.step_rollouts": _from(0, 64), "curate.min_step_score": _SHARE,

    "train.steps": _above(0, 10_000_000), "train.batch_size": _above(0, 65_536), "train.learning_rate": _LEARNING_RATE,
    "train.warmup_ratio": _between(0, 1, high_open=True), "train.seed": _SEED, "train.num_nodes": _from(1, 1024),
    "train.gpus_per_node": _from(1, 64),
    "train.lora.r": _above(0, 4096), "train.lora.alpha": _above(0, 65_536),
    "train.lora.dropout": _between(0, 1, high_open=True),
    "train.dpo.beta": _above(0, 100),
    "train.grpo.num_generations": _from(2, _PER_PROMPT, why="a group votes"), "train.grpo.temperature": _above(0, 100),
    "train.grpo.max_completion_tokens": _above(0, _TOKENS), "train.grpo.beta": _from(0, 100),
    "train.grpo.vllm_gpu_memory_utilization": _between(0, 1, low_open=True),

    "evaluate.min_bucket": _BUCKET, "evaluate.max_bucket": _BUCKET, "evaluate.per_bucket": _above(0, 100_000),
    "evaluate.seed": _SEED, "evaluate.batch_size": _above(0, _SEQUENCES),
    "evaluate.batch_tokens": _above(0, _BATCH_TOKENS), "evaluate.max_new_tokens": _above(0, _TOKENS),

    # An accuracy gain is in [-1, 1]: min_gain below 0 promotes a candidate that loses up to that much, above 1
    # never promotes (controls: bench/efficacy.py's frozen arm sets 1.5).
    "gate.min_gain": _between(-2, 2), "gate.alpha": _between(0, 1, low_open=True),
    "gate.bootstrap_samples": _above(0, 100_000),  # each resample is a pure-Python pass over the eval rows
    "gate.max_bucket_drop": _from(0, 1), "gate.seed": _SEED,

    "kubeflow.step_timeout_s": _above(0, _POD_SECONDS), "kubeflow.gpu_step_timeout_s": _above(0, _POD_SECONDS),
    "kubeflow.retries": _between(0, 10), "kubeflow.run_deadline_s": _above(0, _POD_SECONDS),
    "kubeflow.ttl_s": _above(0, _POD_SECONDS),

    "loop.rounds": _above(0, 1000),
}


def _check_range(key: str, value) -> None:
    """``value`` of ``key`` inside its range (an optional key may be None)."""
    problem = None if value is None else RANGES[key].problem(value)
    _check(problem is None, key, problem or "")


def _check_ranges(section, prefix: str) -> None:
    for f in dataclasses.fields(section):
        if f"{prefix}.{f.name}" in RANGES:
            _check_range(f"{prefix}.{f.name}", getattr(section, f.name))


def _positive(section, *names: str) -> None:
    prefix = {v: k for k, v in _SECTIONS.items()}.get(type(section), "")
    for name in names:
        _check(getattr(section, name) > 0, f"{prefix}.{name}", "must be > 0")


_SECTIONS = {"seed": SeedConfig, "prompts": PromptsConfig, "data": DataConfig, "code": CodeConfig,
             "generate": GenerateConfig, "vote": VoteConfig, "curate": CurateConfig, "train": TrainConfig,
             "evaluate": EvaluateConfig, "gate": GateConfig,
             "tracking": TrackingConfig, "kubeflow": KubeflowConfig, "loop": LoopConfig, "model": TinyModelConfig}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> FlywheelConfig:
    """Read a YAML config (or the defaults), apply ``key.sub=value`` overrides, build and validate it.

    An error in a key an override set names the override (``-s train.steps=0``), not the file."""
    source = str(path) if path else "config"
    raw: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "config file not found")
        raw = _parse_yaml(path.read_text(), path) or {}
        if not isinstance(raw, dict):
            raise InputError(path, "expected a mapping at the top level")
    overridden: dict[str, str] = {}  # dotted key -> the override that set it last
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise InputError("<command line>", f"override {override!r} is not key=value", field=override)
        key = key.strip()
        where = f"-s {one_line(override, 120)}"
        _set_dotted(raw, key, _parse_yaml(value, where, field=key) if value.strip() else "", where)
        overridden.pop(key, None)
        overridden[key] = where
    try:
        return _build(FlywheelConfig, raw, source, prefix="")
    except ConfigError as exc:
        raise _blame_override(InputError(source, exc.message, field=exc.key), overridden) from None
    except InputError as exc:
        raise _blame_override(exc, overridden) from None


def _blame_override(error: InputError, overridden: dict[str, str]) -> InputError:
    """``error`` as the fault of the override that set its key, a section above it or a key below it (``-s
    nosuch.key=1`` is refused as 'nosuch'), else as it is."""
    key = error.field or ""
    for set_key, where in reversed(overridden.items()):
        if key and (key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + ".")):
            return InputError(where, error.message, field=error.field)
    return error


def load_config_text(text: str, source: str = "config") -> FlywheelConfig:
    """Build a config from YAML text (what ``dump_config`` wrote; a Kubeflow component's ``config_yaml``)."""
    raw = _parse_yaml(text, source) or {}
    try:
        return _build(FlywheelConfig, raw, source, prefix="")
    except ConfigError as exc:
        raise InputError(source, exc.message, field=exc.key) from None


def dump_config(config: FlywheelConfig) -> str:
    """The resolved config as one line of YAML (flow style), every key explicit; ``load_config_text`` reads it
    back. One line for the pipeline parameters that carry it: KFP 2.17's compiler copies each parameter's
    default into the compiled pipeline's comment header as it is, and a second line there would not be a
    comment (kfp/compiler/pipeline_spec_builder.py)."""
    return yaml.safe_dump(to_dict(config), sort_keys=True, default_flow_style=True, width=float("inf")).strip()


def config_file_text(config: FlywheelConfig) -> str:
    """The resolved config as a run's ``config.yaml``: block YAML, one key a line, sections in the order of the
    dataclasses (as ``flywheel config`` prints them), strings that YAML 1.1 would read otherwise quoted."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False, width=100)


def _set_dotted(raw: dict, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(where, "cannot set a sub-key of a scalar", field=key)
    node[parts[-1]] = value


# A config is a few hundred values. Anchors and aliases may repeat parts of it, but never past this: a "billion
# laughs" document of a few hundred bytes (nine aliases of nine aliases of ...) expands to 9**9 values, and every
# later walk of it -- the checks, an error message, asdict, dump_config -- would expand it (48 s and 4 GB).
_MAX_YAML_VALUES = 10_000


class _TooLarge(yaml.YAMLError):
    def __init__(self, message: str, node):
        super().__init__(message)
        self.row = node.start_mark.line + 1


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts a document's values, aliases expanded, before it builds anything."""

    def construct_document(self, node):
        _count_values(node, {}, set())
        return super().construct_document(node)


def _count_values(node, counted: dict[int, int], open_nodes: set[int]) -> int:
    """Values under ``node`` with every alias expanded. The composer shares an alias's node, so memoising by
    node counts a bomb in time linear in its text; a node met again while still open is an alias of itself."""
    if id(node) in counted:
        return counted[id(node)]
    if id(node) in open_nodes:
        raise _TooLarge("a YAML alias refers to itself (it is inside its own anchor)", node)
    open_nodes.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _count_values(child, counted, open_nodes)
        if total > _MAX_YAML_VALUES:
            raise _TooLarge(f"the YAML expands to more than {_MAX_YAML_VALUES} values (aliases repeat what their "
                            "anchor holds; a config has a few hundred)", node)
    open_nodes.discard(id(node))
    counted[id(node)] = total
    return total


def _parse_yaml(text: str, source, field: str | None = None):
    """YAML ``text`` as Python values; malformed or too large is one line naming ``source`` (and its line, or
    ``field`` for an override's value)."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)
    except _TooLarge as exc:
        raise InputError(source, str(exc), row=None if field else exc.row, field=field) from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        problem = one_line(getattr(exc, "problem", None) or exc)
        raise InputError(source, f"malformed YAML ({problem})", row=None if line is None or field else line + 1,
                         field=field) from None
    except RecursionError:  # the composer recurses once per level of nesting
        raise InputError(source, "malformed YAML (nested too deeply)", field=field) from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise InputError(source, f"malformed YAML ({one_line(exc)})", field=field) from None


def _build(cls, raw: Any, source: str, prefix: str):
    if not isinstance(raw, dict):
        raise InputError(source, f"expected a mapping, got {type(raw).__name__}", field=prefix.rstrip(".") or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise InputError(source, f"unknown config key (known: {', '.join(fields)})",
                             field=prefix + one_line(key, 80))
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, source, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, kind, source, prefix + key)
            if prefix + key in RANGES:  # before the section's __post_init__ computes with it (hidden_size % num_heads)
                try:
                    _check_range(prefix + key, kwargs[key])
                except ConfigError as exc:
                    raise InputError(source, exc.message, field=exc.key) from None
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise InputError(source, exc.message, field=exc.key) from None


def _coerce(value: Any, kind, source: str, key: str):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 2**1024:  # float() would raise OverflowError
            raise InputError(source, "must be a finite number", field=key)
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        except ValueError:
            pass
    base = typing.get_origin(kind) or kind
    if base in (typing.Union, types.UnionType):
        allowed = typing.get_args(kind)
        if value is None and type(None) in allowed:
            return None
        base = next(a for a in allowed if a is not type(None))
    if base is str and isinstance(value, bool):
        # YAML 1.1 (PyYAML, and DVC when it writes params.yaml back unquoted) reads on/off/yes/no as booleans: a
        # string option takes them back as the words its choices use ('off' for curate.select, code.generated_tests)
        return "on" if value else "off"
    ok = isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))
    if not ok:
        raise InputError(source, f"expected {getattr(base, '__name__', base)}, got {type(value).__name__} "
                         f"{_shown(value)}", field=key)
    if base is float and not math.isfinite(value):  # NaN fails no comparison: it would switch a check off
        raise InputError(source, f"must be a finite number, got {value!r}", field=key)
    return value


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


def _shown(value) -> str:
    """``value`` for an error message, cut short before it is written out: ``repr`` of a large list would build
    all of it first."""
    return one_line(_REPR.repr(value), 60)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def describe(config_cls=FlywheelConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every field, a numeric one's range after its help: what `flywheel config`
    prints."""
    rows = []
    default = config_cls()
    for f in dataclasses.fields(config_cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(type(value), prefix + f.name + ".")
        else:
            help = f.metadata.get("help", "")
            if prefix + f.name in RANGES:
                help += f" Range: {RANGES[prefix + f.name]}" + (" or null." if value is None else ".")
            rows.append((prefix + f.name, value, help))
    return rows
