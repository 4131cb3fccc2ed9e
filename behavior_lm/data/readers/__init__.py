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

The package: one module per family of formats (``table``, ``movielens``, ``recbole``, ``amazon``,
``sequences``), the shared parts below them (``files``: opening and locating errors;
``delimited``: delimited text; ``validate``: the columns -> event log checks), and here the one
registry of event formats that ``read_events`` (and the recipe key ``data_format``) dispatches on.
A new format is a reader function and one :func:`register_format` call.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from behavior_lm.data.events import EventLog
from behavior_lm.data.readers.amazon import read_amazon_reviews
from behavior_lm.data.readers.files import PathLike, _base_name, _list
from behavior_lm.data.readers.movielens import _MOVIELENS_NAME, read_movielens
from behavior_lm.data.readers.recbole import read_recbole_inter
from behavior_lm.data.readers.sequences import read_pairs, read_sequences
from behavior_lm.data.readers.table import TABLE_FORMATS, read_item_side, read_table
from behavior_lm.data.readers.validate import FIELDS
from behavior_lm.errors import RecipeError

__all__ = [
    "read_table",
    "read_item_side",
    "read_movielens",
    "read_recbole_inter",
    "read_amazon_reviews",
    "read_sequences",
    "read_pairs",
    "read_events",
    "register_format",
    "FIELDS",
    "TABLE_FORMATS",
    "EVENT_FORMATS",
]


@dataclass(frozen=True)
class EventFormat:
    """A registered format: its reader, and which file names it claims when none is given."""

    name: str
    read: Callable[..., EventLog]
    claims: Callable[[str], bool] = lambda base_name: False


FORMATS: dict[str, EventFormat] = {}
EVENT_FORMATS: tuple[str, ...] = ()


def register_format(fmt: EventFormat) -> None:
    global EVENT_FORMATS
    FORMATS[fmt.name] = fmt
    EVENT_FORMATS = tuple(FORMATS)


for _fmt in (
    EventFormat("table", read_table),
    EventFormat("movielens", read_movielens,
                lambda name: bool(_MOVIELENS_NAME.fullmatch(name)) or name in ("ratings.dat", "ratings.csv")),
    EventFormat("recbole", read_recbole_inter, lambda name: name.endswith(".inter")),
    EventFormat("amazon", read_amazon_reviews),
    EventFormat("sequences", read_sequences),
    EventFormat("pairs", read_pairs),
):
    register_format(_fmt)


def read_events(path: PathLike, fmt: str | None = None, **kwargs: Any) -> EventLog:
    """Read any supported source. ``fmt`` is one of :data:`EVENT_FORMATS` (or a table layout of
    :data:`TABLE_FORMATS`); when None it is sniffed from the name: ``u.data`` / ``ratings.dat`` /
    ``ratings.csv`` -> movielens, ``*.inter`` -> recbole, anything else -> table. ``kwargs`` go
    to the chosen reader."""
    if fmt is None:
        name = _base_name(Path(path))
        fmt = next((f.name for f in FORMATS.values() if f.claims(name)), "table")
    if fmt in TABLE_FORMATS:                       # data_format: csv / tsv / parquet / jsonl
        kwargs["fmt"], fmt = fmt, "table"
    chosen = FORMATS.get(fmt)
    if chosen is None:
        raise RecipeError(f"unknown event format {fmt!r}; expected one of {_list(EVENT_FORMATS)}")
    try:
        return chosen.read(path, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise RecipeError(f"format {fmt!r}: {err}") from None
        raise
