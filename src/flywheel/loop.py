"""The whole loop, top to bottom: seed evaluation, then N rounds of
generate -> vote -> curate -> train -> evaluate -> gate.

Directory layout under ``loop.out_dir`` (``dvc.yaml`` uses the same under ``data/``):
  eval.parquet                     held-out labeled eval set
  rounds/0/champion/               the seed (hard links)
  rounds/0/eval/metrics.json       the seed's scores
  rounds/<r>/prompts.parquet       unlabeled prompts      audit.parquet  hidden truth (audit only), prompts.json
  rounds/<r>/samples.parquet       generate               votes.parquet, agreement.parquet, vote.json
  rounds/<r>/curated.parquet       curate (this round)    pool.parquet (all rounds), train.parquet (the mix),
                                                          pairs.parquet (DPO), rl_prompts.parquet (GRPO)
  rounds/<r>/candidate/            train                  eval/  evaluate    decision.json  gate
  rounds/<r>/champion/             the winner, round r+1's champion
  tracking/round-<r>.json          MLflow run id and model version of round r
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from flywheel import io, schemas
from flywheel.config import FlywheelConfig
from flywheel.errors import InputError
from flywheel.modeling import looks_like_hub_name, member_dirs, resolve_model
from flywheel.pool import run_prompts
from flywheel.stages.curate import run_curate
from flywheel.stages.evaluate import evaluate_model, make_eval_set, run_evaluate
from flywheel.stages.gate import run_gate
from flywheel.stages.generate import run_generate
from flywheel.stages.train import METHOD_DATA, link_or_copy_tree, run_train
from flywheel.stages.vote import run_vote
from flywheel.tasks import load_task


class Timer:
    """Wall-clock seconds per stage of a round (what bench/ reports)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def round_dir(root: Path, round_index: int) -> Path:
    return Path(root) / "rounds" / str(round_index)


def check_seed(config: FlywheelConfig) -> Path:
    """The seed directory, or a one-line error saying how to make it."""
    seed_dir = Path(config.seed.path)
    if not seed_dir.exists() and not looks_like_hub_name(config.seed.path):
        raise InputError(seed_dir, "seed model not found; run `make seed` (or `flywheel seed`) first",
                         field="seed.path")
    seed_dir = resolve_model(config.seed.path)  # a hub name: its snapshot in the local cache
    member_dirs(seed_dir)  # a malformed model directory fails here, not deep inside round 1
    return seed_dir


def eval_set(config: FlywheelConfig, task) -> list[dict]:
    """The held-out labeled eval rows: the user's ``data.eval`` file, else the task's generated set."""
    if config.data.eval:
        from flywheel.data import load_eval

        return load_eval(config.data, task)
    return make_eval_set(task, config.evaluate)


def prepare(config: FlywheelConfig, root: Path, *, task) -> Path:
    """Write the eval set and round 0 (the seed as champion, its scores, an empty pool). Returns the eval path."""
    root = Path(root)
    seed_dir = check_seed(config)
    eval_path = root / "eval.parquet"
    if config.data.prompts:
        from flywheel.data import load_prompts

        load_prompts(config.data, task)  # a bad prompt file fails now, not after the seed's evaluation
    io.write_rows(eval_path, eval_set(config, task), schemas.PROMPTS)
    zero = round_dir(root, 0)
    link_or_copy_tree(seed_dir, zero / "champion")
    io.write_rows(zero / "pool.parquet", [], schemas.CURATED)
    metrics, _ = evaluate_model(zero / "champion", io.read_rows(eval_path, schemas.PROMPTS), config.evaluate,
                                task=task, device=config.loop.device, progress=config.loop.progress)
    io.write_json(zero / "eval" / "metrics.json", {"champion": metrics})
    return eval_path


def run_round(config: FlywheelConfig, root: Path, round_index: int, *, task, eval_path: Path) -> dict:
    """One round; every stage reads the previous stage's files. Returns the gate's decision."""
    here, previous = round_dir(root, round_index), round_dir(root, round_index - 1)
    champion = previous / "champion"
    device, progress = config.loop.device, config.loop.progress
    timer = Timer()
    with timer.stage("prompts"):
        run_prompts(here, config.prompts, task=task, round_index=round_index, champion_dir=champion,
                    data=config.data)
    with timer.stage("generate"):
        run_generate(here / "prompts.parquet", champion, here / "samples.parquet", config.generate, task=task,
                     round_index=round_index, device=device, progress=progress, code=config.code)
    with timer.stage("vote"):
        run_vote(here / "samples.parquet", here, config.vote, task=task, audit_path=here / "audit.parquet",
                 prompts_path=here / "prompts.parquet", model_dir=champion, device=device)
    with timer.stage("curate"):
        run_curate(here, config.curate, task=task, eval_path=eval_path, round_index=round_index,
                   previous_pool=previous / "pool.parquet", audit_path=here / "audit.parquet")
    with timer.stage("train"):
        init = config.train.start_from(champion, round_dir(root, 0) / "champion")
        run_train(here / METHOD_DATA[config.train.method][0], init, here / "candidate", config.train,
                  round_index=round_index, device=device, progress=progress, task=task)
    with timer.stage("evaluate"):
        run_evaluate(eval_path, here / "candidate", champion, here / "eval", config.evaluate, task=task,
                     device=device, progress=progress)
    with timer.stage("gate"):
        decision = run_gate(here / "eval", here / "decision.json", config.gate, candidate_dir=here / "candidate",
                            champion_dir=champion, next_champion=here / "champion")
    io.write_json(here / "timings.json", timer.seconds)
    return decision


def run_loop(config: FlywheelConfig, *, tracker=None, on_round=None) -> dict:
    """``flywheel run``: the seed's scores, then ``loop.rounds`` rounds; writes report.json and report.html."""
    from flywheel.report import build_report, write_report
    from flywheel.versioning import digest

    task = load_task(config.task, config.code)
    root = Path(config.loop.out_dir)
    check_seed(config)
    # A new loop: rounds left by an earlier run into the same directory must not mix into this report.
    for stale in ("rounds", "tracking"):
        shutil.rmtree(root / stale, ignore_errors=True)
    eval_path = prepare(config, root, task=task)
    parent = None
    if tracker is not None:
        parent = tracker.start_loop(config, loop_key=f"run:{root.resolve()}:{time.time_ns()}")
        tracker.register_seed(parent, round_dir(root, 0) / "champion")
    tracked = {}
    for round_index in range(1, config.loop.rounds + 1):
        decision = run_round(config, root, round_index, task=task, eval_path=eval_path)
        if tracker is not None:
            start = time.perf_counter()
            here = round_dir(root, round_index)
            tracked[round_index] = tracker.log_round(parent, round_index, here, config, digest(here))
            # Kept outside the round directory so the round's digest stays what was logged.
            io.write_json(root / "tracking" / f"round-{round_index}.json",
                          {**tracked[round_index], "seconds": time.perf_counter() - start})
        if on_round is not None:
            on_round(round_index, build_report(root, config))
        if config.loop.stop_on_decline and not decision["promote"]:
            break  # what the Kubeflow `flywheel` pipeline does: its next round runs only after a promotion
    report = build_report(root, config)
    write_report(root, report)
    if tracker is not None:
        tracker.end_loop(parent, {"final": report["summary"]})
        report["mlflow"] = {"parent_run_id": parent, "rounds": tracked}
        write_report(root, report)
    return report

