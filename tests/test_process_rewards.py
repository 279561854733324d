"""curate.step_rollouts (process rewards, OmegaPRM-style): the champion's rollouts from each step's prefix score the
step against the row's voted answer; rows whose weakest step is weak go (step:weak), the same on both curate paths."""

import json
import shutil
from pathlib import Path

import pytest

from flywheel.config import CurateConfig, GenerateConfig, load_config
from flywheel.generation import Completion
from flywheel.experimental.process_rewards import step_scores
from flywheel.tasks import load_task

TASK = load_task("addition")


def test_a_step_is_a_digit_for_addition_and_a_line_for_chat_tasks():
    assert TASK.steps("4321") == ["4", "3", "2", "1"]
    assert load_task("math").steps("x = 2\ny = 3\nanswer: 5") == ["x = 2\n", "y = 3\n", "answer: 5"]
    assert "".join(load_task("math").steps("a\n\nb\n")) == "a\n\nb\n"


class Scripted:
    """A stand-in policy for the arithmetic only: from a prefix of fewer than ``knows`` characters it writes a
    wrong digit next, from a longer one the rest of ``truth``."""

    tokenizer = None

    def __init__(self, truth: str, knows: int):
        self.truth, self.knows = truth, knows

    def generate(self, prompts, seeds, *, temperature, max_new_tokens):
        out = []
        for text, row in zip(prompts, seeds):
            prefix = text.split("=", 1)[1]
            rest = self.truth[len(prefix):] if len(prefix) >= self.knows else "9" * (len(self.truth) - len(prefix))
            out.append([Completion(text=rest, n_tokens=len(rest) + 1, logprob=0.0) for _ in row])
        return out


def test_each_step_scores_the_share_of_rollouts_that_reach_the_label():
    prompts = [{"id": "p", "prompt": "123+111="}]  # 321 + 111 = 432, written "234"
    scores, rollouts, tokens = step_scores(prompts, ["234"], Scripted("234", knows=2), CurateConfig(step_rollouts=3),
                                           GenerateConfig(), task=TASK, round_index=1)
    assert scores == [[0.0, 1.0]]  # after "2" the policy goes wrong; after "23" it finishes right
    assert rollouts == 2 * 3 and tokens == 3 * 3 + 3 * 2


def test_curate_drops_weak_steps_and_counts_the_rollouts_the_same_on_both_paths(tmp_path, tiny_seed, monkeypatch):
    from flywheel.layout import RoundLayout
    from flywheel.loop import prepare, round_stages
    from flywheel.stages.curate import run_curate
    from reference_rows import run_curate_rows

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    root = tmp_path / "run"
    config = load_config("configs/smoke.yaml", [f"seed.path={tiny_seed}", f"loop.out_dir={root}",
                                                "loop.progress=false", "curate.min_vote_share=0"])
    eval_path = prepare(config, root, task=TASK)
    for stage in round_stages(config, root, 1, task=TASK)[:3]:  # prompts, generate, vote
        stage.run()
    this = RoundLayout(root, 1)
    plain = run_curate(this.dir, config.curate, task=TASK, eval_path=eval_path, round_index=1, previous_pool=None)
    curate_config = CurateConfig(**{**config.curate.__dict__, "step_rollouts": 3, "min_step_score": 0.67})
    reports = []
    for name, curate in (("rows", run_curate_rows), ("columns", run_curate)):
        here = tmp_path / name
        shutil.copytree(this.dir, here)
        reports.append(curate(here, curate_config, task=TASK, eval_path=eval_path, round_index=1, previous_pool=None,
                              audit_path=here / "audit.parquet", model_dir=this.previous().champion, device="cpu",
                              generate=config.generate))
        assert json.loads((here / "curation.json").read_text()) == reports[-1]
    assert reports[0] == reports[1]
    steps = reports[0]["process_rewards"]
    assert steps["rows_scored"] == plain["samples_kept"] > 0
    assert steps["rollout_tokens"] > 0 and steps["rollouts"] % 3 == 0
    assert steps["generate_tokens"] > 0
    assert reports[0]["samples_kept"] == plain["samples_kept"] - reports[0]["drops"].get("step:weak", 0)
    assert steps["dropped"] == reports[0]["drops"].get("step:weak", 0)


def test_step_rollouts_without_a_champion_is_a_one_line_error():
    from flywheel.errors import InputError
    from flywheel.experimental.process_rewards import run_process_rewards

    with pytest.raises(InputError, match="curate.step_rollouts continues rows with the champion"):
        run_process_rewards([{"id": "p", "prompt": "1+1="}], ["2"], CurateConfig(step_rollouts=2), None, task=TASK,
                            model_dir=None, device="cpu", round_index=1)


def test_an_experimental_method_warns_once_in_one_line(caplog, monkeypatch):
    from flywheel import experimental
    from flywheel.errors import InputError
    from flywheel.experimental.process_rewards import run_process_rewards

    monkeypatch.setattr(experimental, "_warned", set())
    for _ in range(2):
        with pytest.raises(InputError):
            run_process_rewards([{"id": "p", "prompt": "1+1="}], ["2"], CurateConfig(step_rollouts=2), None,
                                task=TASK, model_dir=None, device="cpu", round_index=1)
    warnings = [r.getMessage() for r in caplog.records if "experimental" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("curate.step_rollouts is experimental (flywheel.experimental.process_rewards)")


def test_step_rollouts_put_curate_on_the_gpu_in_the_cluster_doors():
    from flywheel.errors import InputError
    from flywheel.infra import cluster_config
    from flywheel.kubeflow.preflight import Placement, check_placement
    from flywheel.machine_checks import uses_model

    plain = cluster_config("configs/default.yaml")
    scored = cluster_config("configs/process-rewards.yaml")
    assert uses_model(scored, "curate") and not uses_model(plain, "curate")  # Argo's gpu-stage follows uses_model
    assert Placement.of(scored).on_gpu("curate") and not Placement.of(plain).on_gpu("curate")
    with pytest.raises(InputError, match="curate.step_rollouts=4 and loop.device=cuda, but this pipeline was compiled"):
        check_placement(scored, Placement.of(plain))
