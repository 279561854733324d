"""``flywheel export``, ``flywheel status``, ``flywheel data push|commit``: the tools that read or ship a run's
files. They need no config and load no model; each command's flags stand beside its function."""

from __future__ import annotations

import json
from pathlib import Path


def add_tool_parsers(sub) -> None:
    for add_command in (_add_export, _add_status, _add_data):
        add_command(sub)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="Write a run's curated data as a Hugging Face dataset and its champion as a "
                                      "Hub-ready model folder (optionally push both).",
                       description="Write <out>/dataset (every round's curated rows as a `train` split: "
                                   "datasets.load_from_disk(<out>/dataset)['train'] or load_dataset(<out>/dataset)) "
                                   "and <out>/model (the last champion as one plain Hugging Face model directory "
                                   "with its model card, evaluation results as model-index metadata). "
                                   "--push-to-hub uploads them (HF_ENDPOINT, HF_TOKEN).")
    p.add_argument("root", type=Path, help="the run directory (loop.out_dir)")
    p.add_argument("--out", type=Path, required=True, help="where to write dataset/ and model/")
    p.add_argument("--member", type=int, default=0, help="the committee member to export (default 0)")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", default=None,
                   help="upload the model to ORG/NAME and the data to ORG/NAME-data")


def export(args) -> int:
    from flywheel.export import export_run, push_to_hub

    result = export_run(args.root, args.out, member=args.member)
    if args.push_to_hub:
        result.update(push_to_hub(args.out, args.push_to_hub))
    print(json.dumps(result, indent=2))
    return 0


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="Which rounds of a run finished, their decisions, and where it stopped.",
                       description="Which rounds of a run directory finished, their gate decisions, and the stage "
                                   "where the loop stopped (read from its files; nothing runs).")
    p.add_argument("root", type=Path, help="the run directory (loop.out_dir)")


def status(args) -> int:
    from flywheel.status import run_status, status_lines

    print("\n".join(status_lines(run_status(args.root))))
    return 0


def _add_data(sub) -> None:
    # DVC in the cluster: `push` runs in a pipeline pod (no git), `commit` where the data repo is checked out.
    data = sub.add_parser("data", help="Version a round's data with DVC: push (no git), commit + tag (data repo).",
                          description="Version a round's data with DVC. See docs/kubeflow-infra.md.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("push", help="Upload a round directory to a DVC remote without git; write its .dvc file.",
                            description="Upload a round directory straight to a DVC remote (s3://bucket/prefix or a "
                                        "local path) from a scratch no-SCM DVC repo, and write the .dvc file that "
                                        "points at it. S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL.")
    p.add_argument("--round-dir", type=Path, required=True, help="the round's data directory (e.g. rounds/3)")
    p.add_argument("--remote", required=True, help="DVC remote URL: s3://bucket/prefix or a directory")
    p.add_argument("--dvc-file", type=Path, required=True, help=".dvc file to write (atomically)")
    p = data_sub.add_parser("commit", help="Commit a round's .dvc file to the data repository and tag it round-K.",
                            description="Copy a .dvc file (from `flywheel data push`) into a git + DVC data "
                                        "repository as rounds/K.dvc, commit it and tag round-K.")
    p.add_argument("--repo", type=Path, required=True, help="the data repository (git + DVC)")
    p.add_argument("--dvc-file", type=Path, required=True, help="the round's .dvc file")
    p.add_argument("--round", type=int, required=True, help="round index K (tag round-K)")
    p.add_argument("--message", default=None, help="commit message (default: 'round K: data <md5>')")


def data(args) -> int:
    """``flywheel data push|commit``: no config, no torch; DVC and git only."""
    from flywheel import versioning

    if args.data_command == "push":
        result = versioning.push_round(args.round_dir, args.remote, args.dvc_file)
    else:
        result = versioning.commit_round(args.repo, args.dvc_file, args.round, args.message)
    print(json.dumps(result, indent=2))
    return 0


TOOL_COMMANDS = {"export": export, "status": status, "data": data}
