"""`dvc repro` runs the same rounds through dvc.yaml; metrics, plots, push to a local remote, experiments."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flywheel.config import load_config, to_dict
from tests.conftest import ROOT, SMOKE

BIN = Path(sys.executable).parent


def sh(*args, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def listed_params(pipeline: dict) -> set[str]:
    return {param.split(".")[0] for stage in pipeline["stages"].values()
            for param in stage.get("do", stage).get("params", [])}


def test_params_yaml_has_every_section_dvc_yaml_lists():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    listed = listed_params(pipeline)
    assert {"data", "code"} <= listed  # prompts/prepare read data; every program-running stage reads code
    assert listed <= set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert "data" in pipeline["stages"]["prompts"]["do"]["params"]
    assert "data" in pipeline["stages"]["prepare"]["params"]


def test_the_rounds_chain_each_to_the_one_before():
    """The shipped dvc.yaml's later rounds, which the repro below does not run: round r reads round r-1's
    champion, the rounds are 1..loop.rounds, and the report waits for every round's decision and MLflow record."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    rounds = list(pipeline["vars"][0]["rounds"].values())
    assert [(r["round"], r["prev"]) for r in rounds] == [(i, i - 1) for i in range(1, len(rounds) + 1)]
    assert len(rounds) == yaml.safe_load((ROOT / "params.yaml").read_text())["loop"]["rounds"]
    for stage in ("generate", "vote", "train", "evaluate", "gate"):
        assert "data/rounds/${item.prev}/champion" in pipeline["stages"][stage]["do"]["deps"], stage
    report = pipeline["stages"]["report"]["deps"]
    for r in rounds:
        assert {f"data/rounds/{r['round']}/decision.json", f"data/tracking/round-{r['round']}.json"} <= set(report)


def test_every_round_stage_is_its_record(tmp_path):
    """dvc.yaml's round stages, held to their records (flywheel.stages.records): the command's flags are the
    record's paths with the round layout's values, params its config sections, outs and metrics what it writes,
    and every path it reads is a dep."""
    import shlex

    from flywheel.layout import RoundLayout, train_data_files
    from flywheel.stages.records import ROUND

    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    config = load_config(ROOT / "params.yaml")
    (tmp_path / "rounds" / "0" / "champion").mkdir(parents=True)  # the run's own seed copy, as dvc's data/ has
    this = RoundLayout(tmp_path, 1)

    def in_dvc(path) -> str:
        return str(Path("data") / Path(path).relative_to(tmp_path))

    def filled(text: str) -> str:  # round 1 of the foreach
        return text.replace("${item.round}", "1").replace("${item.prev}", "0")

    for stage in ROUND:
        spec = pipeline["stages"][stage.name]["do"]
        words = shlex.split(filled(spec["cmd"]))
        assert words[:4] == ["flywheel", stage.name, "-c", "params.yaml"], stage.name
        flags: dict[str, list[str]] = {}
        for word in words[4:]:
            if word.startswith("--"):
                flags[word] = []
            else:
                flags[list(flags)[-1]].append(word)
        expected = {p.flag: p for p in stage.paths}
        assert set(flags) == set(expected) | ({"--round"} if stage.takes_round else set()), stage.name
        deps = [filled(d) for d in spec["deps"]]
        for flag, path in expected.items():
            want = in_dvc(path.of_round(this, config))
            given = flags[flag][0]
            if flag == "--data":  # train reads the round directory: the method's file in it
                assert want.startswith(given + "/"), (stage.name, flag, given)
                assert {f"{given}/{name}" for name in train_data_files().values()} <= set(deps), stage.name
                continue
            assert given == want, (stage.name, flag, given, want)
            if not path.output:  # a dep itself, or the files in it that the stage reads (gate: eval/predictions)
                assert given in deps or any(d.startswith(given + "/") for d in deps), (stage.name, flag)
        assert spec["params"] == list(stage.sections), stage.name
        written = [filled(next(iter(m)) if isinstance(m, dict) else m) for m in spec["outs"] + spec.get("metrics", [])]
        declared = [in_dvc(Path(value) / name) for p in stage.paths if p.output
                    for value in [p.of_round(this, config)] for name in (p.files or [""])]
        assert sorted(w.rstrip("/") for w in written) == sorted(d.rstrip("/") for d in declared), stage.name


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, tiny_seed):
    repo = tmp_path_factory.mktemp("dvcrepo")
    # The shipped dvc.yaml, cut to its first round to keep CI fast (the stages are untouched; every stage runs,
    # and test_the_rounds_chain_each_to_the_one_before holds the later rounds' wiring).
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    rounds = pipeline["vars"][0]["rounds"]
    cut = [r["round"] for key, r in rounds.items() if key != "r1"]
    pipeline["vars"][0]["rounds"] = {"r1": rounds["r1"]}
    pipeline["stages"]["report"]["deps"] = [d for d in pipeline["stages"]["report"]["deps"] if not any(
        f"/rounds/{r}/" in d or f"/round-{r}." in d for r in cut)]
    pipeline["plots"][0]["data/plots/accuracy_by_digits.csv"]["y"] = ["seed", "round_1"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    # Every section dvc.yaml lists must be in params.yaml (DVC fails on a missing one): write them all.
    params = to_dict(load_config(SMOKE))
    params["seed"]["path"] = "seed/tiny"
    params["tracking"]["uri"] = "sqlite:///mlflow.db"  # relative to the stage's directory, as params.yaml ships
    params["loop"]["out_dir"] = "data"
    params["loop"]["rounds"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(tiny_seed, repo / "seed" / "tiny")
    # the stages depend on the code they run (src/flywheel/...); .dvcignore keeps bytecode out of the hashes
    shutil.copytree(ROOT / "src" / "flywheel", repo / "src" / "flywheel", ignore=shutil.ignore_patterns("__pycache__"))
    remote = tmp_path_factory.mktemp("remote")
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    sh("dvc", "remote", "add", "-d", "local", str(remote), cwd=repo)
    (repo / ".gitignore").write_text("mlflow.db\nmlruns/\n")
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "init", cwd=repo)
    sh("dvc", "repro", cwd=repo)
    return repo, remote


def test_repro_writes_every_round_under_data_rounds(dvc_repo):
    repo, _ = dvc_repo
    for r in (1,):
        here = repo / "data" / "rounds" / str(r)
        for name in ("prompts.parquet", "samples.parquet", "votes.parquet", "curated.parquet", "train.parquet",
                     "decision.json", "curation.json", "vote.json"):
            assert (here / name).exists(), here / name
        assert (here / "champion").is_dir() and (here / "candidate").is_dir()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"prepare", "generate@r1", "gate@r1", "track@r1", "report"} <= set(lock["stages"])
    report = json.loads((repo / "data" / "report.json").read_text())
    assert report["summary"]["rounds"] == 1
    status = sh("dvc", "status", cwd=repo).stdout
    assert "up to date" in status.lower() or status.strip() == ""


def test_metrics_and_plots_show(dvc_repo):
    repo, _ = dvc_repo
    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=repo).stdout)
    files = next(iter(metrics.values()))["data"]
    assert "data/rounds/1/decision.json" in files and "data/rounds/1/eval/metrics.json" in files
    out = sh("dvc", "plots", "show", "--json", cwd=repo).stdout
    assert "data/plots/accuracy_by_digits.csv" in out


def test_push_to_local_remote_and_same_digest_in_mlflow(dvc_repo):
    repo, remote = dvc_repo
    sh("dvc", "push", cwd=repo)
    assert any(remote.rglob("*")), "nothing pushed"
    import mlflow

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)  # the registry too: another test's Tracker may have set the global one
    experiment = client.get_experiment_by_name("flywheel-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.`flywheel.round` = '1'")
    assert len(runs) == 1
    from flywheel.versioning import digest

    assert runs[0].inputs.dataset_inputs[0].dataset.digest == digest(repo / "data" / "rounds" / "1")
    versions = client.search_model_versions("name = 'flywheel-smoke'")
    assert len(versions) == 2  # the seed and round 1's candidate


def test_the_last_stage_ends_the_parent_run(dvc_repo):
    """dvc repro's report stage ends the parent run its track stages opened: FINISHED, not RUNNING forever."""
    repo, _ = dvc_repo
    import mlflow

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("flywheel-smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [r.info.status for r in parents]
    assert "final.rounds" in parents[0].data.metrics
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_dvc_yaml_and_loop_rounds_cannot_disagree(tmp_path, monkeypatch, capsys):
    """Under dvc repro (DVC_ROOT set), prepare fails in one line when dvc.yaml unrolls another number of rounds."""
    from flywheel.cli import main

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    code = main(["prepare", "-c", str(ROOT / "params.yaml"), "-s", "loop.rounds=3", "--root", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "dvc.yaml: field 'loop.rounds': unrolls 4 rounds (vars: rounds) but loop.rounds is 3" in err
    assert not (tmp_path / "d").exists()
    shipped = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert len(shipped["vars"][0]["rounds"]) == params["loop"]["rounds"]  # the shipped pair agrees


def test_mlflow_tags_each_output_with_the_md5_dvc_lock_records(dvc_repo):
    """From a round's MLflow run to its data: every output dvc.lock lists has its md5 as a run tag."""
    repo, _ = dvc_repo
    import mlflow

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("flywheel-smoke")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for r in (1,):
        (run,) = client.search_runs([experiment.experiment_id], f"tags.`flywheel.round` = '{r}'")
        prefix = f"data/rounds/{r}/"
        outs = {o["path"][len(prefix):]: o["md5"] for name, stage in lock.items() if name.endswith(f"@r{r}")
                for o in stage.get("outs", []) if o["path"].startswith(prefix)}
        assert {"samples.parquet", "train.parquet", "candidate", "champion", "eval/predictions.parquet"} <= set(outs)
        for path, md5 in outs.items():
            assert run.data.tags.get(f"dvc.md5.{path}") == md5, path


def test_a_change_to_a_stages_code_re_runs_that_stage_only(dvc_repo):
    repo, _ = dvc_repo
    gate = repo / "src" / "flywheel" / "stages" / "gate.py"
    original = gate.read_text()
    gate.write_text(original + "\n# changed\n")
    try:
        changed = set(json.loads(sh("dvc", "status", "--json", cwd=repo).stdout))
    finally:
        gate.write_text(original)
    assert "gate@r1" in changed
    assert not any(name.startswith(("train@", "generate@", "vote@")) for name in changed), changed


def mlflow_state(uri: str, registered_model: str = "flywheel-smoke") -> tuple[dict, dict]:
    """Every run (status, params, tags) and every version of a registered model (run, tags) in a store."""
    import mlflow

    client = mlflow.MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("flywheel-smoke")
    runs = {r.info.run_id: (r.info.status, r.data.params, r.data.tags)
            for r in client.search_runs([experiment.experiment_id], max_results=1000)}
    versions = {v.version: (v.run_id, v.tags) for v in client.search_model_versions(f"name = '{registered_model}'")}
    return runs, versions


# Last in the file (pytest-xdist's loadfile keeps a file's order): it leaves the experiment in the workspace.
def test_a_dvc_experiment_adds_to_mlflow_and_leaves_the_baseline_as_it_was(dvc_repo):
    """`dvc exp run -S ...` on the finished baseline (the same directory, so the same data root): the experiment
    gets its own parent run (with its params), round runs and model versions; every run and version the baseline
    logged is still there, unchanged."""
    repo, _ = dvc_repo
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "baseline", cwd=repo)
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    before_runs, before_versions = mlflow_state(uri)
    # A setting only the track and report stages read, so that only they re-run (2 processes, not a round's 8):
    # the experiment registers its models under a name of its own.
    sh("dvc", "exp", "run", "-S", "tracking.registered_model=flywheel-smoke-exp", cwd=repo)
    after_runs, after_versions = mlflow_state(uri)
    for run_id, state in before_runs.items():
        assert after_runs.get(run_id) == state, run_id
    assert after_versions == before_versions
    added = {run_id: after_runs[run_id] for run_id in set(after_runs) - set(before_runs)}
    parents = [(run_id, params, tags) for run_id, (_, params, tags) in added.items()
               if "mlflow.parentRunId" not in tags]
    assert len(parents) == 1, parents
    parent_id, params, tags = parents[0]
    assert params["tracking.registered_model"] == "flywheel-smoke-exp" and "@exp:" in tags["flywheel.loop"]
    rounds = sorted(tags["flywheel.round"] for status, _, tags in added.values()
                    if tags.get("mlflow.parentRunId") == parent_id and status == "FINISHED")
    assert rounds == ["1"]
    assert {status for status, _, _ in added.values()} == {"FINISHED"}  # the report stage ended the parent
    _, experiment_versions = mlflow_state(uri, "flywheel-smoke-exp")
    assert len(experiment_versions) == 2  # the experiment's seed and its round 1 candidate
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo).stdout)
    assert shown[0]["data"]["params"]["params.yaml"]["data"]["tracking"]["registered_model"] == "flywheel-smoke-exp"
