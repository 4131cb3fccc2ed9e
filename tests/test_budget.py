"""TimeBudgetCallback on its own: the stop rule and the time carried across resumes."""
from __future__ import annotations

import json

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from behavior_lm.training.budget import SPENT_FILE, TimeBudgetCallback, spent_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stops_only_at_an_evaluation_after_the_budget(tmp_path):
    clock = Clock()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(), TrainerControl()
    cb = TimeBudgetCallback(max_minutes=1.0, spent_before=30.0, clock=clock)
    cb.on_train_begin(args, state, control)
    clock.now += 29.0                                  # 59 s in total: under the minute
    cb.on_evaluate(args, state, control)
    assert not control.should_training_stop and not cb.stopped
    clock.now += 1.0                                   # 60 s: spent
    cb.on_evaluate(args, state, control)
    assert control.should_training_stop and cb.stopped
    assert cb.spent() == pytest.approx(60.0)


def test_no_budget_never_stops_but_still_records(tmp_path):
    clock = Clock()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(global_step=7), TrainerControl()
    (tmp_path / "checkpoint-7").mkdir()
    cb = TimeBudgetCallback(None, spent_before=5.0, clock=clock)
    cb.on_train_begin(args, state, control)
    clock.now += 1e6
    cb.on_evaluate(args, state, control)
    assert not control.should_training_stop
    cb.on_save(args, state, control)
    assert json.loads((tmp_path / "checkpoint-7" / SPENT_FILE).read_text()) == {"train_seconds": 1e6 + 5.0}
    assert spent_seconds(tmp_path / "checkpoint-7") == 1e6 + 5.0


def test_spent_seconds_of_fresh_and_older_checkpoints(tmp_path):
    assert spent_seconds(None) == 0.0
    assert spent_seconds(tmp_path) == 0.0             # checkpoint written before budgets existed


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_train_minutes"):
        TimeBudgetCallback(0)
