"""Training speed side by side with RecBole 1.2.1 and RecTools 0.19.0, same core, threads and sizes.

Usage (the peers live in their own venvs: RecBole needs numpy<2):
    python3 -m venv /work/peers/recbole && /work/peers/recbole/bin/pip install torch==2.13.0 "numpy<2" recbole==1.2.1
    python3 -m venv /work/peers/rectools && /work/peers/rectools/bin/pip install torch==2.13.0 "rectools[torch]==0.19.0"
    python scripts/bench_peers.py --recbole /work/peers/recbole/bin/python \\
        --rectools /work/peers/rectools/bin/python --core 1 --steps 20 --repeats 3

Every row runs in a fresh subprocess of its own venv, pinned to one core (``--core``) with one
thread, on MovieLens-100K as the RecBole wheel bundles it (``ml-100k.inter``: the file
behavior-lm's own ``ml-100k`` reads), no k-core, leave-one-out, maximum length 50, width 64, 2
blocks of 2 heads (MLP 256) or one recurrent layer, dropout 0.2, batch 128, full-softmax
cross-entropy, Adam(W) at 1e-3. Each library builds its training batches its own way, which is
the point of the comparison:

- behavior-lm: windows of up to 50 events, a label at every position (``bench_speed.measure``);
- RecBole (``SASRec``, ``GRU4Rec``, ``loss_type: CE``): one sample per prefix, one label per sample;
- RecTools (``SASRecModel``, ``loss: softmax``): each user's last 51 events, a label at every position.

So the unit is the **training target** (a position whose next item is in the loss): targets/s over
``--steps`` optimizer steps after 3 warm-up steps, the forward, backward and optimizer step only
(batches are built before the clock starts, for every library), and s/epoch = step time x the
library's steps per epoch. The median of ``--repeats`` runs per row is printed; rows alternate
between libraries so that load drifts hit all of them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SIZE = {"hidden": 64, "layers": 2, "heads": 2, "inner": 64, "max_length": 50, "dropout": 0.2,
        "batch": 128, "lr": 1e-3}
ROWS = (("behavior-lm", "gpt2"), ("behavior-lm", "llama"), ("behavior-lm", "gru"),
        ("behavior-lm", "gpt2+bf16"), ("behavior-lm", "llama+bf16"), ("behavior-lm", "gru+bf16"),
        ("recbole", "SASRec"), ("recbole", "GRU4Rec"), ("rectools", "SASRecModel"))
# torch.compile (``torch_compile: true``) rows, measured on request: ``--rows behavior-lm:gpt2+bf16+compile``
COMPILED = (("behavior-lm", "gpt2+compile"), ("behavior-lm", "llama+compile"), ("behavior-lm", "gru+compile"),
            ("behavior-lm", "gpt2+bf16+compile"), ("behavior-lm", "llama+bf16+compile"),
            ("behavior-lm", "gru+bf16+compile"))
# torch's own dropout masks (``fast_dropout: false``), the A/B of behavior_lm/models/fast_dropout.py
TORCHDROP = tuple(("behavior-lm", f"{m}+torchdrop") for m in ("gpt2", "llama", "gru", "gpt2+bf16", "llama+bf16",
                                                              "gru+bf16"))
# transformers' own Llama RMSNorm and rotary embedding (``fused_llama: false``), the A/B of
# behavior_lm/models/fused_llama.py
UNFUSED = (("behavior-lm", "llama+unfused"), ("behavior-lm", "llama+bf16+unfused"))


def pin(core: int | None) -> None:
    """One core and one thread for this process, before torch is imported."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    if core is not None:
        os.sched_setaffinity(0, {core})


def timed_steps(step, batches: list, targets, steps: int) -> tuple[float, int]:
    """Seconds and targets of ``steps`` optimizer steps after 3 warm-up steps."""
    for batch in batches[:3]:
        step(batch)
    start = time.perf_counter()
    n = 0
    for batch in batches[3:3 + steps]:
        n += targets(batch)
        step(batch)
    return time.perf_counter() - start, n


def ml100k_inter() -> Path:
    """The RecBole wheel's ``ml-100k.inter`` (any venv with recbole, else behavior-lm's cache copy)."""
    try:
        import recbole  # noqa: F401

        return Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    except ImportError:
        return Path(os.environ["BENCH_ML100K_INTER"])


def ours(name: str, steps: int, profile: int = 0) -> dict:
    """``MODEL`` (the default fused float32 loss, the default fast dropout masks), with ``+bf16``
    (``bf16: true``), ``+compile`` (``torch_compile: true``) and/or ``+torchdrop`` (``fast_dropout:
    false``: torch's own dropout masks) and/or ``+unfused`` (``fused_llama: false``: transformers' own
    RMSNorm and rotary embedding). ``profile > 0``: the timed steps under ``torch.profiler``
    (``bench_speed.measure``), its top operators returned as ``profile``."""
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE.parents[1]))
    import torch

    from bench_speed import measure

    torch.set_num_threads(1)
    model, *options = name.split("+")
    overrides = ["--bf16", str("bf16" in options).lower(), "--torch_compile", str("compile" in options).lower(),
                 "--fast_dropout", str("torchdrop" not in options).lower(),
                 "--fused_llama", str("unfused" not in options).lower(), "--min_user_events", "0", "--min_item_events", "0", "--max_length", str(SIZE["max_length"] + 1),
                 "--hidden_size", str(SIZE["hidden"]), "--num_heads", str(SIZE["heads"]),
                 "--intermediate_size", str(SIZE["inner"]), "--per_device_train_batch_size", str(SIZE["batch"]),
                 "--learning_rate", str(SIZE["lr"]), "--num_layers", str(1 if model == "gru" else SIZE["layers"]),
                 "--dropout", str(0.0 if model == "llama" else SIZE["dropout"])]
    if model == "llama":
        overrides += ["--attention_dropout", str(SIZE["dropout"])]
    recipe = HERE.parents[1] / "recipes" / "quickstart" / "gpt2-ml-100k.yaml"
    row = measure("ml-100k", model, steps, 128, overrides=overrides, recipe=recipe, evaluate=False, profile=profile)
    return {"targets_per_s": row["targets_per_s"], "s_per_epoch": row["s_per_epoch"],
            "targets_per_epoch": row["targets_per_epoch"], "params": row["params"],
            **({"profile": row["profile"]} if profile else {})}


def recbole(model: str, steps: int) -> dict:
    import logging
    import tempfile

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    torch.set_num_threads(1)
    logging.disable(logging.CRITICAL)
    inter = ml100k_inter()
    config = Config(model=model, dataset="ml-100k", config_dict={
        "data_path": str(inter.parent.parent), "checkpoint_dir": tempfile.mkdtemp(), "device": "cpu",
        "use_gpu": False, "show_progress": False, "worker": 0, "seed": 0, "reproducibility": True,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "MAX_ITEM_LIST_LENGTH": SIZE["max_length"], "loss_type": "CE", "train_neg_sample_args": None,
        "train_batch_size": SIZE["batch"], "learning_rate": SIZE["lr"],
        "hidden_size": SIZE["hidden"], "embedding_size": SIZE["hidden"], "inner_size": SIZE["inner"],
        "n_layers": SIZE["layers"] if model == "SASRec" else 1, "num_layers": 1, "n_heads": SIZE["heads"],
        "hidden_dropout_prob": SIZE["dropout"], "attn_dropout_prob": SIZE["dropout"],
        "dropout_prob": SIZE["dropout"]})
    init_seed(0, True)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    net = get_model(model)(config, train_data._dataset)
    optimizer = torch.optim.Adam(net.parameters(), lr=SIZE["lr"])
    net.train()

    def step(interaction) -> None:
        loss = net.calculate_loss(interaction)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    batches = []
    for interaction in train_data:
        batches.append(interaction)
        if len(batches) >= steps + 3:
            break
    seconds, n = timed_steps(step, batches, len, steps)
    per_epoch = len(train_data.dataset)
    return {"targets_per_s": n / seconds, "s_per_epoch": seconds / n * per_epoch, "targets_per_epoch": per_epoch,
            "params": sum(p.numel() for p in net.parameters())}


def rectools(model: str, steps: int) -> dict:
    import pandas as pd
    import torch
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    torch.set_num_threads(1)
    frame = pd.read_csv(ml100k_inter(), sep="\t", header=0, names=["user", "item", "rating", "timestamp"])
    frame = frame.sort_values(["user", "timestamp"], kind="stable")
    last_two = frame.groupby("user").cumcount(ascending=False) < 2  # validation and test items held out
    train = frame[~last_two]
    interactions = pd.DataFrame({Columns.User: train["user"], Columns.Item: train["item"], Columns.Weight: 1.0,
                                 Columns.Datetime: pd.to_datetime(train["timestamp"], unit="s")})
    dataset = Dataset.construct(interactions)
    sasrec = SASRecModel(n_blocks=SIZE["layers"], n_heads=SIZE["heads"], n_factors=SIZE["hidden"],
                         dropout_rate=SIZE["dropout"], session_max_len=SIZE["max_length"], loss="softmax",
                         lr=SIZE["lr"], batch_size=SIZE["batch"], epochs=1, deterministic=True,
                         item_net_block_types=_id_only())
    # The library's own preparation and network, driven step by step as its Lightning module does.
    sasrec._build_model_from_dataset(dataset)  # what its fit() does before handing over to Lightning
    loader = sasrec.data_preparator.get_dataloader_train()
    module = sasrec.lightning_model
    optimizer = module.configure_optimizers()
    module.train()

    def step(batch) -> None:
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    batches = []
    while len(batches) < steps + 3:
        batches.extend(loader)
    seconds, n = timed_steps(step, batches, lambda b: int((b["y"] != 0).sum()), steps)
    per_epoch = sum(int((b["y"] != 0).sum()) for b in loader)
    return {"targets_per_s": n / seconds, "s_per_epoch": seconds / n * per_epoch, "targets_per_epoch": per_epoch,
            "params": sum(p.numel() for p in module.parameters())}


def _id_only():
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    return (IdEmbeddingsItemNet,)


def run_one(python: str, library: str, model: str, steps: int, core: int | None, profile: int = 0) -> dict | None:
    command = [python, str(HERE), "--one", library, model, "--steps", str(steps)]
    if profile and library == "behavior-lm":
        command += ["--profile", str(profile)]
    if core is not None:
        command += ["--core", str(core)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"{library} {model}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recbole", help="python of a venv with recbole==1.2.1")
    parser.add_argument("--rectools", help="python of a venv with rectools[torch]==0.19.0")
    parser.add_argument("--core", type=int, default=None, help="pin every row to this CPU core")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--rows", nargs="+", metavar="LIBRARY:MODEL",
                        help="only these rows (default: every row but the torch.compile ones), e.g. "
                             "behavior-lm:gpt2 behavior-lm:gpt2+bf16+compile rectools:SASRecModel")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="behavior-lm rows: profile the timed steps and print the N operators with the most "
                             "self CPU time (the profiler's overhead is in those rows' targets/s)")
    parser.add_argument("--one", nargs=2, metavar=("LIBRARY", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        pin(args.core)
        library, model = args.one
        if library == "behavior-lm":
            row = ours(model, args.steps, args.profile)
        else:
            row = {"recbole": recbole, "rectools": rectools}[library](model, args.steps)
        print(json.dumps(row))
        return
    pythons = {"behavior-lm": sys.executable, "recbole": args.recbole, "rectools": args.rectools}
    if args.rectools and not args.recbole:
        parser.error("--rectools reads ml-100k.inter from the RecBole venv: pass --recbole too")
    if args.recbole:
        os.environ["BENCH_ML100K_INTER"] = subprocess.run(
            [args.recbole, "-c", "import recbole, pathlib; print(pathlib.Path(recbole.__file__).parent / "
             "'dataset_example' / 'ml-100k' / 'ml-100k.inter')"], capture_output=True, text=True,
            check=True).stdout.strip()
    rows = ROWS if not args.rows else [tuple(r.split(":", 1)) for r in args.rows]
    unknown = [r for r in rows if r not in ROWS + COMPILED + TORCHDROP + UNFUSED]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {[':'.join(r) for r in ROWS + COMPILED + TORCHDROP + UNFUSED]}")
    samples: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for library, model in rows:
            if not pythons[library]:
                continue
            row = run_one(pythons[library], library, model, args.steps, args.core, args.profile)
            if row:
                samples.setdefault((library, model), []).append(row)
                print(f"{library} {model}: {row['targets_per_s']:.0f} targets/s", file=sys.stderr)
                if "profile" in row:
                    print(f"\n{library} {model}, {args.steps} steps under torch.profiler\n{row['profile']}")
    table = []
    for (library, model), rows in samples.items():
        table.append({"library": library, "model": model, "params": rows[0]["params"], "runs": len(rows),
                      "targets_per_s": statistics.median(r["targets_per_s"] for r in rows),
                      "s_per_epoch": statistics.median(r["s_per_epoch"] for r in rows),
                      "targets_per_epoch": rows[0]["targets_per_epoch"]})
    base = {r["model"]: r["targets_per_s"] for r in table if r["library"] != "behavior-lm"}
    print(f"\n1 thread{'' if args.core is None else f', core {args.core}'}, {args.steps} timed steps, "
          f"median of {args.repeats}\n")
    print("| library | model | params | targets/epoch | targets/s | s/epoch | x RecBole SASRec | x RecBole GRU4Rec "
          "| x RecTools SASRec |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        ratios = [f"{r['targets_per_s'] / base[m]:.1f}x" if m in base else "" for m in
                  ("SASRec", "GRU4Rec", "SASRecModel")]
        print(f"| {r['library']} | {r['model']} | {r['params'] / 1e6:.2f}M | {r['targets_per_epoch']:,.0f} | "
              f"{r['targets_per_s']:,.0f} | {r['s_per_epoch']:.1f} | " + " | ".join(ratios) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
