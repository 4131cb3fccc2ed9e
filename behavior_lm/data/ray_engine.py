"""Data preparation on Ray (``data_engine: ray``; the optional extra ``behavior-lm[distributed]``).

The local engine (:mod:`behavior_lm.data.columnar`) holds the whole event table in one process:
about 120 bytes an event, so a 400M-event log needs ~50 GB on one machine. This module prepares
*the same prepared cache* (the same rows in the same order, the same tokenizer; a test compares
them) with Ray tasks and actors over hash partitions of the users, so that no process ever holds
more than its partition, and the work spreads over every CPU of a Ray cluster:

1. **read**: one Ray task per input file, with behavior-lm's own readers (so a bad row is still
   one line naming the file, line and field); each task splits its events into ``P`` parts by a
   hash of ``user_id``. A folder (or a glob) of files is read in parallel; one file is one task.
2. **clean**, in ``P`` partition actors: every event of a user lands in one partition, so exact
   duplicates (same user, item, behavior, time and value), the value threshold, the user side of
   the k-core, the time sort and ``max_history`` are partition-local. Only the item side of the
   k-core is global: per round each actor sends its item counts, the driver sums them and sends
   back the items to drop, until no actor drops anything (the k-core is the unique fixed point of
   that deletion, whatever the order, so it equals the local result).
3. **order and vocabulary**: the driver receives one number per user (its first line) and puts
   users in the local engine's order (first line in the file, files in name order), then per item
   its count and first position, and builds the tokenizer as the local engine does.
4. **rows**: each actor builds its users' train/validation/test rows
   (:func:`~behavior_lm.data.columnar.split_tables`); writer tasks gather each range of user
   ranks from all actors and write it as one Arrow shard of the ``datasets`` layout, which
   training memory-maps (``load_from_disk``).

The driver holds O(users + items) numbers, never events or rows. On a cluster, every node needs
behavior-lm installed, the input files and ``$BEHAVIOR_LM_CACHE`` on a filesystem all nodes mount,
and ``ray_address`` pointing at the cluster (``auto`` on a node of it).

What it covers is what the columnar engine covers: next-item rows, leave-one-out, with or without
behavior tokens, without ``target_behavior``, cold items, time-gap/session/side tokens or
``max_users``. The order key of an event is ``(file index, line)`` packed in one int64 (the
``line`` column inside the actors); error messages name the file and its own line.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from behavior_lm.data import columnar, preprocess, sources
from behavior_lm.data.events import EventLog
from behavior_lm.data.streams import StreamFormat
from behavior_lm.errors import DataError, RecipeError

if TYPE_CHECKING:
    from behavior_lm.arguments import DataArguments

logger = logging.getLogger(__name__)

LINE_BITS = 40
"""An event's order key is ``file_index << LINE_BITS | line``: up to 2^40 lines a file."""

ENGINES = ("local", "ray")
WORKER_ENV = {"env_vars": {"BEHAVIOR_LM_DEFER_REGISTRATION": "1"}}
"""Ray workers import only the data side: no model registration, torch or transformers (a worker
starts in about a second instead of ~8 s)."""
SPLITS = ("train", "validation", "test")


def is_glob(text: str) -> bool:
    """Whether a ``data_path`` is a glob pattern (several files) rather than one path (a file
    whose name holds ``[`` or ``*`` is still that file)."""
    return any(ch in text for ch in "*?[") and not Path(text).exists()


def input_files(path: Path) -> list[Path]:
    """The files a ``data_path`` names: itself, every visible file of a folder, or a glob's
    matches, in name order (the order that ties file order across files)."""
    text = str(path)
    if is_glob(text):
        files = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_file()]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = [path]
    if not files:
        raise DataError("no input files (an empty folder or a glob that matches nothing)", path=text,
                        field="data_path")
    return files


def _located(err: DataError, files: list[str]) -> DataError:
    """An error raised on packed order keys, re-pointed at the file and line it came from."""
    if err.line is None:
        return err
    k, line = divmod(int(err.line), 1 << LINE_BITS)
    return DataError(err.message, path=files[k] if k < len(files) else err.path, line=line, field=err.field)


def _read_part(dataset: str, path: str, reader_kwargs: dict, file_index: int, partitions: int) -> list[pa.Table]:
    """One file's events (the recipe's reader), split into ``partitions`` tables by user hash;
    ``line`` becomes the packed order key."""
    log = sources.load_events(dataset, path, reader_kwargs=reader_kwargs)
    table = log.table
    lines = table.column("line").to_numpy()
    if len(lines) and int(lines.max()) >= (1 << LINE_BITS):
        raise DataError(f"more than 2^{LINE_BITS} lines in one file; split it", path=path)
    table = table.set_column(table.schema.get_field_index("line"), "line",
                             pa.array(lines + (np.int64(file_index) << LINE_BITS)))
    part = _partition_of(table.column("user_id"), partitions)
    tables = tuple(table.filter(pa.array(part == p)) for p in range(partitions))
    return tables if partitions > 1 else tables[0]      # Ray's num_returns=1 takes the value itself


def _partition_of(users: pa.ChunkedArray, partitions: int) -> np.ndarray:
    """A stable hash partition per event (the same user -> the same partition in every process:
    pandas' hash has a fixed key)."""
    encoded = pc.dictionary_encode(users.combine_chunks())
    words = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    of_word = (pd.util.hash_array(words, categorize=False) % np.uint64(partitions)).astype(np.int64)
    return of_word[encoded.indices.to_numpy(zero_copy_only=False)]


class Partition:
    """One hash partition of the users: its events, then its cleaned :class:`columnar.Events`,
    then its rows. A Ray actor (``ray.remote(Partition)``); plain methods, so the steps are
    testable without Ray."""

    def __init__(self, source: str, files: list[str]):
        self.source, self.files = source, files
        self.table: pa.Table | None = None
        self.events: columnar.Events | None = None
        self.ranks: np.ndarray | None = None

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except DataError as err:
            raise _located(err, self.files) from None

    # -- clean
    def load(self, *parts: pa.Table) -> dict:
        """Take this partition's parts of every file (in file order) and apply the row-local
        cleaning: duplicates (first occurrence kept), then the value threshold."""
        tables = [t for t in parts if t.num_rows]
        self.table = pa.concat_tables(tables) if tables else parts[0]
        return {"events": self.table.num_rows,
                "users": len(pc.unique(self.table.column("user_id"))),
                "items": pc.unique(self.table.column("item_id")),
                "behaviors": pc.unique(self.table.column("behavior"))}

    def dedupe_and_threshold(self, dedupe: bool, min_value: float | None) -> dict:
        table, keep = self.table, np.ones(self.table.num_rows, dtype=bool)
        report = {"duplicates_dropped": 0, "duplicate_lines": []}
        if dedupe and table.num_rows > 1:
            dup = preprocess._duplicates(table)
            keep = ~dup
            report = {"duplicates_dropped": int(dup.sum()),
                      "duplicate_lines": np.sort(table.column("line").to_numpy()[dup])[:5].tolist()}
        if min_value is not None:
            keep = self._guard(preprocess._value_mask, EventLog(table, self.source), min_value, keep)
        self.table = table.filter(pa.array(keep))
        return report

    def k_core_round(self, min_user_events: int, drop_items: pa.Array | None) -> tuple[int, pa.Table]:
        """Drop ``drop_items``' events, then users below ``min_user_events`` (partition-local);
        return how many events went and the item counts left (for the global item side)."""
        before = self.table.num_rows
        if drop_items is not None and len(drop_items):
            self.table = self.table.filter(pc.invert(pc.is_in(self.table.column("item_id"), value_set=drop_items)))
        if min_user_events > 1 and self.table.num_rows:
            users = preprocess._codes(self.table.column("user_id"))
            counts = np.bincount(users)
            self.table = self.table.filter(pa.array(counts[users] >= min_user_events))
        counts = self.table.group_by("item_id").aggregate([("item_id", "count")])
        return before - self.table.num_rows, counts

    def order(self, max_history: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Sort (user, time, order key), keep each user's ``max_history`` newest events, encode
        (:meth:`columnar.Events.of`, which also checks lengths and time order); return each
        user's first order key and event count, users in this partition's output order."""
        table = self.table
        rows = preprocess._sort_order(table, np.arange(table.num_rows))
        if max_history is not None and len(rows):
            rows = rows[preprocess._recent(preprocess._codes(pc.take(table.column("user_id"), pa.array(rows))),
                                           max_history)]
        log = EventLog(table.take(pa.array(rows)), self.source)
        self.table = None
        if not len(log):
            self.events = None
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.events = self._guard(columnar.Events.of, log)
        return self.events.first_lines, self.events.sizes

    def catalogue(self, ranks: np.ndarray, max_size: int) -> tuple[pa.Table, pa.Table]:
        """Per item its count and first position in the global output order (``rank x
        (max_size + 1) + index in the user``), and per behavior its first position."""
        self.ranks = ranks
        ev = self.events
        if ev is None:
            empty = pa.table({"name": pa.array([], pa.string()), "count": pa.array([], pa.int64()),
                              "first": pa.array([], pa.int64())})
            return empty, empty.drop_columns(["count"])
        sizes = ev.sizes
        index = np.arange(len(ev.items), dtype=np.int64) - np.repeat(ev.offsets[:-1], sizes)
        pos = np.repeat(ranks.astype(np.int64), sizes) * (max_size + 1) + index
        per_event = pa.table({"code": ev.items, "pos": pos})
        items = per_event.group_by("code").aggregate([("pos", "min"), ("pos", "count")])
        codes = items.column("code")
        item_table = pa.table({"name": pc.take(ev.item_names, codes).cast(pa.string()),
                               "count": items.column("pos_count").cast(pa.int64()),
                               "first": items.column("pos_min")})
        b = pa.table({"code": ev.behaviors, "pos": pos}).group_by("code").aggregate([("pos", "min")])
        names = pa.array(ev.behavior_names, pa.string())
        return item_table, pa.table({"name": pc.take(names, b.column("code")), "first": b.column("pos_min")})

    def rows(self, token_of_item: pa.Table, behaviors: list[str], layout: columnar.RowLayout, fmt: StreamFormat,
             bounds: np.ndarray) -> list:
        """This partition's split counts, then its train/validation/test rows with the global
        tokenizer cut into the rank ranges ``[bounds[s], bounds[s + 1])``, flat in the order of
        :data:`SPLITS` then ranges (each table with a ``_rank`` column for the merge; None
        where this partition has no rows there): one Ray object each."""
        ev = self.events
        n = len(bounds) - 1
        if ev is None:
            return [{}] + [None] * (len(SPLITS) * n)
        at = pc.index_in(ev.item_names.cast(pa.string()), value_set=token_of_item.column("name"))
        item_tokens = token_of_item.column("token").to_numpy()[at.to_numpy(zero_copy_only=False)][ev.items]
        b_index = {b: k for k, b in enumerate(behaviors)}
        b_codes = np.array([b_index[b] for b in ev.behavior_names], dtype=np.int32)[ev.behaviors]
        tables, summary = columnar.split_tables(ev, item_tokens.astype(np.int32), b_codes, behaviors, layout, fmt)
        out: list[pa.Table | None] = [None] * (len(SPLITS) * n)
        for name, table in tables.items():
            if name == "train":
                per_user = np.bincount(pc.index_in(table.column("user_id"), value_set=ev.user_ids)
                                       .to_numpy(zero_copy_only=False), minlength=len(self.ranks))
                rank = np.repeat(self.ranks, per_user)
            else:
                rank = self.ranks
            table = table.append_column("_rank", pa.array(rank.astype(np.int64)))
            shard = np.searchsorted(bounds, rank, side="right") - 1
            for s in np.unique(shard):
                out[SPLITS.index(name) * n + int(s)] = table.filter(pa.array(shard == s))
        return [summary] + out


def _write_shard(path: str, *pieces: pa.Table) -> int:
    """Pieces of one rank range from every partition -> one Arrow stream file in rank order."""
    pieces = [p for p in pieces if p is not None and p.num_rows]
    if not pieces:
        return 0
    table = pa.concat_tables(pieces)
    table = table.take(pc.sort_indices(table, sort_keys=[("_rank", "ascending")])).drop_columns(["_rank"])
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return table.num_rows


@dataclass
class RayPrepared:
    """What :func:`prepare` wrote into the folder and what ``info.json`` needs."""

    tokenizer: object
    fmt: StreamFormat
    behaviors: list[str]
    split_summary: dict
    prepared: dict
    raw_summary: dict
    rows: dict[str, int]


def prepare(args: DataArguments, path: Path, template: str, folder: Path, progress=None) -> RayPrepared:
    """Prepare ``args``' rows from ``path`` (a file, a folder or a glob) on Ray into ``folder``
    (``folder / "datasets"`` in the ``save_to_disk`` layout; the caller saves the tokenizer)."""
    try:
        import ray
    except ImportError:
        raise RecipeError("data_engine: ray needs Ray: pip install 'behavior-lm[distributed]' "
                          "(or pip install ray)") from None
    files = [str(f) for f in input_files(path)]
    started = False
    if not ray.is_initialized():
        kwargs = {"address": args.ray_address} if args.ray_address else {
            "include_dashboard": False, "num_cpus": os.cpu_count()}
        ray.init(log_to_driver=False, logging_level=logging.WARNING, **kwargs)
        started = True
    try:
        return _prepare(ray, args, files, template, folder, progress)
    finally:
        if started:
            ray.shutdown()


def _step(progress, text: str) -> None:
    if progress is not None:
        progress.set_postfix_str(text)


def _get(ray, refs):
    """``ray.get`` that re-raises our one-line errors as themselves (Ray wraps task errors)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if hasattr(err, "cause") else None
        if isinstance(cause, (DataError, RecipeError)):
            raise cause from None
        raise


def _prepare(ray, args: DataArguments, files: list[str], template: str, folder: Path, progress) -> RayPrepared:
    preprocess._check_count("min_user_events", args.min_user_events)
    preprocess._check_count("min_item_events", args.min_item_events)
    if args.max_history is not None and (isinstance(args.max_history, bool) or not isinstance(args.max_history, int)
                                         or args.max_history < 1):
        raise RecipeError(f"max_history must be an integer >= 1, got {args.max_history!r}")
    n_part = args.data_partitions or max(1, int(ray.cluster_resources().get("CPU", 1)))
    source = files[0] if len(files) == 1 else str(Path(files[0]).parent)
    read = ray.remote(num_returns=n_part, runtime_env=WORKER_ENV)(_read_part)
    _step(progress, f"reading {len(files)} file(s) into {n_part} partition(s) on Ray")
    parts = [read.remote(args.dataset, f, args.reader_kwargs(), k, n_part) for k, f in enumerate(files)]
    if n_part == 1:
        parts = [[p] for p in parts]
    actor = ray.remote(num_cpus=0, runtime_env=WORKER_ENV)(Partition)          # the actors hold data; tasks take the CPUs
    actors = [actor.remote(source, files) for _ in range(n_part)]
    loaded = _get(ray, [a.load.remote(*[file_parts[p] for file_parts in parts]) for p, a in enumerate(actors)])
    del parts
    raw = {"events": sum(x["events"] for x in loaded), "users": sum(x["users"] for x in loaded),
           "items": len(pc.unique(pa.chunked_array([x["items"] for x in loaded]))),
           "behaviors": len(pc.unique(pa.chunked_array([x["behaviors"] for x in loaded])))}
    del loaded

    _step(progress, "cleaning (dedupe, k-core, time order) on Ray")
    reports = _get(ray, [a.dedupe_and_threshold.remote(args.dedupe, args.min_rating) for a in actors])
    dropped: dict = {"duplicates_dropped": sum(r["duplicates_dropped"] for r in reports)}
    if dropped["duplicates_dropped"]:
        lines = sorted(x for r in reports for x in r["duplicate_lines"])[:5]
        shown = [divmod(x, 1 << LINE_BITS)[1] if len(files) == 1 else f"{Path(files[x >> LINE_BITS]).name}:"
                 f"{x & ((1 << LINE_BITS) - 1)}" for x in lines]
        logger.warning("%s: dropped %d exact duplicate event(s) (same user, item, behavior, time and value; "
                       "e.g. lines %s); set dedupe: false to keep them", source, dropped["duplicates_dropped"],
                       ", ".join(map(str, shown)))
        dropped["duplicate_lines"] = shown
    drop = None
    while True:     # the k-core: users are partition-local, items global; stop when no item falls
        results = _get(ray, [a.k_core_round.remote(args.min_user_events, drop) for a in actors])
        if args.min_item_events <= 1:
            break
        counts = pa.concat_tables([r[1] for r in results]).group_by("item_id").aggregate([("item_id_count", "sum")])
        drop = counts.column("item_id").filter(
            pc.less(counts.column("item_id_count_sum"), args.min_item_events)).combine_chunks()
        if not len(drop):
            break

    _step(progress, "ordering users and building the vocabulary")
    ordered = _get(ray, [a.order.remote(args.max_history) for a in actors])
    firsts, sizes = [o[0] for o in ordered], [o[1] for o in ordered]
    n_users = sum(len(f) for f in firsts)
    if n_users == 0:
        raise DataError(
            f"no events left after preprocessing: {raw['events']} event(s) in, settings dedupe={args.dedupe}, "
            f"min_value={args.min_rating}, min_user_events={args.min_user_events}, "
            f"min_item_events={args.min_item_events}, max_history={args.max_history}; lower the thresholds",
            path=source)
    everyone = np.concatenate(firsts)
    rank_of = np.empty(n_users, dtype=np.int64)
    rank_of[np.argsort(everyone, kind="stable")] = np.arange(n_users, dtype=np.int64)
    cuts = np.cumsum([0] + [len(f) for f in firsts])
    max_size = int(max((int(x.max()) for x in sizes if len(x)), default=1))
    cats = _get(ray, [a.catalogue.remote(rank_of[cuts[p]:cuts[p + 1]], max_size) for p, a in enumerate(actors)])
    items = pa.concat_tables([c[0] for c in cats]).group_by("name").aggregate([("count", "sum"), ("first", "min")])
    b_first = pa.concat_tables([c[1] for c in cats]).group_by("name").aggregate([("first", "min")])
    behaviors = pc.take(b_first.column("name"), pc.sort_indices(b_first.column("first_min"))).to_pylist()
    with_behaviors = args.use_behaviors if args.use_behaviors is not None else len(behaviors) > 1
    fmt = StreamFormat(behaviors=with_behaviors)
    names = items.column("name").combine_chunks()
    tokenizer, token_of_code = columnar.vocabulary(
        names, items.column("count_sum").to_numpy(), items.column("first_min").to_numpy(),
        behaviors if with_behaviors else [], template, args.max_length)
    token_of_item = ray.put(pa.table({"name": names, "token": pa.array(token_of_code)}))

    _step(progress, "building and writing rows on Ray")
    n_shards = max(1, min(n_part, n_users))
    bounds = np.linspace(0, n_users, n_shards + 1).round().astype(np.int64)
    per_split = len(SPLITS) * n_shards
    layout = columnar.RowLayout.of(tokenizer, behaviors, fmt, args)
    built = [a.rows.options(num_returns=1 + per_split).remote(token_of_item, behaviors, layout, fmt, bounds)
             for a in actors]
    summaries = [s for s in _get(ray, [refs[0] for refs in built]) if s]
    write = ray.remote(runtime_env=WORKER_ENV)(_write_shard)
    datasets_dir = folder / "datasets"
    counts = {}
    for k, name in enumerate(SPLITS):
        (datasets_dir / name).mkdir(parents=True, exist_ok=True)
        shard_files = [f"data-{s:05d}-of-{n_shards:05d}.arrow" for s in range(n_shards)]
        written = _get(ray, [write.remote(str(datasets_dir / name / shard_files[s]),
                                          *[refs[1 + k * n_shards + s] for refs in built])
                             for s in range(n_shards)])
        counts[name] = int(sum(written))
        _write_dataset_meta(datasets_dir / name, [f for f, n in zip(shard_files, written) if n])
    (datasets_dir / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}))
    del built
    for a in actors:
        ray.kill(a)
    split_summary = {"kind": summaries[0]["kind"]}
    for key in summaries[0]:
        if key != "kind":
            split_summary[key] = int(sum(s[key] for s in summaries))
    prepared = {"events": int(sum(int(x.sum()) for x in sizes)), "users": n_users,
                "items": len(names), "behaviors": behaviors, **dropped}
    return RayPrepared(tokenizer, fmt, behaviors, split_summary, prepared, raw, counts)


def _write_dataset_meta(split_dir: Path, shard_files: list[str]) -> None:
    """``state.json`` and ``dataset_info.json`` of the ``datasets`` on-disk layout, for shards
    already written: what ``Dataset.save_to_disk`` writes next to its own shards."""
    from datasets import DatasetInfo, Features

    schema = pa.ipc.open_stream(str(split_dir / shard_files[0])).schema
    info = DatasetInfo(features=Features.from_arrow_schema(schema))
    info.write_to_directory(str(split_dir))
    state = {"_data_files": [{"filename": f} for f in shard_files], "_fingerprint": uuid.uuid4().hex[:16],
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": None}
    (split_dir / "state.json").write_text(json.dumps(state, indent=2))
