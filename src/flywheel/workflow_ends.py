"""How a workflow ended, as its exit handler is told (Argo's ``{{workflow.status}}`` and ``{{workflow.failures}}``,
KFP's ``PipelineTaskFinalStatus``): the MLflow status the loop's parent run ends with, and the first failed step."""

from __future__ import annotations

import json
from dataclasses import dataclass

WORKFLOW_ENDINGS = {"Succeeded": "FINISHED", "Failed": "FAILED", "Error": "FAILED"}
# How Argo marks the steps `argo stop` ends (workflow/controller/exec_control.go and operator.go, v4.0.5): a running
# pod's node "workflow shutdown with strategy:  Stop" (replaced by "main: Error (exit code 143)" once the pod's
# SIGTERM ends it), a retried step "Stopped with strategy 'Stop'". The workflow itself is then only Failed; these
# messages in {{workflow.failures}} are what tells a stop from a failure.
_STOPPED = ("shutdown with strategy", "Stopped with strategy", "(exit code 143)")


@dataclass(frozen=True)
class WorkflowEnd:
    """How a workflow ended, as its exit handler sees it: the MLflow status for the loop's runs, and the first
    failed step (``name: message``) where one failed."""

    status: str
    first_failure: str | None


def _failed_steps(failures: str) -> list[dict]:
    """``{{workflow.failures}}`` as the exit handler's argument: Argo quotes the JSON list once more
    (``strconv.Quote``, to survive its template substitution), so the argument is a JSON string holding the JSON
    list; "null" or empty where nothing failed. Anything else is kept as one failure's text."""
    value: object = failures
    for _ in range(2):
        if not isinstance(value, str) or not value.strip():
            break
        try:
            value = json.loads(value)
        except ValueError:
            break
    if isinstance(value, list):
        return [step for step in value if isinstance(step, dict)]
    if isinstance(value, str) and value.strip():
        return [{"displayName": "workflow", "message": value}]
    return []


def workflow_end(workflow_status: str, failures: str = "") -> WorkflowEnd:
    """``workflow_status`` is Argo's ``{{workflow.status}}``; ``failures`` its ``{{workflow.failures}}`` (the failed
    steps: ``displayName``, ``message``, ``finishedAt``, ...). A stop's marks among the failures make it KILLED."""
    from flywheel.errors import InputError

    if workflow_status not in WORKFLOW_ENDINGS:
        raise InputError("--end-loop", f"{workflow_status!r} is not a workflow status "
                         f"({', '.join(WORKFLOW_ENDINGS)})")
    status = WORKFLOW_ENDINGS[workflow_status]
    steps = sorted(_failed_steps(failures), key=lambda s: (str(s.get("finishedAt") or ""), str(s.get("displayName"))))
    messages = [str(step.get("message") or "") for step in steps]
    if status == "FAILED" and any(mark in message for message in messages for mark in _STOPPED):
        status = "KILLED"
    first = next((f"{s.get('displayName', '?')}: {m}" for s, m in zip(steps, messages) if m), None)
    return WorkflowEnd(status, first if status != "FINISHED" else None)


# KFP's PipelineTaskFinalStatus.state in a pipeline's exit task (kfp.dsl documents CANCELLED; the backend's runtime
# state is spelled CANCELED), as the MLflow status the parent run ends with.
PIPELINE_ENDINGS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELLED": "KILLED", "CANCELED": "KILLED"}


def pipeline_end(state: str, error_message: str | None = None) -> WorkflowEnd:
    """How a Kubeflow run ended, as its exit task sees it (``dsl.PipelineTaskFinalStatus``)."""
    from flywheel.errors import InputError, one_line

    if state not in PIPELINE_ENDINGS:
        raise InputError("status.state", f"{state!r} is not a final pipeline state ({', '.join(PIPELINE_ENDINGS)})")
    status = PIPELINE_ENDINGS[state]
    return WorkflowEnd(status, None if status == "FINISHED" else one_line(error_message or state, 500))
