"""Parquet files with their text in each Arrow string encoding other tools write: pandas large_string, Polars
string_view, DuckDB dictionaries. The stages must read every one as the contract's string (tests/test_io.py,
test_vote_columnar.py, test_curate_columnar.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ENCODINGS = ["large_string", "dictionary", "large_dictionary"] + (
    ["string_view"] if hasattr(pa, "string_view") else [])


def encoded(table: pa.Table, encoding: str) -> pa.Table:
    """``table`` with every string column in ``encoding`` ("string": unchanged)."""
    def column(values):
        if not pa.types.is_string(values.type) or encoding == "string":
            return values
        if encoding == "large_string":
            return values.cast(pa.large_string())
        if encoding == "string_view":
            return values.cast(pa.string_view())
        if encoding == "dictionary":
            return values.dictionary_encode()
        if encoding == "large_dictionary":
            return values.cast(pa.large_string()).dictionary_encode()
        raise ValueError(encoding)
    return pa.table({name: column(values) for name, values in zip(table.column_names, table.columns)})


def reencode(path: Path, encoding: str) -> None:
    """Rewrite the Parquet file at ``path`` with its strings in ``encoding``, or ``pandas``: as pandas writes the
    file's DataFrame (its strings large_string)."""
    table = pq.read_table(path)
    if encoding == "pandas":
        table.to_pandas().to_parquet(path)
    else:
        pq.write_table(encoded(table, encoding), path)
