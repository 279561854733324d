"""Files in, files out: atomic writes and validated reads of the stage data contracts.

Every output goes to a temporary sibling first and is renamed into place, so a
stage killed half-way leaves either the old output or none, and can be re-run.
Every read checks the contract (see ``schemas.py``) and raises ``InputError``
naming the file, the row and the field.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel import faults
from flywheel.errors import InputError
from flywheel.schemas import Schema, conform


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the published file gets the usual mode
    try:
        yield tmp
        faults.point("publish")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; swap it into place only on success.

    Used for model directories, which are written by libraries (save_pretrained)
    that we cannot make atomic file by file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: other users of a shared volume could not read it
    try:
        yield tmp
        _usual_modes(tmp)
        faults.point("publish")
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _usual_modes(directory: Path) -> None:
    """Give the files written under ``directory`` the usual mode (0666 less the umask, as every other output):
    safetensors writes weights 0600, which other users of a shared volume could not read. A file with other
    links is a model file linked from elsewhere (``link_or_copy``): its mode is its source's, left alone."""
    usual = 0o666 & ~_umask()
    for parent, _, names in os.walk(directory):
        for name in names:
            info = os.lstat(os.path.join(parent, name))
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and stat.S_IMODE(info.st_mode) != usual:
                os.chmod(os.path.join(parent, name), usual)


def _replace_dir(source: Path, target: Path) -> None:
    """Put directory ``source`` at ``target``: an existing ``target`` is moved aside first (two renames)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


@contextlib.contextmanager
def publish_together(directory: str | os.PathLike) -> Iterator[Callable[[str], Path]]:
    """A stage's outputs, published together: yields ``staged(name)``, the path to write output ``name`` to
    (a file, or a directory the stage creates); on success every staged output replaces its namesake in
    ``directory`` in one quick pass, on failure none does. So a stage that fails (or is killed) while
    writing never leaves some new outputs beside old ones. ``name`` may be a relative path
    (``rounds/0/pool.parquet``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".publish.", suffix=".tmp", dir=directory))
    names: list[str] = []

    def staged(name: str) -> Path:
        names.append(name)
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        return staging / name

    try:
        yield staged
        faults.point("publish")
        _publish([(staging / name, directory / name) for name in dict.fromkeys(names) if (staging / name).exists()],
                 aside=staging / ".earlier")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(moves: list[tuple[Path, Path]], *, aside: Path) -> None:
    """Rename each staged output onto its target. Every target is checked first (a rename cannot put a file where
    a directory is, nor the reverse), and each earlier output is moved into ``aside`` rather than removed, so a
    rename that fails even so puts every earlier output back: the earlier outputs or the new ones, never a mix."""
    for source, target in moves:
        check_output(target, directory=source.is_dir())
    aside.mkdir()
    done: list[tuple[Path, Path | None]] = []  # (target, where its earlier output waits, or None)
    try:
        for index, (source, target) in enumerate(moves):
            target.parent.mkdir(parents=True, exist_ok=True)
            earlier = None
            if target.exists():
                earlier = aside / str(index)
                os.replace(target, earlier)
            done.append((target, earlier))
            os.replace(source, target)
    except BaseException:
        for target, earlier in reversed(done):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            if earlier is not None:
                os.replace(earlier, target)
        raise


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Remove what killed writes left directly in ``directory`` (``.name.XXXX.tmp``, ``.name.old``,
    ``.publish.XXXX.tmp``): a re-run of a stage starts clean. Returns what it removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if is_leftover(path.name):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def is_leftover(name: str) -> bool:
    """A name only a killed write leaves behind: hidden, ending in .tmp or .old. Never an output."""
    return name.startswith(".") and name.endswith((".tmp", ".old"))


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_output(path: str | os.PathLike, *, directory: bool = False, flag: str | None = None) -> Path:
    """Before any compute: ``path`` can be written as a file (``directory``: a directory). A directory where a
    file belongs, a file where a directory belongs, a parent that is a file or not writable: one line."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        what = "a directory" if path.is_dir() else "a file"
        raise InputError(path, f"is {what}; expected {'a directory' if directory else 'a file path'}", field=flag)
    # What the write creates entries in: an existing output directory itself, else the parent (a file is renamed
    # into it; an existing file there is replaced, which a re-run does).
    ancestor = path if directory and path.is_dir() else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(path, f"cannot be created: {ancestor} is a file", field=flag)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot be written: {ancestor} is not writable by this user", field=flag)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Standard JSON (no NaN or Infinity tokens, which other parsers reject): an undefined number is null."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(finite_or_null(obj), indent=2, sort_keys=True, default=_json_default,
                                  allow_nan=False) + "\n")


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float (numpy's too) replaced by None, recursively."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = check_input(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None


def write_rows(path: str | os.PathLike, rows: list[dict], schema: Schema) -> None:
    """Write ``rows`` as Parquet with the contract's column order and types."""
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows],
                                 schema=schema.arrow())
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_rows(path: str | os.PathLike, schema: Schema) -> list[dict]:
    """Read a Parquet or JSONL file and check every row against ``schema``.

    Extra columns are kept; optional columns may be absent or null.
    """
    path = check_input(path)
    if path.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    else:
        try:
            _check_names(path, pq.read_schema(path).names)
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        rows = _conformed(table, schema).to_pylist()
    for index, row in enumerate(rows, start=1):
        schema.check(row, source=path, row=index)
    schema.check_unique(rows, source=path)
    return rows


def check_input(path: str | os.PathLike) -> Path:
    """``path`` is an existing file: else one line saying what it is instead."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory, not a file")
    if not path.is_file():
        raise InputError(path, "file not found")
    return path


def _check_names(path: Path, names: list[str]) -> None:
    """No column name twice: a reader would pick one of them without a word (Parquet allows it, pandas does not)."""
    seen = set()
    for name in names:
        if name in seen:
            raise InputError(path, f"the column '{name}' appears {names.count(name)} times", field=name)
        seen.add(name)


def _conformed(table: pa.Table, schema: Schema) -> pa.Table:
    """``table`` with each contract column in another encoding of its type (what pandas, Polars or DuckDB write:
    large_string, string_view, dictionary; any integer width) cast to the contract's type. The rest stay as they
    are, for the row checks to name."""
    for index, name in enumerate(table.column_names):
        column = schema.column(name)
        if column is not None:
            values = conform(table.column(index), column)
            if values is not None:
                table = table.set_column(index, name, values)
    return table


def read_table(path: str | os.PathLike, schema: Schema, columns: list[str] | None = None,
               check_key: bool = True) -> pa.Table:
    """``read_rows`` for large files: a Parquet file as an Arrow table, every column checked as a whole (present
    and not null when required, its type, non-empty strings, finite floats) and the key unique. When a check
    fails, the row reader names the first bad row and field with the same one-line error. JSONL goes through
    ``read_rows``. ``columns``: the ones the stage uses (default: all), in the contract's order and types; the
    others are still checked, one at a time, and never held together, so memory is the kept columns plus one.
    ``check_key=False``: the caller checks the key itself (the columnar vote sorts by it anyway) and calls
    ``read_rows`` for the error when it repeats."""
    import pyarrow.compute as pc

    path = Path(path)
    if not path.is_file() or path.suffix in (".jsonl", ".json"):
        table = pa.Table.from_pylist(read_rows(path, schema), schema=schema.arrow())
        return table if columns is None else table.select([c for c in schema.names if c in columns])
    try:
        parquet = pq.ParquetFile(path)
        present = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    _check_names(path, present)
    types = {field.name: field.type for field in schema.arrow()}
    rows, kept, clean = parquet.metadata.num_rows, {}, True
    for column in schema.columns:
        if column.name not in present:
            clean = clean and not column.required
            continue
        try:
            values = parquet.read(columns=[column.name]).column(0)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        if values.null_count < rows:
            values = conform(values, column)  # None: not an encoding of the contract's type
            if values is None or (column.required and values.null_count):
                clean = False
            elif column.nonempty and pc.any(pc.equal(pc.utf8_trim_whitespace(values), "")).as_py():
                clean = False
            elif column.type is float and pc.any(pc.invert(pc.is_finite(values))).as_py():
                clean = False  # NaN compares false with every threshold: one would pass every filter downstream
            elif column.minimum is not None and pc.any(pc.less(values, column.minimum)).as_py():
                clean = False
            elif column.maximum is not None and pc.any(pc.greater(values, column.maximum)).as_py():
                clean = False
        elif column.required and rows:
            clean = False
        else:
            values = pa.nulls(rows, types[column.name])  # all null, in whatever type (even Arrow's null type)
        if not clean:
            break
        if columns is None or column.name in columns or column.name in schema.key:
            kept[column.name] = values
    if clean and check_key and schema.key and rows:
        clean = _unique([kept[name] for name in schema.key])
    if not clean:
        read_rows(path, schema)  # raises the row reader's one-line error for the first bad row
        raise AssertionError(f"{path}: the column checks and the row checks of {schema.name} disagree")
    names = [c.name for c in schema.columns if columns is None or c.name in columns]
    return pa.table({name: kept[name] if name in kept else pa.nulls(rows, types[name]) for name in names})


def _unique(key_columns: list) -> bool:
    """Whether no two rows have the same values in ``key_columns``: each column as integer codes, the codes
    as one mixed-radix int64 per row, sorted; a tenth of the memory of Arrow's group_by on 10 million rows."""
    import numpy as np

    combined, radix = None, 1
    for values in key_columns:
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        if pa.types.is_integer(values.type):
            codes = values.to_numpy(zero_copy_only=False).astype(np.int64)
            codes = codes - codes.min()
        else:
            codes = values.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)
        size = int(codes.max()) + 1
        if radix > (2**62) // max(size, 1):  # would overflow: let Arrow count the groups
            table = pa.table({str(i): column for i, column in enumerate(key_columns)})
            return len(table.group_by(list(table.column_names)).aggregate([([], "count_all")])) == len(table)
        combined = codes if combined is None else combined * size + codes
        radix *= size
    combined.sort()
    return not bool((combined[1:] == combined[:-1]).any()) if len(combined) > 1 else True


def write_table(path: str | os.PathLike, table: pa.Table, schema: Schema) -> None:
    """``write_rows`` for an Arrow table: the contract's column order and types, written atomically. A
    dictionary-encoded column of the contract's type is written as it is (Parquet stores it dictionary-encoded
    anyway) without materialising every value; the file keeps no Arrow schema, so readers get the plain type."""
    columns, fields = [], []
    for field in schema.arrow():
        column = table.column(field.name)
        if pa.types.is_dictionary(column.type) and column.type.value_type == field.type:
            field = field.with_type(column.type)
        else:
            column = column.cast(field.type)
        columns.append(column)
        fields.append(field)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns, schema=pa.schema(fields)), tmp, store_schema=False)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    # Bytes first, decoded line by line, so bad bytes name their line; the first may start with a BOM (Windows).
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(path, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                             row=number) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"malformed JSON ({exc.msg})", row=number) from None
        except RecursionError:
            raise InputError(path, "malformed JSON (nested too deeply)", row=number) from None
        if not isinstance(row, dict):
            raise InputError(path, "expected a JSON object", row=number)
        rows.append(row)
    return rows


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
