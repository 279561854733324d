"""Evaluate: candidate and champion on the held-out labeled eval set, per bucket and overall.

A committee answers by majority over its members' greedy answers (one member: its
greedy answer). Besides accuracy, label-free signals that need no eval labels:
majority ratio and answer entropy across members, mean completion length.
Outputs: ``metrics.json`` ({"candidate": ..., "champion": ...}) and
``predictions.parquet`` (per item, both models' answers and correctness) for the gate.
"""

from __future__ import annotations

from pathlib import Path

from flywheel import io, schemas
from flywheel.config import EvaluateConfig, GenerateConfig
from flywheel.layout import FILES
from flywheel.schemas import Column, Schema, bucket_key
from flywheel.stages.generate import generate, load_backends
from flywheel.stages.vote import vote

PREDICTIONS = FILES.predictions
PREDICTION_SCHEMA = Schema("prediction", (
    Column("prompt_id", str),
    Column("bucket", str),
    Column("truth", str),
    Column("champion_answer", str, required=False),
    Column("champion_correct", bool),
    Column("candidate_answer", str, required=False),
    Column("candidate_correct", bool),
))


def make_eval_set(task, config: EvaluateConfig) -> list[dict]:
    rows = []
    for bucket in range(config.min_bucket, config.max_bucket + 1):
        rows += task.make_prompts(bucket=bucket, count=config.per_bucket, seed=config.seed, id_prefix="eval-")
    return rows


def score(eval_rows: list[dict], samples: list[dict], *, task) -> tuple[dict, dict[str, str | None]]:
    """Accuracy overall and per bucket of a committee's majority answers, plus label-free signals."""
    votes, _ = vote(samples, key=task.vote_key)
    answers = {v["prompt_id"]: v["majority_answer"] for v in votes}
    buckets: dict[str, list[bool]] = {}
    for row in eval_rows:
        buckets.setdefault(row["bucket"], []).append(task.is_correct(answers.get(row["id"]), row["answer"]))
    correct = [c for flags in buckets.values() for c in flags]
    metrics = {
        "accuracy": sum(correct) / len(correct) if correct else 0.0,
        "buckets": {b: sum(flags) / len(flags)
                    for b, flags in sorted(buckets.items(), key=lambda kv: bucket_key(kv[0]))},
        "majority_ratio": sum(v["vote_share"] for v in votes) / len(votes) if votes else 0.0,
        "answer_entropy": sum(v["entropy"] for v in votes) / len(votes) if votes else 0.0,
        "mean_completion_tokens": sum(s["n_tokens"] for s in samples) / len(samples) if samples else 0.0,
    }
    metrics.update(length_frontier(metrics["buckets"]))
    return metrics, answers


def length_frontier(bucket_accuracy: dict[str, float], *, solid: float = 0.99, reach: float = 0.5) -> dict:
    """Frontier: longest L with accuracy >= ``solid`` at every bucket up to L; reach: longest with >= ``reach``."""
    bucket_accuracy = {b: acc for b, acc in bucket_accuracy.items() if b.isdigit()}  # lengths only, not "all"
    frontier = 0
    for bucket in sorted(bucket_accuracy, key=int):
        if bucket_accuracy[bucket] >= solid and int(bucket) == frontier + 1:
            frontier = int(bucket)
        elif int(bucket) > frontier:
            break
    reached = [int(b) for b, acc in bucket_accuracy.items() if acc >= reach]
    return {"frontier": frontier, "reach": max(reached, default=0)}


def evaluate_model(model_dir: Path, eval_rows: list[dict], config: EvaluateConfig, *, task, device: str,
                   progress: bool) -> tuple[dict, dict[str, str | None]]:
    greedy = GenerateConfig(samples_per_prompt=1, temperature=0.0, max_new_tokens=config.max_new_tokens,
                            batch_size=config.batch_size, batch_tokens=config.batch_tokens)
    backends = load_backends(model_dir, batch_size=config.batch_size, device=device, progress=progress,
                             precision=config.dtype, batch_tokens=config.batch_tokens,
                             label=f"evaluate {Path(model_dir).name}")
    samples = generate(eval_rows, backends, greedy, task=task, round_index=0)
    return score(eval_rows, samples, task=task)


def run_evaluate(eval_path: Path, candidate_dir: Path, champion_dir: Path, out_dir: Path, config: EvaluateConfig,
                 *, task, device: str = "cpu", progress: bool = False) -> dict:
    """Shell: eval set + both models -> metrics.json, predictions.parquet."""
    from flywheel.tasks.base import check_prompts

    eval_rows = check_prompts(task, io.read_rows(eval_path, schemas.PROMPTS), eval_path)
    if not eval_rows:  # it would score an accuracy of 0.0 for both models, and the gate would compare nothing
        raise io.InputError(eval_path, "the eval set has no rows: nothing to evaluate on")
    for index, row in enumerate(eval_rows, start=1):
        if row.get("answer") is None:
            raise io.InputError(eval_path, "eval rows need a reference answer", row=index, field="answer")
        row.setdefault("bucket", None)
        if row["bucket"] is None:
            row["bucket"] = "all"
        elif not row["bucket"].strip():  # a bucket named "" would be reported, and gated on, as a length
            raise io.InputError(eval_path, "must not be empty (leave it out for one bucket, 'all')", row=index,
                                field="bucket")
    candidate, candidate_answers = evaluate_model(candidate_dir, eval_rows, config, task=task, device=device,
                                                  progress=progress)
    champion, champion_answers = evaluate_model(champion_dir, eval_rows, config, task=task, device=device,
                                                progress=progress)
    predictions = [{
        "prompt_id": row["id"],
        "bucket": row["bucket"],
        "truth": row["answer"],
        "champion_answer": champion_answers.get(row["id"]),
        "champion_correct": task.is_correct(champion_answers.get(row["id"]), row["answer"]),
        "candidate_answer": candidate_answers.get(row["id"]),
        "candidate_correct": task.is_correct(candidate_answers.get(row["id"]), row["answer"]),
    } for row in eval_rows]
    metrics = {"candidate": candidate, "champion": champion}
    with io.publish_together(out_dir) as staged:
        io.write_rows(staged(PREDICTIONS), predictions, PREDICTION_SCHEMA)
        io.write_json(staged(FILES.metrics), metrics)
    return metrics


def read_predictions(path: Path) -> list[dict]:
    return io.read_rows(path, PREDICTION_SCHEMA)
