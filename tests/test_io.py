import json

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
