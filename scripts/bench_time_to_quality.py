"""Wall time to a validation NDCG@10, behavior-lm against RecTools' SASRec, on one validation basis.

Usage (RecTools in its own venv, as for ``scripts/bench_peers.py``):
    python3 -m venv /work/peers/rectools && /work/peers/rectools/bin/pip install torch==2.13.0 "rectools[torch]==0.19.0"
    BEHAVIOR_LM_DATA=../shared/datasets python scripts/bench_time_to_quality.py \\
        --rectools /work/peers/rectools/bin/python --core 1 --epochs 200 --json runs/time_to_quality.json

``bench_peers.py`` times training steps; this script times whole runs to a quality. Both libraries
train on exactly the same events and are scored on exactly the same validation targets:

1. behavior-lm prepares MovieLens-100K (no k-core, leave-one-out, the sizes of ``bench_peers.SIZE``)
   and writes, per user, the training events in its own order and the validation item.
2. RecTools' ``SASRecModel`` (width 64, 2 blocks of 2 heads, dropout 0.2, session length 50,
   full-softmax loss, Adam 1e-3, batch 128, its own Lightning trainer) trains on those events for
   ``--epochs`` epochs. A Lightning callback stamps the end of every epoch and keeps a copy of the
   weights (the copy's time is taken off the clock); afterwards every copy is scored with the
   library's own ``recommend(k=10, filter_viewed=True)`` against the validation items.
3. behavior-lm trains the same size (``scripts/bench_peers.py`` overrides on the quickstart recipe,
   random batches, validation every epoch, early stopping with patience 20) through
   ``behavior_lm.training.run.train``; a ``TrainerCallback`` stamps epoch ends and evaluation ends,
   so the clock holds training (steps, data, checkpoint writes) and not validation.

Each library runs in a fresh process pinned to ``--core`` with one thread, one after the other.
Printed: each library's best validation NDCG@10 and the training seconds it took to get there, and
the training seconds behavior-lm needed to first reach RecTools' best. One basis: both rank the
validation item among the catalogue with the user's training items removed; RecTools' catalogue is
the items of the training events, behavior-lm's the tokenizer's items (the same set here, since
every ML-100K item occurs in some user's training events or is counted as a miss by both).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from bench_peers import SIZE, pin  # noqa: E402

RECIPE = HERE.parents[1] / "recipes" / "quickstart" / "gpt2-ml-100k.yaml"


def equal_size(model: str) -> list[str]:
    """behavior-lm recipe flags for the size ``bench_peers.py`` compares at."""
    flags = ["--min_user_events", "0", "--min_item_events", "0", "--max_length", str(SIZE["max_length"] + 1),
             "--hidden_size", str(SIZE["hidden"]), "--num_layers", str(SIZE["layers"]),
             "--num_heads", str(SIZE["heads"]), "--intermediate_size", str(SIZE["inner"]),
             "--per_device_train_batch_size", str(SIZE["batch"]), "--learning_rate", str(SIZE["lr"]),
             "--model_type", model, "--dropout", str(0.0 if model == "llama" else SIZE["dropout"])]
    if model == "llama":
        flags += ["--attention_dropout", str(SIZE["dropout"])]
    return flags


def export_split(path: Path) -> None:
    """Every user's training events (behavior-lm's order) and validation item, as raw item ids."""
    from behavior_lm.data.pipeline import prepare_data
    from behavior_lm.models.auto import template_for
    from behavior_lm.training.recipes import parse_recipe

    # a window longer than any ML-100K user (737 events): the validation rows then hold whole histories
    data_args, _, _, _ = parse_recipe(RECIPE, [*equal_size("gpt2"), "--max_length", "1000",
                                               "--output_dir", "/tmp/ttq-export"])
    data = prepare_data(data_args, template=template_for("gpt2"))
    tokens = data.tokenizer.convert_ids_to_tokens
    users = []
    for row in data.datasets["validation"]:
        history = [t.removeprefix("i:") for t in tokens(row["input_ids"]) if t.startswith("i:")]
        users.append({"user": row["user_id"], "train": history,
                      "target": tokens([row["target"]])[0].removeprefix("i:")})
    path.write_text(json.dumps(users))


def ndcg_hr(ranked: dict[str, list[str]], users: list[dict], k: int = 10) -> tuple[float, float]:
    """NDCG@k and HR@k of one held-out item per user, from each user's top-k list."""
    ndcg = hits = 0.0
    for u in users:
        top = ranked.get(u["user"], [])[:k]
        if u["target"] in top:
            hits += 1
            ndcg += 1 / math.log2(top.index(u["target"]) + 2)
    return ndcg / len(users), hits / len(users)


def rectools_run(split: Path, epochs: int) -> dict:
    import copy

    import pandas as pd
    import pytorch_lightning as pl
    import torch
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    from bench_peers import _id_only

    torch.set_num_threads(1)
    users = json.loads(split.read_text())
    rows = [(u["user"], item, i) for u in users for i, item in enumerate(u["train"])]
    frame = pd.DataFrame(rows, columns=[Columns.User, Columns.Item, "position"])
    frame[Columns.Weight] = 1.0
    frame[Columns.Datetime] = pd.Timestamp("2000-01-01") + pd.to_timedelta(frame.pop("position"), unit="s")
    dataset = Dataset.construct(frame)

    class Stamps(pl.Callback):
        """Training seconds at each epoch end (copying the weights is off the clock) and the weights."""

        def __init__(self) -> None:
            self.start = self.off = 0.0
            self.seconds: list[float] = []
            self.states: list[dict] = []

        def on_train_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            now = time.perf_counter()
            self.seconds.append(now - self.start - self.off)
            self.states.append(copy.deepcopy(module.state_dict()))
            self.off += time.perf_counter() - now

    stamps = Stamps()

    def trainer() -> pl.Trainer:
        return pl.Trainer(max_epochs=epochs, min_epochs=epochs, deterministic=True, enable_progress_bar=False,
                          enable_model_summary=False, logger=False, enable_checkpointing=False, devices=1,
                          accelerator="cpu", callbacks=[stamps])

    model = SASRecModel(n_blocks=SIZE["layers"], n_heads=SIZE["heads"], n_factors=SIZE["hidden"],
                        dropout_rate=SIZE["dropout"], session_max_len=SIZE["max_length"], loss="softmax",
                        lr=SIZE["lr"], batch_size=SIZE["batch"], epochs=epochs, deterministic=True,
                        item_net_block_types=_id_only(), get_trainer_func=trainer)
    wall = time.perf_counter()
    model.fit(dataset)
    wall = time.perf_counter() - wall
    # fit() trains a deep copy of the trainer, callbacks included: read the copy's stamps
    stamps = next(c for c in model.fit_trainer.callbacks if isinstance(c, Stamps))
    curve = []
    ids = [u["user"] for u in users]
    for seconds, state in zip(stamps.seconds, stamps.states):
        model.lightning_model.load_state_dict(state)
        model.lightning_model.eval()
        reco = model.recommend(users=ids, dataset=dataset, k=10, filter_viewed=True)
        ranked = reco.sort_values([Columns.User, Columns.Rank]).groupby(Columns.User)[Columns.Item].apply(
            lambda s: [str(x) for x in s]).to_dict()
        ndcg, hr = ndcg_hr({str(u): v for u, v in ranked.items()}, users)
        curve.append({"seconds": seconds, "ndcg@10": ndcg, "hr@10": hr})
    return {"curve": curve, "fit_wall_s": wall}


def ours_run(model: str, epochs: int, patience: int) -> dict:
    import torch
    from transformers import TrainerCallback

    from behavior_lm.training.recipes import parse_recipe
    from behavior_lm.training.run import train

    torch.set_num_threads(1)

    class Stamps(TrainerCallback):
        """Training seconds at each epoch end: validation (epoch end to evaluation end) is off the clock."""

        def __init__(self) -> None:
            self.start = self.off = 0.0
            self.epoch_end = None
            self.seconds: list[float] = []
            self.metrics: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.epoch_end = time.perf_counter()
            self.seconds.append(self.epoch_end - self.start - self.off)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self.epoch_end is not None and len(self.metrics) < len(self.seconds):
                self.off += time.perf_counter() - self.epoch_end
                self.metrics.append(metrics)

    stamps = Stamps()
    out = f"/tmp/ttq-{model}"
    data_args, model_args, training_args, recipe = parse_recipe(RECIPE, [
        *equal_size(model), "--num_train_epochs", str(epochs), "--early_stopping_patience", str(patience),
        "--train_sampling_strategy", "random", "--output_dir", out, "--overwrite_output_dir", "true",
        "--cache", "true"])
    wall = time.perf_counter()
    train(data_args, model_args, training_args, recipe, callbacks=[stamps])
    wall = time.perf_counter() - wall
    curve = [{"seconds": s, "ndcg@10": float(m["eval_ndcg@10"]), "hr@10": float(m["eval_hr@10"])}
             for s, m in zip(stamps.seconds, stamps.metrics)]
    return {"curve": curve, "fit_wall_s": wall}


def summary(name: str, curve: list[dict], bar: float | None = None) -> dict:
    best = max(range(len(curve)), key=lambda i: curve[i]["ndcg@10"])
    row = {"run": name, "epochs": len(curve), "best_epoch": best + 1, "best_ndcg@10": curve[best]["ndcg@10"],
           "best_hr@10": curve[best]["hr@10"], "seconds_to_best": curve[best]["seconds"]}
    if bar is not None:
        reached = next((c["seconds"] for c in curve if c["ndcg@10"] >= bar), None)
        row["seconds_to_peer_best"] = reached
        row["epoch_to_peer_best"] = next((i + 1 for i, c in enumerate(curve) if c["ndcg@10"] >= bar), None)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rectools", help="python of a venv with rectools[torch]==0.19.0")
    parser.add_argument("--core", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=200, help="RecTools' epochs; behavior-lm's cap")
    parser.add_argument("--patience", type=int, default=20, help="behavior-lm's early stopping")
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("LIBRARY", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--split", default="/tmp/ttq-split.json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    split = Path(args.split)
    if not args.one and not args.rectools:
        parser.error("--rectools PYTHON is required")
    if args.one:
        pin(args.core)
        library, model = args.one
        result = (rectools_run(split, args.epochs) if library == "rectools"
                  else ours_run(model, args.epochs, args.patience))
        print("RESULT " + json.dumps(result))
        return
    export_split(split)
    runs = {}
    for library, model, python in [("rectools", "SASRecModel", args.rectools),
                                   *[("behavior-lm", m, sys.executable) for m in args.models]]:
        command = [python, str(HERE), "--one", library, model, "--epochs", str(args.epochs),
                   "--patience", str(args.patience), "--split", str(split)]
        if args.core is not None:
            command += ["--core", str(args.core)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": str(HERE.parent)}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"{library} {model} failed:\n{done.stderr[-3000:]}")
        runs[f"{library} {model}"] = json.loads(lines[-1][len("RESULT "):])
        print(f"{library} {model}: {len(runs[f'{library} {model}']['curve'])} epochs", file=sys.stderr)
    peer = summary("rectools SASRecModel", runs["rectools SASRecModel"]["curve"])
    rows = [peer] + [summary(f"behavior-lm {m}", runs[f"behavior-lm {m}"]["curve"], peer["best_ndcg@10"])
                     for m in args.models]
    print(f"\nML-100K, 1 thread{'' if args.core is None else f', core {args.core}'}; validation NDCG@10 "
          f"on {len(json.loads(split.read_text()))} users; seconds = training only\n")
    print("| run | epochs run | best epoch | best val NDCG@10 | HR@10 | train s to best | "
          "train s to RecTools' best | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        to_peer = r.get("seconds_to_peer_best")
        ratio = f"{peer['seconds_to_best'] / to_peer:.1f}x" if to_peer else ("" if r is peer else "not reached")
        to_peer_text = (f"{to_peer:.0f} (epoch {r['epoch_to_peer_best']})" if to_peer
                        else ("" if r is peer else "not reached"))
        print(f"| {r['run']} | {r['epochs']} | {r['best_epoch']} | {r['best_ndcg@10']:.4f} | {r['best_hr@10']:.4f} "
              f"| {r['seconds_to_best']:.0f} | {to_peer_text} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": rows}, indent=2))


if __name__ == "__main__":
    main()
