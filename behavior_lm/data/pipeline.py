"""Recipe data settings -> tokenizer + ``DatasetDict``, cached.

The whole flow of the data side in one call: resolve the source, read it into an EventLog, clean
it, split it (the split audits itself for leakage), build the tokenizer over the catalogue and
tokenize the streams. The result is cached under a key made of the source file's identity and
every setting that changes the output, so the second run of a recipe does not re-read or
re-tokenize anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow.compute as pc
from datasets import DatasetDict, load_from_disk
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from behavior_lm.data import cold_start, columnar, preprocess, sources, splits
from behavior_lm.data.events import EventLog
from behavior_lm.data.streams import StreamFormat
from behavior_lm.errors import RecipeError
from behavior_lm.rundir import atomic_dir
from behavior_lm.tokenization.behavior_tokenizer import SIDE_FILE, build_tokenizer, grammar
from behavior_lm.arguments import DataArguments

logger = logging.getLogger(__name__)

# Bump when the prepared output changes for the same inputs (invalidates caches).
PIPELINE_VERSION = 4  # 2: target_behavior_id column, a slot for <b> in multi-behavior rows; 3: item side tokens;
#                       4: ranking rows hold whole events, one fewer than a training window


@dataclass
class RowContext:
    """What a task's row builder reads: the cleaned sequences, their split (audited), the tokenizer
    over the catalogue and the stream format."""

    args: DataArguments
    split: splits.Split
    sequences: list[preprocess.UserSequence]
    tokenizer: PreTrainedTokenizerBase
    fmt: StreamFormat
    behaviors: list[str]
    source: str


class TaskRows(Protocol):
    """The data side of a task (:class:`behavior_lm.tasks.Task` implements it and registers itself
    with :func:`register_task_rows`; the data layer never imports the tasks).

    ``stream_rows``: the task's rows are exactly :func:`behavior_lm.data.streams.build_dataset_dict`
    of the split, so the data layer may build them columnar (:mod:`behavior_lm.data.columnar`)."""

    name: str
    ranking: bool
    stream_rows: bool

    def check_data(self, args: DataArguments) -> None: ...
    def class_names(self, behaviors: list[str], args: DataArguments) -> list[str]: ...
    def build_rows(self, ctx: RowContext) -> tuple[DatasetDict, dict | None]: ...


_TASK_ROWS: dict[str, TaskRows] = {}


def register_task_rows(task: TaskRows) -> None:
    _TASK_ROWS[task.name] = task


def task_rows(name: str) -> TaskRows:
    if name not in _TASK_ROWS:
        raise RecipeError(f"unknown task {name!r}; known: {', '.join(_TASK_ROWS)}")
    return _TASK_ROWS[name]


@dataclass
class PreparedData:
    datasets: DatasetDict
    tokenizer: PreTrainedTokenizerBase
    info: dict                      # source, terms, counts, split summary, cache key/hit
    with_behaviors: bool
    side_values: dict[str, str] | None = None   # item -> side attribute (``item_side``), else None


def _first_users(log: EventLog, n: int) -> EventLog:
    """Events of the first ``n`` users in file order (for smoke-sized runs)."""
    order = pc.sort_indices(log.table, sort_keys=[("line", "ascending")])
    users = pc.unique(pc.take(log.table.column("user_id"), order))[:n]
    mask = pc.is_in(log.table.column("user_id"), value_set=users)
    return log.with_table(log.table.filter(mask))


def release_memory() -> None:
    """Hand memory that was freed (the reader's Python strings, a replaced table) back to the
    system, so the next stage's peak does not sit on top of it: Arrow's pool keeps freed
    buffers, and glibc keeps freed heap below its trim threshold. Harmless where neither applies."""
    import ctypes
    import ctypes.util

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


ENGINE_SETTINGS = ("cache", "data_engine", "ray_address", "data_partitions")
"""Settings that choose how data is prepared, not what: left out of the cache key, so that data
prepared on a Ray cluster is the cache entry a local run reads (the engines write the same rows)."""


def _identity(path: Path) -> dict:
    """Size and modification time of the source: of each input file for a folder or a glob."""
    if path.is_file():
        st = path.stat()
        return {"size": st.st_size, "mtime": st.st_mtime_ns}
    from behavior_lm.data.ray_engine import input_files

    return {"files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in input_files(path)]}


def cache_key(args: DataArguments, path: Path, template: str) -> str:
    settings = dataclasses.asdict(args)
    for name in ENGINE_SETTINGS:
        settings.pop(name, None)
    blob = json.dumps({"path": str(path.resolve()), **_identity(path),
                       "settings": settings, "template": template, "grammar": grammar(),
                       "version": PIPELINE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_folder_name(dataset: str, key: str) -> str:
    """A folder name for the prepared cache that stays inside it whatever the dataset label is
    (``../x``, ``/abs/path``, separators, NUL): unsafe characters become ``_``; the key (a hash
    of every setting, the label included) keeps labels that slug alike apart."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset).strip("._-")[:64] or "dataset"
    return f"{slug}-{key}"


def clean_log(log: EventLog, args: DataArguments, report: dict | None = None) -> EventLog:
    """The recipe's cleaning of a log (first ``max_users``, dedupe, minimum rating, k-core, most
    recent history), sorted by user, time and line."""
    if args.max_users:
        log = _first_users(log, args.max_users)
    return preprocess.clean(
        log, dedupe=args.dedupe, min_value=args.min_rating, min_user_events=args.min_user_events,
        min_item_events=args.min_item_events, max_history=args.max_history, report=report)


def clean_sequences(log: EventLog, args: DataArguments, report: dict | None = None) -> list[preprocess.UserSequence]:
    """:func:`clean_log` in time order per user: what a run's streams were built from."""
    return preprocess.to_sequences(clean_log(log, args, report))


def load_sequences(args: DataArguments) -> list[preprocess.UserSequence]:
    """The cleaned user sequences of a recipe's dataset (no split, no tokenizer, no cache)."""
    log = sources.load_events(args.dataset, args.data_path, reader_kwargs=args.reader_kwargs())
    return clean_sequences(log, args)


def prepare_data(args: DataArguments, template: str = "causal") -> PreparedData:
    """Build (or load from cache) the tokenizer and the train/validation/test streams."""
    task = task_rows(args.task)
    task.check_data(args)
    ray = args.data_engine == "ray"
    if ray and not (columnar.applies(args, getattr(task, "stream_rows", False)) and not args.max_users):
        raise RecipeError("data_engine: ray prepares next-item rows with split: leave_one_out (without "
                          "target_behavior, cold_items, time_gaps, session_gap, item_side or max_users); "
                          "use data_engine: local for this recipe")
    from behavior_lm.data.ray_engine import is_glob

    glob = bool(args.data_path) and is_glob(str(args.data_path))
    if args.data_path and not ray and (glob or Path(args.data_path).is_dir()) and args.dataset not in sources.SOURCES:
        raise RecipeError(f"data_path {args.data_path!r} names several files (a folder or a glob): "
                          "data_engine: ray reads them in parallel; the local engine reads one file")
    path, src = (Path(args.data_path), None) if ray and glob else sources.resolve(args.dataset, args.data_path)
    key = cache_key(args, path, template)
    cached = sources.cache_dir() / "prepared" / cache_folder_name(args.dataset, key)
    if args.cache and (cached / "info.json").is_file():
        logger.info("using prepared streams from %s", cached)
        info = json.loads((cached / "info.json").read_text())
        info["cache_hit"] = True
        side = cached / SIDE_FILE
        return PreparedData(load_from_disk(str(cached / "datasets")),
                            AutoTokenizer.from_pretrained(cached / "tokenizer"), info,
                            info["with_behaviors"],
                            json.loads(side.read_text())["values"] if side.is_file() else None)

    if ray:
        return _prepare_on_ray(args, path, src, template, task, key, cached)
    progress = tqdm(total=5, desc=f"preparing {args.dataset}", unit="stage", disable=None)
    progress.set_postfix_str("reading events")
    log = sources.load_events(args.dataset, args.data_path, reader_kwargs=args.reader_kwargs())
    raw_summary = log.summary()
    release_memory()
    progress.update()
    progress.set_postfix_str("cleaning (dedupe, k-core, time order)")
    dropped: dict = {"duplicates_dropped": 0}
    if args.target_behavior and args.split != "leave_one_out":
        raise RecipeError(f"target_behavior needs split: leave_one_out, got {args.split!r}")
    cold_report = None
    if columnar.applies(args, getattr(task, "stream_rows", False)):
        log = clean_log(log, args, report=dropped)      # the raw table can go
        release_memory()
        progress.update()
        progress.set_postfix_str("splitting (leave_one_out) and tokenizing, columnar")
        events = columnar.Events.of(log)
        del log                                          # and the cleaned one: codes are all that is left
        built = columnar.build(events, args, template)
        del events
        progress.update()
        dsd, tokenizer, fmt, behaviors = built.rows, built.tokenizer, built.fmt, built.behaviors
        with_behaviors, side_values, split_summary = fmt.behaviors, None, built.split_summary
        prepared = {**built.prepared, **dropped}
    else:
        (dsd, tokenizer, fmt, behaviors, with_behaviors, side_values, split_summary, prepared,
         cold_report) = _general_rows(log, args, task, template, dropped, progress)
    progress.update()
    progress.set_postfix_str("saving to the cache")
    info = {
        "dataset": args.dataset, "source": str(path), "terms": src.terms if src else "",
        "raw": raw_summary,
        "prepared": prepared,
        "split": split_summary,
        "with_behaviors": with_behaviors, "cache_key": key,
        "stream": fmt.describe(),
        "task": args.task, "class_names": task.class_names(behaviors, args),
        "rows": {name: ds.num_rows for name, ds in dsd.items()}, "cache_hit": False,
    }
    if cold_report is not None:
        info["cold_start"] = cold_report
    if args.cache:
        _save_atomically(cached, dsd, tokenizer, info, fmt)
        # train from the saved shards, memory-mapped, as a cache hit does: rows are paged in as
        # they are read, so a log whose rows do not fit in memory still trains
        del dsd
        release_memory()
        dsd = load_from_disk(str(cached / "datasets"))
    progress.update()
    progress.close()
    return PreparedData(dsd, tokenizer, info, with_behaviors, side_values)


def _prepare_on_ray(args: DataArguments, path: Path, src, template: str, task: TaskRows, key: str,
                    cached: Path) -> PreparedData:
    """:mod:`behavior_lm.data.ray_engine` writes the rows straight into the cache folder (the
    same layout and ``info.json`` as the local engine); training memory-maps them."""
    from behavior_lm.data import ray_engine

    progress = tqdm(total=1, desc=f"preparing {args.dataset} on Ray", unit="stage", disable=None)
    with atomic_dir(cached) as tmp:
        done = ray_engine.prepare(args, path, template, tmp, progress)
        done.tokenizer.save_pretrained(tmp / "tokenizer")
        info = {
            "dataset": args.dataset, "source": str(path), "terms": src.terms if src else "",
            "raw": done.raw_summary, "prepared": done.prepared, "split": done.split_summary,
            "with_behaviors": done.fmt.behaviors, "cache_key": key, "stream": done.fmt.describe(),
            "task": args.task, "class_names": task.class_names(done.behaviors, args),
            "rows": done.rows, "cache_hit": False, "engine": "ray",
        }
        (tmp / "info.json").write_text(json.dumps(info, indent=2, default=str))
    progress.update()
    progress.close()
    return PreparedData(load_from_disk(str(cached / "datasets")), done.tokenizer, info, done.fmt.behaviors, None)


def _general_rows(log: EventLog, args: DataArguments, task: TaskRows, template: str, dropped: dict, progress):
    """Rows through per-user sequences and examples: every task, split and stream setting."""
    sequences = clean_sequences(log, args, report=dropped)
    progress.update()
    progress.set_postfix_str(f"splitting ({args.split}) and auditing for leakage")
    catalogue_sequences, cold_report = sequences, None
    if args.cold_items:
        if args.split != "leave_one_out" or not task.ranking or args.target_behavior:
            raise RecipeError("cold_items needs split: leave_one_out and task: next-item "
                              "(without target_behavior)")
        cold = cold_start.pick_cold_items({i for s in sequences for i in s.items}, args.cold_items,
                                          args.cold_seed)
        sequences, cold_report = cold_start.withhold_cold_items(sequences, cold)
        cold_report["items"] = sorted(cold)
    if args.split == "leave_one_out":
        split = splits.leave_one_out(sequences, source=log.source,
                                     target_behavior=args.target_behavior)
    elif args.split == "temporal":
        split = splits.temporal_split(sequences, source=log.source,
                                      valid_fraction=args.valid_fraction,
                                      test_fraction=args.test_fraction)
    else:
        raise ValueError(f"split must be leave_one_out or temporal, got {args.split!r}")

    progress.update()
    progress.set_postfix_str("tokenizing into streams")
    behaviors = list(dict.fromkeys(b for s in sequences for b in s.behaviors))
    with_behaviors = args.use_behaviors if args.use_behaviors is not None else len(behaviors) > 1
    side_values = None
    if args.item_side:
        side_values, conflicts = sources.load_item_side(args.dataset, args.item_side, args.data_path,
                                                        args.reader_kwargs())
        if conflicts:
            logger.warning("item_side %r: %d item(s) have more than one value; each keeps its first",
                           args.item_side, conflicts)
        kept = {i for s in sequences for i in s.items}
        side_values = {i: v for i, v in side_values.items() if i in kept}
    fmt = StreamFormat(behaviors=with_behaviors, time_gaps=args.time_gaps, session_gap=args.session_gap,
                       item_side=args.item_side, side_values=side_values)
    catalogue = (item for s in catalogue_sequences for item in s.items)   # cold items are candidates
    tokenizer = build_tokenizer(catalogue, behaviors if with_behaviors else (),
                                template=template, max_length=args.max_length,
                                extra_tokens=fmt.extra_tokens())
    dsd, task_summary = task.build_rows(RowContext(args, split, sequences, tokenizer, fmt, behaviors, log.source))
    prepared = {"events": sum(len(s) for s in sequences), "users": len(sequences),
                "items": len(set(i for s in catalogue_sequences for i in s.items)),
                "behaviors": behaviors, **dropped}
    return (dsd, tokenizer, fmt, behaviors, with_behaviors, side_values,
            task_summary if task_summary is not None else split.summary(), prepared, cold_report)


def write_item_side(folder: Path, column: str, values: dict[str, str]) -> None:
    """``item_side.json``: the item -> attribute table that side tokens are written from. It is
    saved with the prepared data and with every run that uses it, so inference writes the same
    ``category:...`` tokens after each history item as training did."""
    (folder / SIDE_FILE).write_text(json.dumps({"column": column, "values": values}))


def _save_atomically(target: Path, dsd: DatasetDict, tokenizer: PreTrainedTokenizerBase,
                     info: dict, fmt: StreamFormat) -> None:
    with atomic_dir(target) as tmp:
        dsd.save_to_disk(str(tmp / "datasets"))
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "info.json").write_text(json.dumps(info, indent=2, default=str))
        if fmt.item_side and fmt.side_values:
            write_item_side(tmp, fmt.item_side, dict(fmt.side_values))
