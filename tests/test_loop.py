"""The whole loop on a tiny model: two rounds, real MLflow (sqlite), report files."""

import json

import pytest

from flywheel import io, schemas
from flywheel.config import load_config
from flywheel.loop import run_loop
from flywheel.model_registry import CHAMPION_ALIAS
from flywheel.tracking import Tracker


@pytest.fixture(scope="module")
def loop_result(tmp_path_factory, tiny_seed):
    root = tmp_path_factory.mktemp("loop")
    config = load_config(_smoke(), [
        f"seed.path={tiny_seed}", f"loop.out_dir={root / 'out'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        "loop.progress=false"])
    tracker = Tracker(config.tracking)
    report = run_loop(config, tracker=tracker)
    return config, root / "out", report, tracker


def _smoke():
    from tests.conftest import SMOKE

    return SMOKE


def test_every_round_writes_its_contracts(loop_result):
    config, out, report, _ = loop_result
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    for r in (1, 2):
        here = out / "rounds" / str(r)
        prompts = io.read_rows(here / "prompts.parquet", schemas.PROMPTS)
        assert all(p["answer"] is None for p in prompts)  # no truth next to the prompts
        samples = io.read_rows(here / "samples.parquet", schemas.SAMPLES)
        members = 2
        assert len(samples) == len(prompts) * config.generate.samples_per_prompt * members
        votes = io.read_rows(here / "votes.parquet", schemas.VOTES)
        assert len(votes) == len(prompts)
        curation = json.loads((here / "curation.json").read_text())
        assert curation["samples_kept"] + sum(curation["drops"].values()) == len(samples)
        assert [t["threshold"] for t in curation["thresholds"]] == sorted(config.curate.audit_thresholds)
        decision = json.loads((here / "decision.json").read_text())
        assert {"promote", "reason", "p_value", "delta", "buckets"} <= set(decision)
        assert (here / "champion" / "flywheel-model.json").exists()
        vote = json.loads((here / "vote.json").read_text())
        assert 0.0 <= vote["pseudo_label_precision"] <= 1.0


def test_curriculum_follows_the_champion(loop_result):
    config, out, report, _ = loop_result
    expected = config.seed.max_bucket + 1  # the seed was trained up to max_bucket
    for r in report["rounds"][1:]:
        assert r["bucket"] == expected
        if r["decision"]["promote"]:
            expected += 1  # a promoted candidate learned this bucket; a declined one did not


def test_training_data_never_holds_truth(loop_result):
    _, out, _, _ = loop_result
    for r in (1, 2):
        for name in ("curated.parquet", "train.parquet", "pool.parquet"):
            rows = io.read_rows(out / "rounds" / str(r) / name, schemas.CURATED)
            assert all(set(row) <= {"prompt", "completion", "prompt_id", "round", "bucket"} for row in rows)


def test_report_files(loop_result):
    _, out, report, _ = loop_result
    assert json.loads((out / "report.json").read_text())["summary"]["rounds"] == 2
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Curation and gate" in html
    assert (out / "plots" / "accuracy_by_digits.csv").read_text().startswith("digits,seed,round_1,round_2")


def test_mlflow_has_parent_nested_runs_versions_and_alias(loop_result):
    config, out, report, tracker = loop_result
    client = tracker.client
    parent = report["mlflow"]["parent_run_id"]
    children = client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["round-1", "round-2"]
    child = next(r for r in children if r.info.run_name == "round-1")
    assert child.data.params["train.steps"] == str(config.train.steps)
    assert "evaluate.candidate.accuracy" in child.data.metrics
    assert {"curate.samples_kept", "curate.threshold_0.5.yield", "vote.pseudo_label_precision", "gate.p_value",
            "prompts.bucket", "time.train"} <= set(child.data.metrics)
    digest = child.inputs.dataset_inputs[0].dataset.digest
    from flywheel.versioning import digest as dvc_digest

    assert digest == dvc_digest(out / "rounds" / "1")
    versions = client.search_model_versions(f"name = '{config.tracking.registered_model}'")
    assert len(versions) == 3  # the seed and one candidate per round
    champion = client.get_model_version_by_alias(config.tracking.registered_model, CHAMPION_ALIAS)
    promoted = [r["decision"]["promote"] for r in report["rounds"][1:]]
    expected = {v.version for v in versions if v.tags.get("role") == "seed"}
    for index, was_promoted in enumerate(promoted, start=1):
        if was_promoted:
            expected = {report["mlflow"]["rounds"][index]["model_version"]}
    assert champion.version in expected


def test_a_round_with_nothing_curated_declines_and_keeps_the_champion(tmp_path, tiny_seed):
    from flywheel.tasks import load_task
    from flywheel.loop import prepare, run_round

    config = load_config(_smoke(), [f"seed.path={tiny_seed}", f"loop.out_dir={tmp_path}", "loop.progress=false",
                                    "curate.min_vote_share=1.0", "curate.format_filter=true"])
    task = load_task("addition")
    prepare(config, tmp_path, task=task)
    decision = run_round(config, tmp_path, 1, task=task)
    curation = json.loads((tmp_path / "rounds" / "1" / "curation.json").read_text())
    assert curation["samples_kept"] == 0
    assert not decision["promote"] and "no curated data" in decision["reason"]
    champion = tmp_path / "rounds" / "1" / "champion" / "member-0" / "model.safetensors"
    seed = tmp_path / "rounds" / "0" / "champion" / "member-0" / "model.safetensors"
    assert champion.read_bytes() == seed.read_bytes()


def test_the_registered_champion_loads_as_an_mlflow_model_and_answers(loop_result):
    """`mlflow.pyfunc.load_model("models:/<name>@champion")` returns a model that answers prompts the way
    the evaluate stage scores it (greedy, the members voting)."""
    import mlflow

    config, out, report, tracker = loop_result
    mlflow.set_tracking_uri(config.tracking.uri)
    mlflow.set_registry_uri(config.tracking.uri)
    model = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}@{CHAMPION_ALIAS}")
    answers = model.predict(["12+34=", "5+5="])
    assert list(answers.columns) == ["prompt", "answer", "completion", "vote_share"]
    assert list(answers["prompt"]) == ["12+34=", "5+5="]
    assert all(0.0 <= share <= 1.0 for share in answers["vote_share"])
    # the same answers as the champion's own files give through the evaluate stage's generation
    from flywheel.config import GenerateConfig
    from flywheel.stages.generate import generate, load_backends
    from flywheel.stages.vote import vote
    from flywheel.tasks import load_task

    champion = client_champion_dir(tracker, config, out, report)
    backends = load_backends(champion, batch_size=8, device="cpu", progress=False, precision="auto")
    task = load_task("addition")
    samples = generate([{"id": "a", "prompt": "12+34=", "meta": ""}, {"id": "b", "prompt": "5+5=", "meta": ""}],
                       backends, GenerateConfig(samples_per_prompt=1, temperature=0.0,
                                                max_new_tokens=config.evaluate.max_new_tokens), task=task,
                       round_index=0)
    votes, _ = vote(samples, key=task.vote_key)
    assert list(answers["answer"]) == [v["majority_answer"] for v in votes]


def test_every_registered_version_is_an_mlflow_3_logged_model(loop_result):
    """MLflow 3's model conventions: each version comes from a LoggedModel (`models:/m-...`) that is an output of
    its run, with a signature and an input example; `search_logged_models` lists them; runs carry the system
    tags; a DataFrame with a `prompt` column answers as a list does."""
    import mlflow
    import pandas as pd

    config, _, report, tracker = loop_result
    mlflow.set_tracking_uri(config.tracking.uri)
    versions = tracker.client.search_model_versions(f"name = '{config.tracking.registered_model}'")
    logged = {m.model_id: m for m in mlflow.search_logged_models(experiment_ids=[tracker.experiment_id],
                                                                  output_format="list")}
    model_of = {v.version: v.source.removeprefix("models:/") for v in versions}
    assert versions and all(v.source.startswith("models:/m-") for v in versions) and set(model_of.values()) == set(
        logged)
    assert {m.name for m in logged.values()} == {"seed", "candidate"}
    assert all(m.status.to_proto() == 2 for m in logged.values())  # READY
    info = mlflow.models.get_model_info(versions[0].source)
    assert info.signature.inputs.input_types()[0].name == "string" and info.saved_input_example_info
    round_run = tracker.client.get_run(report["mlflow"]["rounds"][1]["run_id"])
    assert [o.model_id for o in round_run.outputs.model_outputs] == [
        model_of[v.version] for v in versions if v.run_id == round_run.info.run_id]
    for run in (round_run, tracker.client.get_run(round_run.data.tags["mlflow.parentRunId"])):
        assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(run.data.tags)
    model = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}@{CHAMPION_ALIAS}")
    framed = model.predict(pd.DataFrame({"prompt": ["12+34="]}))
    assert list(framed["answer"]) == list(model.predict(["12+34="])["answer"])


def client_champion_dir(tracker, config, out, report):
    """The round directory whose model the alias points at (the seed's copy if no round was promoted)."""
    champion = tracker.client.get_model_version_by_alias(config.tracking.registered_model, CHAMPION_ALIAS)
    for round_index, logged in report["mlflow"]["rounds"].items():
        if logged["model_version"] == champion.version:
            return out / "rounds" / str(round_index) / "candidate"
    return out / "rounds" / "0" / "champion"


def test_each_champion_carries_a_model_card_of_its_rounds(loop_result):
    _, out, report, _ = loop_result
    lineage = json.loads((out / "rounds" / "2" / "champion" / "lineage.json").read_text())
    assert [e["round"] for e in lineage] == [1, 2]
    assert [e["promoted"] for e in lineage] == [r["decision"]["promote"] for r in report["rounds"][1:]]
    assert all(len(e["data_md5"]) == 32 for e in lineage)
    card = (out / "rounds" / "2" / "champion" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers\n" in card and "model-index:" in card
    assert "| 2 | " in card and "| bucket | accuracy |" in card
    # the card is the champion's own file: the candidate it was linked from has none
    assert not (out / "rounds" / "2" / "candidate" / "README.md").exists()


def test_round_runs_have_the_loss_curve_and_the_git_commit(loop_result):
    config, _, report, tracker = loop_result
    run_id = report["mlflow"]["rounds"][1]["run_id"]
    history = tracker.client.get_metric_history(run_id, "train.member_0.loss")
    assert len(history) >= 2 and [m.step for m in history] == sorted(m.step for m in history)
    run = tracker.client.get_run(run_id)
    assert run.data.tags["mlflow.source.git.commit"]
    assert run.data.params["train.precision_used"] == "fp32"


@pytest.mark.slow
def test_mlflow_models_serve_answers_over_http(loop_result, tmp_path):
    """`mlflow models serve -m models:/<name>@champion --env-manager local` serves the same predict."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    config, _, _, _ = loop_result
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = os.path.dirname(sys.executable)  # the server runs uvicorn from the environment's bin/
    env = {**os.environ, "MLFLOW_TRACKING_URI": config.tracking.uri, "MLFLOW_REGISTRY_URI": config.tracking.uri,
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "mlflow"), "models", "serve", "-m",
                               f"models:/{config.tracking.registered_model}@{CHAMPION_ALIAS}", "--env-manager",
                               "local", "--host", "127.0.0.1", "-p", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"inputs": ["12+34=", "5+5="]}).encode()
        for _ in range(120):
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    predictions = json.loads(response.read())["predictions"]
                break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError("mlflow models serve did not answer in 120 s")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [p["prompt"] for p in predictions] == ["12+34=", "5+5="]
    assert all("answer" in p and "vote_share" in p for p in predictions)


def test_export_writes_a_dataset_and_a_hub_ready_model(loop_result, tmp_path, monkeypatch):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel.cli import main

    _, out, _, _ = loop_result
    assert main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    # as `flywheel export --help` says: <out>/dataset loads with load_from_disk, and load_dataset gives `train`
    exported = tmp_path / "export" / "dataset"
    curated = sum(len(io.read_rows(out / "rounds" / str(r) / "curated.parquet", schemas.CURATED)) for r in (1, 2))
    for data in (datasets.load_from_disk(str(exported))["train"], datasets.load_dataset(str(exported))["train"]):
        assert len(data) == curated and set(data.column_names) >= {"prompt", "completion", "round"}
    assert list(datasets.load_dataset(str(exported))) == ["train"]
    model_dir = tmp_path / "export" / "model"
    AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)  # a plain HF directory
    AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    assert (model_dir / "lineage.json").is_file()
    from huggingface_hub import ModelCard

    card = ModelCard.load(model_dir / "README.md")  # the Hub's reader: model-index metadata with the eval results
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    decision = json.loads((out / "rounds" / "2" / "decision.json").read_text())
    side = "candidate_accuracy" if decision["promote"] else "champion_accuracy"
    last_promoted = [json.loads((out / "rounds" / str(r) / "decision.json").read_text()) for r in (1, 2)]
    assert "accuracy" in results and results["accuracy"] == last_promoted[-1][side]
    assert {f"accuracy (bucket {b})" for b in decision["buckets"]} <= set(results)
    # a committee of 2: member 2 does not exist; an unreachable hub is one line, exit 2
    assert main(["export", str(out), "--out", str(tmp_path / "x"), "--member", "2"]) == 2
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    assert main(["export", str(out), "--out", str(tmp_path / "export"), "--push-to-hub", "me/flywheel"]) == 2


def test_flywheel_report_rebuilt_later_keeps_the_mlflow_section_and_shows_it(loop_result, tmp_path):
    """`flywheel report --root` after the run: report.json keeps its MLflow section (from the rounds' tracking
    records) and report.html names the runs; with a tracking server, they are links to its UI."""
    import shutil

    from flywheel.cli import main
    from flywheel.report import build_report, html_report

    config, out, report, _ = loop_result
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    assert main(["report", "--root", str(copy), "-c", str(copy / "config.yaml")]) == 0
    rebuilt = json.loads((copy / "report.json").read_text())
    assert rebuilt["mlflow"]["parent_run_id"] == report["mlflow"]["parent_run_id"]
    assert {int(k): v["run_id"] for k, v in rebuilt["mlflow"]["rounds"].items()} == {
        k: v["run_id"] for k, v in report["mlflow"]["rounds"].items()}
    page = (copy / "report.html").read_text()
    assert report["mlflow"]["rounds"][1]["run_id"] in page and "mlflow ui --backend-store-uri" in page
    served = load_config(copy / "config.yaml", ["tracking.uri=http://mlflow.example:5000"])
    linked = html_report(build_report(copy, served))
    run_id = report["mlflow"]["rounds"][1]["run_id"]
    experiment = report["mlflow"]["experiment_id"]
    assert f'href="http://mlflow.example:5000/#/experiments/{experiment}/runs/{run_id}"' in linked


def test_each_progress_bar_names_its_stage_model_and_member(loop_result, tmp_path, capsys):
    """Evaluate's bars say which model they score and training's which member: a committee's bars are told
    apart (they all said "generate member N" and "train" before)."""
    from flywheel.stages.evaluate import evaluate_model
    from flywheel.stages.train import run_train
    from flywheel.tasks import load_task

    config, out, _, _ = loop_result
    champion = out / "rounds" / "0" / "champion"
    rows = [{"id": f"e{i}", "prompt": f"{i}+1=", "bucket": "1", "meta": "", "answer": str(i + 1)} for i in range(4)]
    capsys.readouterr()
    evaluate_model(champion, rows, config.evaluate, task=load_task("addition"), device="cpu", progress=True)
    assert "evaluate champion member 0" in capsys.readouterr().err
    run_train(out / "rounds" / "1" / "train.parquet", champion, tmp_path / "candidate", config.train, round_index=1,
              progress=True)
    err = capsys.readouterr().err
    assert "train member 0" in err and "train member 1" in err  # the smoke committee has two members
