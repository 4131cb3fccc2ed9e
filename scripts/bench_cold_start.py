"""Cold-start benchmark: ID-only vs text-initialised item embeddings on warm and cold targets.

Usage:
    python scripts/bench_cold_start.py [--recipe recipes/quickstart/gpt2-ml-100k.yaml]
        [--cold_items 0.1] [--variants id,trainable,frozen] [--out runs/bench/cold-start]
        [--plot docs/img/cold_start_ml-100k.png] [-- extra recipe flags, e.g. --max_train_minutes 20]

Each variant trains the recipe under the cold-start protocol (``cold_items``: that share of the
items, fixed seed, is removed from every training sequence and from the training softmax, and
kept only as test targets), the same split for all; ``trainable`` and ``frozen`` compute the item
rows from the dataset's item text (``item_text: dataset``, all-MiniLM-L6-v2). Reports test
NDCG@10 / HR@10 on all users, on users whose target is warm and on users whose target is cold,
with the popularity floor for reference, as a Markdown table and a PNG. A finished variant's run
directory is reused (delete it to retrain).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behavior_lm.reporting import new_figure  # noqa: E402
from behavior_lm.training.recipes import parse_recipe  # noqa: E402
from behavior_lm.training.run import train  # noqa: E402

VARIANTS = {"id": [], "trainable": ["--item_text", "dataset", "--item_text_mode", "trainable"],
            "frozen": ["--item_text", "dataset", "--item_text_mode", "frozen"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/quickstart/gpt2-ml-100k.yaml")
    ap.add_argument("--cold_items", type=float, default=0.1)
    ap.add_argument("--variants", default="id,trainable,frozen")
    ap.add_argument("--item_text_fields", default=None, help="e.g. title,year,genres (default: the recipe's)")
    ap.add_argument("--out", default="runs/bench/cold-start")
    ap.add_argument("--plot", default=None)
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = Path(args.out)
    results = {}
    for name in args.variants.split(","):
        run = out / name
        if not (run / "metrics.json").is_file():
            flags = ["--output_dir", str(run), "--cold_items", str(args.cold_items), "--disable_tqdm", "true",
                     "--overwrite_output_dir", "true", *VARIANTS[name], *extra]
            if name != "id" and args.item_text_fields:
                flags += ["--item_text_fields", args.item_text_fields]
            train(*parse_recipe(args.recipe, flags))
        m = json.loads((run / "metrics.json").read_text())
        results[name] = {part: {"ndcg@10": m[part]["ndcg@10"], "hr@10": m[part]["hr@10"],
                                "users": m[part].get("num_examples")}
                         for part in ("test", "test_warm", "test_cold")}
        results[name]["popularity"] = {part: m["baselines"][part].get("popularity", {}).get("ndcg@10")
                                       for part in ("test", "test_warm", "test_cold")}
        results[name]["train"] = {k: m["train"][k] for k in ("seconds", "epochs_run", "best_epoch", "stopped_by")}
    (out / "results.json").write_text(json.dumps({"recipe": args.recipe, "cold_items": args.cold_items,
                                                  "extra": extra, "results": results}, indent=2))
    print("\n| item rows | all NDCG@10 / HR@10 | warm targets | cold targets | training |")
    print("|---|---:|---:|---:|---|")
    for name, r in results.items():
        cells = [f"{r[p]['ndcg@10']:.4f} / {r[p]['hr@10']:.4f}" for p in ("test", "test_warm", "test_cold")]
        t = r["train"]
        print(f"| {name} | {' | '.join(cells)} | {t['epochs_run']:g} epochs, {t['seconds']:.0f} s, {t['stopped_by']} |")
    first = next(iter(results.values()))
    print(f"\nusers: all {first['test']['users']}, warm {first['test_warm']['users']}, "
          f"cold {first['test_cold']['users']}; popularity floor NDCG@10: "
          + ", ".join(f"{p} {v:.4f}" for p, v in first["popularity"].items() if v is not None))
    if args.plot:
        import numpy as np

        fig = new_figure(figsize=(7, 4), dpi=110)
        ax = fig.subplots()
        parts = ("test", "test_warm", "test_cold")
        width = 0.8 / len(results)
        for n, (name, r) in enumerate(results.items()):
            ax.bar(np.arange(3) + n * width, [r[p]["ndcg@10"] for p in parts], width, label=name)
        ax.set_xticks(np.arange(3) + width * (len(results) - 1) / 2, ["all users", "warm targets", "cold targets"])
        ax.set_ylabel("test NDCG@10")
        ax.set_title(f"cold start ({args.cold_items:.0%} of items never trained): {Path(args.recipe).stem}")
        ax.legend(title="item rows", fontsize=8)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
