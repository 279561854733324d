"""``flywheel pipeline compile | upload | run | schedule``: the Kubeflow front door of the CLI.

Every command compiles the pipelines from the recipe as it runs on the cluster
(``pipelines.cluster_config``: ``loop.device=cuda`` and the in-cluster MLflow unless ``-s`` says
otherwise), so the parameter defaults, step resources and step placement match the config.
Arguments are checked before anything touches the network (a bad cron expression never
reaches the server); an unreachable or failing Kubeflow Pipelines API becomes one
``InputError`` line (exit 2) naming the host.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import re
import tempfile
from pathlib import Path

from flywheel.cron import check_cron
from flywheel.errors import InputError, one_line

def add_parser(sub, common) -> None:
    """The ``pipeline`` subcommand group (``common`` adds -c/-s)."""
    group = sub.add_parser("pipeline", help="Compile, run or schedule the flywheel as Kubeflow pipelines (KFP v2).",
                           description="Compile, run or schedule the flywheel as Kubeflow pipelines (KFP v2).")
    commands = group.add_subparsers(dest="pipeline_command", required=True, metavar="PIPELINE_COMMAND")

    p = commands.add_parser("compile", help="Write flywheel_round.yaml and flywheel.yaml (IR YAML for the KFP UI/API) "
                            "and one reusable component spec per step.")
    common(p)
    p.add_argument("--out-dir", type=Path, default=Path("pipelines/compiled"), help="default: pipelines/compiled")
    p.add_argument("--components-dir", type=Path, default=Path("components"),
                   help="where the component specs go (default: components)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds unrolled in flywheel.yaml (default: 3, what is committed)")

    p = commands.add_parser("upload", help="Create the pipelines on a KFP host, or add a new version of each: what "
                            "UI users start runs from.",
                            description="Compile flywheel and flywheel-round from the config and upload each as a new "
                            "pipeline, or as a new version of the pipeline of that name. A version is named after the "
                            "compiled package's digest, so uploading unchanged pipelines again adds nothing.")
    common(p)
    _host(p)
    p.add_argument("--rounds", type=int, default=None, help="rounds unrolled in flywheel (default: loop.rounds)")
    p.add_argument("--prefix", default="", help="prefix of the pipelines' names (default: none: flywheel, "
                   "flywheel-round)")

    for name, help in (("run", "Start one run of the N-round `flywheel` pipeline on a Kubeflow Pipelines host."),
                       ("schedule", "Create a recurring run of `flywheel_round` (one round per trigger, "
                                    "max_concurrency=1, no catch-up).")):
        p = commands.add_parser(name, help=help, description=help)
        common(p)
        _host(p)
        p.add_argument("--experiment", default="flywheel", help="KFP experiment (created if missing)")
        p.add_argument("--workspace", default=None,
                       help="directory on the shared volume (default: /models/runs for run; for schedule "
                            "/models/scheduled/<name>: each schedule writes its own workspace)")
        p.add_argument("--seed-uri", default="", help="the seed: models:/<name>@<alias>, models:/<name>/<version>, "
                       "s3://..., an absolute path on the volume (default: seed.path; a relative one is the seed "
                       "shipped in the image)")
        p.add_argument("--shards", type=int, default=4, help="prompt shards generated in parallel (default 4)")
        p.add_argument("--dvc-remote", default="", help="DVC remote URL to push each round to (default: none)")
        p.add_argument("--pvc", default=None, help="PVC holding the shared volume (default: flywheel-models)")
        p.add_argument("--service-account", default="flywheel-pipeline-runner",
                       help="ServiceAccount the run's pods use (default: flywheel-pipeline-runner, infra/base/runs: "
                            "reads the flywheel and KFP Secrets/ConfigMaps, creates TrainJobs)")
        if name == "run":
            p.add_argument("--rounds", type=int, default=None, help="rounds (default: loop.rounds of the config)")
            p.add_argument("--run-name", default=None)
        else:
            p.add_argument("--cron", required=True, help='5-field cron, e.g. "0 3 * * *" (03:00 every day)')
            p.add_argument("--name", default="flywheel-round", help="name of the recurring run (and of its "
                           "workspace directory)")


def _host(p) -> None:
    p.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080")


def run(args: argparse.Namespace, config) -> int:
    """``config`` is the recipe as it runs on the cluster (``pipelines.cluster_config``)."""
    from flywheel.kubeflow import pipelines

    if args.pipeline_command == "compile":
        rounds = pipelines.DEFAULT_ROUNDS if args.rounds is None else args.rounds
        for path in pipelines.compile_all(args.out_dir, rounds=rounds, config=config):
            print(path)
        for path in pipelines.compile_components(args.components_dir):
            print(path)
        return 0
    # The host is reached before the pipelines are built: a wrong or unreachable host is one line at once, not
    # after seconds of compiling.
    if args.pipeline_command == "upload":
        rounds = config.loop.rounds if args.rounds is None else args.rounds
        pipelines.check_rounds(rounds)
        client = _client(args.host)
        built = [(f"{args.prefix}flywheel", pipelines.make_flywheel(rounds, config)),
                 (f"{args.prefix}flywheel-round", pipelines.make_flywheel_round(config))]
        with tempfile.TemporaryDirectory(prefix="flywheel-kfp-") as scratch, _api_errors(args.host):
            for name, pipeline in built:
                package = Path(scratch) / f"{name}.yaml"
                pipelines.compile_checked(pipeline, package)
                print(upload(client, package, name, pipeline.description))
        return 0
    arguments = run_arguments(args, config)
    if args.pipeline_command == "run":
        rounds = config.loop.rounds if args.rounds is None else args.rounds
        pipelines.check_rounds(rounds)
        build = functools.partial(pipelines.make_flywheel, rounds, config)
    else:
        cron = check_cron(args.cron)
        build = functools.partial(pipelines.make_flywheel_round, config)
    client = _client(args.host)
    with tempfile.TemporaryDirectory(prefix="flywheel-kfp-") as scratch:
        package = Path(scratch) / "pipeline.yaml"
        pipelines.compile_checked(build(), package)
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
                print(f"recurring run {job.recurring_run_id} created: {args.cron!r} (KFP cron {cron!r}), "
                      f"workspace {arguments['workspace']}")
    return 0


def run_arguments(args: argparse.Namespace, config) -> dict:
    """The pipeline parameters of a ``run`` or ``schedule``; a schedule's workspace is its own directory."""
    from flywheel import infra
    from flywheel.config import dump_config

    _positive(args.shards, "--shards")
    arguments = {"config_yaml": dump_config(config), "shards": args.shards, "dvc_remote": args.dvc_remote,
                 "seed_uri": args.seed_uri}
    if args.pvc:
        arguments["pvc_name"] = args.pvc
    if args.pipeline_command == "run":
        if args.workspace:
            arguments["workspace"] = args.workspace
    else:
        _check_name(args.name)
        # Each schedule continues its own workspace: two schedules never write one round directory.
        arguments["workspace"] = args.workspace or f"{infra.MODELS_MOUNT}/scheduled/{args.name}"
    return arguments


def version_name(package: Path) -> str:
    """A pipeline version's name: the project version and the compiled package's digest (same YAML, same name)."""
    from flywheel import __version__ as VERSION

    return f"v{VERSION}-{hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]}"


def upload(client, package: Path, name: str, description: str) -> str:
    """Create pipeline ``name`` from ``package``, or add the package as a new version of it; returns one line."""
    version = version_name(package)
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        created = client.upload_pipeline(str(package), pipeline_name=name, description=description)
        return f"pipeline {name} created ({created.pipeline_id}); its first version holds {version}"
    listed = client.list_pipeline_versions(pipeline_id, page_size=100,
                                           filter=_equals_filter("display_name", version))
    if listed.pipeline_versions:
        return f"pipeline {name}: version {version} is already there (unchanged)"
    client.upload_pipeline_version(str(package), version, pipeline_id=pipeline_id, description=description)
    return f"pipeline {name}: version {version} uploaded"


def _equals_filter(key: str, value: str) -> str:
    import json

    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]})


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
        raise InputError("--name", f"{name!r} must be letters, digits, '.', '_' or '-' (it names the workspace)")


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
            raise InputError(self.host, f"cannot reach Kubeflow Pipelines ({one_line(reason)})") from None
        if isinstance(error, ApiException):
            raise InputError(self.host, f"Kubeflow Pipelines API error {error.status} "
                                        f"({one_line(error.reason)})") from None
        if isinstance(error, ValueError) and _raised_in_kfp_client(traceback):
            # What the server holds, as the client reads it: two pipelines or experiments of one name (the UI allows
            # it; the client then refuses every lookup by that name), no experiment of a name.
            raise InputError(self.host, f"Kubeflow Pipelines: {one_line(error)}") from None
        return False


def _raised_in_kfp_client(traceback) -> bool:
    """Whether the innermost frame of ``traceback`` is the kfp client's own code (not flywheel's)."""
    import os

    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return f"{os.sep}kfp{os.sep}client{os.sep}" in traceback.tb_frame.f_code.co_filename
