"""``flywheel argo compile|submit|schedule``: the Argo Workflows front door (docs/argo.md).

``compile`` writes the manifests (``pipelines/argo/``; a test recompiles them byte for byte). ``submit`` and
``schedule`` talk to the Argo Server (``--host``, ``ARGO_TOKEN``): they create or update the ``flywheel``
WorkflowTemplate, then start a Workflow from it or create (or update) a CronWorkflow. An unreachable or
refusing server is one line, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from flywheel.errors import InputError, one_line


def add_parser(sub, common) -> None:
    group = sub.add_parser("argo", help="Compile, submit or schedule the flywheel as Argo Workflows (no Kubeflow).",
                           description="The flywheel as an Argo WorkflowTemplate whose round calls itself while the "
                                       "gate promotes, and a CronWorkflow for scheduled rounds (docs/argo.md).")
    commands = group.add_subparsers(dest="argo_command", required=True, metavar="ARGO_COMMAND")
    p = commands.add_parser("compile", help="Write workflow-template.yaml and cron-workflow.yaml.")
    common(p)
    p.add_argument("--out-dir", type=Path, default=Path("pipelines/argo"), help="default: pipelines/argo")
    for name, help in (("submit", "Create or update the WorkflowTemplate, then start a Workflow from it."),
                       ("schedule", "Create or update the WorkflowTemplate and a CronWorkflow that runs it "
                                    "(concurrencyPolicy: Forbid).")):
        p = commands.add_parser(name, help=help, description=help)
        common(p)
        p.add_argument("--host", required=True, help="the Argo Server, e.g. https://localhost:2746")
        p.add_argument("--namespace", default="argo", help="where the workflows run (default: argo)")
        p.add_argument("--workspace", default=None,
                       help="directory on the shared volume (default: /models/argo/<recipe name>; schedule: "
                            "/models/argo/scheduled/<name>)")
        p.add_argument("--rounds", type=int, default=None,
                       help="rounds to add (submit default: loop.rounds; schedule: per trigger, default 1)")
        p.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
        if name == "schedule":
            p.add_argument("--name", default="flywheel-scheduled", help="the CronWorkflow's name")
            p.add_argument("--cron", required=True, help="a cron schedule, e.g. '0 3 * * *'")
            p.add_argument("--timezone", default="UTC")


def run(args: argparse.Namespace, config) -> int:
    """``config`` is the recipe as it runs on the cluster (``kubeflow.pipelines.cluster_config``)."""
    from flywheel.argo import workflows

    if args.argo_command == "compile":
        for path in workflows.compile_all(args.out_dir, config):
            print(path)
        return 0
    rounds = args.rounds if args.rounds is not None else (config.loop.rounds if args.argo_command == "submit" else 1)
    if not 1 <= rounds <= workflows.MAX_ROUNDS_PER_WORKFLOW:
        raise InputError("--rounds", f"must be in 1..{workflows.MAX_ROUNDS_PER_WORKFLOW} (Argo stops template calls "
                         "nested 100 deep); schedule a few rounds per trigger for a longer run")
    if args.argo_command == "schedule":
        from flywheel.cron import check_cron

        check_cron(args.cron)  # five fields, each in range: one line before anything is created
    from hera.workflows import WorkflowsService
    from hera.workflows import models as m

    service = WorkflowsService(host=args.host, token=os.environ.get("ARGO_TOKEN"), namespace=args.namespace,
                               verify_ssl=not args.insecure)
    template = workflows.workflow_template(config)
    with _api_errors(args.host):
        _create_or_update_template(service, template, args.namespace)
        if args.argo_command == "submit":
            parameters = {"rounds": str(rounds), **({"workspace": args.workspace} if args.workspace else {})}
            workflow = m.Workflow(metadata=m.ObjectMeta(generate_name="flywheel-"), spec=m.WorkflowSpec(
                workflow_template_ref=m.WorkflowTemplateRef(name=workflows.TEMPLATE_NAME),
                arguments=m.Arguments(parameters=[m.Parameter(name=k, value=v) for k, v in parameters.items()])))
            created = service.create_workflow(m.WorkflowCreateRequest(workflow=workflow), namespace=args.namespace)
            print(f"workflow {args.namespace}/{created.metadata.name}: {args.host}/workflows/{args.namespace}/"
                  f"{created.metadata.name}")
            return 0
        cron = workflows.cron_workflow(config, name=args.name, schedule=args.cron, rounds=rounds,
                                       timezone=args.timezone, workspace=args.workspace)
        try:
            existing = service.get_cron_workflow(args.name, namespace=args.namespace)
        except Exception:
            existing = None
        if existing is None:
            service.create_cron_workflow(m.CreateCronWorkflowRequest(cron_workflow=cron), namespace=args.namespace)
        else:
            cron.metadata.resource_version = existing.metadata.resource_version
            service.update_cron_workflow(args.name, m.UpdateCronWorkflowRequest(cron_workflow=cron, name=args.name),
                                         namespace=args.namespace)
        print(f"cronworkflow {args.namespace}/{args.name}: '{args.cron}' ({args.timezone}), {rounds} round(s) per "
              "trigger, concurrencyPolicy Forbid")
        return 0


def _create_or_update_template(service, template, namespace: str) -> None:
    from hera.workflows import models as m

    try:
        existing = service.get_workflow_template(template.metadata.name, namespace=namespace)
    except Exception:
        existing = None
    if existing is None:
        service.create_workflow_template(m.WorkflowTemplateCreateRequest(template=template), namespace=namespace)
    else:
        template.metadata.resource_version = existing.metadata.resource_version
        service.update_workflow_template(template.metadata.name, m.WorkflowTemplateUpdateRequest(
            template=template, name=template.metadata.name), namespace=namespace)


@contextlib.contextmanager
def _api_errors(host: str):
    """An Argo Server that cannot be reached or refuses the request is one line naming it."""
    import requests

    try:
        yield
    except InputError:
        raise
    except requests.exceptions.RequestException as error:
        raise InputError("--host", f"cannot reach the Argo Server at {host}: {one_line(error)}") from None
    except Exception as error:  # the server's refusal (hera raises its own exception types)
        raise InputError("--host", f"the Argo Server at {host} refused: {one_line(error)}") from None
