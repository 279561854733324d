"""Bring-your-own data: formats, column mapping, per-round slices, and one-line errors through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.config import DataConfig, load_config
from flywheel.data import load_eval, load_prompts, round_rows
from flywheel.errors import InputError
from flywheel.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
math = load_task("math")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_parquet_and_datasets_dir_give_the_same_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"q": f"What is {i} + 1?", "a": i + 1, "level": "easy"} for i in range(5)]
    write_jsonl(tmp_path / "p.jsonl", records)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "p.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "p_dir"))
    columns = {"prompt": "q", "answer": "a", "bucket": "level"}
    loaded = [load_prompts(DataConfig(prompts=str(tmp_path / name), columns=columns), math)
              for name in ("p.jsonl", "p.parquet", "p_dir")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0][2] == {"id": "row-2", "prompt": "What is 2 + 1?", "bucket": "easy", "meta": None, "answer": "3"}


def test_eval_rows_need_answers_and_get_a_bucket(tmp_path):
    write_jsonl(tmp_path / "e.jsonl", [{"id": 7, "prompt": "1+1?", "answer": "#### 2"}])
    rows = load_eval(DataConfig(eval=str(tmp_path / "e.jsonl")), math)
    assert rows == [{"id": "eval-7", "prompt": "1+1?", "bucket": "all", "meta": None, "answer": "#### 2"}]
    write_jsonl(tmp_path / "e.jsonl", [{"prompt": "1+1?", "answer": None}])
    with pytest.raises(InputError, match="row 1: field 'answer'"):
        load_eval(DataConfig(eval=str(tmp_path / "e.jsonl")), math)


def test_unlabeled_prompts_may_lack_a_mapped_answer_column(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"problem": "x?"}])
    rows = load_prompts(DataConfig(prompts=str(tmp_path / "p.jsonl"), columns={"prompt": "problem", "answer": "final"}),
                        math)
    assert rows[0]["answer"] is None


def test_code_tests_column_becomes_meta_and_answer():
    config = load_config(ROOT / "configs" / "code.yaml")
    config.data.prompts = str(ROOT / config.data.prompts)
    rows = load_prompts(config.data, load_task("code"))
    # Labeled tests are hidden grading: the prompt's meta keeps only their style, the answer holds them.
    assert json.loads(rows[0]["meta"]) == {"tests": [], "style": "call"}
    assert json.loads(rows[0]["answer"])[0] == {"call": "add(1, 2)", "expected": "3"}


def test_rounds_take_successive_slices_or_seeded_samples():
    rows = [{"id": str(i)} for i in range(10)]
    config = DataConfig(per_round=4)
    ids = [[r["id"] for r in round_rows(rows, config, r)] for r in (1, 2, 3)]
    assert ids == [["0", "1", "2", "3"], ["4", "5", "6", "7"], ["8", "9", "0", "1"]]
    sample = DataConfig(per_round=4, order="sample", seed=3)
    assert round_rows(rows, sample, 1) == round_rows(rows, sample, 1)
    assert round_rows(rows, sample, 1) != round_rows(rows, sample, 2)
    assert len(round_rows(rows, DataConfig(per_round=0), 5)) == 10


def test_config_validation():
    with pytest.raises(InputError, match="data.columns"):
        load_config(None, ["data.columns.question=q"])
    with pytest.raises(InputError, match="data.prompts"):
        load_config(None, ["task=math"])
    config = load_config(ROOT / "configs" / "byo.yaml", ["data.columns.prompt=text"])
    assert config.data.columns == {"prompt": "text", "answer": "final", "bucket": "level"}


def prompts_command(name: str) -> list[str]:
    return ["prompts", "-c", str(ROOT / "configs" / "math.yaml"), "-s", "loop.device=cpu", "-s", f"data.prompts={name}",
            "--round", "1", "--champion", "nowhere", "--out-dir", "round"]


ERRORS = [
    (None, ["missing.jsonl", "field 'data.prompts'", "data file not found"]),
    ("", ["p.jsonl", "no rows"]),
    ('{"problem": "a?"}\n', ["p.jsonl", "field 'question'", "column 'question' not found", "data.columns.prompt"]),
    ('{"question": "a?"}\n{"question": null}\n', ["p.jsonl", "row 2", "field 'question'", "null"]),
    ('{"question": "a?"}\n{"question": "  "}\n', ["p.jsonl", "row 2", "field 'question'", "empty"]),
]


def assert_one_line(stderr: str, needles) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("content, needles", ERRORS)
def test_cli_data_errors(tmp_path, monkeypatch, capsys, content, needles):
    """``flywheel.cli.main`` in-process (one interpreter for all cases keeps this fast); the next test runs a
    process."""
    from flywheel.cli import main

    monkeypatch.chdir(tmp_path)
    name = "missing.jsonl" if content is None else "p.jsonl"
    if content is not None:
        (tmp_path / name).write_text(content)
    assert main(prompts_command(name)) == 2
    assert_one_line(capsys.readouterr().err, needles)
    assert not (tmp_path / "round").exists()


def test_cli_data_error_exit_code_of_the_process(tmp_path):
    (tmp_path / "p.jsonl").write_text(ERRORS[2][0])
    result = subprocess.run([sys.executable, "-m", "flywheel.cli", *prompts_command("p.jsonl")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert_one_line(result.stderr, ERRORS[2][1])
    assert not (tmp_path / "round").exists()


def test_run_rejects_a_bad_prompt_file_before_writing_anything(tiny_chat_model, tmp_path, monkeypatch, capsys):
    from flywheel.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"question": "a?"}\n{"question": ""}\n')
    code = main(["run", "--no-track", "-c", str(ROOT / "configs" / "math.yaml"), "-s", "loop.device=cpu",
                 "-s", f"seed.path={tiny_chat_model}", "-s", "data.prompts=p.jsonl",
                 "-s", f"data.eval={ROOT / 'examples' / 'math' / 'eval.jsonl'}", "-s", "loop.out_dir=loop"])
    assert code == 2
    assert_one_line(capsys.readouterr().err, ["p.jsonl", "row 2", "field 'question'", "empty"])
    assert not (tmp_path / "loop" / "eval.parquet").exists() and not (tmp_path / "loop" / "rounds").exists()


def test_code_task_rejects_an_answer_column_it_cannot_grade_with(tmp_path):
    import json

    from flywheel.config import DataConfig
    from flywheel.data import load_eval
    from flywheel.errors import InputError
    from flywheel.tasks.code import CodeTask

    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"prompt": "add two ints", "answer": "def add(a, b): return a + b",
                                "tests": ["assert add(1, 2) == 3"]}) + "\n")
    with pytest.raises(InputError, match="grades by its tests column") as error:
        load_eval(DataConfig(eval=str(path)), CodeTask())
    assert "row 1" in str(error.value) and "'answer'" in str(error.value)


@pytest.mark.parametrize("task_name, prompt", [("addition", "12+34=\n"), ("addition", "12+34=\r\n"),
                                               ("multiplication", "12*34=\n"), ("addition", "\n12+34="),
                                               ("addition", "12+34=\n\n")])
def test_a_digit_prompt_with_a_trailing_or_leading_newline_is_refused_with_its_row(tmp_path, task_name, prompt):
    """``$`` matches before a final newline: "12+34=\\n" passed the shape check and crashed generate."""
    good = "1+2=" if task_name == "addition" else "1*2="
    write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": good}, {"id": "b", "prompt": prompt}])
    with pytest.raises(InputError) as error:
        load_prompts(DataConfig(prompts=str(tmp_path / "p.jsonl")), load_task(task_name))
    assert str(error.value).startswith(f"{tmp_path / 'p.jsonl'}: row 2: field 'prompt': not a")


def test_non_utf8_bytes_name_their_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "1+2="}\n{"id": "b", "prompt": "\xff1+2="}\n')
    with pytest.raises(InputError) as error:
        load_prompts(DataConfig(prompts=str(path)), load_task("addition"))
    assert str(error.value).startswith(f"{path}: row 2: not UTF-8 text")


@pytest.mark.parametrize("task_name", ["addition", "multiplication"])
def test_digit_answers_are_ascii_digits_only(task_name):
    """``str.isdigit`` takes superscripts and other scripts' digits, which ``int`` then refuses or reads as others."""
    task = load_task(task_name)
    assert task.extract_answer(" 42\n") == "42"
    for completion in ("²", "4²", "١٢", "42\n\n7", "-4"):
        assert task.extract_answer(completion) is None, completion


def test_numeric_answers_buckets_and_ids_read_as_written(tmp_path):
    """pandas stores integers with a missing value as floats: 3.0 must be the answer 3, not "3.0" (which no
    addition answer ever equals), and NaN a missing answer, not the answer "nan"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"id": [1.0, 2.0], "prompt": ["1+2=", "2+2="], "answer": [3.0, 4.0],
                             "bucket": [1.0, 1.5]}), path)
    rows = load_eval(DataConfig(eval=str(path)), load_task("addition"))
    assert [(r["id"], r["answer"], r["bucket"]) for r in rows] == [("eval-1", "3", "1"), ("eval-2", "4", "1.5")]
    pq.write_table(pa.table({"prompt": ["1+2=", "2+2="], "answer": [3.0, float("nan")]}), path)
    with pytest.raises(InputError, match="row 2: field 'answer': the eval set needs a reference answer"):
        load_eval(DataConfig(eval=str(path)), load_task("addition"))
    assert load_prompts(DataConfig(prompts=str(path)), load_task("addition"))[1]["answer"] is None


@pytest.mark.parametrize("record, field", [
    ({"prompt": "1+2=", "answer": {"value": 3}}, "answer"),
    ({"prompt": "1+2=", "answer": [3]}, "answer"),
    ({"prompt": "1+2=", "bucket": ["short"]}, "bucket"),
    ({"prompt": "1+2=", "id": {"a": 1}}, "id"),
    ({"prompt": "1+2=", "answer": float("inf")}, "answer"),
])
def test_an_answer_bucket_or_id_that_is_not_text_or_a_number_is_refused(tmp_path, record, field):
    """It used to become its Python repr ("{'value': 3}"), an answer nothing equals."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1="}, record])
    with pytest.raises(InputError) as error:
        load_prompts(DataConfig(prompts=str(path)), load_task("addition"))
    assert f"row 2: field '{field}'" in str(error.value)
