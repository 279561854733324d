"""The extension points of docs/extending.md: tasks, vote methods and training methods are registered beside
their code, config validates against the registries, and the worked example (multiplication, a task in one
module) runs the whole loop without any other file of the package knowing its name."""

from pathlib import Path

import pytest

from flywheel import io, schemas
from flywheel.config import load_config
from flywheel.errors import InputError
from flywheel.registry import TASKS, TRAIN_METHODS, VOTE_METHODS, Registry
from flywheel.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "flywheel"


def test_the_registries_hold_what_the_package_ships():
    assert VOTE_METHODS.names() == ("majority", "weighted", "reliability", "self_judge", "reference")
    assert TRAIN_METHODS.names() == ("sft", "dpo", "grpo")
    assert set(TASKS.names()) == {"addition", "math", "code", "multiplication"}
    assert VOTE_METHODS.get("self_judge").needs_model and VOTE_METHODS.get("reference").supervised
    assert TRAIN_METHODS.get("dpo").data_file == "pairs.parquet"


@pytest.mark.parametrize("key", ["task", "vote.method", "train.method"])
def test_config_rejects_a_name_no_module_registered(key):
    with pytest.raises(InputError) as error:
        load_config(None, [f"{key}=nonesuch"])
    assert f"field '{key}': must be one of" in str(error.value) and "\n" not in str(error.value)


def test_no_module_names_a_task_method_or_vote_outside_its_own():
    """The if-chains are gone: no module of the package compares a task's name or a method's name to a literal
    (each module decides by the registered entry's abilities)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for needle in ('task.name == "', 'method == "', 'method in ("', "hasattr(task"):
            if needle in text:
                offenders.append(f"{path.relative_to(SRC)}: {needle}")
    assert offenders == []


def test_a_registry_refuses_a_second_entry_under_one_name():
    registry: Registry = Registry("demo.key")
    registry.add("one", 1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("one", 2)


def test_a_vote_method_registered_outside_the_package_is_a_config_value(tmp_path, monkeypatch):
    """What docs/extending.md shows for a vote method: register it, and vote.method accepts it."""
    from flywheel.stages.vote import Ballot, VoteMethod, run_vote, vote

    def unanimous(samples, inputs):  # only prompts whose samples all agree get a pseudo-label
        votes, agreement = vote(samples, key=inputs.task.vote_key)
        for row in votes:
            if row["vote_share"] < 1.0:
                row["majority_answer"] = None
        return Ballot(votes, agreement, "unanimous samples only (no labels)")

    VOTE_METHODS.names()
    monkeypatch.setitem(VOTE_METHODS._entries, "unanimous", VoteMethod(unanimous))
    config = load_config(None, ["vote.method=unanimous"])
    samples = [{"prompt_id": p, "sample_idx": i, "voter": 0, "completion": a, "answer": a, "n_tokens": 1,
                "logprob": -0.1} for p, answers in (("p1", "55"), ("p2", "56")) for i, a in enumerate(answers)]
    io.write_rows(tmp_path / "samples.parquet", samples, schemas.SAMPLES)
    summary = run_vote(tmp_path / "samples.parquet", tmp_path / "out", config.vote, task=load_task("addition"))
    votes = {v["prompt_id"]: v["majority_answer"] for v in io.read_rows(tmp_path / "out" / "votes.parquet",
                                                                       schemas.VOTES)}
    assert votes == {"p1": "5", "p2": None} and summary["method"] == "unanimous"
    assert summary["label_source"] == "unanimous samples only (no labels)"


def test_multiplication_prompts_answers_and_filters():
    task = load_task("multiplication")
    rows = task.make_prompts(bucket=3, count=50, seed=1, id_prefix="t-")
    assert rows == task.make_prompts(bucket=3, count=50, seed=1, id_prefix="t-")  # deterministic
    for row in rows:
        a, b = row["prompt"].rstrip("=").split("*")
        assert int(row["answer"][::-1]) == int(a[::-1]) * int(b[::-1]) and max(len(a), len(b)) == 3
        assert task.prompt_issue(row["prompt"]) is None
        assert task.format_issue(row, row["answer"]) is None  # the truth always passes the form filter
        assert task.is_correct(task.extract_answer(f" {row['answer']}\n"), row["answer"])
    assert task.views("21*3=", 8) == ["21*3=", "3*21="]
    assert task.format_issue({"prompt": "21*3="}, "6") == "format:length"
    assert task.format_issue({"prompt": "21*3="}, "30") == "format:leading_zero"
    assert "not a multiplication prompt" in task.prompt_issue("2+3=")
    assert task.steps("631") == ["6", "3", "1"]
    for similar in task.similar_prompts(rows[0], 5, seed=3):  # TT-SI: same operand lengths, fresh digits
        a, b = similar["prompt"].rstrip("=").split("*")
        assert [len(a), len(b)] == [len(x) for x in rows[0]["prompt"].rstrip("=").split("*")]
        assert int(similar["answer"][::-1]) == int(a[::-1]) * int(b[::-1])
        assert task.prompt_issue(similar["prompt"]) is None


def test_the_embedded_tokenizer_refuses_a_character_outside_its_alphabet(tiny_seed, tmp_path):
    """The addition seed's tokenizer has no '*': a multiplication prompt is a one-line error naming the
    character, never silently mapped to padding."""
    from flywheel.modeling import check_alphabet, load_member, member_dirs

    _, tokenizer = load_member(member_dirs(tiny_seed)[0])
    with pytest.raises(InputError, match=r"'\*'"):
        check_alphabet(tokenizer, ["21*3="])


def test_the_worked_example_runs_the_loop(tmp_path, monkeypatch, capsys):
    """configs/multiplication.yaml at smoke size: seed, then one round, through the CLI."""
    from flywheel.cli import main

    monkeypatch.chdir(tmp_path)
    small = ["-s", "model.hidden_size=32", "-s", "model.num_layers=2", "-s", "model.num_heads=2",
             "-s", "model.intermediate_size=64", "-s", f"seed.path={tmp_path / 'seed'}", "-s", "seed.examples=400",
             "-s", "seed.steps=20", "-s", "prompts.per_round=12", "-s", "prompts.replay_per_round=4",
             "-s", "train.steps=3", "-s", "train.batch_size=8", "-s", "evaluate.per_bucket=8",
             "-s", "loop.rounds=1", "-s", f"loop.out_dir={tmp_path / 'loop'}", "-s", "generate.samples_per_prompt=3"]
    config = str(ROOT / "configs" / "multiplication.yaml")
    assert main(["seed", "-c", config, *small]) == 0, capsys.readouterr().err
    assert main(["run", "--no-track", "-c", config, *small]) == 0, capsys.readouterr().err
    prompts = io.read_rows(tmp_path / "loop" / "rounds" / "1" / "prompts.parquet", schemas.PROMPTS)
    assert all("*" in p["prompt"] for p in prompts)
    assert sorted({p["bucket"] for p in prompts}) == ["1", "2", "3"]  # the next bucket and the replayed easier ones
    assert io.read_json(tmp_path / "loop" / "rounds" / "1" / "decision.json")["promote"] in (True, False)


def test_a_curate_option_that_needs_the_champion_moves_every_door_by_its_section(monkeypatch):
    """docs/extending.md's second worked example: an option that makes curate load the champion says so in
    CurateConfig.needs_model, and nothing else changes: the machine check, the Kubeflow placement, the Argo step's
    template and the DVC command (which always passes --model) follow."""
    from flywheel.argo import workflows
    from flywheel.config import CurateConfig
    from flywheel.kubeflow.preflight import Placement
    from flywheel.machine_checks import on_gpu, uses_model

    config = load_config(None, ["loop.device=cuda"])

    def curate_template() -> str:
        template = workflows.to_dict(workflows.workflow_template(config))
        round_steps = next(t for t in template["spec"]["templates"] if t["name"] == "round")["steps"]
        return next(step[0]["template"] for step in round_steps if step[0]["name"] == "curate")

    assert not uses_model(config, "curate") and not Placement.of(config).on_gpu("curate")
    assert curate_template() == "cpu-stage"
    monkeypatch.setattr(CurateConfig, "needs_model", lambda self: True)  # the new option, turned on
    assert uses_model(config, "curate") and on_gpu(config, "curate") and Placement.of(config).on_gpu("curate")
    assert curate_template() == "gpu-stage"
    dvc = (ROOT / "dvc.yaml").read_text()
    assert "--model data/rounds/${item.prev}/champion" in dvc.split("\n  curate:")[1].split("\n  train:")[0]


def test_no_door_names_a_stages_placement_or_its_call():
    """The doors take a round stage's placement from machine_checks (its record's needs_model) and its call from
    its record: none spells a stage's own function or tests a config option that loads a model."""
    doors = [SRC / "cli.py", SRC / "loop.py", *(SRC / "kubeflow").glob("*.py"), *(SRC / "argo").glob("*.py")]
    needles = ["run_prompts(", "run_generate(", "run_vote(", "run_curate(", "run_train(", "run_evaluate(",
               "run_gate(", "similar_per_uncertain", "step_rollouts", "curate.select", "needs_model"]
    offenders = [f"{path.name}: {needle}" for path in doors for needle in needles if needle in path.read_text()]
    assert offenders == []
