import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel import io, schemas
from flywheel.errors import InputError
from string_encodings import ENCODINGS, encoded


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
    assert (tmp_path / "votes.parquet").read_text() == "new votes"
    assert (tmp_path / "vote.json").read_text() == "new summary"
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


def test_a_directory_where_a_file_is_expected_is_called_one(tmp_path):
    (tmp_path / "p.jsonl").mkdir()
    (tmp_path / "m.json").mkdir()
    for read in (lambda p: io.read_rows(p, schemas.PROMPTS), lambda p: io.read_table(p, schemas.PROMPTS)):
        with pytest.raises(InputError) as error:
            read(tmp_path / "p.jsonl")
        assert str(error.value) == f"{tmp_path / 'p.jsonl'}: is a directory, not a file"
    with pytest.raises(InputError, match="m.json: is a directory, not a file"):
        io.read_json(tmp_path / "m.json")


def test_non_utf8_jsonl_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "1+1="}\n\n{"id": "b", "prompt": "caf\xe9"}\n')
    with pytest.raises(InputError) as error:
        io.read_rows(path, schemas.PROMPTS)
    assert str(error.value) == f"{path}: row 3: not UTF-8 text (byte 0xe9 at column 27)"


def test_publishing_onto_a_directory_where_a_file_belongs_keeps_every_earlier_output(tmp_path):
    """A target that cannot be replaced fails before any rename: the earlier outputs stay, none is mixed in."""
    (tmp_path / "votes.parquet").write_text("old votes")
    (tmp_path / "agreement.parquet").mkdir()
    with pytest.raises(InputError, match="agreement.parquet: is a directory"):
        with io.publish_together(tmp_path) as staged:
            staged("votes.parquet").write_text("new votes")
            staged("agreement.parquet").write_text("new agreement")
            staged("vote.json").write_text("new summary")
    assert (tmp_path / "votes.parquet").read_text() == "old votes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agreement.parquet", "votes.parquet"]


def test_a_rename_that_fails_midway_puts_the_earlier_outputs_back(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text("old a")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w").write_text("old w")
    real_replace, calls = os.replace, []

    def failing_replace(source, target):
        calls.append(Path(target).name)
        if Path(target) == tmp_path / "c.json":
            raise OSError("disk full")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        with io.publish_together(tmp_path) as staged:
            staged("a.json").write_text("new a")
            staged("model").mkdir()
            (staged("model") / "w").write_text("new w")
            staged("c.json").write_text("new c")
    monkeypatch.undo()
    assert (tmp_path / "a.json").read_text() == "old a" and (tmp_path / "model" / "w").read_text() == "old w"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "model"]
    assert "c.json" in calls  # the failure came after the first outputs were renamed


@pytest.mark.parametrize("exists, directory, message", [
    ("dir", False, "is a directory; expected a file path"),
    ("file", True, "is a file; expected a directory"),
    ("parent-file", False, "is a file"),
    ("file", False, None),  # a re-run replaces its earlier output file
    ("dir", True, None),
    ("nothing", False, None),
])
def test_check_output_refuses_what_a_rename_could_not_replace(tmp_path, exists, directory, message):
    target = tmp_path / "out"
    if exists == "dir":
        target.mkdir()
    elif exists == "file":
        target.write_text("x")
    elif exists == "parent-file":
        target.write_text("x")
        target = target / "inner" / "votes.parquet"
    if message is None:
        assert io.check_output(target, directory=directory) == target
        return
    with pytest.raises(InputError, match=message):
        io.check_output(target, directory=directory)


@pytest.mark.parametrize("encoding", ["string", *ENCODINGS])
def test_every_string_encoding_reads_as_the_contract_string(tmp_path, encoding):
    rows = [{"prompt_id": p, "sample_idx": i, "voter": 0, "completion": "5", "answer": None if i else "5",
             "n_tokens": 1, "logprob": -0.5, "search_tokens": None} for p in ("a", "b") for i in range(2)]
    path = tmp_path / "s.parquet"
    pq.write_table(encoded(pa.Table.from_pylist(rows, schema=schemas.SAMPLES.arrow()), encoding), path)
    table = io.read_table(path, schemas.SAMPLES)
    assert table.schema.types == schemas.SAMPLES.arrow().types  # cast at read time to the contract's type
    assert table.to_pylist() == rows
    assert io.read_rows(path, schemas.SAMPLES) == rows
    # The column checks still run on the re-encoded column: a blank required text is its row's error.
    prompts = tmp_path / "p.parquet"
    pq.write_table(encoded(pa.table({"id": ["a", "b", "c"], "prompt": ["1+1=", "2+2=", " "]}), encoding), prompts)
    with pytest.raises(InputError, match="row 3: field 'prompt': must not be empty"):
        io.read_table(prompts, schemas.PROMPTS)


# A model directory linked into a run (the seed as round 0's champion, the winner as the next champion) must not
# let a write in place reach the directory it came from: a reflink, a read-only hard link, or a copy.
WRITE_IN_PLACE = """
import sys
from pathlib import Path
from flywheel import model_copies
source, target = Path(sys.argv[1]), Path(sys.argv[2])
if sys.argv[3] == "link":
    model_copies.link_or_copy_tree(source, target)
for path in sorted(p for p in target.rglob("*") if p.is_file()):
    for mode in ("r+b", "ab", "wb"):  # overwrite, append, truncate (what save_pretrained into it would do)
        try:
            with open(path, mode) as handle:
                handle.write(b"overwritten")
            print(path.name, mode, "written")
        except PermissionError:
            print(path.name, mode, "refused")
"""


def _model_dir(path: Path) -> dict[str, bytes]:
    (path / "member-0").mkdir(parents=True)
    files = {"member-0/model.safetensors": os.urandom(4096), "member-0/config.json": b"{}", "README.md": b"# seed"}
    for name, data in files.items():
        (path / name).write_bytes(data)
        (path / name).chmod(0o644)
    return files


def _as(who: str) -> list[str]:
    """How to run a Python process as ``who``: this one's identity, or one that file modes bind (root without the
    capabilities that write past them, which is what a non-root user is to its own files)."""
    import shutil
    import sys

    if who == "this process" or os.geteuid() != 0:
        return [sys.executable]
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable]


@pytest.mark.parametrize("who", ["this process", "bound by file modes"])
def test_a_write_in_place_to_a_linked_model_never_reaches_its_source(tmp_path, who):
    import subprocess

    seed = tmp_path / "seed"
    files = _model_dir(seed)
    champion = tmp_path / "run" / "rounds" / "0" / "champion"
    done = subprocess.run([*_as(who), "-c", WRITE_IN_PLACE, str(seed), str(champion), "link"], capture_output=True,
                          text=True, check=True)
    assert len(done.stdout.splitlines()) == 3 * len(files)
    for name, data in files.items():
        assert (seed / name).read_bytes() == data, done.stdout  # every write was refused or went to a copy
        assert (seed / name).stat().st_mode & 0o222 in (0, 0o200)  # never made writable by more than it was


def test_the_next_champion_written_by_the_gate_keeps_the_winner_intact(tmp_path):
    import subprocess
    import sys

    from flywheel.stages.gate import _write_next_champion

    winner = tmp_path / "rounds" / "1" / "candidate"
    files = _model_dir(winner)
    decision = {"buckets": {}, "promote": True}
    _write_next_champion(tmp_path / "rounds" / "2" / "champion", winner, [], decision)
    subprocess.run([sys.executable, "-c", WRITE_IN_PLACE, str(winner), str(tmp_path / "rounds" / "2" / "champion"),
                    "written"], check=True, capture_output=True)
    for name, data in files.items():
        assert (winner / name).read_bytes() == data


def test_model_files_are_readable_by_all_like_every_other_output(tiny_chat_model):
    usual = 0o666 & ~io._umask()  # safetensors alone wrote its weights 0600
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tiny_chat_model.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {oct(usual)}, modes


def test_a_jsonl_file_may_start_with_a_bom(tmp_path):
    """Windows tools (Notepad, PowerShell) write one; it is no part of the first row."""
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "1+1="}\n')
    assert io.read_rows(path, schemas.PROMPTS)[0]["id"] == "a"
    path.write_bytes(b'\xef\xbb\xbf{"id": "\xff"}\n')
    with pytest.raises(InputError, match="row 1: not UTF-8 text \\(byte 0xff at column 9\\)"):
        io.read_rows(path, schemas.PROMPTS)
