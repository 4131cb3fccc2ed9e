"""Results as people read them: a Markdown table and a PNG of the training curves."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from behavior_lm.tasks import TASKS, get_task


def new_figure(**kwargs) -> Figure:
    """A figure outside pyplot: drawn with the Agg canvas on ``savefig`` whatever the importing
    program's matplotlib backend is, and never touching that program's pyplot state (importing
    behavior_lm used to switch the backend to Agg for everyone)."""
    return Figure(**kwargs)


def metrics_table(rows: Mapping[str, Mapping[str, float]], ks: Sequence[int]) -> str:
    """Markdown table, one row per model/baseline: HR, NDCG, MRR at every K."""
    cols = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]
    lines = ["| model | " + " | ".join(c.upper() for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" if c in m else "" for c in cols) + " |")
    return "\n".join(lines)


def results_table(metrics: Mapping, model_name: str | None = None) -> str:
    """The test table of a run's ``metrics.json``: the model row, then its floors (ranking
    metrics for next-item runs, task metrics otherwise). ``results.md`` and the model card use it."""
    from behavior_lm.evaluation.task_metrics import task_table

    rows = {model_name or metrics.get("model_type", "model"): metrics["test"],
            **{f"{b} (floor)": m for b, m in metrics.get("baselines", {}).get("test", {}).items()}}
    task = metrics.get("task", "next-item")
    if get_task(task).ranking:
        return metrics_table(rows, metrics["protocol"]["ks"])
    return task_table(rows, task, metrics["data"].get("class_names", []))


def task_description(task: str, class_names: Sequence[str], target: str) -> str:
    """One line saying what a classification / regression run predicts and on which examples."""
    return get_task(task).describe(class_names, target)


def training_curves(log_history: Sequence[Mapping], path: Path,
                    metric: str = "eval_ndcg@10", title: str = "") -> Path:
    """Plot training loss and the validation metric per epoch into ``path`` (PNG)."""
    train = [(h["epoch"], h["loss"]) for h in log_history if "loss" in h and "epoch" in h]
    val = [(h["epoch"], h[metric]) for h in log_history if metric in h and "epoch" in h]
    fig = new_figure(figsize=(7, 4), dpi=110)
    ax1 = fig.subplots()
    if train:
        ax1.plot(*zip(*train), color="tab:blue", marker="o", ms=3, label="training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (next-token CE)", color="tab:blue")
    ax2 = ax1.twinx()
    if val:
        ax2.plot(*zip(*val), color="tab:orange", marker="s", ms=3,
                 label=f"validation {metric.removeprefix('eval_').upper()}")
        best = (min if metric.endswith(("mae", "rmse", "loss")) else max)(val, key=lambda p: p[1])
        ax2.axvline(best[0], color="tab:orange", ls=":", lw=1)
        ax2.annotate(f"best {best[1]:.4f} @ epoch {best[0]:g}", best, textcoords="offset points",
                     xytext=(-10, -14), ha="right", fontsize=8, color="tab:orange")
    ax2.set_ylabel(f"validation {metric.removeprefix('eval_').upper()}", color="tab:orange")
    ax1.set_title(title or "training curves")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


RANKING_COLUMNS = ("hr@10", "ndcg@10", "mrr@10")


def comparison_chart(rows: dict[str, dict], floors: dict[str, dict], path: Path,
                     metric_names: Sequence[str] = RANKING_COLUMNS) -> Path:
    names = list(rows) + [f"{f} (floor)" for f in floors]
    values = {**rows, **{f"{f} (floor)": v for f, v in floors.items()}}
    fig = new_figure(figsize=(13, 4), dpi=110)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 1.3, 1.3]})
    width = 0.8 / len(metric_names)
    for i, metric in enumerate(metric_names):
        xs = [j + (i - (len(metric_names) - 1) / 2) * width for j in range(len(names))]
        axes[0].bar(xs, [values[n][metric] for n in names], width, label=metric.upper())
    axes[0].set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes[0].set_title("test ranking quality (full catalogue)" if "@" in metric_names[0]
                      else "test quality")
    axes[0].legend(fontsize=8)
    model_names = list(rows)
    axes[1].bar(model_names, [rows[n]["train_minutes"] for n in model_names], color="tab:gray")
    axes[1].set_title("training time (min)")
    axes[2].bar(model_names, [rows[n]["parameters"] / 1e6 for n in model_names], color="tab:olive")
    axes[2].set_title("parameters (M)")
    for ax in axes[1:]:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path)
    return path


def regenerate(folder: str | Path) -> list[Path]:
    """Redraw the PNGs of a run directory (training curves) or a comparison directory (the chart,
    and every run in it) from the JSON they were drawn from (``behavior-lm report``)."""
    import json

    from behavior_lm.errors import RecipeError

    root = Path(folder)
    written: list[Path] = []
    if (root / "comparison.json").is_file():
        saved = json.loads((root / "comparison.json").read_text())
        rows, floors = saved["models"], saved["floors"]
        first = next(iter(rows.values()), {})
        names = next((t.headline for t in TASKS.values() if all(k in first for k in t.headline)),
                     RANKING_COLUMNS)
        written.append(comparison_chart(rows, floors, root / "comparison.png", names))
        for sub in sorted(p for p in root.iterdir() if (p / "log_history.json").is_file()):
            written += regenerate(sub)
        return written
    if not (root / "log_history.json").is_file() or not (root / "metrics.json").is_file():
        raise RecipeError(f"{root}: neither a run directory (log_history.json, metrics.json) nor a "
                          "comparison directory (comparison.json)")
    history = json.loads((root / "log_history.json").read_text())
    metrics = json.loads((root / "metrics.json").read_text())
    args_path = root / "training_args.json"
    best = json.loads(args_path.read_text()).get("metric_for_best_model") if args_path.is_file() else None
    metric = "eval_" + (best or "ndcg@10").removeprefix("eval_")
    written.append(training_curves(history, root / "training_curves.png", metric=metric,
                                   title=f"{metrics.get('model_type', 'model')} on {metrics['data']['dataset']}"))
    return written
