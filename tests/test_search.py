"""``behavior-lm search``: trials are real train runs on a slice of ml-100k, the best recipe is
the best validation trial and trains as is, a killed search continues where it stopped, bad
spaces are refused in one line, and the pruning callback stops a trial Optuna prunes."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from behavior_lm.cli.main import main
from behavior_lm.errors import RecipeError
from behavior_lm.search import STUDY_NAME, PruningCallback, grid_of, load_space, search
from behavior_lm.training.recipes import parse_recipe

from conftest import QUICKSTART, TINY

_at = TINY.index("--hidden_size")
FLAGS = TINY[:_at] + TINY[_at + 2:] + ["--no_pruning"]       # the space sets hidden_size


def write_space(path: Path) -> Path:
    path.write_text("learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
                    "hidden_size: {type: categorical, choices: [8, 16]}\n")
    return path


def study_of(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{(out / 'study.db').resolve()}")


def test_search_writes_the_best_validation_trial_as_a_recipe(tmp_path):
    out = tmp_path / "search"
    assert main(["search", str(QUICKSTART), "--space", str(write_space(tmp_path / "space.yaml")),
                 "--output_dir", str(out), "--n_trials", "3", "--sampler", "random", *FLAGS]) == 0
    with open(out / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(r["state"] == "complete" for r in rows)
    best = max(rows, key=lambda r: float(r["validation ndcg@10"]))
    recipe = yaml.safe_load((out / "best_recipe.yaml").read_text())
    assert recipe["learning_rate"] == pytest.approx(float(best["learning_rate"]))
    assert recipe["hidden_size"] == int(best["hidden_size"]) and recipe["max_users"] == 60
    data_args, model_args, training_args, _ = parse_recipe(out / "best_recipe.yaml")   # trains as is
    assert model_args.hidden_size == int(best["hidden_size"]) and training_args.num_train_epochs == 2
    for name in ("trials.md", "optimization_history.png", "param_importances.png"):
        assert (out / name).stat().st_size > 0
    # the command again: the study is complete, nothing is retrained
    stamp = (out / "trials" / "trial-000" / "metrics.json").stat().st_mtime_ns
    search(QUICKSTART, tmp_path / "space.yaml", out, n_trials=3, sampler="random", prune=False,
           overrides=FLAGS[:-1])
    assert len(study_of(out).trials) == 3
    assert (out / "trials" / "trial-000" / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(RecipeError, match="other settings.*metric"):    # never mixes objectives
        search(QUICKSTART, tmp_path / "space.yaml", out, n_trials=3, sampler="random", metric="hr@10",
               prune=False, overrides=FLAGS[:-1])
    with pytest.raises(RecipeError, match="does not fit task"):
        search(QUICKSTART, tmp_path / "space.yaml", tmp_path / "other", metric="accuracy", overrides=FLAGS[:-1])


def test_a_killed_search_continues(tmp_path):
    out = tmp_path / "search"
    space = write_space(tmp_path / "space.yaml")
    cmd = [sys.executable, "-m", "behavior_lm.cli.main", "search", str(QUICKSTART), "--space", str(space),
           "--output_dir", str(out), "--n_trials", "3", "--sampler", "random", *FLAGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    try:
        while not (out / "trials" / "trial-001.partial").exists():   # trial 0 done, trial 1 running
            assert proc.poll() is None and time.time() < deadline, "the search ended before it could be killed"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "trials" / "trial-000" / "metrics.json").is_file()
    stamp = (out / "trials" / "trial-000" / "metrics.json").stat().st_mtime_ns
    killed = {t.number: t for t in study_of(out).trials}[1]
    assert killed.state == optuna.trial.TrialState.RUNNING
    search(QUICKSTART, space, out, n_trials=3, sampler="random", prune=False, overrides=FLAGS[:-1])
    trials = study_of(out).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    rerun = [t for t in done if t.user_attrs.get("requeued_from") == 1]
    assert len(rerun) == 1 and rerun[0].params == killed.params
    assert (out / "trials" / "trial-001" / "metrics.json").is_file()      # continued in its own folder
    assert (out / "trials" / "trial-000" / "metrics.json").stat().st_mtime_ns == stamp   # not retrained
    assert not (out.with_name(out.name + ".lock")).exists()


def test_bad_spaces_are_refused_before_training(tmp_path):
    cases = {
        "hiden_size: {type: int, low: 8, high: 16}\n": "not a recipe key",
        "hidden_size: {type: int, low: 16, high: 8}\n": "low 16 is above high 8",
        "learning_rate: {type: float, low: 0, high: 0.1, log: true}\n": "log scale needs low > 0",
        "hidden_size: 16\n": "needs type",
        "output_dir: {type: categorical, choices: [a, b]}\n": "sets this itself",
        "hidden_size: {type: int, low: -8, high: 16}\n": "hidden_size",       # a corner is not a valid recipe
    }
    for text, message in cases.items():
        space = tmp_path / "space.yaml"
        space.write_text(text)
        with pytest.raises(RecipeError, match=message):
            search(QUICKSTART, space, tmp_path / "out", n_trials=2, overrides=FLAGS[:-1])
    assert not (tmp_path / "out").exists()
    space.write_text("dropout: {type: float, low: 0.0, high: 0.5}\n")
    with pytest.raises(RecipeError, match="needs a step"):
        grid_of(load_space(space))
    space.write_text("dropout: {type: float, low: 0.0, high: 0.2, step: 0.1}\nnum_layers: {type: int, low: 1, high: 2}\n")
    assert grid_of(load_space(space)) == {"dropout": [0.0, 0.1, 0.2], "num_layers": [1, 2]}


def test_pruning_callback_stops_a_pruned_trial():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    callback = PruningCallback(trial, "ndcg@10")
    state = SimpleNamespace(epoch=1.0)
    callback.on_evaluate(None, state, None, metrics={"eval_loss": 3.0})     # no metric: nothing
    with pytest.raises(optuna.TrialPruned):
        callback.on_evaluate(None, state, None, metrics={"eval_ndcg@10": 0.1})
    kept = study.ask()
    PruningCallback(kept, "ndcg@10").on_evaluate(None, state, None, metrics={"eval_ndcg@10": 0.9})
