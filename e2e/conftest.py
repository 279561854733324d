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
import urllib.request
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


# --- the Argo door: what every check submits, and the cluster state it asks about ----------------------------------

SMOKE = ROOT / "configs" / "smoke.yaml"
CPU = ["-s", "loop.device=cpu"]  # the local cluster has no GPU: every step on the CPU image, off the GPU pool
# The smoke seed scores 0% and so does its candidate: with the recipe's alpha the gate declines on p = 1, and the
# recursion would never run. alpha = 1 promotes any round with compared items and a gain >= min_gain (-1).
PROMOTE = ["-s", "gate.alpha=1"]
MLFLOW = "http://mlflow.flywheel.svc.cluster.local:5000"


def mlflow_get(path: str, **params) -> dict:
    """The MLflow server's REST API, through the cluster's Service (kube-proxy) as the pods reach it."""
    service = kubectl_json("-n", "flywheel", "get", "service", "mlflow")["spec"]["clusterIP"]
    query = "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in params.items())
    with urllib.request.urlopen(f"http://{service}:5000/api/2.0/mlflow/{path}?{query}", timeout=30) as response:
        return json.loads(response.read())


def model_of(workspace: str) -> str:
    """The registered model a test's workspace promotes into. One each: a registered model's champion belongs to
    the loop that first set it, and another loop's candidates end `stale` against it (compare-and-swap)."""
    return f"flywheel-{Path(workspace).name}"


def submit(workspace: str, rounds: int = 2, *extra: str) -> str:
    """`flywheel argo submit`; returns the new workflow's name."""
    result = flywheel("argo", "submit", "--host", ARGO_SERVER, "-c", str(SMOKE), *CPU,
                      "-s", f"tracking.registered_model={model_of(workspace)}", *extra,  # extra's -s win
                      "--workspace", workspace, "--rounds", str(rounds))
    line = result.stdout.strip().splitlines()[-1]  # workflow argo/<name>: <url>
    return line.split(":", 1)[0].split("/", 1)[1]


@pytest.fixture(scope="session")
def door():
    """infra/argo applied exactly as docs/argo.md says, and MLflow served in the cluster."""
    kubectl("apply", "-k", str(ROOT / "infra" / "argo"))
    kubectl("apply", "-f", str(ROOT / "e2e" / "manifests" / "mlflow.yaml"))
    kubectl("-n", NAMESPACE, "wait", "--for=condition=complete", "job/flywheel-models-init", "--timeout=300s")
    kubectl("-n", "flywheel", "rollout", "status", "deployment/mlflow", "--timeout=300s")
    return True


def running_pod(workflow_name: str, stage: str, round_index: int | None = None) -> str | None:
    """The name of the workflow's pod of ``stage`` (and round) whose main container runs, if any."""
    pods = kubectl_json("-n", NAMESPACE, "get", "pods", "-l", f"workflows.argoproj.io/workflow={workflow_name}")
    for pod in pods["items"]:
        main = next(c for c in pod["spec"]["containers"] if c["name"] == "main")
        words = main.get("args", []) + main.get("command", [])
        statuses = {c["name"]: c.get("state", {}) for c in pod["status"].get("containerStatuses", [])}
        if stage in words and "running" in statuses.get("main", {}) and (
                round_index is None or words[words.index("--round") + 1] == str(round_index)):
            return pod["metadata"]["name"]
    return None


def node_running(workflow_name: str, display_name: str) -> bool:
    """Whether the controller has marked the workflow's node ``display_name`` Running. Until it has (its node
    is Pending), a pod deleted under it is created again under the same node, not failed and retried."""
    nodes = kubectl_json("-n", NAMESPACE, "get", "workflow", workflow_name).get("status", {}).get("nodes", {})
    return any(n["displayName"] == display_name and n["phase"] == "Running" for n in nodes.values())


# Long enough (about 30 s in a pod) that a pod caught running is caught mid-stage; the smoke recipe's 5 steps end
# in about a second, before a delete or a stop lands.
LONG_TRAIN = ["-s", "train.steps=1500"]
