"""The Argo door on a real cluster, as docs/argo.md tells a user to run it.

`kubectl apply -k infra/argo`, then `flywheel argo submit` of configs/smoke.yaml (its own relative seed.path,
the seed shipped in the image) for 2 rounds against the Argo Server, with MLflow served over HTTP in the
cluster. Every pod is a real pod: the workflow controller schedules them, the kubelet runs them in containerd.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (ARGO_SERVER, CLUSTER, CPU, LONG_TRAIN, NAMESPACE, PROMOTE, SMOKE, VOLUME, describe_failure,
                      flywheel, kubectl, kubectl_json, mlflow_get, model_of, node_running, running_pod, submit,
                      wait_for_workflow, wait_until)

@pytest.fixture(scope="module")
def two_rounds(door):
    """One workflow of 2 rounds on a new workspace, run to its end."""
    workspace = f"/models/argo/e2e-{int(time.time())}"
    name = submit(workspace, 2, *PROMOTE)
    return name, workspace, wait_for_workflow(name)


def test_infra_argo_applies_with_kustomize_defaults_and_the_init_job_owns_the_volume(door):
    """A1, A4: `kubectl apply -k infra/argo` builds (no file loaded from outside it), the init Job's image is
    the workflows' image (no pull: it is on the node), and it hands the volume to uid 1000."""
    job = kubectl_json("-n", NAMESPACE, "get", "job", "flywheel-models-init")
    assert job["status"].get("succeeded") == 1
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    from flywheel.infra import images

    assert image == images()[0]
    stat = (VOLUME / "runs").stat()
    assert (stat.st_uid, stat.st_gid) == (1000, 1000)


def test_two_rounds_succeed_through_the_templates_recursion(two_rounds):
    """The workflow Succeeds, round 2 ran through `round` calling itself, and the seed was found by the config's
    relative seed.path in the image (A2); the `when` read the track step's record file, not stdout (A3)."""
    name, workspace, wf = two_rounds
    assert wf["status"]["phase"] == "Succeeded", describe_failure(wf)
    nodes = wf["status"]["nodes"].values()
    tracks = sorted(n["displayName"] for n in nodes if n.get("templateName") == "track" and n["phase"] == "Succeeded")
    assert len(tracks) == 2, tracks
    rounds = sorted(int(p["value"]) for n in nodes if n.get("templateName") == "round" and n["phase"] != "Skipped"
                    for p in n.get("inputs", {}).get("parameters", []) if p["name"] == "round")
    assert rounds == [1, 2]


def test_the_workspace_on_the_volume_holds_both_rounds_and_matches_flywheel_run(two_rounds, tmp_path):
    """Both rounds are on the volume, and each round's decision equals `flywheel run` on the same config here."""
    name, workspace, wf = two_rounds
    on_volume = VOLUME / Path(workspace).relative_to("/models")
    decisions = {r: json.loads((on_volume / "rounds" / str(r) / "decision.json").read_text()) for r in (1, 2)}
    local = tmp_path / "local"
    flywheel("run", "-c", str(SMOKE), *CPU, *PROMOTE, "-s", f"loop.out_dir={local}", "--no-track")
    for r, decision in decisions.items():
        expected = json.loads((local / "rounds" / str(r) / "decision.json").read_text())
        assert decision["promote"] == expected["promote"], (r, decision, expected)
        assert decision["reason"] == expected["reason"], (r, decision, expected)


def test_mlflow_holds_the_parent_run_each_round_and_the_champion_alias(two_rounds):
    """Over HTTP: one parent run for the workspace, FINISHED by the exit handler; one run per round; the alias."""
    name, workspace, wf = two_rounds
    on_volume = VOLUME / Path(workspace).relative_to("/models")
    records = [json.loads((on_volume / "tracking" / f"round-{r}.json").read_text()) for r in (1, 2)]
    parents = {r["parent_run_id"] for r in records}
    assert len(parents) == 1
    parent = mlflow_get("runs/get", run_id=parents.pop())["run"]
    assert parent["info"]["status"] == "FINISHED"
    for record in records:
        run = mlflow_get("runs/get", run_id=record["run_id"])["run"]
        assert run["info"]["status"] == "FINISHED"
    model = mlflow_get("registered-models/get", name=model_of(workspace))["registered_model"]
    assert any(alias["alias"] == "champion" for alias in model.get("aliases", []))


def test_a_declined_round_stops_the_recursion_and_the_workflow_succeeds(door):
    """gate.min_gain above any gain: round 1 is declined, round 2 never starts, the workflow Succeeds."""
    workspace = f"/models/argo/e2e-declined-{int(time.time())}"
    name = submit(workspace, 2, "-s", "gate.min_gain=1.5")
    wf = wait_for_workflow(name)
    assert wf["status"]["phase"] == "Succeeded", describe_failure(wf)
    rounds = [n for n in wf["status"]["nodes"].values() if n.get("templateName") == "round"]
    assert [n["phase"] for n in rounds if n["displayName"] == "next"] == ["Skipped"]  # the `when` said no
    assert len([n for n in rounds if n["phase"] != "Skipped"]) == 1
    record = json.loads((VOLUME / Path(workspace).relative_to("/models") / "tracking" / "round-1.json").read_text())
    assert record["promotion"] == "declined"


def started_and_finished(wf: dict) -> tuple[str, str]:
    return wf["status"]["startedAt"], wf["status"].get("finishedAt") or "9999"


def test_the_schedule_fires_continues_the_workspace_and_skips_an_overlapping_trigger(door):
    """`flywheel argo schedule` every minute, 1 round per trigger: the CronWorkflow fires, the second run continues
    the first's workspace (round 1, then round 2), and the triggers while a run is going are skipped (Forbid)."""
    stamp = int(time.time())
    name, workspace = f"e2e-cron-{stamp}", f"/models/argo/scheduled/e2e-cron-{stamp}"
    flywheel("argo", "schedule", "--host", ARGO_SERVER, "-c", str(SMOKE), *CPU, *PROMOTE, "-s",
             f"tracking.registered_model={model_of(workspace)}", "--cron", "* * * * *", "--name", name,
             "--rounds", "1", "--workspace", workspace)
    label = f"workflows.argoproj.io/cron-workflow={name}"

    def two_finished():
        runs = kubectl_json("-n", NAMESPACE, "get", "workflows", "-l", label)["items"]
        done = [w for w in runs if w.get("status", {}).get("phase") in ("Succeeded", "Failed", "Error")]
        return sorted(done, key=lambda w: w["status"]["startedAt"]) if len(done) >= 2 else None

    try:
        first, second = wait_until("two scheduled runs", two_finished, timeout_s=1800, every_s=10)[:2]
    finally:
        kubectl("-n", NAMESPACE, "delete", "cronworkflow", name, "--wait=false", check=False)
    for run in (first, second):
        assert run["status"]["phase"] == "Succeeded", describe_failure(run)
    assert started_and_finished(first)[1] <= started_and_finished(second)[0]  # never two at once
    minutes_apart = (time.mktime(time.strptime(second["status"]["startedAt"], "%Y-%m-%dT%H:%M:%SZ"))
                     - time.mktime(time.strptime(first["status"]["startedAt"], "%Y-%m-%dT%H:%M:%SZ"))) / 60
    assert minutes_apart >= 2, minutes_apart  # at least one trigger in between was skipped
    on_volume = VOLUME / Path(workspace).relative_to("/models")
    records = [json.loads((on_volume / "tracking" / f"round-{r}.json").read_text()) for r in (1, 2)]
    assert [r["promotion"] for r in records] == ["promoted", "promoted"]


def test_two_workflows_promoting_into_one_model_move_the_alias_once(door):
    """Two workspaces promote into the same registered model at the same moment: the mutex runs one gate and
    track at a time, the alias moves once for the one promotion, and the other round ends `stale`."""
    stamp = int(time.time())
    workspaces = [f"/models/argo/e2e-mutex-{stamp}-{side}" for side in "ab"]
    model = f"flywheel-e2e-mutex-{stamp}"
    names = [submit(ws, 1, *PROMOTE, "-s", f"tracking.registered_model={model}") for ws in workspaces]
    runs = [wait_for_workflow(name) for name in names]
    for run in runs:
        assert run["status"]["phase"] == "Succeeded", describe_failure(run)
    # A promote node starts when it waits for the lock; its gate pod starts only once it holds it.
    held = sorted((min(n["startedAt"] for n in nodes if n.get("templateName") == "gate"),
                   max(n["finishedAt"] for n in nodes if n.get("templateName") == "track"))
                  for nodes in (list(run["status"]["nodes"].values()) for run in runs))
    assert held[0][1] <= held[1][0], held  # one promotion at a time
    records = [json.loads((VOLUME / Path(ws).relative_to("/models") / "tracking" / "round-1.json").read_text())
               for ws in workspaces]
    assert sorted(r["promotion"] for r in records) == ["promoted", "stale"]
    winner = next(r for r in records if r["promotion"] == "promoted")
    aliases = mlflow_get("registered-models/get", name=model)["registered_model"]["aliases"]
    assert [a["version"] for a in aliases if a["alias"] == "champion"] == [winner["model_version"]]


def test_a_deleted_stage_pod_is_retried_and_the_round_ends_the_same(door, tmp_path):
    """Delete the train step's pod while it trains: Argo retries the step (every stage writes atomically) and the
    round ends with the decision of the same round without the fault."""
    workspace = f"/models/argo/e2e-podkill-{int(time.time())}"
    name = submit(workspace, 1, *PROMOTE, *LONG_TRAIN)
    pod = wait_until("the train pod running, its node Running",
                     lambda: node_running(name, "train(0)") and running_pod(name, "train"), timeout_s=900, every_s=1)
    kubectl("-n", NAMESPACE, "delete", "pod", pod, "--wait=false")
    wf = wait_for_workflow(name)
    assert wf["status"]["phase"] == "Succeeded", describe_failure(wf)
    train = sorted((n for n in wf["status"]["nodes"].values() if n["displayName"].startswith("train(")),
                   key=lambda n: n["displayName"])
    # the deleted attempt failed (Error "pod deleted", or Failed when the kubelet's SIGTERM ended it first),
    # and the retry Succeeded
    assert [n["phase"] for n in train][-1] == "Succeeded" and len(train) == 2 and train[0]["phase"] in (
        "Error", "Failed"), [(n["displayName"], n["phase"], n.get("message")) for n in train]
    decision = json.loads((VOLUME / Path(workspace).relative_to("/models") / "rounds/1/decision.json").read_text())
    local = tmp_path / "local"  # the same round without the fault (pods and `flywheel run` agree: test above)
    flywheel("run", "-c", str(SMOKE), *CPU, *PROMOTE, *LONG_TRAIN, "-s", "loop.rounds=1", "-s",
             f"loop.out_dir={local}", "--no-track")
    assert decision == json.loads((local / "rounds" / "1" / "decision.json").read_text())


def test_a_stopped_workflow_ends_its_mlflow_runs_killed(door):
    """`argo stop` (spec.shutdown: Stop) while round 2 trains: the workflow ends Failed, and its exit handler ends
    the workspace's parent run KILLED, naming the stopped step, instead of leaving it RUNNING."""
    workspace = f"/models/argo/e2e-stop-{int(time.time())}"
    name = submit(workspace, 2, *PROMOTE, *LONG_TRAIN)
    wait_until("round 2's train pod running", lambda: running_pod(name, "train", 2), timeout_s=1200, every_s=1)
    kubectl("-n", NAMESPACE, "patch", "workflow", name, "--type", "merge", "-p", '{"spec":{"shutdown":"Stop"}}')
    wf = wait_for_workflow(name)
    assert wf["status"]["phase"] == "Failed", describe_failure(wf)
    exit_nodes = [n for n in wf["status"]["nodes"].values() if n["name"] == f"{name}.onExit"]
    assert [n["phase"] for n in exit_nodes] == ["Succeeded"], exit_nodes
    record = json.loads((VOLUME / Path(workspace).relative_to("/models") / "tracking" / "round-1.json").read_text())
    parent = mlflow_get("runs/get", run_id=record["parent_run_id"])["run"]
    assert parent["info"]["status"] == "KILLED"
    tags = {t["key"]: t["value"] for t in parent["data"].get("tags", [])}
    # the stopped step: its pod's SIGTERM ("main: Error (exit code 143)") or Argo's "Stopped with strategy 'Stop'"
    error = tags.get("flywheel.error", "")
    assert error.startswith("train") and ("exit code 143" in error or "with strategy" in error), error


def test_the_workflow_completes_after_its_controller_is_stopped_and_started(door):
    """Stop the workflow controller while a stage runs, let the stage end unobserved, start it again: the
    controller picks the workflow up where it stands and it Succeeds."""
    workspace = f"/models/argo/e2e-controller-{int(time.time())}"
    name = submit(workspace, 1, *PROMOTE)
    wait_until("the generate pod", lambda: running_pod(name, "generate"), timeout_s=900, every_s=1)
    subprocess.run([str(CLUSTER / "cluster.sh"), "stop-controller"], check=True, timeout=60)
    try:
        time.sleep(45)  # generate ends, and perhaps vote's pod is never created, while no controller runs
    finally:
        subprocess.run([str(CLUSTER / "cluster.sh"), "start-controller"], check=True, timeout=120)
    wf = wait_for_workflow(name)
    assert wf["status"]["phase"] == "Succeeded", describe_failure(wf)
