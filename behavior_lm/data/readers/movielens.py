"""MovieLens ratings: ML-100K ``u.data``, ML-1M/10M ``ratings.dat``, ml-latest / ml-25m ``ratings.csv``."""
from __future__ import annotations

import re
from pathlib import Path

from behavior_lm.data.events import EventLog
from behavior_lm.errors import DataError
from behavior_lm.data.readers.delimited import _read_fixed
from behavior_lm.data.readers.files import PathLike, _base_name, _empty, _existing, _open_text, _reading
from behavior_lm.data.readers.table import _read_table


_MOVIELENS_NAME = re.compile(r"u(\d|[ab])?\.(data|base|test)")

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
