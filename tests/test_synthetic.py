"""The SYNTHETIC social-media generator: deterministic, read through the generic CSV reader, and
its oracle is the process it samples from."""
from __future__ import annotations

import numpy as np
import pytest

from behavior_lm.data import synthetic
from behavior_lm.data.sources import load_events


def test_generator_is_seeded_and_read_back_through_the_generic_reader(tmp_path, monkeypatch):
    a, b = synthetic.generate(n_users=20, seed=3), synthetic.generate(n_users=20, seed=3)
    assert a == b and a != synthetic.generate(n_users=20, seed=4)
    monkeypatch.setenv("BEHAVIOR_LM_CACHE", str(tmp_path))
    log = load_events("synthetic-social")             # generated on first use, then read as a CSV
    assert (tmp_path / "datasets" / "synthetic-social" / "social.csv").is_file()
    table = log.table
    assert table.num_rows == 600 * 60
    assert set(table.column("behavior").to_pylist()) == set(synthetic.BEHAVIORS)


def test_samples_follow_the_oracle_probabilities():
    log = synthetic.generate(n_users=400, events_per_user=60, seed=1)
    counts = np.zeros((5, 5))
    same = np.zeros(2)
    favourite_views = np.zeros(2)
    prev = None
    for user, item, behavior, _ in log.rows:
        if prev is not None and prev[0] == user:
            counts[synthetic.BEHAVIORS.index(prev[2]), synthetic.BEHAVIORS.index(behavior)] += 1
            if behavior != "view":
                same += [item == prev[1], 1]
        if behavior == "view":
            favourite_views += [item.startswith(f"p{log.favourite[user]}-"), 1]
        prev = (user, item, behavior)
    empirical = counts / counts.sum(1, keepdims=True)
    assert np.abs(empirical - synthetic.TRANSITIONS).max() < 0.03
    # same post: 0.9 planted + 0.1 x P(a view-like pick lands on it again) (~0.7 / 30)
    assert same[0] / same[1] == pytest.approx(0.9, abs=0.02)
    assert favourite_views[0] / favourite_views[1] == pytest.approx(0.7 + 0.3 / 10, abs=0.02)


def test_oracle_distribution_and_metrics_by_hand():
    p_b, p_item = synthetic.oracle_next("like", "p2-5", topic=2)
    assert p_b.tolist() == synthetic.TRANSITIONS[1].tolist()
    assert p_item.sum() == pytest.approx(1.0)
    top = synthetic.ITEMS[int(np.argmax(p_item))]
    assert top == "p2-5"                                   # acting again on the same post
    m = synthetic.oracle_metrics([("u", "like", "p2-5", "comment", "p2-5")], {"u": 2}, ks=(1,))
    assert m["hr@1"] == 1.0 and m["next_behavior_accuracy"] == 0.0   # arg-max after like is view
    # a target inside a tie group of 30 equal posts (another topic): expected rank, not the worst
    m = synthetic.oracle_metrics([("u", "view", "p2-5", "view", "p7-1")], {"u": 2}, ks=(400,))
    assert m["hr@400"] == 1.0 and 0 < m["mrr@400"] < 1
