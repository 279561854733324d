"""The prompt pool of a round: unlabeled prompts, plus the hidden truth kept apart for audits.

A round offers ``prompts.per_round`` prompts of the bucket after the one the champion
was last trained on (``curriculum_bucket`` in its flywheel-model.json), or that bucket again
while the champion's held-out accuracy on it is below ``prompts.advance_at`` (with
``prompts.skip_solved_at``, past the buckets it already solves), and, optionally,
``replay_per_round`` prompts spread over the easier buckets. The truth goes to
``audit.parquet`` so no training input ever carries it.
"""

from __future__ import annotations

from pathlib import Path

from flywheel import io, schemas
from flywheel.config import DataConfig, GenerateConfig, PromptsConfig
from flywheel.layout import FILES, RoundLayout
from flywheel.modeling import read_model_meta


def round_prompts(task, config: PromptsConfig, round_index: int, bucket: int) -> list[dict]:
    """Prompt rows with their hidden ``answer`` (split off by ``run_prompts``)."""
    rows = task.make_prompts(bucket=bucket, count=config.per_round, seed=config.seed * 1000 + round_index,
                             id_prefix=f"r{round_index}-", mixed=config.mixed)
    easier = list(range(1, bucket))
    if config.replay_per_round and easier:
        for offset, easy in enumerate(easier):
            count = config.replay_per_round // len(easier) + (offset < config.replay_per_round % len(easier))
            if count:
                rows += task.make_prompts(bucket=easy, count=count, seed=config.seed * 1000 + round_index,
                                          id_prefix=f"r{round_index}-replay-", mixed=config.mixed)
    return rows


def champion_accuracy(champion_dir: Path) -> dict[str, float]:
    """The champion's held-out accuracy per bucket, from the round that made it champion
    (``rounds/<r>/eval/metrics.json`` and ``decision.json`` beside ``rounds/<r>/champion``).

    Empty when those files are not there (a champion from elsewhere): the curriculum then advances.
    """
    made = RoundLayout.of_champion(champion_dir)  # the round whose gate wrote this champion
    if made is None or not made.metrics.is_file():
        return {}
    metrics_path, decision_path = made.metrics, made.decision
    metrics = io.read_json(metrics_path)
    decision = io.read_json(decision_path) if decision_path.is_file() else None
    scores = metrics.get("candidate" if decision and decision["promote"] else "champion") or {}
    return {str(bucket): float(accuracy) for bucket, accuracy in (scores.get("buckets") or {}).items()}


def run_prompts(round_dir: Path, config: PromptsConfig, *, task, round_index: int, champion_dir: Path,
                data: DataConfig | None = None, generate: GenerateConfig | None = None, device: str = "cpu") -> dict:
    """Shell: champion's curriculum bucket (or ``data.prompts``' slice) -> prompts.parquet (no answers),
    audit.parquet (the rows that carry an answer), prompts.json.

    With ``prompts.similar_per_uncertain`` the champion probes the prompts on ``device`` (sampling as
    ``generate`` says) and the round gains TT-SI's prompts like the uncertain ones (``stages/prompts/ttsi.py``)."""
    if data is not None and data.prompts:
        from flywheel.data import load_prompts, round_rows

        bucket = "data"  # the user's data has no curriculum: the report's bucket column says where prompts came from
        rows = round_rows(load_prompts(data, task), data, round_index)
    else:
        trained_on = read_model_meta(champion_dir).get("curriculum_bucket")
        bucket = config.bucket_after(trained_on, champion_accuracy(champion_dir))
        rows = round_prompts(task, config, round_index, bucket)
    summary = {"prompts": len(rows), "bucket": bucket}
    if config.similar_per_uncertain:
        from flywheel.stages.prompts.ttsi import with_similar_prompts

        rows, summary["ttsi"] = with_similar_prompts(rows, config, generate or GenerateConfig(), task=task,
                                                     round_index=round_index, champion_dir=champion_dir,
                                                     device=device)
        summary["prompts"] = len(rows)
    with io.publish_together(round_dir) as staged:  # the prompts and their hidden answers, never one without
        io.write_rows(staged(FILES.prompts), [{**r, "answer": None} for r in rows], schemas.PROMPTS)
        io.write_rows(staged(FILES.audit), [r for r in rows if r.get("answer") is not None], schemas.PROMPTS)
        io.write_json(staged(FILES.prompts_summary), summary)
    return summary
