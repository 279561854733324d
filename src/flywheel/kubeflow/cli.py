"""``flywheel pipeline compile | run | schedule``: the Kubeflow front door of the CLI.

Arguments are checked before anything touches the network (a bad cron expression never
reaches the server); an unreachable or failing Kubeflow Pipelines API becomes one
``InputError`` line (exit 2) naming the host.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from flywheel.errors import InputError

# Standard 5-field cron: minute hour day-of-month month day-of-week, as (name, low, high, names).
CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_ITEM = re.compile(r"^(\*|\?|(\w+)(?:-(\w+))?)(?:/(\d+))?$")


def add_parser(sub, common) -> None:
    """The ``pipeline`` subcommand group (``common`` adds -c/-s)."""
    group = sub.add_parser("pipeline", help="Compile, run or schedule the flywheel as Kubeflow pipelines (KFP v2).",
                           description="Compile, run or schedule the flywheel as Kubeflow pipelines (KFP v2).")
    commands = group.add_subparsers(dest="pipeline_command", required=True, metavar="PIPELINE_COMMAND")

    p = commands.add_parser("compile", help="Write flywheel_round.yaml and flywheel.yaml (IR YAML for the KFP UI/API).")
    common(p)
    p.add_argument("--out-dir", type=Path, default=Path("pipelines/compiled"), help="default: pipelines/compiled")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds unrolled in flywheel.yaml (default: 3, what is committed)")

    for name, help in (("run", "Start one run of the N-round `flywheel` pipeline on a Kubeflow Pipelines host."),
                       ("schedule", "Create a recurring run of `flywheel_round` (one round per trigger, "
                                    "max_concurrency=1, no catch-up).")):
        p = commands.add_parser(name, help=help, description=help)
        common(p)
        p.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080")
        p.add_argument("--experiment", default="flywheel", help="KFP experiment (created if missing)")
        p.add_argument("--workspace", default=None,
                       help="directory on the shared volume (default: /models/runs for run, "
                            "/models/scheduled for schedule)")
        p.add_argument("--shards", type=int, default=4, help="prompt shards generated in parallel (default 4)")
        p.add_argument("--dvc-remote", default="", help="DVC remote URL to push each round to (default: none)")
        p.add_argument("--pvc", default=None, help="PVC holding the shared volume (default: flywheel-models)")
        p.add_argument("--service-account", default="flywheel-pipeline-runner",
                       help="ServiceAccount the run's pods use (default: flywheel-pipeline-runner, infra/base/runs: "
                            "reads the flywheel Secret/ConfigMap/PVC, creates TrainJobs)")
        if name == "run":
            p.add_argument("--rounds", type=int, default=None, help="rounds (default: loop.rounds of the config)")
            p.add_argument("--run-name", default=None)
        else:
            p.add_argument("--cron", required=True, help='5-field cron, e.g. "0 3 * * *" (03:00 every day)')
            p.add_argument("--name", default="flywheel-round", help="name of the recurring run")


def check_cron(expression: str) -> str:
    """Validate a standard 5-field cron expression; return KFP's 6-field form (seconds first)."""
    fields = expression.split()
    if len(fields) != 5:
        raise InputError("--cron", f"expected 5 fields (minute hour day-of-month month day-of-week), "
                                   f"got {len(fields)} in {expression!r}")
    for text, (name, low, high, names) in zip(fields, CRON_FIELDS):
        for item in text.split(","):
            match = _CRON_ITEM.match(item.upper())
            if not match or (match.group(1) == "?" and name not in ("day of month", "day of week")):
                raise InputError("--cron", f"{name} field {text!r} is not a cron field")
            for bound in (match.group(2), match.group(3)):
                if bound is None:
                    continue
                value = names.index(bound) + low if bound in names else int(bound) if bound.isdigit() else None
                if value is None or not low <= value <= high:
                    raise InputError("--cron", f"{name} field {text!r}: {bound} is outside {low}-{high}")
            if match.group(4) is not None and int(match.group(4)) == 0:
                raise InputError("--cron", f"{name} field {text!r}: step must be >= 1")
    return "0 " + " ".join(fields)


def run(args: argparse.Namespace, config) -> int:
    from flywheel.config import dump_config
    from flywheel.kubeflow import pipelines

    if args.pipeline_command == "compile":
        rounds = pipelines.DEFAULT_ROUNDS if args.rounds is None else args.rounds
        _positive(rounds, "--rounds")
        for path in pipelines.compile_all(args.out_dir, rounds=rounds):
            print(path)
        return 0
    _positive(args.shards, "--shards")
    note = ""
    if config.tracking.enabled and config.tracking.uri.startswith("sqlite:"):
        # A sqlite file is private to each pod: steps would not share runs, versions or the champion alias.
        config.tracking.uri = pipelines.IN_CLUSTER_MLFLOW
        note = (f"tracking.uri was a local sqlite file; the pipeline tracks to {pipelines.IN_CLUSTER_MLFLOW} "
                "(infra/base/services; -s tracking.uri=... to choose)")
    arguments = {"config_yaml": dump_config(config), "shards": args.shards, "dvc_remote": args.dvc_remote}
    if args.workspace:
        arguments["workspace"] = args.workspace
    if args.pvc:
        arguments["pvc_name"] = args.pvc
    if args.pipeline_command == "run":
        rounds = config.loop.rounds if args.rounds is None else args.rounds
        _positive(rounds, "--rounds")
        pipeline = pipelines.make_flywheel(rounds)
    else:
        cron = check_cron(args.cron)
        pipeline = pipelines.flywheel_round
    with tempfile.TemporaryDirectory(prefix="flywheel-kfp-") as scratch:
        package = Path(scratch) / "pipeline.yaml"
        from kfp import compiler

        compiler.Compiler().compile(pipeline, str(package))
        client = _client(args.host)
        with _api_errors(args.host):
            if args.pipeline_command == "run":
                result = client.create_run_from_pipeline_package(
                    str(package), arguments=arguments, run_name=args.run_name or f"{config.name}-{rounds}-rounds",
                    experiment_name=args.experiment, service_account=args.service_account)
                print(f"run {result.run_id} started: {args.host.rstrip('/')}/#/runs/details/{result.run_id}")
            else:
                experiment = client.create_experiment(args.experiment)
                job = client.create_recurring_run(
                    experiment.experiment_id, args.name, cron_expression=cron, max_concurrency=1, no_catchup=True,
                    params=arguments, pipeline_package_path=str(package), enabled=True,
                    service_account=args.service_account)
                print(f"recurring run {job.recurring_run_id} created: {args.cron!r} (KFP cron {cron!r})")
    if note:
        print(note)
    return 0


def _positive(value: int, flag: str) -> None:
    if value < 1:
        raise InputError(flag, f"must be >= 1, got {value}")


def _client(host: str):
    if not re.match(r"^https?://[^/\s]+", host):
        raise InputError("--host", f"{host!r} is not an http(s) URL")
    import warnings

    from kfp import Client

    with warnings.catch_warnings(), _api_errors(host):
        warnings.simplefilter("ignore")  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        return Client(host=host)


class _api_errors:
    """Turn a failing connection or API call into one line naming the host."""

    def __init__(self, host: str):
        self.host = host

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, (InputError, KeyboardInterrupt)):
            return False
        import urllib3.exceptions
        from kfp_server_api.exceptions import ApiException

        if isinstance(error, (urllib3.exceptions.HTTPError, ConnectionError, OSError)):
            reason = getattr(error, "reason", None) or error
            raise InputError(self.host, f"cannot reach Kubeflow Pipelines ({_one_line(reason)})") from None
        if isinstance(error, ApiException):
            raise InputError(self.host, f"Kubeflow Pipelines API error {error.status} "
                                        f"({_one_line(error.reason)})") from None
        return False


def _one_line(value) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 200 else text[:197] + "..."
