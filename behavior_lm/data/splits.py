"""Train / validation / test splits of per-user sequences, and the leakage audit they all pass.

Two protocols, one shape of result (:class:`Split`), so the evaluation harness is the same:

* :func:`leave_one_out` -- per user, the last event is the test target, the one before it the
  validation target (the SASRec / BERT4Rec protocol);
* :func:`temporal_split` -- a global time cut: training sees only events before ``valid_time``,
  each user gets (at most) one validation and one test target after the cuts.

Every split is checked by :func:`audit` before it is returned; ``Split.audit()`` re-runs it (e.g.
after a split was saved and loaded, or built by hand). An event's identity is its source
``(line, timestamp)``: two events with the same item and time on different lines are different
events, and so are the events of a sequence file that share one line (their file-order
timestamps differ).
"""
from __future__ import annotations

import bisect
import itertools
import operator
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from behavior_lm.data.preprocess import UserSequence
from behavior_lm.errors import DataError, RecipeError

__all__ = [
    "Example",
    "Split",
    "LeakageError",
    "audit",
    "leave_one_out",
    "temporal_split",
]

LEAVE_ONE_OUT = "leave_one_out"
TEMPORAL = "temporal"


class LeakageError(DataError):
    """A split lets the model see something it must not (the target, or the future)."""


@dataclass(frozen=True)
class Example:
    """One prediction target and what the model may see."""

    user_id: str
    history: UserSequence  # events strictly before the target in the user's time order
    target_item: str
    target_behavior: str
    target_timestamp: int
    target_value: float | None
    target_line: int

    @classmethod
    def at(cls, seq: UserSequence, index: int) -> "Example":
        """Target = event ``index`` of ``seq``; history = every event before it."""
        return cls(
            user_id=seq.user_id,
            history=seq.slice(0, index),
            target_item=seq.items[index],
            target_behavior=seq.behaviors[index],
            target_timestamp=seq.timestamps[index],
            target_value=seq.values[index],
            target_line=seq.lines[index],
        )


@dataclass(frozen=True)
class Split:
    """What training sees, and the validation / test examples.

    ``valid_time`` / ``test_time`` are the cut times of a temporal split (``None`` for
    leave-one-out).
    """

    kind: str                    # "leave_one_out" or "temporal"
    train: list[UserSequence]    # what training sees
    validation: list[Example]
    test: list[Example]
    source: str = "<memory>"     # file name, for errors
    valid_time: int | None = field(default=None)
    test_time: int | None = field(default=None)

    def audit(self) -> None:
        """Raise :class:`LeakageError` if any target leaks into what the model may see."""
        audit(self)

    def summary(self) -> dict:
        """Counts (and cut times for a temporal split), e.g. for logs and run cards."""
        out: dict = {
            "kind": self.kind,
            "train_users": len(self.train),
            "train_events": sum(len(s) for s in self.train),
            "validation_examples": len(self.validation),
            "test_examples": len(self.test),
            "validation_history_events": sum(len(e.history) for e in self.validation),
            "test_history_events": sum(len(e.history) for e in self.test),
        }
        if self.kind == TEMPORAL:
            out["valid_time"] = self.valid_time
            out["test_time"] = self.test_time
        return out


# --------------------------------------------------------------------------- audit
def audit(split: Split) -> None:
    """Check a split for leakage; raise :class:`LeakageError` naming user, file and line.

    Checks, for every validation and test example:

    (a) no history event has a timestamp later than its target;
    (b) the target event itself (same source line and timestamp) is not in its own history.

    And for what training sees:

    (c) leave-one-out: no training event of a user is later than, or the same event (line, timestamp) as,
        that user's validation / test targets;
        temporal: every training event is ``< valid_time``, every validation target is in
        ``[valid_time, test_time)`` and every test target is ``>= test_time``.
    """
    src = split.source
    for part, examples in (("validation", split.validation), ("test", split.test)):
        for ex in examples:
            _audit_example(ex, part, src)

    if split.kind == LEAVE_ONE_OUT:
        _audit_loo_train(split)
    elif split.kind == TEMPORAL:
        _audit_temporal(split)
    else:
        raise LeakageError(f"unknown split kind {split.kind!r}, expected "
                           f"'{LEAVE_ONE_OUT}' or '{TEMPORAL}'", path=src)


def audit_windows(seq: UserSequence, cuts: list[tuple[str, int]], horizon: int, source: str) -> None:
    """Audit the windowed examples of one user (purchase intent, conversion tagging): an example
    ``(part, cut)`` reads the events before ``cut`` and takes its label from the ``horizon``
    events from ``cut`` on. Raise :class:`LeakageError` (user, file, line) when an input would
    hold a labelled event of its own window, when a training label reads an event at or after the
    validation or test cut, or when the validation label reads into the test window."""
    n = len(seq)
    evals = [c for part, c in cuts if part != "train"]
    test = next((c for part, c in cuts if part == "test"), None)
    for part, cut in cuts:
        if not 1 <= cut < n:
            raise LeakageError(f"user '{seq.user_id}': {part} window cut {cut} leaves no history or no "
                               f"label events (the user has {n})", path=source,
                               line=seq.lines[min(max(cut, 0), n - 1)], field="user_id")
        reach = min(cut + horizon, n)                  # label events cut .. reach - 1
        limit = min(evals) if part == "train" and evals else (test if part == "validation" else None)
        if limit is not None and reach > limit:
            raise LeakageError(
                f"user '{seq.user_id}': the {part} window at event {cut} (line {seq.lines[cut]}) takes "
                f"its label from events up to {reach - 1} (line {seq.lines[reach - 1]}), past the "
                f"{'validation/test' if part == 'train' else 'test'} cut at event {limit}",
                path=source, line=seq.lines[cut], field="user_id")


def _audit_example(ex: Example, part: str, src: str) -> None:
    hist = ex.history
    if hist.user_id != ex.user_id:
        raise LeakageError(
            f"user '{ex.user_id}': {part} example at line {ex.target_line} has the history of "
            f"user '{hist.user_id}'", path=src, line=ex.target_line, field="user_id")
    if (ex.target_line, ex.target_timestamp) in set(zip(hist.lines, hist.timestamps)):
        raise LeakageError(
            f"user '{ex.user_id}': {part} target (line {ex.target_line}) is in its own history",
            path=src, line=ex.target_line, field="line")
    if hist.timestamps and max(hist.timestamps) > ex.target_timestamp:
        latest = _argmax(hist.timestamps)
        raise LeakageError(
            f"user '{ex.user_id}': history event at line {hist.lines[latest]} (timestamp "
            f"{hist.timestamps[latest]}) is later than its {part} target at line "
            f"{ex.target_line} (timestamp {ex.target_timestamp})",
            path=src, line=hist.lines[latest], field="timestamp")


def _argmax(values: list[int]) -> int:
    """Index of the first largest value (plain Python: no list -> array conversion)."""
    return values.index(max(values))


def _audit_loo_train(split: Split) -> None:
    src = split.source
    targets: dict[str, list[tuple[str, Example]]] = defaultdict(list)
    for part, examples in (("validation", split.validation), ("test", split.test)):
        for ex in examples:
            targets[ex.user_id].append((part, ex))
    for seq in split.train:
        user_targets = targets.get(seq.user_id)
        if not user_targets or not len(seq):
            continue
        latest = _argmax(seq.timestamps)
        for part, ex in user_targets:
            if (ex.target_line, ex.target_timestamp) in set(zip(seq.lines, seq.timestamps)):
                raise LeakageError(
                    f"user '{seq.user_id}': {part} target (line {ex.target_line}) is also a "
                    f"training event", path=src, line=ex.target_line, field="line")
            if seq.timestamps[latest] > ex.target_timestamp:
                raise LeakageError(
                    f"user '{seq.user_id}': training event at line {seq.lines[latest]} "
                    f"(timestamp {seq.timestamps[latest]}) is later than the user's {part} "
                    f"target at line {ex.target_line} (timestamp {ex.target_timestamp})",
                    path=src, line=seq.lines[latest], field="timestamp")


def _audit_temporal(split: Split) -> None:
    src = split.source
    vt, tt = split.valid_time, split.test_time
    if vt is None or tt is None or vt > tt:
        raise LeakageError(f"temporal split needs valid_time <= test_time, got "
                           f"valid_time={vt}, test_time={tt}", path=src)
    for seq in split.train:
        if not len(seq):
            continue
        latest = _argmax(seq.timestamps)
        if seq.timestamps[latest] >= vt:
            raise LeakageError(
                f"user '{seq.user_id}': training event at line {seq.lines[latest]} (timestamp "
                f"{seq.timestamps[latest]}) is not before valid_time={vt}",
                path=src, line=seq.lines[latest], field="timestamp")
    for ex in split.validation:
        if not vt <= ex.target_timestamp < tt:
            raise LeakageError(
                f"user '{ex.user_id}': validation target at line {ex.target_line} (timestamp "
                f"{ex.target_timestamp}) is outside [valid_time={vt}, test_time={tt})",
                path=src, line=ex.target_line, field="timestamp")
    for ex in split.test:
        if ex.target_timestamp < tt:
            raise LeakageError(
                f"user '{ex.user_id}': test target at line {ex.target_line} (timestamp "
                f"{ex.target_timestamp}) is before test_time={tt}",
                path=src, line=ex.target_line, field="timestamp")


# --------------------------------------------------------------------------- leave-one-out
def leave_one_out(sequences: list[UserSequence], *, source: str = "<memory>",
                  validation: bool = True, target_behavior: str | None = None) -> Split:
    """Per user: last event = test target, second-to-last = validation target, the rest = train.

    Each target's history is every earlier event of the user (so the test history includes the
    validation target). With ``validation=False`` training is everything but the last event and
    there are no validation examples. ``sequences`` must be time-ordered (as from
    :func:`~behavior_lm.data.preprocess.to_sequences`); the audit fails otherwise.

    ``target_behavior`` (e.g. ``"buy"``) makes the targets each user's last events *of that
    behavior* instead (see :func:`_leave_last_of_behavior_out`).

    A user with too few events (< 3 with validation, < 2 without) is a :class:`DataError`
    naming the file, the line of that user's first event in the file and the field ``user_id``.
    """
    if target_behavior is not None:
        return _leave_last_of_behavior_out(sequences, target_behavior, source, validation)
    _check_time_ordered(sequences, source)
    need = 3 if validation else 2
    short = [s for s in sequences if len(s) < need]
    if short:
        s = short[0]
        others = f" ({len(short) - 1} other user(s) are too short as well)" if len(short) > 1 \
            else ""
        raise DataError(
            f"user '{s.user_id}' has {len(s)} event(s); leave-one-out"
            f"{' with validation' if validation else ''} needs at least {need} per user"
            f"{others}; raise min_user_events (k-core) to {need} or more to drop such users",
            path=source, line=min(s.lines) if len(s) else None, field="user_id")
    if not sequences:
        raise DataError("no users to split", path=source)

    train: list[UserSequence] = []
    valid: list[Example] = []
    test: list[Example] = []
    for seq in sequences:
        n = len(seq)
        test.append(Example.at(seq, n - 1))
        if validation:
            valid.append(Example.at(seq, n - 2))
            train.append(seq.slice(0, n - 2))
        else:
            train.append(seq.slice(0, n - 1))
    split = Split(kind=LEAVE_ONE_OUT, train=train, validation=valid, test=test, source=source)
    split.audit()
    return split


def _leave_last_of_behavior_out(sequences: list[UserSequence], behavior: str, source: str,
                                validation: bool) -> Split:
    """Leave-one-out on the events of one behavior ("what will they buy next").

    Per user with at least one ``behavior`` event after their first event: test = the last such
    event, validation = the one before it (when there is one, after the first event); history =
    every earlier event of any behavior. Training sees each user's events before their earliest
    target (all events of users with no target), so the audit's rule holds unchanged.
    """
    _check_time_ordered(sequences, source)
    if not any(behavior in s.behaviors for s in sequences):
        known = sorted({b for s in sequences for b in s.behaviors})
        raise DataError(f"target_behavior {behavior!r} does not occur in the log; its behaviors "
                        f"are {known}", path=source, field="behavior")
    train: list[UserSequence] = []
    valid: list[Example] = []
    test: list[Example] = []
    for seq in sequences:
        at = [i for i, b in enumerate(seq.behaviors) if b == behavior and i > 0]
        if not at:
            train.append(seq)
            continue
        test.append(Example.at(seq, at[-1]))
        first_target = at[-1]
        if validation and len(at) > 1:
            valid.append(Example.at(seq, at[-2]))
            first_target = at[-2]
        train.append(seq.slice(0, first_target))
    train = [s for s in train if len(s)]
    split = Split(kind=LEAVE_ONE_OUT, train=train, validation=valid, test=test, source=source)
    split.audit()
    return split


# --------------------------------------------------------------------------- temporal
def _check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and (0 <= value < 1 if allow_zero else 0 < value < 1)
    if not ok:
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise RecipeError(f"{name} must be a number in {interval}, got {value!r}")


def temporal_split(sequences: list[UserSequence], *, source: str = "<memory>",
                   valid_time: int | None = None, test_time: int | None = None,
                   valid_fraction: float = 0.1, test_fraction: float = 0.1) -> Split:
    """A global time cut: train on the past, validate and test on what comes after.

    * Training: each user's events with ``timestamp < valid_time`` (users with none are left
      out of training).
    * Validation: per user, the *first* event with ``valid_time <= timestamp < test_time``;
      its history is every earlier event of that user. No example if that history is empty.
    * Test: per user, the *first* event with ``timestamp >= test_time``; its history is every
      earlier event of that user, validation-period events included. No example if empty.

    Why only the first event after each cut: it gives one target per user, exactly like
    leave-one-out, so the same evaluation harness (one ranking per user, history -> next item)
    serves both protocols, and every user weighs the same in the metrics instead of heavy users
    dominating. Predicting later events would also need the events between the cut and them,
    which the model never trained on; the first event after the cut needs none.

    Cut times not given are quantiles of all event timestamps: ``test_time`` so that about
    ``test_fraction`` of events are ``>= test_time``; ``valid_time`` so that about
    ``valid_fraction`` of all events are in ``[valid_time, test_time)`` (``valid_fraction=0``
    gives ``valid_time = test_time``: no validation examples). With many equal timestamps the
    fractions are approximate (a cut never separates events with the same timestamp).
    """
    if not sequences or not any(len(s) for s in sequences):
        raise DataError("no events to split", path=source)
    _check_time_ordered(sequences, source)
    all_ts = np.sort(np.fromiter(itertools.chain.from_iterable(s.timestamps for s in sequences),
                                 dtype=np.int64))
    n = len(all_ts)

    if test_time is None:
        _check_fraction("test_fraction", test_fraction, allow_zero=False)
        k_test = max(1, round(n * test_fraction))
        test_time = int(all_ts[n - k_test])
    if valid_time is None:
        _check_fraction("valid_fraction", valid_fraction, allow_zero=True)
        below = int(np.searchsorted(all_ts, test_time, side="left"))  # events < test_time
        k_valid = round(n * valid_fraction)
        valid_time = int(test_time) if k_valid == 0 or below == 0 \
            else int(all_ts[max(0, below - k_valid)])
    valid_time, test_time = int(valid_time), int(test_time)
    if valid_time > test_time:
        raise RecipeError(f"valid_time ({valid_time}) must not be after test_time ({test_time})")
    if valid_time <= int(all_ts[0]):
        raise DataError(
            f"no training events: every event is at or after valid_time={valid_time} "
            f"(earliest timestamp {int(all_ts[0])}); move the cut later or lower "
            f"valid_fraction/test_fraction", path=source)

    train: list[UserSequence] = []
    valid: list[Example] = []
    test: list[Example] = []
    for seq in sequences:
        ts = seq.timestamps
        n_train = _first_at_or_after(ts, valid_time)
        if n_train:
            train.append(seq.slice(0, n_train))
        i_valid = n_train
        if 0 < i_valid < len(ts) and ts[i_valid] < test_time:
            valid.append(Example.at(seq, i_valid))
        i_test = _first_at_or_after(ts, test_time)
        if 0 < i_test < len(ts):
            test.append(Example.at(seq, i_test))
    if not test:
        raise DataError(
            f"no test examples: no user has both an event before and an event at or after "
            f"test_time={test_time}; move the cut or lower test_fraction", path=source)
    split = Split(kind=TEMPORAL, train=train, validation=valid, test=test, source=source,
                  valid_time=valid_time, test_time=test_time)
    split.audit()
    return split


def _first_at_or_after(timestamps: list[int], cut: int) -> int:
    """Index of the first event with ``timestamp >= cut`` in a time-ordered list (len if none)."""
    return bisect.bisect_left(timestamps, cut)


def _check_time_ordered(sequences: list[UserSequence], source: str) -> None:
    """Splits assume each sequence is in time order (as :func:`to_sequences` makes it)."""
    for seq in sequences:
        ts = seq.timestamps
        if all(map(operator.le, ts, ts[1:])):
            continue
        for i in range(1, len(ts)):
            if ts[i] < ts[i - 1]:
                raise DataError(
                    f"user '{seq.user_id}': events are not in time order (timestamp {ts[i]} "
                    f"comes after {ts[i - 1]} at line {seq.lines[i - 1]}); build sequences with "
                    f"behavior_lm.data.preprocess.to_sequences", path=source, line=seq.lines[i],
                    field="timestamp")
