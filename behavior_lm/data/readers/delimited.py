"""Delimited text (CSV, TSV, whitespace, ``::``) read as string columns, with the physical line
of every row; fixed headerless layouts (``u.data``, ``ratings.dat``, ``uid iid``)."""
from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from behavior_lm.data.events import EventLog
from behavior_lm.errors import DataError
from behavior_lm.data.readers.files import _count_lines, _empty, _line_text, _open_text, _reading
from behavior_lm.data.readers.validate import _build


_WS = r"\s+"  # whitespace separator (pandas' C engine handles it natively)

_DISPLAY = {"value": "rating"}

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
    frame, lines = _drop_blank_rows(frame, lines, cols)
    return frame, lines, cols


def _drop_blank_rows(frame: pd.DataFrame, lines: np.ndarray, cols: Sequence[str]
                     ) -> tuple[pd.DataFrame, np.ndarray]:
    """Without the blank rows: every field empty, or one whitespace-only field and nothing else."""
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
    return frame, lines


CHUNK_ROWS = 500_000
CHUNK_MIN_BYTES = 64 << 20   # smaller files are read whole


def _has_byte(p: Path, byte: bytes) -> bool:
    with open(p, "rb") as fh:
        while block := fh.read(1 << 24):
            if byte in block:
                return True
    return False


def chunks_apply(p: Path, sep: str, header: bool) -> bool:
    """Whether :func:`_read_delimited_chunks` reads this file: a large uncompressed file with a
    header, whose records are one physical line each (no quote characters where quoting is on),
    so that each row's line number is known without scanning records."""
    return (header and p.suffix != ".gz" and p.stat().st_size >= CHUNK_MIN_BYTES
            and (_quoting(sep) == csv.QUOTE_NONE or not _has_byte(p, b'"')))


def _read_delimited_chunks(p: Path, *, sep: str, cols: Sequence[str], rows: int | None = None
                           ) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """:func:`_read_delimited` in frames of ``rows`` rows, for files :func:`chunks_apply` to:
    the same columns, blank rows and long-record errors, with bounded memory (one chunk of
    Python strings at a time instead of the whole file's)."""
    quoting = _quoting(sep)
    kw = _csv_kwargs(sep, quoting)
    rows = rows or CHUNK_ROWS
    line = 2                                         # line 1 is the header
    with _reading(p), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            reader = pd.read_csv(p, header=0, skip_blank_lines=False, chunksize=rows, **kw)
            for frame in reader:
                if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
                    _raise_long_record(p, sep, cols, True, None, "; ".join(str(w.message) for w in caught))
                frame.columns = list(cols)
                lines = np.arange(line, line + len(frame), dtype=np.int64)
                line += len(frame)
                yield _drop_blank_rows(frame, lines, cols)
        except pd.errors.ParserError as err:
            _raise_long_record(p, sep, cols, True, None, str(err))
            raise  # pragma: no cover - _raise_long_record always raises
        except pd.errors.EmptyDataError:
            raise _empty(p, "the file is empty") from None

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
