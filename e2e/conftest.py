"""The end-to-end tests of the cluster doors (make e2e), on the local cluster of `make cluster` (e2e/README.md).

They run inside the cluster's network namespace (`e2e/cluster/cluster.sh exec`), with its kubectl and admin
kubeconfig, and talk to the real API server, Argo Server and MLflow server there. Each test names what it
checks in its docstring; `make e2e` prints them as it goes (pytest -v).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "e2e" / "cluster"
HOME = Path(os.environ.get("FLYWHEEL_E2E_HOME", "/var/lib/flywheel-e2e"))
VOLUME = HOME / "volumes" / "models"  # the model volume's directory on the node (cluster.sh volume)
ARGO_SERVER = "http://127.0.0.1:2746"
NAMESPACE = "argo"


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("KUBECONFIG"):
        skip = pytest.mark.skip(reason="no cluster: run `make cluster`, then `make e2e`")
        for item in items:
            item.add_marker(skip)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    result = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def kubectl_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


def flywheel(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "flywheel"), *args], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"flywheel {' '.join(args)}: rc={result.returncode}\n{result.stderr[-3000:]}")
    return result


def wait_until(what: str, predicate, timeout_s: float, every_s: float = 3.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)


def workflow(name: str) -> dict:
    return kubectl_json("-n", NAMESPACE, "get", "workflow", name)


def wait_for_workflow(name: str, timeout_s: float = 1800) -> dict:
    def finished():
        current = workflow(name)
        return current if current.get("status", {}).get("phase") in ("Succeeded", "Failed", "Error") else None

    return wait_until(f"workflow {name} to finish", finished, timeout_s, every_s=5)


def describe_failure(wf: dict) -> str:
    """The failed nodes' messages and their pods' last log lines: what an assertion on a workflow prints."""
    lines = [f"workflow {wf['metadata']['name']}: {wf['status'].get('phase')} {wf['status'].get('message', '')}"]
    pods = json.loads(kubectl("-n", NAMESPACE, "get", "pods", "-o", "json", "-l",
                              f"workflows.argoproj.io/workflow={wf['metadata']['name']}", check=False) or "{}")
    pod_of = {p["metadata"]["annotations"].get("workflows.argoproj.io/node-id"): p["metadata"]["name"]
              for p in pods.get("items", [])}
    for node in (wf["status"].get("nodes") or {}).values():
        if node.get("phase") in ("Failed", "Error"):
            lines.append(f"  {node['displayName']}: {node.get('message', '')}")
            if node["id"] in pod_of:  # failed pods stay (podGC OnPodSuccess) until the workflow's TTL
                log = kubectl("-n", NAMESPACE, "logs", pod_of[node["id"]], "-c", "main", "--tail", "15", check=False)
                lines.extend("    " + line for line in log.splitlines())
    return "\n".join(lines)
