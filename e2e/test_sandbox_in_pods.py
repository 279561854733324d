"""The code task's strict sandbox in the cluster's pods: under the Argo door's pod settings, and under the security
context KFP 2.17 gives its step pods (seccomp RuntimeDefault, every capability dropped, no privilege escalation,
non-root). The code task checks the sandbox before any stage (``CodeTask.build``): it either runs programs in
fresh PID, mount and network namespaces, or stops in one line naming ``code.sandbox``. In the Argo door's pods it
runs; under KFP's context it is refused (docs/code-tests-and-judge.md says so, and what to change).
"""

from __future__ import annotations

import json
import time

from conftest import NAMESPACE, describe_failure, kubectl, wait_for_workflow

# What a step pod runs: the code task built as every stage builds it, then one program through the sandbox.
PROBE = """
import json
from flywheel.config import load_config
from flywheel.errors import InputError
from flywheel.tasks import load_task
try:
    task = load_task("code", load_config(None).code)  # the default code settings: code.sandbox=strict
except InputError as error:
    print(json.dumps({"sandbox": "refused", "error": str(error)}))
else:
    from flywheel.sandbox import run_program
    result = run_program("import socket, os\\ntry:\\n    socket.create_connection(('10.96.0.1', 443), 2)\\n"
                         "    print('net')\\nexcept OSError:\\n    print('no-net', os.getpid())",
                         limits=task.limits)
    print(json.dumps({"sandbox": "strict", "stdout": result.stdout.strip()}))
"""

KFP_SECURITY_CONTEXT = {  # the step container's, as KFP 2.17's compiler writes it
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
    "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}


def probe(name: str, security_context: dict | None) -> dict:
    from flywheel.infra import images

    container = {"image": images()[0], "command": ["python3", "-c", PROBE], "workingDir": "/home/flywheel"}
    if security_context:
        container["securityContext"] = security_context
    workflow = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"entrypoint": "probe", "serviceAccountName": "flywheel-argo",
                         "templates": [{"name": "probe", "container": container}]}}
    kubectl("create", "-f", "-", input=json.dumps(workflow))
    wf = wait_for_workflow(name, timeout_s=600)
    assert wf["status"]["phase"] == "Succeeded", describe_failure(wf)
    log = kubectl("-n", NAMESPACE, "logs", "-l", f"workflows.argoproj.io/workflow={name}", "-c", "main")
    # The executor's own lines (time=... level=...) come in the same log.
    return json.loads([line for line in log.splitlines() if line.startswith("{")][-1])


def test_the_strict_sandbox_runs_in_an_argo_door_pod(door):
    """The Argo door's pods (the image's user, the runtime's default seccomp): programs run in their own
    namespaces, with no network and PID 1 of their own namespace as parent."""
    seen = probe(f"sandbox-argo-{int(time.time())}", None)
    assert seen["sandbox"] == "strict", seen
    assert seen["stdout"].startswith("no-net"), seen


def test_under_kfps_security_context_the_code_task_refuses_strict_in_one_line(door):
    """KFP's step pods: seccomp RuntimeDefault forbids unshare to a process without CAP_SYS_ADMIN, so the code task
    refuses strict before any stage, in one line naming code.sandbox, the pod setting and the way out."""
    seen = probe(f"sandbox-kfp-{int(time.time())}", KFP_SECURITY_CONTEXT)
    assert seen["sandbox"] == "refused", seen
    error = seen["error"]
    assert error.startswith("code.sandbox: field 'code.sandbox': strict needs PID, mount and network namespaces"), seen
    assert "Operation not permitted" in error and "RuntimeDefault" in error and "code.sandbox=weak" in error, seen
    assert "\n" not in error
