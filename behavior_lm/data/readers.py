"""Readers: turn real log files into an :class:`~behavior_lm.data.events.EventLog`.

Every reader returns an ``EventLog`` whose ``source`` is ``str(path)`` and whose ``line`` column
is the 1-based physical line in the file (the header counts as line 1), or the 1-based row number
for Parquet. All accept plain or gzip files (``.gz`` suffix).

Conventions shared by every reader:

* ids are kept as text (``"007"`` stays ``"007"``);
* ``behavior`` is :data:`~behavior_lm.data.events.DEFAULT_BEHAVIOR` unless the source has one;
* ``value`` is the rating where the source has one, else null;
* where the source has no time, ``timestamp`` is the file order: a running 0-based counter over
  the events in file order (so the order within each user is preserved);
* blank lines (and rows whose every field is empty) are skipped;
* anything wrong with the input raises :class:`~behavior_lm.errors.DataError` naming the file,
  line and field. The happy path is vectorised (pandas / pyarrow); only the error path scans the
  file line by line to point at the first bad row.
"""
from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from behavior_lm.data.events import DEFAULT_BEHAVIOR, EventLog
from behavior_lm.errors import DataError, RecipeError

__all__ = [
    "read_table",
    "read_movielens",
    "read_recbole_inter",
    "read_amazon_reviews",
    "read_sequences",
    "read_pairs",
    "read_events",
    "TABLE_FORMATS",
    "EVENT_FORMATS",
]

PathLike = str | os.PathLike

#: canonical fields a column mapping may name
FIELDS: tuple[str, ...] = ("user_id", "item_id", "behavior", "timestamp", "value")
_REQUIRED = ("user_id", "item_id")

TABLE_FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "jsonl")
EVENT_FORMATS: tuple[str, ...] = ("table", "movielens", "recbole", "amazon", "sequences", "pairs")

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

_WS = r"\s+"  # whitespace separator (pandas' C engine handles it natively)
_JSON_CHUNK = 100_000  # JSON lines parsed per batch (bounds memory on multi-GB dumps)
_EPOCH = pd.Timestamp(0, tz="UTC")
_MAX_SECONDS = 2**62
_MILLIS = 10**11            # as seconds: the year 5138; as milliseconds: March 1973
_MAX_ID_LENGTH = 1000       # characters of an item id (ids are tokens: a 1 MB id is a broken file)
_TIME_LIKE = ("time", "ts", "date", "datetime", "created_at", "unixreviewtime")


# =============================================================================== public readers
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


def read_movielens(path: PathLike) -> EventLog:
    """Read MovieLens ratings: ML-100K ``u.data``, ML-1M/10M ``ratings.dat``, ml-latest/ml-25m
    ``ratings.csv``. The variant is told by file name, else by the first line. value = rating."""
    p = _existing(path)
    kind = _movielens_kind(p)
    if kind == "csv":
        return _read_table(p, fmt="csv", header=True, names=None, sep=",", behavior_map=None,
                           columns={"user_id": "userId", "item_id": "movieId",
                                    "value": "rating", "timestamp": "timestamp"})
    layout = ("user_id", "item_id", "value", "timestamp")
    if kind == "udata":
        return _read_fixed(p, sep="\t", layout=layout, what="tab-separated")
    return _read_fixed(p, sep="::", layout=layout, what="'::'-separated")


def read_recbole_inter(path: PathLike) -> EventLog:
    """Read a RecBole atomic ``.inter`` file (tab-separated, typed header ``name:type``).

    ``user_id``, ``item_id``, ``rating`` (-> value) and ``timestamp`` are taken by name; other
    fields are ignored. Float timestamps (``881250949.0``) are truncated to whole seconds.
    """
    p = _existing(path)
    header_cols = _header_columns(p, sep="\t", quoting=csv.QUOTE_NONE)
    by_name: dict[str, str] = {}
    for col in header_cols:
        by_name.setdefault(col.split(":", 1)[0].strip(), col)
    mapping: dict[str, str] = {}
    for field, name in (("user_id", "user_id"), ("item_id", "item_id"), ("value", "rating"),
                        ("timestamp", "timestamp")):
        if name in by_name:
            mapping[field] = by_name[name]
        elif field in _REQUIRED:
            raise DataError(f"no '{name}' field in the header; the header has "
                            f"{_list(header_cols)}", path=str(p), line=1, field=field)
    return _read_table(p, fmt="tsv", columns=mapping, behavior_map=None, sep="\t", header=True,
                       names=None, truncate_fraction=True)


def read_amazon_reviews(path: PathLike, *, item_first: bool = False) -> EventLog:
    """Read Amazon reviews: the JSON-lines dumps (2014 and 2018: ``reviewerID``, ``asin``,
    ``unixReviewTime``, ``overall``) or, for a ``.csv`` file, the headerless ratings-only CSV
    ``user,item,rating,timestamp`` (2014). The 2018 ratings-only CSVs put the item first
    (``item,user,rating,timestamp``): pass ``item_first=True`` for those. value = rating."""
    p = _existing(path)
    if _suffix(p) == ".csv":
        layout = (("item_id", "user_id") if item_first else ("user_id", "item_id"))
        return _read_fixed(p, sep=",", layout=layout + ("value", "timestamp"),
                           what="comma-separated")
    return _read_table(p, fmt="jsonl", behavior_map=None, sep=None, header=True, names=None,
                       columns={"user_id": "reviewerID", "item_id": "asin",
                                "timestamp": "unixReviewTime", "value": "overall"})


def read_sequences(path: PathLike) -> EventLog:
    """Read a preprocessed sequence file: ``uid i1 i2 ...`` per line (S3-Rec ``Beauty.txt``,
    ``LastFM.txt``), whitespace-separated. Timestamps are the file order."""
    p = _existing(path)
    uids: list[str] = []
    counts: list[int] = []
    line_nos: list[int] = []
    item_lists: list[list[str]] = []
    with _reading(p):
        with _open_text(p) as fh:
            for n, text in enumerate(fh, 1):  # one iteration per user, not per event
                parts = text.split()
                if not parts:
                    continue
                if len(parts) == 1:
                    raise DataError(f"user {parts[0]!r} has no items (a line needs 'uid item "
                                    f"[item ...]')", path=str(p), line=n, field="item_id")
                uids.append(parts[0])
                counts.append(len(parts) - 1)
                line_nos.append(n)
                item_lists.append(parts[1:])
    if not uids:
        raise _empty(p)
    reps = np.asarray(counts, dtype=np.int64)
    frame = pd.DataFrame({
        "user_id": np.repeat(np.asarray(uids, dtype=object), reps),
        "item_id": list(itertools.chain.from_iterable(item_lists)),
        "timestamp": np.arange(int(reps.sum()), dtype=np.int64),
        "line": np.repeat(np.asarray(line_nos, dtype=np.int64), reps),
    })
    return EventLog.from_pandas(frame, source=str(p))


def read_pairs(path: PathLike) -> EventLog:
    """Read ``uid iid`` per line (whitespace-separated), grouped by user in chronological order
    (SASRec ``ml-1m.txt``). Timestamps are the file order."""
    p = _existing(path)
    return _read_fixed(p, sep=_WS, layout=("user_id", "item_id"), what="whitespace-separated")


_DISPATCH: dict[str, Callable[..., EventLog]] = {
    "table": read_table,
    "movielens": read_movielens,
    "recbole": read_recbole_inter,
    "amazon": read_amazon_reviews,
    "sequences": read_sequences,
    "pairs": read_pairs,
}


def read_events(path: PathLike, fmt: str | None = None, **kwargs: Any) -> EventLog:
    """Read any supported source. ``fmt`` is one of :data:`EVENT_FORMATS`; when None it is
    sniffed from the name: ``u.data`` / ``ratings.dat`` / ``ratings.csv`` -> movielens,
    ``*.inter`` -> recbole, anything else -> table. ``kwargs`` go to the chosen reader."""
    if fmt is None:
        p = Path(path)
        name = _base_name(p)
        if _MOVIELENS_NAME.fullmatch(name) or name in ("ratings.dat", "ratings.csv"):
            fmt = "movielens"
        elif name.endswith(".inter"):
            fmt = "recbole"
        else:
            fmt = "table"
    if fmt in TABLE_FORMATS:                       # data_format: csv / tsv / parquet / jsonl
        kwargs["fmt"], fmt = fmt, "table"
    reader = _DISPATCH.get(fmt)
    if reader is None:
        raise RecipeError(f"unknown event format {fmt!r}; expected one of {_list(EVENT_FORMATS)}")
    try:
        return reader(path, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise RecipeError(f"format {fmt!r}: {err}") from None
        raise


# =============================================================================== files
def _existing(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path=str(path))
    if not p.is_file():
        raise DataError("not a regular file", path=str(path))
    return p


def _is_gz(p: Path) -> bool:
    return p.suffix.lower() == ".gz"


def _base_name(p: Path) -> str:
    """Lower-cased file name without a trailing ``.gz``."""
    name = p.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _suffix(p: Path) -> str:
    return Path(_base_name(p)).suffix


def _open_text(p: Path, newline: str | None = None) -> io.TextIOBase:
    if _is_gz(p):
        return gzip.open(p, "rt", encoding="utf-8-sig", newline=newline)  # type: ignore[return-value]
    return open(p, encoding="utf-8-sig", newline=newline)


def _open_binary(p: Path) -> io.BufferedIOBase:
    return gzip.open(p, "rb") if _is_gz(p) else open(p, "rb")  # type: ignore[return-value]


class _reading:
    """Context manager: turn decoding / decompression failures into a located DataError."""

    def __init__(self, p: Path) -> None:
        self.p = p

    def __enter__(self) -> "_reading":
        return self

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, DataError):
            return False
        if isinstance(exc, UnicodeDecodeError):
            line = _locate_bad_utf8(self.p)
            raise DataError(f"not valid UTF-8 text ({exc.reason})", path=str(self.p),
                            line=line) from None
        if isinstance(exc, (gzip.BadGzipFile, EOFError, zlib.error)):
            raise DataError(f"cannot decompress gzip file: {exc}", path=str(self.p)) from None
        if isinstance(exc, OSError) and _is_gz(self.p):
            raise DataError(f"cannot read gzip file: {exc}", path=str(self.p)) from None
        return False


def _locate_bad_utf8(p: Path) -> int | None:
    try:
        with _open_binary(p) as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return n
    except (OSError, EOFError, zlib.error):
        return None
    return None


def _count_lines(p: Path) -> int:
    """Physical lines in the file (a last line without a newline counts)."""
    n = 0
    last = b"\n"
    with _open_binary(p) as fh:
        while True:
            block = fh.read(1 << 24)
            if not block:
                break
            n += block.count(b"\n")
            last = block[-1:]
    return n + (0 if last == b"\n" else 1)


def _line_text(p: Path, line: int) -> str:
    with _open_text(p, newline="") as fh:
        for n, text in enumerate(fh, 1):
            if n == line:
                return text.rstrip("\r\n")
    return ""


def _empty(p: Path, detail: str = "no events") -> DataError:
    return DataError(f"empty log: {detail}", path=str(p))


def _list(names: Sequence[Any]) -> str:
    return ", ".join(repr(str(n)) for n in names) if len(names) else "(none)"


# =============================================================================== formats
_MOVIELENS_NAME = re.compile(r"u(\d|[ab])?\.(data|base|test)")


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
                        f"{_list([f for f in EVENT_FORMATS if f != 'table'])}{hint}", path=str(p))
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


def _movielens_kind(p: Path) -> str:
    name = _base_name(p)
    if _MOVIELENS_NAME.fullmatch(name):
        return "udata"
    if name == "ratings.dat":
        return "dat"
    if name == "ratings.csv":
        return "csv"
    first, line = "", None
    with _reading(p):
        with _open_text(p) as fh:
            for n, text in enumerate(fh, 1):
                if text.strip():
                    first, line = text, n
                    break
    if not first:
        raise _empty(p)
    if "::" in first:
        return "dat"
    if first.lower().startswith("userid,"):
        return "csv"
    if "\t" in first:
        return "udata"
    raise DataError("cannot tell the MovieLens variant: expected u.data (tab-separated), "
                    "ratings.dat ('::'-separated) or ratings.csv (header userId,movieId,...)",
                    path=str(p), line=line)


# =============================================================================== delimited text
def _quoting(sep: str) -> int:
    """Tab- and whitespace-separated files never quote: a stray '"' must not swallow lines."""
    return csv.QUOTE_NONE if sep in ("\t", _WS) else csv.QUOTE_MINIMAL


def _split_fn(sep: str, quoting: int) -> Callable[[str], list[str]]:
    if sep == _WS:
        return str.split
    if quoting == csv.QUOTE_NONE or len(sep) > 1:
        return lambda text: text.split(sep)
    return lambda text: next(csv.reader([text], delimiter=sep), [])


def _records(p: Path, sep: str, quoting: int) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) per record, blank lines included (error path only)."""
    if quoting == csv.QUOTE_MINIMAL and len(sep) == 1:
        with _open_text(p, newline="") as fh:
            reader = csv.reader(fh, delimiter=sep)
            start = 1
            for rec in reader:
                yield start, rec
                start = reader.line_num + 1
        return
    split = _split_fn(sep, quoting)
    with _open_text(p, newline="") as fh:
        for n, text in enumerate(fh, 1):
            text = text.rstrip("\r\n")
            yield n, (split(text) if text.strip() else [])


def _csv_kwargs(sep: str, quoting: int) -> dict[str, Any]:
    engine = "c" if (len(sep) == 1 or sep == _WS) else "python"
    return dict(sep=sep, quoting=quoting, engine=engine, dtype=str, keep_default_na=False,
                na_values=[""], index_col=False, encoding="utf-8", compression="infer")


def _header_columns(p: Path, *, sep: str, quoting: int) -> list[str]:
    """Column names from line 1."""
    with _reading(p):
        try:
            head = pd.read_csv(p, nrows=0, header=0, skip_blank_lines=False,
                               **_csv_kwargs(sep, quoting))
        except pd.errors.EmptyDataError:
            if _count_lines(p) == 0:
                raise _empty(p, "the file is empty") from None
            raise DataError("expected a header on line 1, found a blank line", path=str(p),
                            line=1) from None
    return [str(c) for c in head.columns]


def _read_delimited(p: Path, *, sep: str, header: bool, names: Sequence[str] | None,
                    layout_desc: str | None = None,
                    scan: tuple[str, Sequence[str]] | None = None
                    ) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Read a delimited text file as string columns (NaN = empty cell).

    Returns (frame, physical line of each row, column names). Blank rows are dropped. A row
    with more fields than the header / names is a DataError. ``scan`` = (separator, field
    names) to use when locating such a row, when they differ from the parsing ones.
    """
    quoting = _quoting(sep)
    kw = _csv_kwargs(sep, quoting)
    if header:
        cols = _header_columns(p, sep=sep, quoting=quoting)
        if names is not None:
            cols = [str(n) for n in names]
    elif names is not None:
        cols = [str(n) for n in names]
    else:
        ncols = 0
        with _reading(p):
            for _, fields in _records(p, sep, quoting):
                if fields:
                    ncols = len(fields)
                    break
        if ncols == 0:
            raise _empty(p, "the file has no rows")
        cols = [str(i) for i in range(ncols)]
    scan_sep, scan_cols = scan if scan is not None else (sep, cols)
    with _reading(p), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(p, header=0 if header else None,
                                names=cols if (names is not None or not header) else None,
                                skip_blank_lines=False, **kw)
        except pd.errors.ParserError as err:
            _raise_long_record(p, scan_sep, scan_cols, header, layout_desc, str(err))
            raise  # pragma: no cover - _raise_long_record always raises
        except pd.errors.EmptyDataError:
            raise _empty(p, "the file is empty") from None
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        _raise_long_record(p, scan_sep, scan_cols, header, layout_desc,
                           "; ".join(str(w.message) for w in caught))
    frame.columns = cols
    first = 2 if header else 1
    n_lines = _count_lines(p)
    if n_lines - (first - 1) == len(frame):
        lines = np.arange(first, first + len(frame), dtype=np.int64)
    else:  # records spanning lines (quoted newlines): locate them the slow way
        starts = [start for start, _ in _records(p, sep, quoting)][first - 1:]
        if len(starts) == len(frame):
            lines = np.asarray(starts, dtype=np.int64)
        else:  # pragma: no cover - best effort
            lines = np.arange(first, first + len(frame), dtype=np.int64)
    # blank rows: every field empty, or one whitespace-only field and nothing else
    nulls = frame.isna()
    blank = nulls.all(axis=1)
    if len(cols) > 1:
        cand = nulls.iloc[:, 1:].all(axis=1) & ~blank
    else:
        cand = ~blank
    if cand.any():
        blank |= cand & frame.iloc[:, 0].where(cand, "x").astype(str).str.strip().eq("")
    if blank.any():
        keep = ~blank.to_numpy()
        frame = frame.loc[keep].reset_index(drop=True)
        lines = lines[keep]
    return frame, lines, cols


def _raise_long_record(p: Path, sep: str, cols: Sequence[str], header: bool,
                       layout_desc: str | None, detail: str) -> None:
    expected = len(cols)
    source = layout_desc or (f"the header has {expected}" if header else f"names lists {expected}")
    for n, (line, fields) in enumerate(_records(p, sep, _quoting(sep))):
        if header and n == 0:
            continue
        if len(fields) > expected:
            raise DataError(f"{len(fields)} fields on this row, expected {expected} ({source}): "
                            f"unexpected data after field '{cols[-1]}'", path=str(p), line=line,
                            field=cols[-1])
        if sep == "::":
            for field, value in zip(cols, fields):
                if ":" in value:
                    raise DataError(f"stray ':' in {value!r}", path=str(p), line=line,
                                    field=field)
    raise DataError(f"cannot parse the file: {detail}", path=str(p))


# =============================================================================== fixed layouts
def _read_fixed(p: Path, *, sep: str, layout: Sequence[str], what: str) -> EventLog:
    """Headerless file with exactly ``len(layout)`` fields per row, all required."""
    desc = f"{len(layout)} {what} fields: {' '.join(_DISPLAY.get(f, f) for f in layout)}"
    if sep == "::":
        frame, lines = _read_double_colon(p, layout, desc)
    else:
        frame, lines, _ = _read_delimited(p, sep=sep, header=False, names=list(layout),
                                          layout_desc=desc)
    if len(frame) == 0:
        raise _empty(p)
    bad = frame.isna().any(axis=1).to_numpy()
    if bad.any():  # error path: too few fields, or an empty one
        pos = int(np.argmax(bad))
        line = int(lines[pos])
        n_fields = len(_split_fn(sep, _quoting(sep))(_line_text(p, line)))
        if n_fields < len(layout):
            raise DataError(f"{n_fields} fields on this row, expected {desc}", path=str(p),
                            line=line, field=layout[n_fields])
        field = next(f for f in layout if pd.isna(frame.at[pos, f]))
        raise DataError("missing value (empty field)", path=str(p), line=line, field=field)
    return _build(p, frame, lines, {f: f for f in layout}, behavior_map=None,
                  truncate_fraction=False)


_DISPLAY = {"value": "rating"}


def _read_double_colon(p: Path, layout: Sequence[str], desc: str
                       ) -> tuple[pd.DataFrame, np.ndarray]:
    """``a::b::c`` (ML-1M/10M): parsed with the fast ':' separator, the empty fields between
    the colons must stay empty."""
    width = 2 * len(layout) - 1
    raw_cols = [str(i) for i in range(width)]
    frame, lines, _ = _read_delimited(p, sep=":", header=False, names=raw_cols,
                                      layout_desc=desc, scan=("::", layout))
    gaps = frame.iloc[:, 1::2]
    bad = gaps.notna().any(axis=1).to_numpy()
    if bad.any():
        line = int(lines[int(np.argmax(bad))])
        fields = _line_text(p, line).split("::")
        if len(fields) != len(layout):
            raise DataError(f"{len(fields)} fields on this row, expected {desc}", path=str(p),
                            line=line, field=layout[min(len(fields), len(layout) - 1)])
        field = next(f for f, v in zip(layout, fields) if ":" in v)
        raise DataError(f"stray ':' in {fields[layout.index(field)]!r}", path=str(p), line=line,
                        field=field)
    frame = frame.iloc[:, 0::2]
    frame.columns = list(layout)
    return frame, lines


# =============================================================================== table
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


# =============================================================================== validation
def _build(p: Path, frame: pd.DataFrame, lines: np.ndarray, mapping: Mapping[str, str], *,
           behavior_map: Mapping[str, str] | None, truncate_fraction: bool) -> EventLog:
    """Validate the mapped source columns (vectorised) and assemble the event log."""
    path = str(p)

    def note(field: str) -> str:
        col = mapping[field]
        return "" if col == field else f" (column '{col}')"

    def fail(mask: np.ndarray, field: str, message: Callable[[Any], str]) -> None:
        pos = int(np.argmax(mask))
        raw = frame[mapping[field]].iloc[pos]
        raise DataError(message(raw) + note(field), path=path, line=int(lines[pos]), field=field)

    out: dict[str, Any] = {}
    for field in ("user_id", "item_id"):
        s = frame[mapping[field]]
        missing = _missing(s)
        if missing.any():
            fail(missing, field, lambda raw: "missing value (empty field)")
        out[field] = s
    _check_item_ids(frame[mapping["item_id"]], fail)
    if "timestamp" in mapping:
        out["timestamp"] = _timestamps(frame[mapping["timestamp"]], fail, truncate_fraction)
        _check_time_unit(out["timestamp"], fail)
    else:
        out["timestamp"] = np.arange(len(frame), dtype=np.int64)
    if "value" in mapping:
        s = frame[mapping["value"]]
        num = _numbers(s).astype("float64")
        bad = (num.isna() & ~_missing(s)).to_numpy()
        if bad.any():
            fail(bad, "value", lambda raw: f"not a number: {raw!r}")
        out["value"] = num
    else:
        out["value"] = np.full(len(frame), np.nan)
    if "behavior" in mapping:
        s = frame[mapping["behavior"]]
        missing = _missing(s)
        if missing.any():
            fail(missing, "behavior", lambda raw: "missing value (empty field)")
        if behavior_map is not None:
            known = dict(behavior_map)
            mapped = s.astype(str).map(known)
            unknown = mapped.isna().to_numpy()
            if unknown.any():
                fail(unknown, "behavior", lambda raw: f"behavior {str(raw)!r} is not in "
                     f"behavior_map (it maps {_list(list(known))})")
            s = mapped
        out["behavior"] = s
    elif behavior_map is not None:
        raise DataError("behavior_map given but the source has no behavior column "
                        "(map one with columns={'behavior': ...})", path=path, field="behavior")
    else:
        out["behavior"] = DEFAULT_BEHAVIOR
    out["line"] = lines
    df = pd.DataFrame({k: (v.reset_index(drop=True) if isinstance(v, pd.Series) else v)
                       for k, v in out.items()})
    return EventLog.from_pandas(df, source=path)


def _check_item_ids(s: pd.Series, fail: Callable[..., None]) -> None:
    """Item ids become tokens: no whitespace (a token is one word), no NUL or other control
    characters, at most ``_MAX_ID_LENGTH`` characters."""
    if _is_numeric(s):
        return
    text = s.astype(str)
    bad = text.str.contains(r"\s", regex=True).to_numpy(dtype=bool)
    if bad.any():
        fail(bad, "item_id", lambda raw: f"item id {str(raw)!r} contains whitespace (ids are single tokens)")
    bad = text.str.contains(r"[\x00-\x1f\x7f]", regex=True).to_numpy(dtype=bool)
    if bad.any():
        fail(bad, "item_id", lambda raw: f"item id {str(raw)[:40]!r} contains a control character (NUL, ...)")
    bad = (text.str.len() > _MAX_ID_LENGTH).to_numpy(dtype=bool)
    if bad.any():
        fail(bad, "item_id", lambda raw: f"item id of {len(str(raw)):,} characters (at most "
             f"{_MAX_ID_LENGTH:,}): is the separator or the column mapping right?")


def _check_time_unit(seconds: np.ndarray, fail: Callable[..., None]) -> None:
    """Timestamps are Unix seconds. Values from 1e11 on are milliseconds (1e11 s is the year
    5138); a column that holds both is refused rather than sorted in a silently wrong order."""
    big = seconds >= _MILLIS
    if not big.any():
        return
    if (~big).any():
        first_small = int(np.argmax(~big))
        fail(big, "timestamp", lambda raw: f"mixed time units: {raw!r} looks like milliseconds but "
             f"row {first_small + 1} of the file's events ({int(seconds[first_small])}) looks like seconds")
    fail(big, "timestamp", lambda raw: f"timestamp {raw!r} looks like milliseconds (as seconds it is "
         "after the year 5000); timestamps are Unix seconds: divide the column by 1000")


def _missing(s: pd.Series) -> np.ndarray:
    missing = s.isna()
    if not _is_numeric(s):
        missing |= s.eq("")
    return missing.to_numpy(dtype=bool)


def _numbers(s: pd.Series) -> pd.Series:
    """Numbers from a column (NaN where not a number): Arrow casts for speed, pandas for the
    rest (mixed JSON values, text with stray spaces, ...)."""
    if _is_numeric(s):
        return s
    try:
        arr = pa.array(s, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError):
        arr = None
    if arr is not None and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        for typ in (pa.int64(), pa.float64()):
            try:
                cast = pc.cast(arr, typ)
            except (pa.ArrowException, ValueError):
                continue
            return pd.Series(cast.to_numpy(zero_copy_only=False), index=s.index)
    return pd.to_numeric(s, errors="coerce")


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)


def _timestamps(s: pd.Series, fail: Callable[..., None], truncate_fraction: bool) -> np.ndarray:
    """Unix seconds (int64) from integers, numeric text or ISO-8601 strings."""
    field = "timestamp"
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        missing = s.isna().to_numpy()
        if missing.any():
            fail(missing, field, lambda raw: "missing timestamp")
        if s.dt.tz is None:
            s = s.dt.tz_localize("UTC")
        return ((s - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    if pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_extension_array_dtype(
            s.dtype):
        return s.to_numpy(np.int64)
    missing = _missing(s)
    if missing.any():
        fail(missing, field, lambda raw: "missing timestamp")
    num = _numbers(s)
    if pd.api.types.is_integer_dtype(num.dtype):
        return num.to_numpy(np.int64)
    vals = num.to_numpy(np.float64, na_value=np.nan)
    textual = np.isnan(vals)
    seconds = np.zeros(len(s), dtype=np.int64)
    if textual.any():
        text = s[textual].astype(str)
        when = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        bad = np.zeros(len(s), dtype=bool)
        bad[textual] = when.isna().to_numpy()
        if bad.any():
            fail(bad, field, lambda raw: f"cannot read {str(raw)!r} as a timestamp: expected "
                 "Unix seconds (an integer) or an ISO-8601 date/time")
        seconds[textual] = ((when - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    numeric = ~textual
    if numeric.any():
        v = vals[numeric]
        bad = np.zeros(len(s), dtype=bool)
        bad[numeric] = ~np.isfinite(v) | (np.abs(v) >= _MAX_SECONDS)
        if bad.any():
            fail(bad, field, lambda raw: f"timestamp {raw!r} is out of range")
        whole = np.floor(v)
        if not truncate_fraction:
            bad[numeric] = whole != v
            if bad.any():
                fail(bad, field, lambda raw: f"timestamp {raw!r} is not a whole number of "
                     "seconds")
        seconds[numeric] = whole.astype(np.int64)
    return seconds
