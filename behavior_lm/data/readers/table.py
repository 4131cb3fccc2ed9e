"""Generic event tables: CSV / TSV / Parquet / JSON lines with a column mapping, and the item side
attribute of such a table (``read_item_side``)."""
from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from behavior_lm.data.events import EventLog
from behavior_lm.errors import DataError, RecipeError
from behavior_lm.data.readers.delimited import _header_columns, _quoting, _read_delimited, _read_delimited_chunks, chunks_apply
from behavior_lm.data.readers.files import PathLike, _empty, _existing, _is_gz, _list, _open_text, _reading, _suffix
from behavior_lm.data.readers.validate import FIELDS, _REQUIRED, _build, check_time_units


TABLE_FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "jsonl")

_SUFFIX_FORMAT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}

_JSON_CHUNK = 100_000  # JSON lines parsed per batch (bounds memory on multi-GB dumps)

_TIME_LIKE = ("time", "ts", "date", "datetime", "created_at", "unixreviewtime")

def read_table(
    path: PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    behavior_map: Mapping[str, str] | None = None,
    sep: str | None = None,
    header: bool = True,
    names: Sequence[str] | None = None,
    fmt: str | None = None,
) -> EventLog:
    """Read a generic CSV / TSV / Parquet / JSON-lines event table.

    ``columns`` maps a canonical field (``user_id``, ``item_id``, ``timestamp``, ``value``,
    ``behavior``) to the source column name; ``user_id`` and ``item_id`` are required. Without a
    mapping, columns already named like the canonical fields are used. Without a timestamp
    column, the file order is the timestamp. ``behavior_map`` renames behavior values; a value
    not in it is an error. ``fmt`` is inferred from the suffix when None. ``header=False`` with
    ``names`` reads a headerless file (without ``names`` its columns are called ``"0"``,
    ``"1"``, ...). Timestamps are Unix seconds (integers) or ISO-8601 date/times (naive ones
    are taken as UTC).
    """
    p = _existing(path)
    fmt = _table_format(p, fmt)
    return _read_table(p, fmt=fmt, columns=columns, behavior_map=behavior_map, sep=sep,
                       header=header, names=names)

def read_item_side(path: PathLike, column: str, *, columns: Mapping[str, str] | None = None,
                   sep: str | None = None, header: bool = True, names: Sequence[str] | None = None,
                   fmt: str | None = None, **_: Any) -> tuple[dict[str, str], int]:
    """One side attribute per item (e.g. the Taobao category) from the same event table.

    ``column`` is the source column; the item column is ``columns["item_id"]`` (default
    ``item_id``); the other options are :func:`read_table`'s, so a recipe's reader settings apply
    unchanged. An item keeps the value of its first row; returns ``(item -> value, number of items
    whose rows disagree)``. An empty value is a :class:`DataError` naming the file, line and field.
    """
    p = _existing(path)
    fmt = _table_format(p, fmt)
    item_col = (columns or {}).get("item_id", "item_id")
    if fmt in ("csv", "tsv") and chunks_apply(p, sep if sep is not None else ("," if fmt == "csv" else "\t"), header):
        return _read_delimited_in_chunks(p, fmt=fmt, columns=columns, behavior_map=behavior_map, sep=sep,
                                         names=names, truncate_fraction=truncate_fraction)
    if fmt in ("csv", "tsv"):
        frame, lines, cols = _read_delimited(p, sep=sep if sep is not None else ("," if fmt == "csv" else "\t"),
                                             header=header, names=names)
    elif fmt == "parquet":
        cols = pq.ParquetFile(p).schema_arrow.names
        frame = pq.read_table(p, columns=[c for c in (item_col, column) if c in cols]).to_pandas()
        lines = np.arange(1, len(frame) + 1, dtype=np.int64)
    else:
        frame = pd.read_json(p, lines=True, dtype=False)
        cols, lines = list(frame.columns), np.arange(1, len(frame) + 1, dtype=np.int64)
    for want, field in ((item_col, "item_id"), (column, column)):
        if want not in cols:
            raise DataError(f"no column '{want}' for the item side tokens; the table has "
                            f"{_list(cols)}", path=str(p), line=1 if header else None, field=field)
    items = frame[item_col].astype(str).str.strip()
    values = frame[column].astype("string").str.strip()
    empty = values.isna() | values.eq("")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f"empty '{column}' value (item side tokens need one on every row)",
                        path=str(p), line=int(lines[row]), field=column)
    pairs = pd.DataFrame({"item": items, "value": values.str.replace(r"\s+", "_", regex=True)})
    first = pairs.drop_duplicates("item", keep="first")
    conflicts = int(pairs.drop_duplicates().groupby("item").size().gt(1).sum())
    return dict(zip(first["item"], first["value"])), conflicts

def event_formats() -> tuple[str, ...]:
    """The registered event formats (``readers/__init__.py``), for error messages."""
    from behavior_lm.data.readers import EVENT_FORMATS

    return EVENT_FORMATS


def _table_format(p: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in TABLE_FORMATS:
            raise RecipeError(f"unknown table format {fmt!r}; expected one of "
                              f"{_list(TABLE_FORMATS)}")
        return fmt
    found = _SUFFIX_FORMAT.get(_suffix(p))
    if found is None:
        guess = _guess_format(p)
        hint = f"; its first line looks like data_format: {guess}" if guess else ""
        raise DataError(f"cannot tell the table format from the file name: set the recipe key "
                        f"data_format to one of {_list(TABLE_FORMATS)} for a table, or to one of "
                        f"{_list([f for f in event_formats() if f != 'table'])}{hint}", path=str(p))
    return found

def _guess_format(p: Path) -> str | None:
    """``sequences`` for ``uid i1 i2 i3 ...`` lines, ``pairs`` for ``uid iid``, a table layout for
    delimited or JSON lines; None when nothing fits."""
    try:
        with _open_text(p) as fh:
            first = fh.readline().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if first.startswith("{"):
        return "jsonl"
    parts = first.split()
    if len(parts) >= 3 and all(x.isdigit() for x in parts):
        return "sequences"
    if len(parts) == 2 and all(x.isdigit() for x in parts):
        return "pairs"
    for sep, name in (("\t", "tsv"), (",", "csv")):
        if first.count(sep) >= 1:
            return name
    return None

def _read_table(p: Path, *, fmt: str, columns: Mapping[str, str] | None,
                behavior_map: Mapping[str, str] | None, sep: str | None, header: bool,
                names: Sequence[str] | None, truncate_fraction: bool = False) -> EventLog:
    if columns is not None:
        unknown = [k for k in columns if k not in FIELDS]
        if unknown:
            raise RecipeError(f"unknown field(s) {_list(unknown)} in the column mapping; "
                              f"expected some of {_list(FIELDS)}")
        for req in _REQUIRED:
            if req not in columns:
                raise RecipeError(f"the column mapping must name '{req}' (it names "
                                  f"{_list(list(columns))})")
    if fmt in ("csv", "tsv") and chunks_apply(p, sep if sep is not None else ("," if fmt == "csv" else "\t"), header):
        return _read_delimited_in_chunks(p, fmt=fmt, columns=columns, behavior_map=behavior_map, sep=sep,
                                         names=names, truncate_fraction=truncate_fraction)
    if fmt in ("csv", "tsv"):
        frame, lines, cols = _read_delimited(
            p, sep=sep if sep is not None else ("," if fmt == "csv" else "\t"),
            header=header, names=names)
        mapping = _resolve_mapping(p, columns, cols, line=1)
    elif fmt == "parquet":
        frame, lines, mapping = _read_parquet(p, columns)
    else:
        frame, lines, mapping = _read_jsonl(p, columns)
    if len(frame) == 0:
        raise _empty(p, "no events" if fmt in ("parquet", "jsonl") else
                     ("only a header line" if header else "no events"))
    return _build(p, frame, lines, mapping, behavior_map=behavior_map,
                  truncate_fraction=truncate_fraction)

def _read_delimited_in_chunks(p: Path, *, fmt: str, columns: Mapping[str, str] | None,
                              behavior_map: Mapping[str, str] | None, sep: str | None,
                              names: Sequence[str] | None, truncate_fraction: bool) -> EventLog:
    """A large CSV/TSV a million rows at a time: each chunk is validated as a whole file would be
    and becomes Arrow at once, so the peak holds one chunk of Python strings, not the file's
    (10M events: 2.0 GB peak to read before, see docs/performance.md). The time-unit check runs
    over the whole log at the end, so mixed units across chunks are still refused."""
    sep = sep if sep is not None else ("," if fmt == "csv" else "\t")
    cols = [str(n) for n in names] if names is not None else _header_columns(p, sep=sep, quoting=_quoting(sep))
    mapping = _resolve_mapping(p, columns, cols, line=1)
    tables, first_row = [], 0
    for frame, lines in _read_delimited_chunks(p, sep=sep, cols=cols):
        if len(frame):
            tables.append(_build(p, frame, lines, mapping, behavior_map=behavior_map,
                                 truncate_fraction=truncate_fraction, first_row=first_row,
                                 check_units=False).table)
            first_row += len(frame)
    if not tables:
        raise _empty(p, "only a header line")
    log = EventLog(pa.concat_tables(tables), source=str(p))
    if "timestamp" in mapping:
        check_time_units(log, mapping["timestamp"])
    return log


def _resolve_mapping(p: Path, columns: Mapping[str, str] | None, available: Sequence[str],
                     line: int | None) -> dict[str, str]:
    """canonical field -> source column, checked against the columns the file has."""
    have = set(available)
    if columns is None:
        mapping = {f: f for f in FIELDS if f in have}
        for req in _REQUIRED:
            if req not in mapping:
                raise DataError(f"no column named '{req}'; the file has columns "
                                f"{_list(available)} (map them with the recipe key columns, e.g. "
                                f"'columns: user_id=...,item_id=...')", path=str(p), line=line, field=req)
        timeish = [c for c in available if str(c).lower() in _TIME_LIKE or "time" in str(c).lower()]
        if "timestamp" not in mapping and timeish:
            # file order would silently become the time: make it a decision
            raise DataError(f"no column named 'timestamp', but the file has {_list(timeish)}; map it "
                            f"(recipe key columns: 'user_id=user_id,item_id=item_id,timestamp={timeish[0]}') "
                            "or map the columns without a timestamp to use the file order",
                            path=str(p), line=line, field="timestamp")
        return mapping
    mapping = dict(columns)
    for field, col in mapping.items():
        if col not in have:
            raise DataError(f"column '{col}' not found; the file has columns "
                            f"{_list(available)}", path=str(p), line=line, field=field)
    return mapping

def _read_parquet(p: Path, columns: Mapping[str, str] | None
                  ) -> tuple[pd.DataFrame, np.ndarray, dict[str, str]]:
    try:
        source: Any = pa.BufferReader(gzip.decompress(p.read_bytes())) if _is_gz(p) else p
        pf = pq.ParquetFile(source)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"cannot decompress gzip file: {err}", path=str(p)) from None
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read Parquet file: {err}", path=str(p)) from None
    available = pf.schema_arrow.names
    mapping = _resolve_mapping(p, columns, available, line=None)
    try:
        table = pf.read(columns=list(dict.fromkeys(mapping.values())))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read Parquet file: {err}", path=str(p)) from None
    data: dict[str, Any] = {}
    for col in table.column_names:
        arr = table.column(col)
        if pa.types.is_dictionary(arr.type):
            arr = pc.cast(arr, arr.type.value_type)
        if pa.types.is_date(arr.type):
            arr = pc.cast(arr, pa.timestamp("s"))
        if col in (mapping.get("user_id"), mapping.get("item_id"), mapping.get("behavior")) \
                and not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
            try:
                arr = pc.cast(arr, pa.string())
            except pa.ArrowException as err:
                field = next(f for f, c in mapping.items() if c == col)
                raise DataError(f"column '{col}' of type {arr.type} cannot be used as text: "
                                f"{err}", path=str(p), field=field) from None
        data[col] = arr.to_pandas()
    frame = pd.DataFrame(data)
    return frame, np.arange(1, len(frame) + 1, dtype=np.int64), mapping

def _read_jsonl(p: Path, columns: Mapping[str, str] | None
                ) -> tuple[pd.DataFrame, np.ndarray, dict[str, str]]:
    wanted = list(dict.fromkeys(columns.values())) if columns is not None else list(FIELDS)
    frames: list[pd.DataFrame] = []
    line_parts: list[np.ndarray] = []
    first_keys: list[str] | None = None
    first_line: int | None = None
    offset = 0
    with _reading(p):
        with _open_text(p) as fh:
            while True:
                chunk = list(itertools.islice(fh, _JSON_CHUNK))
                if not chunk:
                    break
                keep = [i for i, text in enumerate(chunk) if text and not text.isspace()]
                if keep:
                    recs = _parse_json_chunk(p, chunk, keep, offset)
                    if first_keys is None:
                        first_keys, first_line = list(recs[0].keys()), offset + keep[0] + 1
                    frames.append(pd.DataFrame.from_records(recs, columns=wanted))
                    line_parts.append(np.asarray(keep, dtype=np.int64) + offset + 1)
                offset += len(chunk)
    if not frames:
        raise _empty(p)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    lines = np.concatenate(line_parts)
    present = [c for c in wanted if frame[c].notna().any()]
    if columns is None:
        mapping = _resolve_mapping(p, None, present, line=first_line)
    else:
        mapping = dict(columns)
        for field, col in mapping.items():
            if col not in present:
                raise DataError(f"no record has the key '{col}'; the first record has keys "
                                f"{_list(first_keys or [])}", path=str(p), line=first_line,
                                field=field)
    return frame, lines, mapping

def _parse_json_chunk(p: Path, chunk: list[str], keep: list[int], offset: int) -> list[dict]:
    recs: Any = None
    try:
        recs = json.loads("[" + ",".join(chunk[i] for i in keep) + "]")
    except (json.JSONDecodeError, RecursionError):
        pass
    if isinstance(recs, list) and len(recs) == len(keep) and \
            all(type(r) is dict for r in recs):
        return recs
    for i in keep:  # error path: find the first bad line
        try:
            rec = json.loads(chunk[i])
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON: {err.msg} (column {err.colno})", path=str(p),
                            line=offset + i + 1) from None
        if type(rec) is not dict:
            raise DataError(f"expected a JSON object, found {type(rec).__name__}",
                            path=str(p), line=offset + i + 1)
    raise DataError("cannot parse the JSON lines", path=str(p))  # pragma: no cover
