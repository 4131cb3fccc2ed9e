"""A wall-clock training budget that survives resumes.

Comparing models "at equal compute" on a small machine needs a stop rule in minutes, not
epochs: a GRU epoch costs a fraction of a Transformer epoch. ``TimeBudgetCallback`` ends
training at the first validation after the budget is spent. It stops only after a validation,
so the epoch that used the budget is still scored and checkpointed and ``load_best_model_at_end``
picks among complete evaluations.

Under DDP every process has its own clock; the main process decides and broadcasts the decision,
so all processes leave the training loop after the same evaluation (a split decision would hang
the next collective).

The time already spent is written into every checkpoint (``time_budget.json``), so a run that
is interrupted and resumed counts its earlier segments: the budget, and the training minutes the
run reports, are totals over all segments, not the last one. Early stopping's count of
evaluations without improvement is carried over the same way (:func:`patience_spent`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

SPENT_FILE = "time_budget.json"


def spent_seconds(checkpoint: str | Path | None) -> float:
    """Training seconds recorded in ``checkpoint`` (0 for a fresh run or an older checkpoint)."""
    if not checkpoint:
        return 0.0
    path = Path(checkpoint) / SPENT_FILE
    if not path.is_file():
        return 0.0
    return float(json.loads(path.read_text())["train_seconds"])


def patience_spent(checkpoint: str | Path | None) -> int:
    """Evaluations without improvement that early stopping had counted when ``checkpoint`` was saved.

    The Trainer stores the count in the checkpoint's ``trainer_state.json`` but restores it only
    under ``restore_callback_states_from_checkpoint`` (off by default, and it would bring back the
    old patience too). Without it a resumed run counts from zero again: a run killed N evaluations
    after its best got N more evaluations of patience than the same run left alone, so where it
    stopped, and the model it kept, depended on when it was killed.
    """
    if not checkpoint:
        return 0
    path = Path(checkpoint) / "trainer_state.json"
    if not path.is_file():
        return 0
    stored = json.loads(path.read_text()).get("stateful_callbacks", {}).get("EarlyStoppingCallback")
    if isinstance(stored, list):       # the Trainer stores a list when there are several
        stored = stored[0] if stored else None
    return int((stored or {}).get("attributes", {}).get("early_stopping_patience_counter", 0))


def main_process_decides(flag: bool) -> bool:
    """``flag`` as seen by rank 0, on every process (unchanged without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    decision = torch.tensor([int(flag)], device=device)
    dist.broadcast(decision, src=0)
    return bool(decision.item())


class TimeBudgetCallback(TrainerCallback):
    """Stop at the first evaluation once ``max_minutes`` of training (all segments) are spent.

    ``max_minutes=None`` keeps the bookkeeping (checkpoints still record the time spent) without
    ever stopping, so every run can report its total training time across resumes.
    """

    def __init__(self, max_minutes: float | None = None, spent_before: float = 0.0,
                 clock=time.perf_counter) -> None:
        if max_minutes is not None and max_minutes <= 0:
            raise ValueError(f"max_train_minutes must be positive, got {max_minutes}")
        self.max_minutes = max_minutes
        self.spent_before = spent_before
        self.clock = clock
        self.started: float | None = None
        self.stopped = False

    def spent(self) -> float:
        """Seconds of training so far, earlier segments included."""
        return self.spent_before + (self.clock() - self.started if self.started is not None else 0.0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.clock()

    def on_evaluate(self, args, state, control, **kwargs):
        if self.max_minutes is None:
            return
        if main_process_decides(self.spent() >= self.max_minutes * 60):
            self.stopped = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / SPENT_FILE).write_text(json.dumps({"train_seconds": round(self.spent(), 3)}))
