"""The prompt pool of a round: unlabeled prompts, plus the hidden truth kept apart for audits.

Round r offers ``prompts.per_round`` prompts of bucket ``start_bucket + r - 1`` and,
optionally, ``replay_per_round`` prompts spread over the easier buckets. The truth
goes to ``audit.parquet`` so no training input ever carries it.
"""

from __future__ import annotations

from pathlib import Path

from flywheel import io, schemas
from flywheel.config import PromptsConfig


def round_prompts(task, config: PromptsConfig, round_index: int) -> list[dict]:
    """Prompt rows with their hidden ``answer`` (split off by ``run_prompts``)."""
    bucket = config.bucket(round_index)
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


def run_prompts(round_dir: Path, config: PromptsConfig, *, task, round_index: int) -> dict:
    """Shell: -> prompts.parquet (no answers) and audit.parquet (id, prompt, answer)."""
    rows = round_prompts(task, config, round_index)
    io.write_rows(round_dir / "prompts.parquet", [{**r, "answer": None} for r in rows], schemas.PROMPTS)
    io.write_rows(round_dir / "audit.parquet", rows, schemas.PROMPTS)
    return {"prompts": len(rows), "bucket": config.bucket(round_index)}
