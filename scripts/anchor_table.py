"""Print finished runs next to the published anchors of ../shared/datasets/ANCHORS.md.

Usage:
    python scripts/anchor_table.py runs/gpt2-ml-1m runs/gpt2-beauty [...] [--plot anchors.png]

With ``--plot`` it also draws test NDCG@10 per dataset as bars: our runs (with their training
minutes), our floors on the same split, and the published anchors. ``--curves`` draws each run's
validation NDCG@10 by epoch, which shows which runs were still improving when they stopped.

The anchor values below are copied from ANCHORS.md (section A, full ranking, leave-one-out,
seen items filtered) so the comparison states its source; they are references, not our results.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ANCHORS = {
    "ml-1m": [("SASRec+ (full CE), Dross RecSys'23", 0.3152, 0.1821),
              ("BERT4Rec, Dross RecSys'23", 0.2843, 0.1537),
              ("GRU4Rec (CE), Dross via HSTU README", 0.2811, 0.1648),
              ("SASRec (BCE, 1 neg), Dross", 0.2500, 0.1341)],
    "beauty": [("SASRec (BCE), S3-Rec paper", 0.0605, 0.0318),
               ("SASRec CE, RecBole user runs", 0.083, 0.0415),
               ("SASRec, genrec reproduction", 0.0688, 0.0375),
               ("SASRec, tiger-cf reproduction", 0.05165, 0.02718),
               ("BERT4Rec, S3-Rec paper", 0.0347, 0.0170),
               ("GRU4Rec, S3-Rec paper", 0.0283, 0.0137),
               ("PopRec, S3-Rec paper", 0.0152, 0.0068)],
}


def load(run_dirs: list[str]) -> list[tuple[Path, dict]]:
    return [(Path(r), json.loads((Path(r) / "metrics.json").read_text())) for r in run_dirs]


def main(runs: list[tuple[Path, dict]]) -> None:
    print("| dataset | model | HR@10 | NDCG@10 | epochs (best) | train minutes | stopped by | source |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for ds in dict.fromkeys(m["data"]["dataset"] for _, m in runs):
        floors: dict[str, tuple[dict, Path]] = {}    # same split, same floors: print each once
        for run, m in runs:
            if m["data"]["dataset"] != ds:
                continue
            t = m["train"]
            print(f"| {ds} | behavior-lm {m['model_type']} ({t['parameters'] / 1e6:.2f}M) | "
                  f"{m['test']['hr@10']:.4f} | {m['test']['ndcg@10']:.4f} | "
                  f"{t['epochs_run']:g} ({t['best_epoch']:g}) | {t['seconds'] / 60:.1f} | "
                  f"{t.get('stopped_by', '')} | {run} |")
            for name, pm in m["baselines"]["test"].items():
                floors.setdefault(name, (pm, run))
        for name, (pm, run) in floors.items():
            print(f"| {ds} | {name} floor (ours) | {pm['hr@10']:.4f} | {pm['ndcg@10']:.4f} | | | | {run} |")
        for name, hr, nd in ANCHORS.get(ds, []):
            print(f"| {ds} | {name} | {hr:.4f} | {nd:.4f} | | | | ANCHORS.md |")


def plot(runs: list[tuple[Path, dict]], path: Path, labels: dict[str, str]) -> None:
    """One panel per dataset: horizontal NDCG@10 bars, ours coloured, floors grey, anchors hatched."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(m["data"]["dataset"] for _, m in runs))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        rows: list[tuple[str, float, str]] = []
        floors: dict[str, float] = {}
        for run, m in runs:
            if m["data"]["dataset"] != ds:
                continue
            t = m["train"]
            rows.append((labels.get(str(run), f"{run.name} ({t['seconds'] / 60:.0f} min, {t['epochs_run']:g} ep)"),
                         m["test"]["ndcg@10"], "ours"))
            for name, pm in m["baselines"]["test"].items():
                floors.setdefault(name, pm["ndcg@10"])
        rows += [(f"{name} floor", v, "floor") for name, v in floors.items()]
        rows += [(name, nd, "anchor") for name, _, nd in ANCHORS.get(ds, [])]
        style = {"ours": dict(color="tab:blue"), "floor": dict(color="0.6"),
                 "anchor": dict(color="white", edgecolor="tab:orange", hatch="///")}
        for i, (label, value, kind) in enumerate(rows):
            ax.barh(i, value, **style[kind])
            ax.text(value, i, f" {value:.4f}", va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("test NDCG@10 (full ranking, seen filtered)")
        ax.set_title(f"{ds}: ours (blue), our floors (grey), published (hatched)", fontsize=9)
        ax.set_xlim(0, max(r[1] for r in rows) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves(runs: list[tuple[Path, dict]], path: Path, labels: dict[str, str]) -> None:
    """One panel per dataset: validation NDCG@10 by epoch for every run (from log_history.json)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(m["data"]["dataset"] for _, m in runs))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for run, m in runs:
            if m["data"]["dataset"] != ds:
                continue
            history = json.loads((run / "log_history.json").read_text())
            points = [(h["epoch"], h["eval_ndcg@10"]) for h in history if "eval_ndcg@10" in h]
            ax.plot(*zip(*points), marker=".",
                    label=labels.get(str(run), f"{run.name} ({m['train']['seconds'] / 60:.0f} min)"))
        for name, pm in next(m for _, m in runs if m["data"]["dataset"] == ds)["baselines"]["test"].items():
            ax.axhline(pm["ndcg@10"], color="0.5", linestyle="--", linewidth=0.8)
            ax.annotate(f"{name} floor (test)", (0, pm["ndcg@10"]), fontsize=7, color="0.4",
                        xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation NDCG@10")
        ax.set_title(ds)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories")
    parser.add_argument("--plot", type=Path, help="also write a PNG bar chart here")
    parser.add_argument("--curves", type=Path, help="also write validation curves (PNG) here")
    parser.add_argument("--label", action="append", default=[], metavar="RUN=TEXT",
                        help="chart label for one run, e.g. where its recorded minutes need a note")
    args = parser.parse_args()
    loaded = load(args.runs)
    main(loaded)
    labels = dict(item.split("=", 1) for item in args.label)
    if args.plot:
        plot(loaded, args.plot, labels)
    if args.curves:
        curves(loaded, args.curves, labels)
