"""Preprocessed sequence files: ``uid i1 i2 ...`` per line (S3-Rec) and ``uid iid`` pairs (SASRec)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from behavior_lm.data.events import EventLog
from behavior_lm.errors import DataError
from behavior_lm.data.readers.delimited import _WS, _read_fixed
from behavior_lm.data.readers.files import PathLike, _empty, _existing, _open_text, _reading


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
