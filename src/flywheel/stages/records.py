"""Each stage of a round, declared once: its name, the files it reads and writes (from ``flywheel.layout``), the
config sections its results depend on, whether it loads a model, and its call. Every door derives from these:

- ``flywheel run`` and ``flywheel step`` (the Argo door's pods): ``flywheel.loop.round_stages`` fills the paths
  from the round's layout; the resume ledger records each stage's ``outputs``;
- ``flywheel <stage>`` (and so ``dvc repro``): its path flags are ``paths``, its output checks come from the
  ``output`` ones (``flywheel.cli``); tests/test_dvc.py holds ``dvc.yaml``'s commands, params and outs to them;
- the machine check and the GPU placement of every door: ``needs_model`` (``flywheel.machine_checks.uses_model``);
- each Kubeflow component runs its record with the paths its artifacts give (``flywheel.kubeflow.components``).

A stage's call is written here and nowhere else: a new option of a stage changes its module and its config
section; when it makes the stage load a model, the section's ``needs_model`` says so (``CurateConfig.needs_model``),
and every door follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable

from flywheel.layout import FILES, RoundLayout, RunLayout, seed_model

if TYPE_CHECKING:
    from flywheel.config import FlywheelConfig


@dataclass(frozen=True)
class StagePath:
    """One path a stage reads or writes; ``name`` is its argument (``out_dir`` is ``--out-dir``)."""

    name: str
    of_round: Callable[[RoundLayout, "FlywheelConfig"], Path]  # where the round's layout puts it
    help: str = ""
    required: bool = True
    output: bool = False
    directory: bool = False
    files: tuple[str, ...] = ()  # an output directory: the files the stage writes in it
    shared: bool = False  # an output directory other stages write in too (the round's): only ``files`` are its own
    many: bool = False  # the command line takes one or more (curate's eval sets)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class StageCall:
    """What a stage's call gets: the config, the task, the round and the paths by name (``paths.samples``)."""

    config: "FlywheelConfig"
    task: object
    round_index: int
    paths: SimpleNamespace


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    paths: tuple[StagePath, ...]
    sections: tuple[str, ...]  # the config sections its results depend on (dvc.yaml's params)
    # Loads a model (and so torch) on loop.device: always, never, or as the named config section's needs_model()
    # says (the options that make it load the champion: the section's MODEL_SETTINGS).
    loads_model: bool | str
    call: Callable[..., dict]  # (StageCall, **door extras) -> the stage's summary
    takes_round: bool = True  # the command line has --round
    shown: Callable[[dict], dict] = field(default=lambda summary: summary)  # what `flywheel <stage>` prints

    def needs_model(self, config: "FlywheelConfig") -> bool:
        if isinstance(self.loads_model, str):
            return getattr(config, self.loads_model).needs_model()
        return self.loads_model

    def model_settings(self, config: "FlywheelConfig") -> dict[str, object]:
        """The settings that decide whether it loads a model, by their dotted field name (for an error)."""
        if not isinstance(self.loads_model, str):
            return {}
        section = getattr(config, self.loads_model)
        return {f"{self.loads_model}.{key}": getattr(section, key) for key in section.MODEL_SETTINGS}

    def paths_of(self, layout: RoundLayout, config: "FlywheelConfig", **given: Path | None) -> dict[str, Path | None]:
        """Every path of round ``layout.index`` by name; ``given`` replaces some (a Kubeflow artifact's path)."""
        unknown = set(given) - {p.name for p in self.paths}
        if unknown:
            raise KeyError(f"stage {self.name} has no path {sorted(unknown)}")
        return {p.name: given[p.name] if p.name in given else p.of_round(layout, config) for p in self.paths}

    def outputs(self, paths: dict[str, Path | None]) -> list[Path]:
        """What the stage writes (the resume ledger checks these): its own files in a shared directory, else
        each output whole."""
        written = []
        for p in self.paths:
            if p.output and paths.get(p.name) is not None:
                where = Path(paths[p.name])
                written += [where / name for name in p.files] if p.shared else [where]
        return written

    def run(self, config: "FlywheelConfig", task, round_index: int, paths: dict[str, Path | None], **extra) -> dict:
        return self.call(StageCall(config, task, round_index, SimpleNamespace(**paths)), **extra)


def _this(attribute: str) -> Callable[[RoundLayout, "FlywheelConfig"], Path]:
    return lambda this, config: getattr(this, attribute)


def _previous(attribute: str) -> Callable[[RoundLayout, "FlywheelConfig"], Path]:
    return lambda this, config: getattr(this.previous(), attribute)


def _round_dir(this: RoundLayout, config: "FlywheelConfig") -> Path:
    return this.dir


def _eval_set(this: RoundLayout, config: "FlywheelConfig") -> Path:
    return RunLayout(this.root).eval_set


CHAMPION_HELP = "the round's champion (the previous round's winner)"


# --- the calls: each stage function's arguments, written once --------------------------------------------------

def _prompts(c: StageCall) -> dict:
    from flywheel.stages.prompts import run_prompts

    return run_prompts(c.paths.out_dir, c.config.prompts, task=c.task, round_index=c.round_index,
                       champion_dir=c.paths.champion, data=c.config.data, generate=c.config.generate,
                       device=c.config.loop.device)


def _generate(c: StageCall, **shard) -> dict:
    from flywheel.stages.generate import run_generate

    return run_generate(c.paths.prompts, c.paths.model, c.paths.out, c.config.generate, task=c.task,
                        round_index=c.round_index, device=c.config.loop.device, progress=c.config.loop.progress,
                        code=c.config.code, **shard)


def _vote(c: StageCall) -> dict:
    from flywheel.stages.vote import run_vote

    return run_vote(c.paths.samples, c.paths.out_dir, c.config.vote, task=c.task, audit_path=c.paths.audit,
                    prompts_path=c.paths.prompts, model_dir=c.paths.model, device=c.config.loop.device)


def _curate(c: StageCall) -> dict:
    from flywheel.stages.curate import run_curate

    return run_curate(c.paths.round_dir, c.config.curate, task=c.task, eval_path=c.paths.eval,
                      round_index=c.round_index, previous_pool=c.paths.previous_pool, audit_path=c.paths.audit,
                      model_dir=c.paths.model, device=c.config.loop.device, generate=c.config.generate)


def _train(c: StageCall) -> dict:
    from flywheel.registry import TRAIN_METHODS
    from flywheel.stages.train import run_train

    data = Path(c.paths.data)
    if data.is_dir():  # the round directory: the method's file in it
        data = data / TRAIN_METHODS.get(c.config.train.method).data_file
    # train.init: 'champion' continues from init; 'base' restarts from base (the seed).
    init = c.config.train.start_from(c.paths.init, c.paths.base or c.paths.init)
    return run_train(data, init, c.paths.out, c.config.train, round_index=c.round_index,
                     device=c.config.loop.device, progress=c.config.loop.progress, task=c.task)


def _evaluate(c: StageCall) -> dict:
    from flywheel.stages.evaluate import run_evaluate

    return run_evaluate(c.paths.eval, c.paths.candidate, c.paths.champion, c.paths.out_dir, c.config.evaluate,
                        task=c.task, device=c.config.loop.device, progress=c.config.loop.progress)


def _gate(c: StageCall) -> dict:
    from flywheel.stages.gate import run_gate

    return run_gate(c.paths.eval_dir, c.paths.out, c.config.gate, candidate_dir=c.paths.candidate,
                    champion_dir=c.paths.champion, next_champion=c.paths.next_champion)


# --- the round, in order -----------------------------------------------------------------------------------------

ROUND = (
    Stage("prompts", "Write a round's unlabeled prompts (and its audit file of hidden answers).", (
        StagePath("champion", _previous("champion"), "the round's champion: its curriculum bucket + 1"),
        StagePath("out_dir", _round_dir, "the round's directory", output=True, directory=True, shared=True,
                  files=(FILES.prompts, FILES.audit, FILES.prompts_summary)),
    ), ("task", "prompts", "data", "generate"), "prompts", _prompts),
    Stage("generate", "Sample K completions per prompt from every champion member.", (
        StagePath("prompts", _this("prompts"), "prompts (Parquet or JSONL): id, prompt"),
        StagePath("model", _previous("champion"), "champion directory"),
        StagePath("out", _this("samples"), "samples.parquet to write", output=True),
    ), ("task", "generate", "code"), True, _generate),
    Stage("vote", "Majority vote per prompt: votes.parquet, agreement.parquet, vote.json.", (
        StagePath("samples", _this("samples")),
        StagePath("out_dir", _round_dir, output=True, directory=True, shared=True,
                  files=(FILES.votes, FILES.agreement, FILES.vote_summary)),
        StagePath("audit", _this("audit"), "hidden answers, for pseudo-label precision only (and the labels "
                  "themselves with vote.method=reference)", required=False),
        StagePath("prompts", _this("prompts"), "the round's prompts (vote.method=self_judge)", required=False),
        StagePath("model", _previous("champion"), "the champion that judges (vote.method=self_judge)",
                  required=False),
    ), ("task", "vote", "code"), "vote", _vote, takes_round=False),
    Stage("curate", "Filter voted samples into the training set, counting every drop by reason.", (
        StagePath("round_dir", _round_dir, "holds prompts, samples, votes", output=True, directory=True,
                  shared=True, files=RoundLayout.CURATE_OUTPUTS),
        StagePath("eval", _eval_set, "eval set(s), for decontamination", many=True),
        StagePath("previous_pool", _previous("pool"), "earlier rounds' pool.parquet", required=False),
        StagePath("audit", _this("audit"), required=False),
        StagePath("model", _previous("champion"), "the champion, for curate.select (Middo selection)",
                  required=False),
    ), ("task", "curate", "code", "generate"), "curate", _curate),
    Stage("train", "Fine-tune every champion member with TRL (train.method: sft, dpo or grpo).", (
        StagePath("data", lambda this, config: this.train_data(config.train.method),
                  "the method's file (train.parquet, pairs.parquet or rl_prompts.parquet) or the round directory "
                  "holding it"),
        StagePath("init", _previous("champion"), "the champion: where train.init=champion starts"),
        StagePath("base", lambda this, config: seed_model(config, this),
                  "the seed: where train.init=base starts (default: --init)", required=False),
        StagePath("out", _this("candidate"), "candidate directory", output=True, directory=True),
    ), ("task", "train", "code"), True, _train),
    Stage("evaluate", "Score candidate and champion on the eval set, overall and per bucket.", (
        StagePath("eval", _eval_set),
        StagePath("candidate", _this("candidate")),
        StagePath("champion", _previous("champion")),
        StagePath("out_dir", _this("eval_dir"), output=True, directory=True, files=(FILES.predictions, FILES.metrics)),
    ), ("task", "evaluate", "code"), True, _evaluate, takes_round=False,
        shown=lambda result: {k: {"accuracy": v["accuracy"], "frontier": v["frontier"], "reach": v["reach"]}
                              for k, v in result.items()}),
    Stage("gate", "Promote the candidate only on a significant, non-regressing win: decision.json.", (
        StagePath("eval_dir", _this("eval_dir")),
        StagePath("candidate", _this("candidate")),
        StagePath("champion", _previous("champion")),
        StagePath("out", _this("decision"), "decision.json", output=True),
        StagePath("next_champion", _this("champion"), "directory that becomes the next champion", output=True,
                  directory=True),
    ), ("gate",), False, _gate, takes_round=False,
        shown=lambda decision: {k: decision[k] for k in ("promote", "reason", "delta", "p_value")}),
)

STAGES = {stage.name: stage for stage in ROUND}
ROUND_STAGES = tuple(STAGES)  # the names, in order
