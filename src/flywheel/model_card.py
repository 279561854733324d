"""The model card every champion directory carries: the rounds that made it, their data and decisions.

``lineage.json`` holds one entry per round since the seed (the gate appends one each round, promoted
or not: a declined round is part of the champion's history too), and ``README.md`` renders it with
the champion's eval table, in the Hugging Face model-card layout, so an exported champion is a
Hub-ready folder (``flywheel export``).
"""

from __future__ import annotations

import json
from pathlib import Path

LINEAGE = "lineage.json"
CARD = "README.md"


def read_lineage(model_dir: Path) -> list[dict]:
    path = Path(model_dir) / LINEAGE
    return json.loads(path.read_text()) if path.is_file() else []


def round_entry(round_index: int, decision: dict, candidate_meta: dict) -> dict:
    """What the card says of one round: the gate's verdict and evidence, and the data it trained on."""
    return {
        "round": round_index,
        "promoted": bool(decision["promote"]),
        "reason": decision["reason"],
        "p_value": decision.get("p_value"),
        "delta": decision.get("delta"),
        "champion_accuracy": decision.get("champion_accuracy"),
        "candidate_accuracy": decision.get("candidate_accuracy"),
        "method": candidate_meta.get("method"),
        "curriculum_bucket": candidate_meta.get("curriculum_bucket"),
        "train_rows": sum(m.get("rows", 0) for m in candidate_meta.get("train_metrics", [])[:1]),
        "data_md5": candidate_meta.get("data_md5"),
        "precision": candidate_meta.get("precision"),
    }


def card_metadata(lineage: list[dict], buckets: dict, *, promoted_side: str) -> str:
    """The card's YAML front matter (``huggingface_hub.ModelCardData``): its held-out accuracy, overall and per
    bucket, as model-index evaluation results, which the Hub shows and ``ModelCard.load`` reads back."""
    from huggingface_hub import EvalResult, ModelCardData

    def result(value: float, name: str) -> EvalResult:
        return EvalResult(task_type="text-generation", dataset_type="flywheel-eval", dataset_name="flywheel held-out "
                          "eval (labeled)", dataset_split="eval", metric_type="accuracy", metric_value=float(value),
                          metric_name=name)

    side = "candidate_accuracy" if promoted_side == "candidate" else "champion_accuracy"
    overall = lineage[-1].get(side) if lineage else None
    results = ([result(overall, "accuracy")] if overall is not None else []) + [
        result(entry[promoted_side], f"accuracy (bucket {name})") for name, entry in buckets.items()]
    data = ModelCardData(model_name="flywheel champion", library_name="transformers",
                         tags=["flywheel", "self-training"], eval_results=results or None)
    return data.to_yaml()


def render(lineage: list[dict], buckets: dict, *, promoted_side: str) -> str:
    """Markdown: front matter, how the model was made, the rounds, its per-bucket eval accuracy."""
    lines = ["---", card_metadata(lineage, buckets, promoted_side=promoted_side), "---", "",
             "# flywheel champion", "",
             "Made by flywheel self-training rounds: each round this model's predecessor "
             "answered unlabeled prompts several times, the majority vote became the pseudo-label, the "
             "candidate was fine-tuned on what the vote kept, and replaced the champion only if it won a "
             "paired significance test on held-out labeled data. No label was used for training after the seed.",
             "", "## Rounds", "",
             "| round | promoted | candidate | champion | p | method | bucket | rows | data md5 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in lineage:
        def num(value, fmt):
            return "" if value is None else format(value, fmt)

        lines.append(f"| {e['round']} | {'yes' if e['promoted'] else 'no'} | {num(e['candidate_accuracy'], '.3f')} | "
                     f"{num(e['champion_accuracy'], '.3f')} | {num(e['p_value'], '.2g')} | {e.get('method') or ''} | "
                     f"{e.get('curriculum_bucket') or ''} | {e.get('train_rows') or ''} | "
                     f"`{(e.get('data_md5') or '')[:12]}` |")
    lines += ["", "## Held-out accuracy by bucket (this model)", "", "| bucket | accuracy | n |", "|---|---|---|"]
    for name, entry in buckets.items():
        lines.append(f"| {name} | {entry[promoted_side]:.3f} | {entry['n']} |")
    lines.append("")
    return "\n".join(lines)


def write_card(model_dir: Path, lineage: list[dict], buckets: dict, *, promoted_side: str) -> None:
    """Write ``lineage.json`` and ``README.md`` into ``model_dir`` (a directory being built, not yet published).

    The files are unlinked first: the directory's other files are hard links into the candidate's or
    the previous champion's, and writing through a link would change those too.
    """
    for name, text in ((LINEAGE, json.dumps(lineage, indent=2) + "\n"),
                       (CARD, render(lineage, buckets, promoted_side=promoted_side))):
        path = Path(model_dir) / name
        path.unlink(missing_ok=True)
        path.write_text(text)
