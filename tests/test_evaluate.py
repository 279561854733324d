"""The evaluate stage's shell: what it refuses before any model is loaded (scoring itself: test_gate, test_loop)."""

import json

import pytest

from flywheel.config import EvaluateConfig
from flywheel.errors import InputError
from flywheel.stages.evaluate import run_evaluate
from flywheel.tasks import load_task


def evaluate(tmp_path, eval_path):
    # Model directories that do not exist: the eval set must be refused before either model is read.
    return run_evaluate(eval_path, tmp_path / "no-candidate", tmp_path / "no-champion", tmp_path / "ev",
                        EvaluateConfig(), task=load_task("addition"))


def test_an_empty_eval_set_is_refused_naming_the_file(tmp_path):
    for empty in (tmp_path / "empty.jsonl", tmp_path / "empty.parquet"):
        if empty.suffix == ".jsonl":
            empty.write_text("")
        else:
            from flywheel import io, schemas

            io.write_rows(empty, [], schemas.PROMPTS)
        with pytest.raises(InputError) as error:
            evaluate(tmp_path, empty)  # scored 0.0 accuracy before
        assert str(error.value).startswith(str(empty)) and "no rows" in str(error.value), str(error.value)
        assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("bucket", ["", "  "])
def test_an_empty_bucket_is_refused_naming_file_row_and_field(tmp_path, bucket):
    path = tmp_path / "eval.jsonl"
    rows = [{"id": "a", "prompt": "12+34=", "answer": "46", "bucket": "2"},
            {"id": "b", "prompt": "1+1=", "answer": "2", "bucket": bucket}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(InputError) as error:
        evaluate(tmp_path, path)
    assert str(error.value) == f"{path}: row 2: field 'bucket': must not be empty (leave it out for one bucket, 'all')"
    assert not (tmp_path / "ev").exists()
