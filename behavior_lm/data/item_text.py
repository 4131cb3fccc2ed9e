"""Item text (titles, genres, categories) from item tables, for pretrained text encoders.

Formats:

- MovieLens ``movies.dat`` (ML-1M: ``MovieID::Title::Genres``, Latin-1): fields ``title``, ``genres``;
- MovieLens ``u.item`` (ML-100K: ``id|title|release date|video release|url|19 genre flags``):
  fields ``title`` (without the year), ``year``, ``release_date``, ``genres``, the same fields
  and text as RecBole's copy of the table below, so ml-100k's item text is one thing whichever
  of the two files is found;
- RecBole's atomic ``.item`` file (``item_id:token<TAB>movie_title:token_seq ...``; the ml-100k copy
  that the recbole wheel bundles): the type suffixes are dropped and MovieLens' ``movie_title`` /
  ``class`` / ``release_year`` become ``title`` / ``genres`` / ``year``;
- a generic table (CSV, TSV, JSON lines, Parquet) with an id column (``item_id`` unless told) and
  any text columns;
- S3-Rec's ``*_item2attributes.json`` (``{"item": [attribute ids]}``, the Amazon sets of
  ../shared/datasets): field ``attributes``, the ids joined (``24, 1, 25``): items that share
  brand/category ids share words.

An id map (``<event item id> <table item id>`` per line, e.g. ML-1M's ``sas_to_original_items.txt``)
re-keys the table to the ids of an event file whose items were renumbered.

An item's text joins the chosen fields with ". " (``Toy Story (1995). Animation, Children's,
Comedy``); list-like genre strings (``A|B``) become ``A, B``. Errors name the file and the field.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from behavior_lm.errors import DataError

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
RECBOLE_ALIASES = {"movie_title": "title", "class": "genres", "release_year": "year"}
ITEM_FORMATS = ("movies.dat", "u.item", "recbole", "attributes-json", "csv", "tsv", "jsonl", "parquet")


def _guess(path: Path) -> str:
    name = path.name.lower()
    if name.endswith("movies.dat"):
        return "movies.dat"
    if name.endswith("u.item"):
        return "u.item"
    if name.endswith(".item"):
        return "recbole"
    if name.endswith("item2attributes.json"):
        return "attributes-json"
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl"),
                        (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"{path}: cannot tell the item table's format from its name; pass --format "
                    f"({', '.join(ITEM_FORMATS)})")


def _split_lines(path: Path, sep: str, n_fields: int, layout: str) -> list[list[str]]:
    """The non-empty lines of a Latin-1 MovieLens file, each split into exactly ``n_fields``."""
    rows = []
    with open(path, encoding="latin-1") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(sep)
            if len(parts) != n_fields:
                raise DataError(f"{path}:{line_no}: expected {layout} ({n_fields} '{sep}' fields), got {len(parts)}")
            rows.append(parts)
    return rows


def _title_and_year(title: str) -> tuple[str, str]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", "1995")``; a title without a year keeps it empty."""
    match = re.match(r"^(.*?)\s*\((\d{4})\)\s*$", title)
    return (match.group(1), match.group(2)) if match else (title.strip(), "")


def read_item_table(path: str | Path, fmt: str | None = None, id_field: str = "item_id") -> pd.DataFrame:
    """The item table as strings, one row per item, with an ``item_id`` column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: item table not found")
    fmt = fmt or _guess(path)
    if fmt == "movies.dat":
        rows = _split_lines(path, "::", 3, "MovieID::Title::Genres")
        frame = pd.DataFrame(rows, columns=["item_id", "title", "genres"])
    elif fmt == "u.item":
        rows = []
        for p in _split_lines(path, "|", 5 + len(ML100K_GENRES), "id|title|...|19 genre flags"):
            title, year = _title_and_year(p[1])
            rows.append([p[0], title, year, p[2], "|".join(g for g, flag in zip(ML100K_GENRES, p[5:]) if flag == "1")])
        frame = pd.DataFrame(rows, columns=["item_id", "title", "year", "release_date", "genres"])
    elif fmt == "recbole":
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        frame.columns = [RECBOLE_ALIASES.get(c.split(":")[0], c.split(":")[0]) for c in frame.columns]
        for column, kind in zip(frame.columns, pd.read_csv(path, sep="\t", nrows=0).columns):
            if kind.endswith(":token_seq") and column != "title":
                frame[column] = frame[column].str.split().str.join("|")
    elif fmt == "attributes-json":
        import json

        try:
            table = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a JSON object of item -> attribute ids ({exc})") from None
        if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
            raise DataError(f"{path}: expected a JSON object of item id -> list of attribute ids")
        frame = pd.DataFrame({"item_id": [str(k) for k in table],
                              "attributes": ["|".join(str(a) for a in v) for v in table.values()]})
    elif fmt in ("csv", "tsv"):
        frame = pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False)
    elif fmt == "jsonl":
        frame = pd.read_json(path, lines=True, dtype=False).astype(str)
    elif fmt == "parquet":
        frame = pd.read_parquet(path).astype(str)
    else:
        raise DataError(f"{path}: unknown item table format {fmt!r}; known: {', '.join(ITEM_FORMATS)}")
    if fmt not in ("movies.dat", "u.item", "recbole", "attributes-json"):
        if id_field not in frame.columns:
            raise DataError(f"{path}: no id column {id_field!r} (columns: {', '.join(map(str, frame.columns))}); "
                            "pass --id_field")
        frame = frame.rename(columns={id_field: "item_id"})
    frame["item_id"] = frame["item_id"].astype(str).str.strip()
    if (frame["item_id"] == "").any():
        raise DataError(f"{path}: row {int((frame['item_id'] == '').to_numpy().argmax()) + 1} has an empty item id")
    duplicated = frame["item_id"].duplicated()
    if duplicated.any():
        raise DataError(f"{path}: item id {frame['item_id'][duplicated].iloc[0]!r} appears more than once")
    return frame


def file_digest(path: str | Path) -> str:
    """sha256 of a file (an item table's identity, recorded with the runs that read it)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_id_map(path: str | Path) -> dict[str, str]:
    """``{table item id: event item id}`` from ``<event id> <table id>`` lines."""
    path = Path(path)
    out: dict[str, str] = {}
    with open(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{path}:{line_no}: expected '<event item id> <table item id>', got {line.strip()!r}")
            if parts[1] in out:
                raise DataError(f"{path}:{line_no}: table item id {parts[1]!r} is mapped twice")
            out[parts[1]] = parts[0]
    return out


def item_texts(path: str | Path, text_fields: Sequence[str], fmt: str | None = None,
               id_field: str = "item_id", id_map: str | Path | None = None) -> dict[str, str]:
    """``{item id: text}`` from the chosen fields of the item table (re-keyed through ``id_map``;
    table rows the map does not name are left out)."""
    frame = read_item_table(path, fmt, id_field)
    if not text_fields:
        raise DataError(f"{path}: name at least one text field (columns: {', '.join(frame.columns[1:])})")
    missing = [f for f in text_fields if f not in frame.columns]
    if missing:
        raise DataError(f"{path}: no field {missing[0]!r} (fields: {', '.join(frame.columns[1:])})")
    rename = read_id_map(id_map) if id_map else None
    texts = {}
    for row in frame[["item_id", *text_fields]].itertuples(index=False):
        key = row[0] if rename is None else rename.get(row[0])
        if key is None:
            continue
        parts = [str(v).replace("|", ", ").strip() for v in row[1:]]
        texts[key] = ". ".join(p for p in parts if p and p.lower() != "nan")
    return texts
