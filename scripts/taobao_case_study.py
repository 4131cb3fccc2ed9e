"""The Taobao e-commerce case study: every recipe in recipes/taobao/, one report.

Usage:
    python scripts/taobao_case_study.py [--output_dir runs/taobao] [--only NAME ...] [-- --key value ...]

Trains (or reuses) each recipe's run under ``--output_dir`` and writes ``case_study.md`` there with:
next event (mixture over behaviors, seen items kept) and next buy (given ``<buy>``) ranking tables
with the popularity / Markov / repeat floors; behavior-aware vs behavior-blind vs with time gaps;
the next-behavior-type table (argmax and prior-corrected decisions, floors) and its confusion
matrix; purchase intent (BERT, GRU) and conversion tagging (BERT) with precision-recall curves
and heuristic floors; item category tokens. Extra ``--key value`` flags go
to every recipe (e.g. ``--max_users 80 --num_train_epochs 2`` for a quick slice).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "taobao"
RANKING = ["llama-next-event", "gpt2-next-event", "gru-next-event", "lstm-next-event", "bert4rec-next-event",
           "llama-next-event-blind", "llama-next-event-gaps", "llama-next-event-category", "llama-next-buy"]
INTENT = ["bert-purchase-intent", "gru-purchase-intent"]
CONVERSION = ["bert-conversion-tag"]


def run_recipe(name: str, out: Path, extra: list[str]) -> Path:
    from behavior_lm.cli.main import main

    run = out / name
    if not (run / "metrics.json").is_file():
        start = time.perf_counter()
        code = main(["train", str(RECIPES / f"{name}.yaml"), *extra, "--output_dir", str(run),
                     "--disable_tqdm", "true"])
        if code != 0:
            sys.exit(f"{name} failed (exit {code})")
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return run


def load(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def ranking_table(runs: dict[str, dict], names: list[str]) -> str:
    lines = ["| model | behavior tokens | HR@10 | NDCG@10 | MRR@10 | HR@20 | epochs (best) | train min |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    floors: dict[str, dict] = {}
    for name in names:
        if name not in runs:
            continue
        m = runs[name]
        stream = m["data"].get("stream", {})
        kind = ("yes" if stream.get("behaviors") else "no (blind)") + (
            " + gaps/sessions" if stream.get("time_gaps") else "") + (
            f" + {stream['item_side']} tokens" if stream.get("item_side") else "")
        t = m["test"]
        lines.append(f"| {name} | {kind} | {t['hr@10']:.4f} | {t['ndcg@10']:.4f} | {t['mrr@10']:.4f} | "
                     f"{t['hr@20']:.4f} | {m['train']['epochs_run']:g} ({m['train']['best_epoch']}) | "
                     f"{m['train']['seconds'] / 60:.1f} |")
        for floor, fm in m["baselines"]["test"].items():
            floors.setdefault(floor, fm)
    for floor, t in floors.items():
        lines.append(f"| {floor} (floor) | | {t['hr@10']:.4f} | {t['ndcg@10']:.4f} | {t['mrr@10']:.4f} | "
                     f"{t['hr@20']:.4f} | | |")
    return "\n".join(lines)


def confusion_png(nb: dict, path: Path, title: str) -> Path:
    names = nb["behaviors"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for ax, decision in zip(axes, ("argmax", "prior-corrected")):
        cm = np.asarray(nb[decision]["confusion"], dtype=float)
        share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted next behavior")
        ax.set_ylabel("true next behavior")
        ax.set_title(f"{decision} (row-normalised)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pr_curves_png(runs: dict[str, Path], path: Path, task: str, title: str, xlabel: str) -> Path:
    """Precision-recall curves of each run on its test split, the heuristic floor's curve and the
    positive rate (the curve of a random ranking)."""
    from behavior_lm.data.pipeline import prepare_data
    from behavior_lm.evaluation.run_eval import load_task_model, task_logits
    from behavior_lm.evaluation.task_metrics import _flatten, heuristic_scores, positive_probability
    from behavior_lm.arguments import DataArguments

    def curve(ax, y: np.ndarray, score: np.ndarray, label: str, **style) -> None:
        order = np.argsort(-score, kind="stable")
        y = y[order].astype(bool)
        tp = np.cumsum(y)
        ax.plot(tp / max(y.sum(), 1), tp / np.arange(1, y.size + 1), label=label, **style)

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    y = None
    for name, run in runs.items():
        data_args = DataArguments.of_run(run)
        data = prepare_data(data_args, template="classification")
        logits, labels = task_logits(load_task_model(run, task), data, "test", task)
        logits, y = _flatten(task, logits, labels)
        curve(ax, y, positive_probability(logits), name)
    heuristic = heuristic_scores(task, data.datasets["test"], data.tokenizer, data_args.intent_behavior)
    if heuristic is not None:
        curve(ax, y, heuristic, "heuristic (floor)", ls="--", color="gray")
    ax.axhline(y.mean(), color="gray", ls=":", label=f"positive rate {y.mean():.3f} (random)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def binary_table(runs: dict[str, dict], positive: str) -> str:
    """Model rows and floor rows (majority class, heuristic) of a binary task: argmax metrics,
    the positive class's F1 at a threshold tuned off the test set, ROC-AUC and AP."""
    cols = ["accuracy", "f1_macro", "precision_1", "recall_1", "f1_1", "precision_1_tuned", "recall_1_tuned",
            "f1_1_tuned", "roc_auc", "average_precision"]
    head = ["accuracy", "F1 macro", f"P {positive}", f"R {positive}", f"F1 {positive}",
            f"P {positive} (tuned)", f"R {positive} (tuned)", f"F1 {positive} (tuned)", "ROC-AUC", "AP"]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    floors = {}
    for name, m in runs.items():
        lines.append(f"| {name} | " + " | ".join(f"{m['test'][c]:.4f}" if c in m["test"] else ""
                                                 for c in cols) + " |")
        floors.update(m["baselines"]["test"])
    for name, m in floors.items():
        lines.append(f"| {name} (floor) | " + " | ".join(f"{m[c]:.4f}" if c in m else "" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", default="runs/taobao")
    parser.add_argument("--only", nargs="*", default=None, help="recipe names to run (default: all)")
    args, extra = parser.parse_known_args()
    out = Path(args.output_dir)
    names = [n for n in RANKING + INTENT + CONVERSION if args.only is None or n in args.only]
    runs = {n: run_recipe(n, out, extra) for n in names}
    metrics = {n: load(r) for n, r in runs.items()}
    from behavior_lm.evaluation.next_behavior import next_behavior_table

    parts = ["# Taobao case study", "",
             f"Data: {metrics[names[0]]['data']['prepared']} (after preprocessing).", ""]
    event = [n for n in RANKING if n in metrics and n != "llama-next-buy"]
    if event:
        parts += ["## What will this user do next (last event, any behavior; seen items kept)", "",
                  ranking_table(metrics, event), ""]
    if "llama-next-buy" in metrics:
        parts += ["## What will this user buy next (last buy, ranked given `<buy>`)", "",
                  ranking_table(metrics, ["llama-next-buy"]), ""]
    for n in event:
        if "next_behavior" in metrics[n]:
            nb = metrics[n]["next_behavior"]
            parts += [f"## Next behavior type ({n}, test events)", "",
                      f"Support: {nb['support']}; training prior: "
                      f"{ {k: round(v, 4) for k, v in nb['training_prior'].items()} }; buy average "
                      f"precision over P(buy | history): {nb.get('average_precision_buy', float('nan')):.4f}", "",
                      next_behavior_table(nb), ""]
            if n == "llama-next-event":
                png = confusion_png(nb, out / "next_behavior_confusion.png", f"Next behavior, {n}")
                parts += [f"![confusion]({png.name})", ""]
    intent = {n: metrics[n] for n in INTENT if n in metrics}
    if intent:
        horizon = next(iter(intent.values()))["data"]["split"]["horizon_events"]
        png = pr_curves_png({n: runs[n] for n in intent}, out / "purchase_intent_pr.png", "purchase-intent",
                            "Purchase intent on Taobao, test windows", f"recall (buy within the next {horizon} events)")
        parts += [f"## Purchase intent (buy within the next {horizon} events)", "", binary_table(intent, "buy"),
                  "", f"![precision-recall]({png.name})", ""]
    conversion = {n: metrics[n] for n in CONVERSION if n in metrics}
    if conversion:
        split = next(iter(conversion.values()))["data"]["split"]
        png = pr_curves_png({n: runs[n] for n in conversion}, out / "conversion_tag_pr.png", "conversion-tag",
                            "Conversion tagging on Taobao, test browses",
                            f"recall (browsed item carted/bought within {split['horizon_events']} events)")
        parts += [f"## Conversion tagging (each open browse: carted or bought within the next "
                  f"{split['horizon_events']} events)", "",
                  f"Test: {split['test_tagged_tokens']} tagged browses in {split['test_examples']} histories, "
                  f"{split['test_positive']} convert.", "", binary_table(conversion, "converts"), "",
                  f"![precision-recall]({png.name})", ""]
    (out / "case_study.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
