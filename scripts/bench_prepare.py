"""Data preparation at scale: wall time and peak RSS of ``behavior-lm prepare`` on synthetic
multi-behavior logs of 1M, 10M, ... events (Zipf-popular items, 4 behaviors, time-ordered users).

Each size is generated once into --workdir (a CSV: user_id,item_id,behavior,timestamp; ~30 bytes
an event) and prepared in a fresh subprocess with an empty cache, so the peak RSS is that
process's own (``getrusage(RUSAGE_CHILDREN)`` after it exits). The recipe is a next-item GPT-2
recipe with multi-behavior streams, a 5-core filter and leave-one-out, max_length 50.

    python scripts/bench_prepare.py --events 1e6 1e7 --workdir /tmp/prep --plot docs/img/prepare_scale.png
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
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


def prepare(path: Path, workdir: Path, tag: str) -> dict:
    recipe = workdir / f"recipe-{tag}.yaml"
    recipe.write_text(RECIPE.format(tag=tag, path=path))
    cache = workdir / f"cache-{tag}"
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    env = dict(os.environ, BEHAVIOR_LM_CACHE=str(cache), TQDM_DISABLE="1")
    exe = str(Path(sys.executable).with_name("behavior-lm"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([exe, "prepare", str(recipe)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed for {tag}:\n{proc.stderr[-3000:]}")
    info = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"seconds": seconds, "peak_rss_gb": max(peak, before) / 2**20 if peak > before else float("nan"),
            "events": info["prepared"]["events"], "rows": info["rows"], "stderr": proc.stderr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", nargs="+", type=float, default=[1e6])
    parser.add_argument("--workdir", default="/tmp/behavior-lm-prepare-bench")
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    print("| events in file | events prepared | training rows | seconds | peak RSS (GB) | µs per event |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.events:
        n = int(n)
        tag = f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k"
        path = workdir / f"events-{tag}.csv"
        if not path.exists():
            t = time.perf_counter()
            generate(n, path)
            print(f"(generated {path} in {time.perf_counter() - t:.0f} s)", file=sys.stderr)
        r = prepare(path, workdir, tag)
        results.append((n, r))
        print(f"| {n:,} | {r['events']:,} | {r['rows']['train']:,} | {r['seconds']:.1f} | "
              f"{r['peak_rss_gb']:.2f} | {r['seconds'] / n * 1e6:.1f} |", flush=True)
    if args.plot:
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
