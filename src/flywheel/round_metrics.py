"""What a round wrote, as the numbers and digests MLflow logs: every number of its JSON files flattened to
``stage.key`` (``round_metrics``), and each output's DVC md5 (``output_digests``)."""

from __future__ import annotations

import json
from pathlib import Path

from flywheel.layout import FILES

EVAL_METRICS = f"{FILES.eval_dir}/{FILES.metrics}"  # relative to the round, as MLflow's artifact path too


def flatten(prefix: str, value, out: dict) -> dict:
    """Every number (and bool, as 0/1) in ``value``, a nested dict, into ``out`` under dotted keys."""
    if isinstance(value, dict):
        for key, sub in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    elif isinstance(value, bool):
        out[prefix] = float(value)
    elif isinstance(value, (int, float)):
        out[prefix] = float(value)
    return out


def metric_key(key: str) -> str:
    """``key`` with every character MLflow refuses in a metric name replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def output_digests(round_dir: Path) -> dict[str, str]:
    """DVC md5 of each output of a round (``samples.parquet``, ``candidate``, ``eval/metrics.json``, ...): the
    value ``dvc.lock`` records for it. A model directory is one output; other directories list their files."""
    from flywheel.versioning import digest

    out = {}
    for entry in sorted(p for p in Path(round_dir).iterdir() if not p.name.startswith(".")):
        out[entry.name] = digest(entry)
        if entry.is_dir() and not (entry / "flywheel-model.json").is_file():
            for child in sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")):
                out[f"{entry.name}/{child.name}"] = digest(child)
    return out


def round_metrics(round_dir: Path) -> dict[str, float]:
    """Every number a round wrote, flattened to ``stage.key`` (e.g. ``curate.drops.vote:low_share``)."""
    out: dict[str, float] = {}
    for stage, name in (("prompts", FILES.prompts_summary), ("vote", FILES.vote_summary), ("curate", FILES.curation),
                        ("evaluate", EVAL_METRICS), ("gate", FILES.decision), ("time", FILES.timings)):
        path = round_dir / name
        if path.exists():
            data = json.loads(path.read_text())
            if stage == "curate":  # the per-threshold audit table becomes one metric pair per threshold
                for row in data.pop("thresholds", []):
                    data[f"threshold_{row['threshold']}"] = {"yield": row["yield"], "precision": row["precision"]}
            flatten(stage, data, out)
    return out
