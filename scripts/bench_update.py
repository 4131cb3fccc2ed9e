"""Temporal benchmark of `behavior-lm update`: no update vs incremental updates vs full retrains.

Usage:
    python scripts/bench_update.py [--recipe recipes/quickstart/gpt2-ml-100k.yaml] [--dataset ml-100k]
        [--chunks 5] [--base_fraction 0.8] [--epochs 30] [--update_epochs 3] [--out runs/bench/update]

The log's events in global time order (ML-100K by default; Taobao with its recipe): the first
``base_fraction`` train the base model, the rest arrive in ``chunks`` equal chunks. Before chunk k
is trained on, three models predict every event of chunk k from everything its user did before it
(earlier events of the chunk are context, not training; ``--max_examples`` of them, a fixed
sample). Items are ranked over the catalogue (seen items filtered where the run filtered them)
through ``pipeline("next-behavior")`` on raw (item, behavior) events, so models with different
vocabularies are scored alike:

- (a) no update: the base model;
- (b) incremental: the base model updated with chunks 1..k-1, one ``update_run`` per chunk;
- (c) full retrain: a new model trained with the recipe on everything before chunk k.

A target item that first appears in chunk k is a miss for every model; one that first appeared in
an earlier chunk is a miss for (a) only. A user's first event ever has no history and is left out.
Prints a table, writes ``results.json`` and a PNG (``--plot``). The event files are written under
``--out`` (MovieLens may not be redistributed: keep them out of the repository).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behavior_lm.data.sources import load_events  # noqa: E402
from behavior_lm.reporting import new_figure  # noqa: E402
from behavior_lm.training.recipes import parse_recipe  # noqa: E402
from behavior_lm.training.run import train  # noqa: E402
from behavior_lm.update import UpdateSettings, update_run  # noqa: E402


def write_csv(path: Path, rows: list[tuple[str, str, int, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "timestamp", "behavior"])
        w.writerows(rows)
    return path


def train_on(recipe: str, data: Path, out: Path, epochs: int, label: str) -> tuple[Path, float]:
    start = time.time()
    if (out / "metrics.json").is_file():        # reused: its own training time, as it was measured
        return out, json.loads((out / "metrics.json").read_text())["train"]["seconds"]
    args = parse_recipe(recipe, ["--dataset", label, "--data_path", str(data), "--data_format", "csv",
                                 "--output_dir", str(out), "--num_train_epochs", str(epochs),
                                 "--disable_tqdm", "true", "--overwrite_output_dir", "true"])
    train(*args)
    return out, time.time() - start


def score(run: Path, examples: list[tuple[list[str], str]], k: int = 10) -> dict[str, float]:
    """HR@k / NDCG@k of the target events, ranked by the run's pipeline (seen items filtered)."""
    from transformers import pipeline

    pipe = pipeline("next-behavior", model=str(run))
    tops = pipe([h for h, _ in examples], top_k=k, batch_size=64)   # seen filtered as the run was
    hits, gains = [], []
    for (_, target), top in zip(examples, tops):
        items = [r["item"] for r in top]
        rank = items.index(target) if target in items else None
        hits.append(rank is not None)
        gains.append(0.0 if rank is None else 1.0 / math.log2(rank + 2))
    return {"hr@10": float(np.mean(hits)), "ndcg@10": float(np.mean(gains)), "events": len(examples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/quickstart/gpt2-ml-100k.yaml")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--chunks", type=int, default=5)
    ap.add_argument("--base_fraction", type=float, default=0.8)
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the base model and of each retrain")
    ap.add_argument("--update_epochs", type=float, default=3.0)
    ap.add_argument("--update_learning_rate", type=float, default=None, help="default: update's (a fifth of the run's)")
    ap.add_argument("--max_examples", type=int, default=2000, help="events scored per chunk (a fixed sample)")
    ap.add_argument("--out", default="runs/bench/update")
    ap.add_argument("--plot", default=None, help="PNG path for the figure")
    ap.add_argument("--replot", nargs="+", default=None, metavar="LABEL=RESULTS_JSON",
                    help="only draw --plot from earlier results.json files (one incremental line each)")
    args = ap.parse_args()
    if args.replot:
        replot(args.replot, args.plot or "update.png")
        return
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("behavior_lm").setLevel(logging.ERROR)
    out = Path(args.out)

    table = load_events(args.dataset).table.sort_by([("timestamp", "ascending"), ("line", "ascending")])
    rows = list(zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(),
                    table.column("timestamp").to_pylist(), table.column("behavior").to_pylist()))
    cut = int(len(rows) * args.base_fraction)
    bounds = np.linspace(cut, len(rows), args.chunks + 1).astype(int)
    chunks = [rows[bounds[i]:bounds[i + 1]] for i in range(args.chunks)]
    base_csv = write_csv(out / "data" / "base.csv", rows[:cut])
    chunk_csvs = [write_csv(out / "data" / f"chunk{i + 1}.csv", c) for i, c in enumerate(chunks)]
    print(f"{len(rows)} events; base {cut}; chunks of {[len(c) for c in chunks]}")

    base, base_s = train_on(args.recipe, base_csv, out / "runs" / "base", args.epochs, "t-base")
    incremental, retrained = base, base
    results = []
    for k, chunk in enumerate(chunks, start=1):
        before = rows[: bounds[k - 1]]
        history: dict[str, list[tuple[str, str]]] = {}
        for user, item, _, behavior in before:
            history.setdefault(user, []).append((item, behavior))
        # every event of the chunk, predicted from everything its user did before it (events of the
        # chunk included as context: they arrived, but no model has trained on them yet)
        examples, cold_users = [], set()
        for user, item, _, behavior in chunk:
            past = history.setdefault(user, [])
            if past:
                examples.append((list(past), item))
            elif user not in cold_users:
                cold_users.add(user)
            past.append((item, behavior))
        if args.max_examples and len(examples) > args.max_examples:
            pick = np.random.default_rng(k).choice(len(examples), args.max_examples, replace=False)
            examples = [examples[i] for i in sorted(pick)]
        seen_items = {item for _, item, _, _ in before}
        step = {"chunk": k, "events": len(examples), "cold_users": len(cold_users),
                "targets_never_seen_before": sum(t not in seen_items for _, t in examples)}
        for name, run in (("no update", base), ("incremental", incremental), ("full retrain", retrained)):
            step[name] = score(run, examples)
        results.append(step)
        print(json.dumps(step))
        if k == len(chunks):
            break
        start = time.time()
        incremental = update_run(incremental, chunk_csvs[k - 1], out / "runs" / f"incremental-{k}",
                                 UpdateSettings(data_format="csv", holdout=False, num_train_epochs=args.update_epochs,
                                                learning_rate=args.update_learning_rate), overwrite=True)
        step["incremental_seconds"] = round(time.time() - start, 1)
        upto = write_csv(out / "data" / f"upto{k}.csv", rows[: bounds[k]])
        retrained, seconds = train_on(args.recipe, upto, out / "runs" / f"retrain-{k}", args.epochs, f"t-upto{k}")
        step["retrain_seconds"] = round(seconds, 1)
    summary = {"dataset": args.dataset, "recipe": args.recipe, "base_seconds": round(base_s, 1),
               "epochs": args.epochs, "update_epochs": args.update_epochs,
               "update_learning_rate": args.update_learning_rate, "steps": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2))

    print("\n| chunk | events scored | new targets | no update | incremental | full retrain | update s | retrain s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in results:
        print(f"| {s['chunk']} | {s['events']} | {s['targets_never_seen_before']} | "
              f"{s['no update']['ndcg@10']:.4f} | {s['incremental']['ndcg@10']:.4f} | "
              f"{s['full retrain']['ndcg@10']:.4f} | {s.get('incremental_seconds', '')} | {s.get('retrain_seconds', '')} |")
    if args.plot:
        plot({"incremental": results}, args.dataset, args.plot)


def plot(variants: dict[str, list[dict]], dataset: str, path: str) -> None:
    """Quality per chunk (no update and full retrain from the first variant; one incremental line
    per variant) and the cost of keeping up (first variant's update vs retrain seconds)."""
    first = next(iter(variants.values()))
    fig = new_figure(figsize=(10, 4), dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
    xs = [s["chunk"] for s in first]
    ax1.plot(xs, [s["no update"]["ndcg@10"] for s in first], "o-", label="no update")
    for n, (label, steps) in enumerate(variants.items()):
        ax1.plot([s["chunk"] for s in steps], [s["incremental"]["ndcg@10"] for s in steps],
                 ["s-", "s--", "s:", "d-."][n % 4], label=label)
    ax1.plot(xs, [s["full retrain"]["ndcg@10"] for s in first], "^-", label="full retrain")
    ax1.set_xlabel("chunk predicted (time order)")
    ax1.set_ylabel("NDCG@10 of the chunk's events")
    ax1.set_title(f"{dataset}: quality over time")
    ax1.legend(fontsize=8)
    steps = [s for s in first if "incremental_seconds" in s]
    width = 0.38
    pos = np.arange(len(steps))
    ax2.bar(pos - width / 2, [s["incremental_seconds"] for s in steps], width, label="incremental update")
    ax2.bar(pos + width / 2, [s["retrain_seconds"] for s in steps], width, label="full retrain")
    ax2.set_xticks(pos, [f"after {s['chunk']}" for s in steps])
    ax2.set_ylabel("wall seconds (2 CPU cores)")
    ax2.set_title("cost of keeping up")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}")


def replot(pairs: list[str], path: str) -> None:
    """``--replot LABEL=results.json ...``: one figure from earlier runs of this script (e.g.
    update settings compared on the same base and retrains)."""
    variants, dataset = {}, ""
    for pair in pairs:
        label, _, file = pair.partition("=")
        summary = json.loads(Path(file).read_text())
        variants[label], dataset = summary["steps"], summary["dataset"]
    plot(variants, dataset, path)

if __name__ == "__main__":
    main()
