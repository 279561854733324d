"""A run directory's state: new/restart/resume, changed-config refusal, stage records, stale temporaries."""

import json

import pytest

from flywheel.cli import main
from flywheel.config import load_config
from flywheel.errors import InputError
from flywheel.run_state import Ledger, changed_keys, open_run, path_md5, remove_stale_temporaries
from tests.conftest import SMOKE


def _config(root, seed, *overrides):
    return load_config(SMOKE, [f"seed.path={seed}", f"loop.out_dir={root}", *overrides])


def test_changed_keys_name_every_changed_setting_but_rounds_and_progress():
    saved = {"train": {"steps": 5, "lora": {"r": 8}}, "loop": {"rounds": 2, "progress": True}}
    now = {"train": {"steps": 6, "lora": {"r": 16}}, "loop": {"rounds": 5, "progress": False}}
    assert changed_keys(saved, now) == ["train.lora.r", "train.steps"]


def test_new_refuses_a_directory_with_a_run_and_resume_refuses_a_changed_config(tmp_path, tiny_seed):
    root = tmp_path / "run"
    open_run(root, _config(root, tiny_seed), "new")
    assert (root / "config.yaml").is_file() and (root / "state" / "inputs.json").is_file()
    with pytest.raises(InputError, match="holds an earlier run; pass --resume"):
        open_run(root, _config(root, tiny_seed), "new")
    with pytest.raises(InputError, match=r"config changed since the run started \(curate.min_vote_share, "
                                         r"train.steps\)"):
        open_run(root, _config(root, tiny_seed, "train.steps=7", "curate.min_vote_share=0.9"), "resume")
    open_run(root, _config(root, tiny_seed, "loop.rounds=9"), "resume")  # more rounds: allowed
    assert load_config(root / "config.yaml").loop.rounds == 9


def test_resume_refuses_a_seed_whose_files_changed(tmp_path, tiny_seed):
    import shutil

    seed = tmp_path / "seed"
    shutil.copytree(tiny_seed, seed)
    root = tmp_path / "run"
    open_run(root, _config(root, seed), "new")
    (seed / "member-0" / "config.json").write_text((seed / "member-0" / "config.json").read_text() + " ")
    with pytest.raises(InputError, match=r"seed.path \(its contents\)"):
        open_run(root, _config(root, seed), "resume")


def test_resume_without_a_run_and_restart_deletes_only_results(tmp_path, tiny_seed):
    root = tmp_path / "run"
    with pytest.raises(InputError, match="no run to resume here"):
        open_run(root, _config(root, tiny_seed), "resume")
    open_run(root, _config(root, tiny_seed), "new")
    (root / "rounds" / "1").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    open_run(root, _config(root, tiny_seed), "restart")
    assert not (root / "rounds").exists() and (root / "notes.txt").read_text() == "mine"


def test_a_bad_prompt_file_fails_before_an_earlier_run_is_touched(tmp_path, tiny_seed, monkeypatch):
    root = tmp_path / "run"
    open_run(root, _config(root, tiny_seed), "new")
    (root / "rounds" / "1").mkdir(parents=True)
    (root / "rounds" / "1" / "decision.json").write_text("{}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "1+2="}\n{"id": "b", "prompt": ""}\n')
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--no-track", "--restart", "-c", str(SMOKE), "-s", f"seed.path={tiny_seed}",
                 "-s", f"loop.out_dir={root}", "-s", f"data.prompts={bad}"])
    assert code == 2
    assert (root / "rounds" / "1" / "decision.json").read_text() == "{}"


def test_ledger_skips_complete_stages_until_the_first_that_is_not(tmp_path):
    state = tmp_path / "state"
    ran = []

    def stage(ledger, name, output):
        ledger.stage(1, name, [output], lambda: (ran.append(name), output.write_text(name)))

    first = Ledger(state)
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for name, out in (("one", a), ("two", b), ("three", c)):
        stage(first, name, out)
    b.write_text("changed by hand")  # stage two's output no longer has its recorded digest
    ran.clear()
    again = Ledger(state, replay=True)
    for name, out in (("one", a), ("two", b), ("three", c)):
        stage(again, name, out)
    assert ran == ["two", "three"] and again.skipped == ["1:one"]
    assert set(again.seconds(1)) == {"one", "two", "three"}


def test_digests_ignore_temporaries_and_stale_ones_are_removed(tmp_path):
    model = tmp_path / "candidate"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    clean = path_md5(model)
    (model / ".model.safetensors.x1.tmp").write_bytes(b"half")
    (tmp_path / ".candidate.ab12.tmp").mkdir()
    assert path_md5(model) == clean
    removed = remove_stale_temporaries(tmp_path)
    assert {p.name for p in removed} == {".candidate.ab12.tmp", ".model.safetensors.x1.tmp"}
    assert json.dumps(sorted(p.name for p in tmp_path.rglob("*"))) == '["candidate", "model.safetensors"]'
