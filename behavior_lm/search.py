"""``behavior-lm search RECIPE --space SPACE.yaml --n_trials N --sampler {grid,random,tpe}``.

Hyperparameter search with Optuna over any recipe keys. Each trial is an ordinary
``behavior-lm train`` run (``<search_dir>/trials/trial-NNN``, scored by the same harness, honouring
``max_train_minutes``); its objective is a *validation* metric (default NDCG@10), never test.
Bad trials are pruned from the per-epoch validation (``MedianPruner``: after
``prune_warmup_epochs`` epochs, a trial below the median of earlier trials at the same epoch stops). The study lives in ``<search_dir>/study.db`` (Optuna's
SQLite storage), so a killed search started again with the same command continues: finished
trials are kept, a trial that was running is run again (its run resumes from its checkpoints).

Writes ``best_recipe.yaml`` (runnable with ``behavior-lm train``), ``trials.md`` / ``trials.csv``
and two plots: ``optimization_history.png`` and ``param_importances.png``.

The space file maps recipe keys to distributions::

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    hidden_size: {type: categorical, choices: [32, 64, 128]}
    num_layers: {type: int, low: 1, high: 3}
    dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}

``grid`` needs finite values: categorical, int, or float with ``step``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from behavior_lm.errors import RecipeError
from behavior_lm.reporting import new_figure
from behavior_lm.rundir import atomic_write, partial_of, writer_lock
from behavior_lm.tasks import get_task
from behavior_lm.training.recipes import known_keys, load_recipe, parse_recipe, to_argv
from behavior_lm.training.run import train

logger = logging.getLogger(__name__)
SAMPLERS = ("grid", "random", "tpe")
LOWER_IS_BETTER = ("mae", "rmse", "loss")
STUDY_NAME = "behavior-lm-search"


def _optuna():
    try:
        import optuna
    except ImportError as exc:                      # a dependency, but say so if it was removed
        raise RecipeError("behavior-lm search needs optuna (pip install 'optuna>=4,<5')") from exc
    return optuna


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check the search space: known recipe keys, well-formed distributions."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: search space not found")
    try:
        space = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(space, dict) or not space:
        raise RecipeError(f"{path}: a search space maps recipe keys to distributions, e.g. "
                          "learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    keys = known_keys()
    for key, dist in space.items():
        where = f"{path}: {key}"
        if key not in keys:
            raise RecipeError(f"{where}: not a recipe key")
        if key in ("output_dir", "seed"):
            raise RecipeError(f"{where}: the search sets this itself")
        if not isinstance(dist, dict) or dist.get("type") not in ("float", "int", "categorical"):
            raise RecipeError(f"{where}: needs type: float, int or categorical")
        if dist["type"] == "categorical":
            if not isinstance(dist.get("choices"), list) or not dist["choices"]:
                raise RecipeError(f"{where}: categorical needs a non-empty list of choices")
            continue
        for bound in ("low", "high"):
            if not isinstance(dist.get(bound), (int, float)) or isinstance(dist.get(bound), bool):
                raise RecipeError(f"{where}: {dist['type']} needs numeric low and high")
        if dist["low"] > dist["high"]:
            raise RecipeError(f"{where}: low {dist['low']} is above high {dist['high']}")
        if dist.get("log") and dist["low"] <= 0:
            raise RecipeError(f"{where}: log scale needs low > 0")
        unknown = set(dist) - {"type", "low", "high", "log", "step"}
        if unknown:
            raise RecipeError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    return space


def grid_of(space: dict[str, dict[str, Any]]) -> dict[str, list]:
    """Every value of every key, for the grid sampler."""
    grid = {}
    for key, dist in space.items():
        if dist["type"] == "categorical":
            grid[key] = list(dist["choices"])
        elif dist["type"] == "int":
            grid[key] = list(range(int(dist["low"]), int(dist["high"]) + 1, int(dist.get("step", 1))))
        elif "step" in dist:
            n = int(round((dist["high"] - dist["low"]) / dist["step"]))
            grid[key] = [round(dist["low"] + i * dist["step"], 12) for i in range(n + 1)]
        else:
            raise RecipeError(f"{key}: the grid sampler needs a step for float ranges (or choices)")
    return grid


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = {}
    for key, dist in space.items():
        if dist["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, dist["choices"])
        elif dist["type"] == "int":
            params[key] = trial.suggest_int(key, int(dist["low"]), int(dist["high"]),
                                            step=int(dist.get("step", 1)), log=bool(dist.get("log", False)))
        else:
            params[key] = trial.suggest_float(key, float(dist["low"]), float(dist["high"]),
                                              step=dist.get("step"), log=bool(dist.get("log", False)))
    return params


class PruningCallback(TrainerCallback):
    """Reports each epoch's validation metric to the trial; stops a trial Optuna prunes."""

    def __init__(self, trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None:
            return
        step = max(int(round(state.epoch or 0)), 1)
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise _optuna().TrialPruned(f"{self.metric} {value:.4f} at epoch {step}")


def search(recipe: str | Path, space_file: str | Path, output_dir: str | Path, *, n_trials: int = 20,
           sampler: str = "tpe", metric: str = "ndcg@10", seed: int = 0, prune: bool = True,
           prune_warmup_epochs: int = 5, overrides: Sequence[str] = ()) -> Path:
    """Run (or continue) a search; returns the search directory."""
    optuna = _optuna()
    if sampler not in SAMPLERS:
        raise RecipeError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if n_trials < 1:
        raise RecipeError(f"--n_trials must be at least 1, got {n_trials}")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RecipeError(f"--output_dir {out} is a file")
    space = load_space(space_file)
    base = load_recipe(recipe)
    # every corner of the space must make a valid recipe before any training starts
    for corner in _corners(space):
        parse_recipe(recipe, [*overrides, *to_argv(corner), "--output_dir", str(out / "trials" / "check")])
    task = parse_recipe(recipe, [*overrides, "--output_dir", str(out / "trials" / "check")])[0].task
    if ("@" in metric) != get_task(task).ranking:
        raise RecipeError(f"--metric {metric!r} does not fit task {task} (ranking metrics such as ndcg@10 "
                          "for next-item; accuracy, f1_macro, mae, ... for the others)")
    direction = "minimize" if metric.split("@")[0] in LOWER_IS_BETTER else "maximize"
    out.mkdir(parents=True, exist_ok=True)
    with writer_lock(out):
        samplers = {"grid": lambda: optuna.samplers.GridSampler(grid_of(space), seed=seed),
                    "random": lambda: optuna.samplers.RandomSampler(seed=seed),
                    "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, n_trials))}
        # no pruning in the first epochs: next-item models sit at the popularity level for a few
        # epochs (longer with a long warm-up), and pruning there removes slow starters, not bad ones
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=prune_warmup_epochs)
                  if prune else optuna.pruners.NopPruner())
        storage = f"sqlite:///{(out / 'study.db').resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=samplers[sampler](),
                                    pruner=pruner, direction=direction, load_if_exists=True)
        _requeue_interrupted(study)
        settings = {"recipe": str(recipe), "space": space, "sampler": sampler, "metric": metric,
                    "direction": direction, "seed": seed, "overrides": list(overrides),
                    "pruning": {"median": prune, "warmup_epochs": prune_warmup_epochs}}
        saved = out / "search.json"
        if saved.is_file():
            before = json.loads(saved.read_text())
            changed = [k for k in ("recipe", "space", "sampler", "metric", "direction", "overrides")
                       if before.get(k) != settings[k]]
            if changed:
                raise RecipeError(f"{out}: holds a search with other settings ({', '.join(changed)}); "
                                  "continue it with the same command or choose another --output_dir")
        atomic_write(saved, json.dumps(settings, indent=2))

        def objective(trial) -> float:
            params = suggest(trial, space)
            # a re-run of an interrupted trial continues in its run directory, from its checkpoints
            number = trial.user_attrs.get("requeued_from", trial.number)
            run = out / "trials" / f"trial-{number:03d}"
            if not (run / "metrics.json").is_file():
                data_args, model_args, training_args, raw = parse_recipe(
                    recipe, [*overrides, *to_argv(params), "--output_dir", str(run)])
                start = time.time()
                try:
                    train(data_args, model_args, training_args, raw,
                          callbacks=[PruningCallback(trial, metric)] if prune else ())
                except optuna.TrialPruned:
                    trial.set_user_attr("minutes", round((time.time() - start) / 60, 2))
                    shutil.rmtree(partial_of(run), ignore_errors=True)
                    raise
            metrics = json.loads((run / "metrics.json").read_text())
            trial.set_user_attr("minutes", round(metrics["train"]["seconds"] / 60, 2))
            trial.set_user_attr("test", {k: metrics["test"].get(k) for k in (metric, "hr@10", "ndcg@10")
                                         if k in metrics["test"]})
            trial.set_user_attr("epochs", metrics["train"].get("epochs_run"))
            trial.set_user_attr("stopped_by", metrics["train"].get("stopped_by"))
            value = metrics["validation"].get(metric)
            if value is None:
                raise RecipeError(f"metric {metric!r} is not in the validation metrics "
                                  f"({', '.join(sorted(metrics['validation']))})")
            return float(value)

        done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED)]
        remaining = n_trials - len(done)
        if sampler == "grid":
            remaining = min(remaining, math.prod(len(v) for v in grid_of(space).values()) - len(done))
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, catch=())
        write_report(study, out, base, recipe, space, metric)
    return out


def _corners(space: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    lows = {k: d["choices"][0] if d["type"] == "categorical" else d["low"] for k, d in space.items()}
    highs = {k: d["choices"][-1] if d["type"] == "categorical" else d["high"] for k, d in space.items()}
    ints = [k for k, d in space.items() if d["type"] == "int"]
    for corner in (lows, highs):
        for k in ints:
            corner[k] = int(corner[k])
    return [lows, highs]


def _requeue_interrupted(study) -> None:
    """A trial left RUNNING by a killed search is marked failed and its parameters queued again,
    so the next trial re-runs it (its run directory resumes from the last checkpoint)."""
    optuna = _optuna()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.user_attrs.get("requeued_from",
                                                                                            trial.number)})
        logger.warning("search: trial %d was interrupted; it runs again", trial.number)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(study, out: Path, base: dict, recipe: str | Path, space: dict, metric: str) -> None:
    """best_recipe.yaml, trials.md/.csv, optimization_history.png, param_importances.png."""
    optuna = _optuna()
    trials = [t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    keys = list(space)
    rows = []
    for t in trials:
        test = t.user_attrs.get("test", {})
        number = t.user_attrs.get("requeued_from", t.number)
        rows.append({"trial": t.number, "run": f"trial-{number:03d}", "state": t.state.name.lower(), **{k: t.params.get(k) for k in keys},
                     f"validation {metric}": t.value, f"test {metric}": test.get(metric),
                     "epochs": t.user_attrs.get("epochs"), "minutes": t.user_attrs.get("minutes"),
                     "stopped by": t.user_attrs.get("stopped_by") or ("pruned" if t.state.name == "PRUNED" else "")})
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write(out / "trials.csv", buf.getvalue())
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    lines = [f"# Search over {', '.join(keys)} ({len(complete)} complete, "
             f"{sum(t.state.name == 'PRUNED' for t in trials)} pruned)", "",
             f"Recipe `{recipe}`; objective: validation {metric} ({study.direction.name.lower()}); "
             "each trial's test number is shown for reference and never used for selection.", ""]
    if rows:
        cols = list(rows[0])
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join("" if r[c] is None else _fmt(r[c]) for c in cols) + " |" for r in rows]
    if complete:
        best = study.best_trial
        run_recipe = (out / "trials" / f"trial-{best.user_attrs.get('requeued_from', best.number):03d}"
                      / "recipe.yaml")                                          # as run, overrides in
        tuned = yaml.safe_load(run_recipe.read_text()) if run_recipe.is_file() else dict(base)
        tuned.update(best.params)
        tuned["output_dir"] = str(out / "best")
        atomic_write(out / "best_recipe.yaml",
                     f"# best of {len(complete)} trials by validation {metric} = {best.value:.4f} "
                     f"(trial {best.number}); `behavior-lm train` this file\n"
                     + yaml.safe_dump(tuned, sort_keys=False))
        lines += ["", f"Best: trial {best.number}, validation {metric} {best.value:.4f}: "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
                  + ". Recipe: `best_recipe.yaml`.", ""]
        _history_plot(study, trials, metric, out / "optimization_history.png")
        lines += ["![optimization history](optimization_history.png)", ""]
        if len(complete) >= 2 and len(keys) >= 1:
            try:   # PED-ANOVA: no scikit-learn needed (fANOVA, Optuna's default, needs it)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    importances = optuna.importance.get_param_importances(
                        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
            except (RuntimeError, ValueError) as exc:       # e.g. every trial with one value
                logger.warning("search: no parameter importances (%s)", exc)
                importances = {}
            if importances:
                _importance_plot(importances, out / "param_importances.png")
                lines += ["![parameter importances](param_importances.png)", ""]
    atomic_write(out / "trials.md", "\n".join(lines) + "\n")


def _history_plot(study, trials, metric: str, path: Path) -> None:
    """Complete trials (dots, with the best so far) and pruned ones (crosses, at their last
    reported epoch's value)."""
    fig = new_figure(figsize=(7, 4), dpi=110)
    ax = fig.subplots()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    xs = [t.number for t in complete]
    ys = [t.value for t in complete]
    better = min if study.direction.name == "MINIMIZE" else max
    best = [better(ys[: i + 1]) for i in range(len(ys))]
    ax.scatter(xs, ys, color="tab:blue", s=18, label=f"complete (validation {metric})")
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   color="tab:gray", marker="x", s=18, label="pruned (at the epoch it stopped)")
    ax.step(xs, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("optimization history")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _importance_plot(importances: dict[str, float], path: Path) -> None:
    fig = new_figure(figsize=(6, 0.5 + 0.45 * len(importances)), dpi=110)
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.set_xlabel("importance (PED-ANOVA, top trials vs the rest)")
    ax.set_title("parameter importances")
    fig.tight_layout()
    fig.savefig(path)

