"""TT-SI (prompts.similar_per_uncertain): the champion's uncertain prompts get similar new ones in the same round,
from the task's generator (addition: same lengths and carries) or written by a chat champion; placed on a GPU."""

import json

import pytest

from flywheel import io, schemas
from flywheel.config import GenerateConfig, PromptsConfig, load_config
from flywheel.stages.prompts.ttsi import Probe, synthesise, uncertain
from flywheel.tasks import load_task
from flywheel.tasks.addition import ReversedAddition, carry_pattern
from flywheel.tasks.base import TaskBase


def test_similar_addition_prompts_keep_the_operand_lengths_and_the_carries():
    task = load_task("addition")
    prompt = {"id": "r1-d6-0", "prompt": "999199+19=", "bucket": "6"}  # 991999 + 91 carries out of 3 digits
    rows = task.similar_prompts(prompt, 20, seed=7)
    assert rows == task.similar_prompts(prompt, 20, seed=7)  # deterministic in the seed
    assert [r["id"] for r in rows[:2]] == ["r1-d6-0-sim0", "r1-d6-0-sim1"]
    assert len({r["prompt"] for r in rows}) > 15
    for row in rows:
        a, b = row["prompt"].rstrip("=").split("+")
        assert (len(a), len(b)) == (6, 2) and a[-1] != "0" and b[-1] != "0"
        assert carry_pattern(a, b) == carry_pattern("999199", "19") == [True] * 3 + [False] * 3
        assert row["answer"] == str(int(a[::-1]) + int(b[::-1]))[::-1] and row["bucket"] == "6"
        assert json.loads(row["meta"])["similar_to"] == "r1-d6-0" and task.prompt_issue(row["prompt"]) is None


def test_uncertain_is_the_least_sure_first_below_the_threshold_and_capped():
    probes = [Probe("a", 1.0, 4, 8), Probe("b", 0.25, 4, 8), Probe("c", 0.5, 4, 8), Probe("d", 0.75, 4, 8)]
    assert uncertain(probes, PromptsConfig(uncertain_below=0.75)) == ["b", "c"]  # 0.75 itself is sure enough
    assert uncertain(probes, PromptsConfig(uncertain_below=0.8, max_uncertain=2)) == ["b", "c"]
    assert uncertain(probes, PromptsConfig(uncertain_below=0.2)) == []


def test_the_round_votes_on_the_similar_prompts_and_audits_them(tmp_path, tiny_seed, monkeypatch):
    from pathlib import Path

    from flywheel.layout import RoundLayout
    from flywheel.loop import prepare, round_stages

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    root = tmp_path / "run"
    config = load_config("configs/smoke.yaml", [f"seed.path={tiny_seed}", f"loop.out_dir={root}", "loop.progress=false",
                                                "prompts.similar_per_uncertain=2", "prompts.uncertain_below=1.0"])
    task = load_task("addition")
    prepare(config, root, task=task)
    for stage in round_stages(config, root, 1, task=task)[:3]:  # prompts, generate, vote
        stage.run()
    this = RoundLayout(root, 1)
    summary = io.read_json(this.prompts_summary)["ttsi"]
    offered = config.prompts.per_round + config.prompts.replay_per_round
    assert summary["probed"] == offered and summary["probe_tokens"] > 0
    assert 0 < summary["uncertain"] <= offered and summary["similar"] == 2 * summary["uncertain"]
    prompts = io.read_rows(this.prompts, schemas.PROMPTS)
    similar = [p for p in prompts if "-sim" in p["id"]]
    assert len(prompts) == offered + summary["similar"] and len(similar) == summary["similar"]
    assert all(p["answer"] is None for p in prompts)  # the truth only in the audit file
    audited = {p["id"] for p in io.read_rows(this.audit, schemas.PROMPTS)}
    assert {p["id"] for p in similar} <= audited
    voted = {v["prompt_id"] for v in io.read_rows(this.votes, schemas.VOTES)}
    assert {p["id"] for p in similar} <= voted


def test_a_chat_champion_writes_the_similar_prompts_itself(tiny_chat_model):
    from flywheel.stages.generate import load_backends

    task = load_task("math")
    backends = load_backends(tiny_chat_model, batch_size=8, device="cpu", progress=False, precision="fp32")
    prompts = [{"id": "q1", "prompt": "What is 2 + 3?", "bucket": "data"},
               {"id": "q2", "prompt": "What is 7 * 6?", "bucket": "data"}]
    config = PromptsConfig(similar_per_uncertain=3, similar_max_new_tokens=12)
    rows, tokens = synthesise(prompts, backends, config, GenerateConfig(temperature=1.0), task=task, round_index=1)
    assert tokens > 0 and rows  # an untrained model writes noise; what is left is new, non-empty text
    assert len(rows) <= 6 and len({r["prompt"] for r in rows}) == len(rows)
    assert all(r["id"].rsplit("-sim", 1)[0] in {"q1", "q2"} and r["prompt"].strip() and r["answer"] is None
               for r in rows)


def test_a_task_that_can_neither_generate_nor_be_asked_is_a_config_error():
    from flywheel.errors import InputError

    class Plain(ReversedAddition):
        similar_prompts = TaskBase.similar_prompts

    with pytest.raises(InputError, match="prompts.similar_per_uncertain=0"):
        synthesise([{"id": "p", "prompt": "1+2="}], [], PromptsConfig(similar_per_uncertain=1), GenerateConfig(),
                   task=Plain(), round_index=1)


def test_ttsi_puts_the_prompts_step_on_the_gpu_in_kubeflow():
    """(The Argo door: tests/test_argo.py's variants.)"""
    from flywheel.errors import InputError
    from flywheel.infra import cluster_config
    from flywheel.kubeflow.preflight import Placement, check_placement

    plain = cluster_config("configs/default.yaml")
    ttsi = cluster_config("configs/default.yaml", ["prompts.similar_per_uncertain=1"])
    assert not Placement.of(plain).on_gpu("prompts") and Placement.of(ttsi).on_gpu("prompts")
    with pytest.raises(InputError,
                       match="prompts.similar_per_uncertain=1 and loop.device=cuda, but this pipeline was compiled"):
        check_placement(ttsi, Placement.of(plain))
