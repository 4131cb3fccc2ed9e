"""Shared validation: the mapped source columns of any reader become an
:class:`~behavior_lm.data.events.EventLog`, checked column by column (vectorised); the first bad
row is reported with its file, line and field."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from behavior_lm.data.events import DEFAULT_BEHAVIOR, EventLog
from behavior_lm.errors import DataError
from behavior_lm.data.readers.files import _list


#: canonical fields a column mapping may name
FIELDS: tuple[str, ...] = ("user_id", "item_id", "behavior", "timestamp", "value")

_REQUIRED = ("user_id", "item_id")

_EPOCH = pd.Timestamp(0, tz="UTC")

_MAX_SECONDS = 2**62

_MILLIS = 10**11            # as seconds: the year 5138; as milliseconds: March 1973

_MAX_ID_LENGTH = 1000       # characters of an item id (ids are tokens: a 1 MB id is a broken file)

def _build(p: Path, frame: pd.DataFrame, lines: np.ndarray, mapping: Mapping[str, str], *,
           behavior_map: Mapping[str, str] | None, truncate_fraction: bool, first_row: int = 0,
           check_units: bool = True) -> EventLog:
    """Validate the mapped source columns (vectorised) and assemble the event log.

    For one chunk of a file read in chunks: ``first_row`` is the chunk's first event's index in
    the file (file order is the time when no timestamp is mapped), and ``check_units=False``
    leaves the time-unit check to :func:`check_time_units` over the whole file."""
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
        if check_units:
            _check_time_unit(out["timestamp"], fail)
    else:
        out["timestamp"] = np.arange(first_row, first_row + len(frame), dtype=np.int64)
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

def check_time_units(log: EventLog, column: str) -> None:
    """:func:`_check_time_unit` over a whole log assembled from chunks (the raw value named in
    an error is the parsed number)."""
    seconds = log.table.column("timestamp").to_numpy()
    lines = log.table.column("line").to_numpy()
    note = "" if column == "timestamp" else f" (column '{column}')"

    def fail(mask: np.ndarray, field: str, message: Callable[[Any], str]) -> None:
        pos = int(np.argmax(mask))
        raise DataError(message(str(seconds[pos])) + note, path=log.source, line=int(lines[pos]), field=field)

    _check_time_unit(seconds, fail)


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
