"""``flywheel export``: a run's curated data as a Hugging Face dataset, its champion as a Hub-ready folder.

  <out>/dataset/   every round's curated rows (prompt, completion, prompt_id, round, bucket) as one ``train``
                   split: ``datasets.load_from_disk(<out>/dataset)`` gives a DatasetDict with ``train``, and
                   ``load_dataset(<out>/dataset)`` the same split (the card's ``configs`` names its files)
  <out>/model/     the last champion's weights and tokenizer as one plain Hugging Face model directory
                   (a committee exports one member, ``--member``; a LoRA adapter is merged into its base)
                   with the champion's model card (README.md, lineage.json)

``--push-to-hub ORG/NAME`` uploads both (``ORG/NAME`` and ``ORG/NAME-data``) when the user's hub is
reachable (``HF_ENDPOINT``, ``HF_TOKEN``); an unreachable hub is a one-line error. The data goes up with
``Dataset.push_to_hub(split="train")`` (parquet, the Hub's own layout) and then this card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flywheel import io, schemas
from flywheel.errors import InputError
from flywheel.layout import RunLayout
from flywheel.model_card import LINEAGE


def last_champion(root: Path) -> tuple[int, Path]:
    run = RunLayout(Path(root))
    rounds = [index for index in run.round_indices() if run.round(index).champion.is_dir()]
    if not rounds:
        raise InputError(root, "no champion here (run `flywheel run` first)", field="run directory")
    return rounds[-1], run.round(rounds[-1]).champion


def curated_rows(root: Path) -> list[dict]:
    rows = []
    run = RunLayout(Path(root))
    for index in run.round_indices():
        if run.round(index).curated.is_file():
            rows += io.read_rows(run.round(index).curated, schemas.CURATED)
    return rows


def export_run(root: Path, out: Path, *, member: int = 0) -> dict:
    """Write ``out/dataset`` and ``out/model`` (each atomically); returns what was written."""
    import datasets

    from flywheel.modeling import load_member, member_dirs

    root, out = Path(root), Path(out)
    round_index, champion = last_champion(root)
    members = member_dirs(champion)
    if not 0 <= member < len(members):
        raise InputError(champion, f"has {len(members)} member(s); --member must be in 0..{len(members) - 1}",
                         field="--member")
    rows = curated_rows(root)
    with io.atomic_dir(out / "dataset") as tmp:
        datasets.disable_progress_bars()
        datasets.DatasetDict({SPLIT: datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp))
        (tmp / "README.md").write_text(_dataset_card(root, rows))
    with io.atomic_dir(out / "model") as tmp:
        model, tokenizer = load_member(members[member], precision="fp32")  # an adapter comes back merged
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in ("README.md", LINEAGE):
            if (champion / name).is_file():
                shutil.copy2(champion / name, tmp / name)
        (tmp / "flywheel-export.json").write_text(json.dumps(
            {"run": str(root.resolve()), "round": round_index, "member": member, "members": len(members)}, indent=2))
    return {"dataset": str(out / "dataset"), "rows": len(rows), "model": str(out / "model"),
            "champion_round": round_index, "member": member}


SPLIT = "train"


def _dataset_card(root: Path, rows: list[dict]) -> str:
    """README.md: front matter (``configs`` points ``load_dataset`` at the split's Arrow files, which
    ``save_to_disk`` wrote under ``train/``), what the rows are, and rows per round."""
    per_round: dict = {}
    for row in rows:
        per_round[row.get("round")] = per_round.get(row.get("round"), 0) + 1
    table = "\n".join(f"| {r} | {n} |" for r, n in sorted(per_round.items(), key=lambda kv: kv[0] or 0))
    return (f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: {SPLIT}\n    path: {SPLIT}/*.arrow\n"
            "tags:\n- flywheel\n- synthetic\n- self-training\n---\n\n# flywheel curated data\n\n"
            "Completions a model wrote for unlabeled prompts and kept after a majority vote over its own "
            "samples (pseudo-labels, no human or reference labels), round by round. Columns: prompt, "
            "completion, prompt_id, round, bucket.\n\n| round | rows |\n|---|---|\n" + table + "\n")


def push_to_hub(out: Path, repo_id: str) -> dict:
    """Upload ``out/model`` to ``repo_id`` and ``out/dataset`` to ``repo_id-data``; one-line error if unreachable."""
    from huggingface_hub import DatasetCard, HfApi

    import datasets

    api, data_repo = HfApi(), f"{repo_id}-data"
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(Path(out) / "model"), repo_id=repo_id)
        # The Hub's layout (parquet shards and their README configs), then our card's words above its metadata.
        local = datasets.load_from_disk(str(Path(out) / "dataset"))[SPLIT]
        local.push_to_hub(data_repo, split=SPLIT)
        card = (Path(out) / "dataset" / "README.md").read_text().split("---\n", 2)[2]
        hub_card = DatasetCard.load(data_repo, repo_type="dataset")
        hub_card.text = card
        hub_card.push_to_hub(data_repo)
    except Exception as error:  # connection refused, DNS, 401/403: all mean "not pushed", said in one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(api.endpoint, f"could not push to the hub: {first[:200]}", field="--push-to-hub") from None
    return {"model_repo": repo_id, "dataset_repo": f"{repo_id}-data"}
