"""The one owner of a run's file layout: where every round's files are, for every front door.

``flywheel run`` (``loop.py``), the Kubeflow components and the status and report readers take their
paths from here; ``dvc.yaml`` spells the same layout under ``data/`` (tests/test_dvc.py checks it
against these names). A run directory (``loop.out_dir``, a Kubeflow workspace, DVC's ``data/``)::

  eval.parquet                     held-out labeled eval set
  rounds/0/champion/               the seed (hard links)       rounds/0/eval/metrics.json  its scores
  rounds/<r>/prompts.parquet       unlabeled prompts           audit.parquet (hidden truth, audit only), prompts.json
  rounds/<r>/samples.parquet       generate                    votes.parquet, agreement.parquet, vote.json
  rounds/<r>/curated.parquet       curate (this round)         pool.parquet (all rounds), train.parquet (the mix),
                                                               pairs.parquet (DPO), rl_prompts.parquet (GRPO)
  rounds/<r>/candidate/            train                       eval/ evaluate     decision.json  gate
  rounds/<r>/champion/             the winner, round r+1's champion
  tracking/round-<r>.json          MLflow run id, model version and promotion of round r
  config.yaml  state/              the run's resolved config; completed stages, for --resume (run_state.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flywheel.registry import TRAIN_METHODS


def train_data_files() -> dict[str, str]:
    """What each registered ``train.method`` trains on: its file in the round, written by curate."""
    return {name: TRAIN_METHODS.get(name).data_file for name in TRAIN_METHODS.names()}


class FILES:
    """One spelling of each file of a round (relative to ``rounds/<r>/``): the stages write these names and
    ``RoundLayout`` joins them to a round. Nothing else in the package spells them."""

    prompts, audit, prompts_summary = "prompts.parquet", "audit.parquet", "prompts.json"
    samples = "samples.parquet"
    votes, agreement, vote_summary = "votes.parquet", "agreement.parquet", "vote.json"
    curated, pool, curation = "curated.parquet", "pool.parquet", "curation.json"
    mix, pairs, rl_prompts = "train.parquet", "pairs.parquet", "rl_prompts.parquet"  # what sft, dpo, grpo train on
    candidate = "candidate"
    eval_dir, metrics, predictions = "eval", "metrics.json", "predictions.parquet"  # metrics, predictions: in eval/
    decision, champion = "decision.json", "champion"
    timings = "timings.json"


@dataclass(frozen=True)
class RoundLayout:
    """Every path of round ``index`` under the run directory ``root``."""

    root: Path
    index: int

    @property
    def dir(self) -> Path:
        return Path(self.root) / "rounds" / str(self.index)

    def previous(self) -> "RoundLayout":
        return RoundLayout(self.root, self.index - 1)

    @classmethod
    def of_champion(cls, champion_dir: Path) -> "RoundLayout | None":
        """The round whose gate wrote ``champion_dir`` (``<root>/rounds/<r>/champion``), or None for a champion
        from elsewhere."""
        here = Path(champion_dir).parent
        if here.parent.name != "rounds" or not here.name.isdigit():
            return None
        return cls(here.parent.parent, int(here.name))

    # prompts
    @property
    def prompts(self) -> Path:
        return self.dir / FILES.prompts

    @property
    def audit(self) -> Path:
        return self.dir / FILES.audit

    @property
    def prompts_summary(self) -> Path:
        return self.dir / FILES.prompts_summary

    # generate, vote
    @property
    def samples(self) -> Path:
        return self.dir / FILES.samples

    @property
    def votes(self) -> Path:
        return self.dir / FILES.votes

    @property
    def agreement(self) -> Path:
        return self.dir / FILES.agreement

    @property
    def vote_summary(self) -> Path:
        return self.dir / FILES.vote_summary

    # curate
    @property
    def curated(self) -> Path:
        return self.dir / FILES.curated

    @property
    def pool(self) -> Path:
        return self.dir / FILES.pool

    def train_data(self, method: str) -> Path:
        return self.dir / TRAIN_METHODS.get(method).data_file

    @property
    def curation(self) -> Path:
        return self.dir / FILES.curation

    # train, evaluate, gate
    @property
    def candidate(self) -> Path:
        return self.dir / FILES.candidate

    @property
    def eval_dir(self) -> Path:
        return self.dir / FILES.eval_dir

    @property
    def metrics(self) -> Path:
        return self.eval_dir / FILES.metrics

    @property
    def decision(self) -> Path:
        return self.dir / FILES.decision

    @property
    def champion(self) -> Path:
        """The round's winner: the next round's champion (round 0: the seed)."""
        return self.dir / FILES.champion

    @property
    def timings(self) -> Path:
        return self.dir / FILES.timings

    # outputs of each stage, relative to ``dir``: what the ledger records and a re-run replaces
    CURATE_OUTPUTS = (FILES.curated, FILES.pool, FILES.mix, FILES.pairs, FILES.rl_prompts, FILES.curation)


@dataclass(frozen=True)
class RunLayout:
    """The files of a whole run directory."""

    root: Path

    def round(self, index: int) -> RoundLayout:
        return RoundLayout(Path(self.root), index)

    @property
    def rounds_dir(self) -> Path:
        return Path(self.root) / "rounds"

    def round_indices(self) -> list[int]:
        """The rounds that have a directory, in order (0: the seed)."""
        if not self.rounds_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.rounds_dir.iterdir() if p.name.isdigit() and p.is_dir())

    @property
    def tracking_dir(self) -> Path:
        return Path(self.root) / "tracking"

    @property
    def loop_record(self) -> Path:
        """The MLflow parent run of ``flywheel run`` (id and loop key), for --resume."""
        return self.tracking_dir / "loop.json"

    @property
    def report_json(self) -> Path:
        return Path(self.root) / "report.json"

    @property
    def report_html(self) -> Path:
        return Path(self.root) / "report.html"

    @property
    def plots(self) -> Path:
        return Path(self.root) / "plots"

    @property
    def config(self) -> Path:
        """The run's resolved config (``flywheel run`` writes it; an Argo workspace's steps read it)."""
        return Path(self.root) / "config.yaml"

    def next_round(self) -> int:
        """1 + the last round that reached its gate (1 for a new run): where a run one round at a time goes on."""
        done = [index for index in self.round_indices() if index > 0 and self.round(index).decision.exists()]
        return max(done, default=0) + 1

    def outputs(self) -> list[Path]:
        """Everything a run writes here besides its state (what ``--restart`` deletes, with the state)."""
        return [self.rounds_dir, self.tracking_dir, self.eval_set, self.report_json, self.report_html, self.plots]

    @property
    def eval_set(self) -> Path:
        return Path(self.root) / "eval.parquet"

    @property
    def seed(self) -> Path:
        """The seed as the run copied it (round 0's champion)."""
        return self.round(0).champion

    def tracking_record(self, index: int) -> Path:
        return self.tracking_dir / f"round-{index}.json"


def seed_model(config, layout: RoundLayout, seed_path: str | Path | None = None) -> Path:
    """The seed as round ``layout.index`` sees it: round 0's champion where the run has one, else ``seed_path``
    (default ``seed.path``: a scheduled workspace's rounds have no round 0)."""
    seed = RunLayout(layout.root).seed
    return seed if seed.exists() else Path(seed_path or config.seed.path)


def start_model(config, layout: RoundLayout, seed_path: str | Path | None = None) -> Path:
    """The model round ``layout.index`` trains from: its champion, or with ``train.init: base`` the seed
    (``seed_model``). The one place every door asks."""
    return config.train.start_from(layout.previous().champion, seed_model(config, layout, seed_path))
