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
               ("TIGER (semantic ids), paper via genrec README", 0.0648, 0.0384),
               ("TIGER (semantic ids), tiger-cf reproduction", 0.05822, 0.03191),
               ("BERT4Rec, S3-Rec paper", 0.0347, 0.0170),
               ("GRU4Rec, S3-Rec paper", 0.0283, 0.0137),
               ("PopRec, S3-Rec paper", 0.0152, 0.0068)],
}


Run = tuple[Path, dict]                     # run folder, its metrics.json


def load(run_dirs: list[str]) -> list[Run]:
    return [(Path(r), json.loads((Path(r) / "metrics.json").read_text())) for r in run_dirs]


def by_dataset(runs: list[Run]) -> dict[str, tuple[list[Run], dict[str, tuple[dict, Path]]]]:
    """Runs grouped by dataset (first-seen order) with each floor once: runs on one dataset share
    the split, so their floors are the same; the first run that reports a floor is its source."""
    groups: dict[str, tuple[list, dict]] = {}
    for run, m in runs:
        members, floors = groups.setdefault(m["data"]["dataset"], ([], {}))
        members.append((run, m))
        for name, pm in m["baselines"]["test"].items():
            floors.setdefault(name, (pm, run))
    return groups


def label(run: Path, m: dict, labels: dict[str, str], epochs: bool = True) -> str:
    """Chart label: ``--label`` text if given, else the run folder with its minutes (and epochs)."""
    t = m["train"]
    return labels.get(str(run), f"{run.name} ({t['seconds'] / 60:.0f} min"
                      + (f", {t['epochs_run']:g} ep)" if epochs else ")"))


def main(runs: list[Run]) -> None:
    print("| dataset | model | HR@10 | NDCG@10 | epochs (best) | train minutes | stopped by | source |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for ds, (members, floors) in by_dataset(runs).items():
        for run, m in members:
            t = m["train"]
            print(f"| {ds} | behavior-lm {m['model_type']} ({t['parameters'] / 1e6:.2f}M) | "
                  f"{m['test']['hr@10']:.4f} | {m['test']['ndcg@10']:.4f} | "
                  f"{t['epochs_run']:g} ({t['best_epoch']:g}) | {t['seconds'] / 60:.1f} | "
                  f"{t.get('stopped_by', '')} | {run} |")
        for name, (pm, run) in floors.items():
            print(f"| {ds} | {name} floor (ours) | {pm['hr@10']:.4f} | {pm['ndcg@10']:.4f} | | | | {run} |")
        for name, hr, nd in ANCHORS.get(ds, []):
            print(f"| {ds} | {name} | {hr:.4f} | {nd:.4f} | | | | ANCHORS.md |")


def _panels(n: int, width: float, height: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return plt, fig, axes[0]


def plot(runs: list[Run], path: Path, labels: dict[str, str]) -> None:
    """One panel per dataset: horizontal NDCG@10 bars, ours coloured, floors grey, anchors hatched."""
    groups = by_dataset(runs)
    plt, fig, axes = _panels(len(groups), 6.5, 4.8)
    style = {"ours": dict(color="tab:blue"), "floor": dict(color="0.6"),
             "anchor": dict(color="white", edgecolor="tab:orange", hatch="///")}
    for ax, (ds, (members, floors)) in zip(axes, groups.items()):
        rows = [(label(run, m, labels), m["test"]["ndcg@10"], "ours") for run, m in members]
        rows += [(f"{name} floor", pm["ndcg@10"], "floor") for name, (pm, _) in floors.items()]
        rows += [(name, nd, "anchor") for name, _, nd in ANCHORS.get(ds, [])]
        for i, (_, value, kind) in enumerate(rows):
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


def curves(runs: list[Run], path: Path, labels: dict[str, str]) -> None:
    """One panel per dataset: validation NDCG@10 by epoch for every run (from log_history.json)."""
    groups = by_dataset(runs)
    plt, fig, axes = _panels(len(groups), 6, 4)
    for ax, (ds, (members, floors)) in zip(axes, groups.items()):
        for run, m in members:
            history = json.loads((run / "log_history.json").read_text())
            points = [(h["epoch"], h["eval_ndcg@10"]) for h in history if "eval_ndcg@10" in h]
            ax.plot(*zip(*points), marker=".", label=label(run, m, labels, epochs=False))
        for name, (pm, _) in floors.items():
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
