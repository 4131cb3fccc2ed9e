"""RecBole atomic ``.inter`` files."""
from __future__ import annotations

import csv

from behavior_lm.data.events import EventLog
from behavior_lm.errors import DataError
from behavior_lm.data.readers.delimited import _header_columns
from behavior_lm.data.readers.files import PathLike, _existing, _list
from behavior_lm.data.readers.table import _read_table
from behavior_lm.data.readers.validate import _REQUIRED


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
