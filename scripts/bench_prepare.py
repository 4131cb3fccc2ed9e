"""Data preparation at scale: wall time and peak RSS of ``behavior-lm prepare`` on synthetic
multi-behavior logs of 1M, 10M, ... events (Zipf-popular items, 4 behaviors, time-ordered users).

Each size is generated once into --workdir (a CSV: user_id,item_id,behavior,timestamp; ~30 bytes
an event) and prepared in a fresh subprocess with an empty cache, so the peak RSS is that
process's own (``getrusage(RUSAGE_CHILDREN)`` after it exits). The recipe is a next-item GPT-2
recipe with multi-behavior streams, a 5-core filter and leave-one-out, max_length 50.

    python scripts/bench_prepare.py --events 1e6 1e7 --workdir /tmp/prep --plot docs/img/prepare_scale.png
    python scripts/bench_prepare.py --events 1e6 1e7 --engine local ray --partitions 4   # Ray beside local

``--engine ray`` prepares with ``data_engine: ray`` (a local Ray started by the command, over
``--partitions`` hash partitions); its work runs in Ray's worker processes, which are not the
command's children, so for every engine the script also samples the proportional set size (PSS,
shared pages split between the processes that map them) of the whole process tree every 0.2 s:
"peak tree PSS" is the memory the preparation held at its peak, all processes together, and
"largest process" the biggest single one (what one machine of a cluster must hold at least).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

BEHAVIORS = np.array(["pv", "cart", "fav", "buy"])
RECIPE = """dataset: synth-{tag}
data_path: {path}
data_format: csv
task: next-item
model_type: gpt2
split: leave_one_out
max_length: 50
min_user_events: 5
min_item_events: 5
use_behaviors: true
"""


def generate(n_events: int, path: Path, seed: int = 0, chunk: int = 2_000_000) -> None:
    """~n_events rows for n_events/50 users over n_events/200 items, written in chunks (bounded
    memory). Users come in file order, each user's events in time order."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n_events // 50, 10), max(n_events // 200, 10)
    ranks = np.arange(1, n_items + 1)
    popularity = 1.0 / ranks ** 0.9
    popularity /= popularity.sum()
    lengths = rng.geometric(1 / 50, size=n_users)
    lengths = np.maximum(lengths, 3)
    scale = n_events / lengths.sum()
    lengths = np.maximum((lengths * scale).astype(np.int64), 3)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w") as out:
        out.write("user_id,item_id,behavior,timestamp\n")
        user = 0
        while user < n_users:
            stop = user + 1
            while stop < n_users and lengths[user:stop].sum() < chunk:
                stop += 1
            sizes = lengths[user:stop]
            users = np.repeat(np.arange(user, stop), sizes)
            items = rng.choice(n_items, size=len(users), p=popularity)
            behaviors = BEHAVIORS[rng.choice(4, size=len(users), p=[0.85, 0.07, 0.05, 0.03])]
            starts = rng.integers(1_500_000_000, 1_600_000_000, size=len(sizes))
            gaps = rng.integers(1, 3600, size=len(users))
            group_start = np.repeat(np.cumsum(sizes) - sizes, sizes)
            csum = np.cumsum(gaps)
            ts = np.repeat(starts, sizes) + csum - csum[group_start] + gaps[group_start]
            lines = np.char.add(np.char.add(np.char.add(np.char.add(
                "u" + users.astype(str), ","), np.char.add("i" + items.astype(str), ",")),
                np.char.add(behaviors, ",")), ts.astype(str))
            out.write("\n".join(lines.tolist()))
            out.write("\n")
            user = stop
    tmp.rename(path)


def split_file(path: Path, parts: int) -> Path:
    """The CSV as ``parts`` files of consecutive lines, each with the header, in a folder (once)."""
    folder = path.with_name(f"{path.stem}-{parts}-files")
    if folder.is_dir():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(exist_ok=True)
    total = sum(1 for _ in open(path)) - 1
    per = -(-total // parts)
    with open(path) as src:
        header = src.readline()
        for k in range(parts):
            with open(tmp / f"part-{k:03d}.csv", "w") as out:
                out.write(header)
                for _, line in zip(range(per), src):
                    out.write(line)
    tmp.rename(folder)
    return folder


def _tree_pss(root: int) -> tuple[int, int]:
    """(sum, max) of the PSS in bytes over ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total = biggest = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss = next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, StopIteration, ValueError):
            continue
        total += pss
        biggest = max(biggest, pss)
    return total, biggest


class TreeSampler(threading.Thread):
    """Peak PSS of a process tree, sampled every ``every`` seconds until ``stop()``."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_total, self.peak_one = pid, every, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total, one = _tree_pss(self.pid)
            self.peak_total, self.peak_one = max(self.peak_total, total), max(self.peak_one, one)
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def prepare(path: Path, workdir: Path, tag: str, engine: str = "local", partitions: int = 4) -> dict:
    recipe = workdir / f"recipe-{tag}.yaml"
    recipe.write_text(RECIPE.format(tag=tag, path=path))
    cache = workdir / f"cache-{tag}-{engine}"
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    env = dict(os.environ, BEHAVIOR_LM_CACHE=str(cache), TQDM_DISABLE="1")
    exe = str(Path(sys.executable).with_name("behavior-lm"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    command = [exe, "prepare", str(recipe)]
    if engine == "ray":
        command += ["--data_engine", "ray", "--data_partitions", str(partitions)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = TreeSampler(child.pid)
    sampler.start()
    stdout, stderr = child.communicate()
    sampler.stop()
    proc = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed for {tag}:\n{proc.stderr[-3000:]}")
    info = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"seconds": seconds, "peak_rss_gb": max(peak, before) / 2**20 if peak > before else float("nan"),
            "events": info["prepared"]["events"], "rows": info["rows"], "stderr": proc.stderr,
            "tree_pss_gb": sampler.peak_total / 2**30, "largest_pss_gb": sampler.peak_one / 2**30,
            "rows_digest": _digest(cache)}


def _digest(cache: Path) -> str:
    """A hash of the prepared rows' contents (every column of every split, in row order), to show
    that the engines wrote the same data whatever their shard boundaries."""
    import hashlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    h = hashlib.sha256()
    for split in ("train", "validation", "test"):
        shards = sorted(next((cache / "prepared").iterdir()).joinpath("datasets", split).glob("*.arrow"))
        tables = []
        for shard in shards:
            with pa.memory_map(str(shard)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        table = pa.concat_tables(tables)
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                parts = [pc.list_value_length(column).to_numpy(zero_copy_only=False),
                         pc.list_flatten(column).to_numpy(zero_copy_only=False)]
            elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                parts = [pc.binary_length(column).to_numpy(zero_copy_only=False),
                         np.frombuffer("".join(column.to_pylist()).encode(), dtype=np.uint8)]
            else:
                parts = [column.to_numpy(zero_copy_only=False)]
            h.update(name.encode())
            for part in parts:
                h.update(np.ascontiguousarray(part).astype(np.int64 if part.dtype != np.uint8 else np.uint8).tobytes())
    return h.hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", nargs="+", type=float, default=[1e6])
    parser.add_argument("--workdir", default="/tmp/behavior-lm-prepare-bench")
    parser.add_argument("--plot", default=None)
    parser.add_argument("--engine", nargs="+", choices=("local", "ray"), default=["local"])
    parser.add_argument("--partitions", type=int, default=4, help="data_partitions for --engine ray")
    parser.add_argument("--ray_files", type=int, default=1,
                        help="--engine ray reads the log split into this many files (a folder), in parallel")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    print("| events in file | engine | events prepared | training rows | seconds | peak RSS (GB) | peak tree PSS (GB) "
          "| largest process (GB) | µs per event | rows digest |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for n in args.events:
        n = int(n)
        tag = f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k"
        path = workdir / f"events-{tag}.csv"
        if not path.exists():
            t = time.perf_counter()
            generate(n, path)
            print(f"(generated {path} in {time.perf_counter() - t:.0f} s)", file=sys.stderr)
        for engine in args.engine:
            source = path if engine == "local" or args.ray_files <= 1 else split_file(path, args.ray_files)
            r = prepare(source, workdir, tag, engine, args.partitions)
            if engine == "local":
                results.append((n, r))
            label = engine if source == path else f"{engine}, {args.ray_files} files"
            print(f"| {n:,} | {label} | {r['events']:,} | {r['rows']['train']:,} | {r['seconds']:.1f} | "
                  f"{r['peak_rss_gb']:.2f} | {r['tree_pss_gb']:.2f} | {r['largest_pss_gb']:.2f} | "
                  f"{r['seconds'] / n * 1e6:.1f} | {r['rows_digest']} |", flush=True)
    if args.plot and results:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
        xs = [n / 1e6 for n, _ in results]
        a.plot(xs, [r["seconds"] for _, r in results], "o-")
        a.set(xlabel="events (millions)", ylabel="seconds", title="behavior-lm prepare: wall time")
        b.plot(xs, [r["peak_rss_gb"] for _, r in results], "o-", color="C1")
        b.set(xlabel="events (millions)", ylabel="GB", title="peak RSS")
        for ax in (a, b):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
