import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel import io, schemas
from flywheel.errors import InputError


def test_rows_roundtrip(tmp_path):
    rows = [{"id": "a", "prompt": "1+1=", "bucket": "1", "meta": None, "answer": "2"}]
    io.write_rows(tmp_path / "p.parquet", rows, schemas.PROMPTS)
    assert io.read_rows(tmp_path / "p.parquet", schemas.PROMPTS) == rows


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}  # the old output survives


def test_atomic_dir_swaps_whole_directories(tmp_path):
    target = tmp_path / "model"
    with io.atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "prompt": "1+1="}\n{"id": "b", "prompt": \n', "row 2: malformed JSON"),
    ('{"id": "a", "prompt": "1+1="}\n{"id": "b"}\n', "row 2: field 'prompt': required prompt field is missing"),
    ('{"id": "a", "prompt": "   "}\n', "row 1: field 'prompt': must not be empty"),
    ('{"id": 3, "prompt": "1+1="}\n', "row 1: field 'id': expected str, got int"),
    ('[1, 2]\n', "row 1: expected a JSON object"),
])
def test_bad_jsonl_names_file_row_field(tmp_path, content, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as error:
        io.read_rows(path, schemas.PROMPTS)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_bad_parquet(tmp_path):
    garbage = tmp_path / "x.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        io.read_rows(garbage, schemas.PROMPTS)
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"id": ["a", None], "prompt": ["1+1=", "2+2="]}), nulls)
    with pytest.raises(InputError, match="row 2: field 'id': required prompt field is null"):
        io.read_rows(nulls, schemas.PROMPTS)
    with pytest.raises(InputError, match="file not found"):
        io.read_rows(tmp_path / "missing.parquet", schemas.PROMPTS)


def test_a_stage_that_fails_while_writing_publishes_none_of_its_outputs(tmp_path):
    from flywheel import io

    (tmp_path / "votes.parquet").write_text("old votes")
    (tmp_path / "vote.json").write_text("old summary")
    with pytest.raises(RuntimeError):
        with io.publish_together(tmp_path) as staged:
            staged("votes.parquet").write_text("new votes")
            raise RuntimeError("killed between two outputs")
    assert (tmp_path / "votes.parquet").read_text() == "old votes"  # nothing mixed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vote.json", "votes.parquet"]
    with io.publish_together(tmp_path) as staged:
        staged("votes.parquet").write_text("new votes")
        staged("vote.json").write_text("new summary")
        (staged("champion")).mkdir()
        (tmp_path / "champion").mkdir(exist_ok=True)
    assert (tmp_path / "votes.parquet").read_text() == "new votes" and (tmp_path / "vote.json").read_text() == "new summary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["champion", "vote.json", "votes.parquet"]


def test_leftovers_of_killed_writes_are_removed_and_never_digested(tmp_path):
    from flywheel import io
    from flywheel.versioning import digest

    (tmp_path / "samples.parquet").write_text("rows")
    clean = digest(tmp_path)
    (tmp_path / ".samples.parquet.k3j2.tmp").write_text("half a file")
    (tmp_path / ".candidate.x8.tmp").mkdir()
    (tmp_path / ".candidate.x8.tmp" / "model.safetensors").write_text("half a model")
    (tmp_path / ".champion.old").mkdir()
    assert digest(tmp_path) == clean  # a killed write never changes the round's digest (MLflow, DVC push)
    removed = io.remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == [".candidate.x8.tmp", ".champion.old", ".samples.parquet.k3j2.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["samples.parquet"]
    assert ".*.tmp" in (Path(__file__).resolve().parents[1] / ".dvcignore").read_text()
