"""A synthetic social-media log (view / like / comment / share / follow) with planted patterns.

SYNTHETIC DATA: no real user is behind it. It exists to show the pipeline on another behavior
vocabulary and to check that models recover patterns whose true probabilities are known, so their
scores can be read against an *oracle* that knows the generating process.

The process, per user (seeded, deterministic):

- each user has a favourite topic (10 topics x 30 posts; item ids ``p<topic>-<k>``);
- the next behavior depends only on the last one, through the transition matrix
  :data:`TRANSITIONS` (e.g. after ``like`` a ``comment`` is likely, after ``share`` a ``view``);
- a ``view`` picks a post from the favourite topic with probability 0.7 (else a uniform topic),
  uniformly inside the topic; ``like`` / ``comment`` / ``share`` / ``follow`` act on the post of the
  previous event with probability 0.9 (else they act like a ``view`` would pick);
- time between events is exponential (mean 10 minutes).

:func:`oracle_next` gives the exact ``P(behavior | last event)`` and ``P(item | history)`` (the
mixture over behaviors), which :func:`oracle_metrics` scores with the same metric functions as
the harness.
"""
from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from behavior_lm.rundir import atomic_write

BEHAVIORS = ("view", "like", "comment", "share", "follow")
TRANSITIONS = np.array([
    # view  like  comment share follow      (row: last behavior, column: next)
    [0.55, 0.25, 0.10, 0.05, 0.05],   # view
    [0.50, 0.10, 0.30, 0.08, 0.02],   # like
    [0.50, 0.10, 0.10, 0.25, 0.05],   # comment
    [0.80, 0.10, 0.05, 0.00, 0.05],   # share
    [0.90, 0.05, 0.03, 0.02, 0.00],   # follow
])
TOPICS, POSTS_PER_TOPIC = 10, 30
FAVOURITE, SAME_POST = 0.7, 0.9
MEAN_GAP_SECONDS = 600


def item_id(topic: int, k: int) -> str:
    return f"p{topic}-{k}"


ITEMS = [item_id(t, k) for t in range(TOPICS) for k in range(POSTS_PER_TOPIC)]
INDEX = {item: i for i, item in enumerate(ITEMS)}


@dataclass(frozen=True)
class SocialLog:
    rows: list[tuple[str, str, str, int]]          # user, item, behavior, timestamp (time order)
    favourite: dict[str, int]                      # user -> favourite topic (what the oracle knows)


def _view_distribution(topic: int) -> np.ndarray:
    p = np.full(TOPICS, (1 - FAVOURITE) / TOPICS)
    p[topic] += FAVOURITE
    return np.repeat(p / POSTS_PER_TOPIC, POSTS_PER_TOPIC)           # over ITEMS


def generate(n_users: int = 600, events_per_user: int = 60, seed: int = 0) -> SocialLog:
    rng = random.Random(seed)
    rows: list[tuple[str, str, str, int]] = []
    favourite: dict[str, int] = {}
    for u in range(n_users):
        user = f"u{u}"
        topic = rng.randrange(TOPICS)
        favourite[user] = topic
        t = 1_700_000_000 + rng.randrange(86_400)
        behavior, item = "view", None
        for n in range(events_per_user):
            if n > 0:
                behavior = rng.choices(BEHAVIORS, weights=TRANSITIONS[BEHAVIORS.index(behavior)])[0]
            if behavior != "view" and item is not None and rng.random() < SAME_POST:
                pass                                                  # act on the same post
            else:
                tp = topic if rng.random() < FAVOURITE else rng.randrange(TOPICS)
                item = item_id(tp, rng.randrange(POSTS_PER_TOPIC))
            t += max(1, int(rng.expovariate(1 / MEAN_GAP_SECONDS)))
            rows.append((user, item, behavior, t))
    return SocialLog(rows, favourite)


def write_csv(log: SocialLog, path: Path) -> Path:
    """A CSV with its own column names (``account,post,action,ts``), read back through the
    generic table reader with a column mapping: the same path a user's own log takes."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["account", "post", "action", "ts"])
    writer.writerows(log.rows)
    return atomic_write(path, buffer.getvalue())


def oracle_next(last_behavior: str, last_item: str, topic: int) -> tuple[np.ndarray, np.ndarray]:
    """True ``P(next behavior)`` (over :data:`BEHAVIORS`) and ``P(next item)`` (over :data:`ITEMS`)."""
    p_b = TRANSITIONS[BEHAVIORS.index(last_behavior)]
    view = _view_distribution(topic)
    same = np.zeros(len(ITEMS))
    same[INDEX[last_item]] = 1.0
    act = SAME_POST * same + (1 - SAME_POST) * view
    p_item = p_b[0] * view + (1 - p_b[0]) * act
    return p_b, p_item


def oracle_metrics(examples: list[tuple[str, str, str, str, str]], favourite: dict[str, int],
                   ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """The oracle's scores on held-out events ``(user, last behavior, last item, target behavior,
    target item)``: next-behavior accuracy (arg-max of the true distribution) and the expected
    HR/NDCG/MRR of the true item distribution. The true distribution has exact ties (posts of a
    topic are equally likely), so the target's rank is taken uniform over its tie group (what a
    model with continuous scores achieves at best); pessimistic ties would understate the oracle.
    """
    correct = []
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg", "mrr")}
    for user, lb, li, tb, ti in examples:
        p_b, p_item = oracle_next(lb, li, favourite[user])
        correct.append(BEHAVIORS[int(np.argmax(p_b))] == tb)
        target = p_item[INDEX[ti]]
        greater = int((p_item > target).sum())
        tied = int((p_item == target).sum()) - 1
        ranks = np.arange(greater, greater + tied + 1)          # equally likely positions
        for k in ks:
            inside = ranks < k
            sums[f"hr@{k}"] += inside.mean()
            sums[f"ndcg@{k}"] += np.where(inside, 1.0 / np.log2(ranks + 2.0), 0.0).mean()
            sums[f"mrr@{k}"] += np.where(inside, 1.0 / (ranks + 1.0), 0.0).mean()
    out = {k: float(v / max(len(examples), 1)) for k, v in sums.items()}
    out["next_behavior_accuracy"] = float(np.mean(correct))
    return out
