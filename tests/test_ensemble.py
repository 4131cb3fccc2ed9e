"""``behavior-lm ensemble``: fusion methods against brute-force references, weights fitted on
validation, the saved directory loaded by the pipeline and ``evaluate`` exactly as it was scored,
and refusals in one line."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, pipeline

import behavior_lm  # noqa: F401  (registers the pipeline and the model classes)
from behavior_lm.cli.main import main
from behavior_lm.errors import RecipeError
from behavior_lm.ensemble import build_ensemble
from behavior_lm.evaluation.fusion import BehaviorEnsembleModel, fit_weights, fuse, log_likelihood
from behavior_lm.evaluation.run_eval import evaluate_run
from behavior_lm.hub import stage_run
from behavior_lm.tokenization.behavior_tokenizer import item_mask

from conftest import QUICKSTART, TINY


@pytest.fixture(scope="module")
def tiny_gru(tmp_path_factory) -> Path:
    """A tiny GRU on the very split of ``tiny_run`` (same recipe and data flags)."""
    out = tmp_path_factory.mktemp("runs") / "gru"
    assert main(["train", str(QUICKSTART), *TINY, "--model_type", "gru", "--output_dir", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------- fusion functions
def test_fuse_matches_brute_force():
    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(3, 4, 9), dim=-1)
    w = torch.tensor([0.2, 0.5, 0.3])
    for b, i in itertools.product(range(4), range(9)):
        mix = sum(float(w[m]) * math.exp(float(lp[m, b, i])) for m in range(3))
        assert math.isclose(float(fuse(lp, w, "weighted")[b, i]), math.log(mix), rel_tol=1e-5)
        rrf = 0.0
        for m in range(3):                        # rank of i in member m: 1 + items scoring higher
            rank = 1 + sum(float(lp[m, b, j]) > float(lp[m, b, i]) for j in range(9))
            rrf += float(w[m]) / (60 + rank)
        assert math.isclose(float(fuse(lp, w, "rrf")[b, i]), rrf, rel_tol=1e-6)
    # majority vote: two members say class 1, one says class 0
    votes = torch.log(torch.tensor([[[0.1, 0.9]], [[0.4, 0.6]], [[0.99, 0.01]]]))
    assert fuse(votes, torch.full((3,), 1 / 3), "vote").argmax(-1).item() == 1
    # a tie (one vote each) goes to the higher mean probability
    tie = torch.log(torch.tensor([[[0.45, 0.55]], [[0.9, 0.1]]]))
    assert fuse(tie, torch.full((2,), 0.5), "vote").argmax(-1).item() == 0
    # weighted votes: 0.33 + 0.33 outvote 0.34 however confident the 0.34 member is
    three = torch.log(torch.tensor([[[0.01, 0.01, 0.98]], [[0.5, 0.3, 0.2]], [[0.5, 0.3, 0.2]]]))
    assert fuse(three, torch.tensor([0.34, 0.33, 0.33]), "vote").argmax(-1).item() == 0


def test_fitted_weights_are_the_likelihood_optimum():
    rng = np.random.default_rng(0)
    target_lp = np.log(rng.dirichlet(np.ones(3), size=400) * rng.uniform(0.01, 1, size=(400, 1)))
    target_lp[:, 2] -= 3.0                          # a weak member
    w = fit_weights(target_lp)
    assert math.isclose(w.sum(), 1.0, rel_tol=1e-9) and (w >= 0).all()
    best_grid = max(log_likelihood(target_lp, np.array([a, b, max(1 - a - b, 0.0)]))
                    for a in np.linspace(0, 1, 51) for b in np.linspace(0, 1, 51) if a + b <= 1)
    assert log_likelihood(target_lp, w) >= best_grid - 1e-9
    # one member that always gives the target more probability takes all the weight
    dominant = np.stack([np.full(50, -1.0), np.full(50, -3.0)], axis=1)
    assert fit_weights(dominant)[0] > 0.999


# ---------------------------------------------------------------------------- on real runs
def test_an_ensemble_of_one_run_equals_the_run(tiny_run, tmp_path):
    out = build_ensemble([tiny_run], "mean", tmp_path / "one")
    metrics = json.loads((out / "metrics.json").read_text())
    run_metrics, _ = evaluate_run(tiny_run)
    single = run_metrics["gpt2"]
    for key in ("hr@10", "ndcg@10", "mrr@20"):
        assert metrics["test"][key] == pytest.approx(single[key], abs=1e-12)
    history = ["50", "172", "133"]
    alone = pipeline("next-behavior", model=str(tiny_run))(history, top_k=5)
    fused = pipeline("next-behavior", model=str(out))(history, top_k=5)
    assert [r["item"] for r in fused] == [r["item"] for r in alone]
    assert [r["score"] for r in fused] == pytest.approx([r["score"] for r in alone], rel=1e-5)


def test_weighted_ensemble_scores_serves_and_reloads_the_same(tiny_run, tiny_gru, tmp_path, capsys):
    out = tmp_path / "fused"
    assert main(["ensemble", str(tiny_run), str(tiny_gru), "--floors", "markov", "--method", "weighted",
                 "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    weights = metrics["ensemble"]["weights"]
    assert list(weights) == ["tiny", "gru", "markov"] and sum(weights.values()) == pytest.approx(1.0)
    assert metrics["fit"]["split"] == "validation"
    assert metrics["fit"]["log_likelihood_fitted"] >= metrics["fit"]["log_likelihood_uniform"] - 1e-9
    assert set(metrics["members"]["test"]) == {"tiny", "gru", "markov"}
    assert (out / "members" / "tiny" / "model.safetensors").is_file() and (out / "floors.safetensors").is_file()
    # the member rows are the runs' own numbers
    assert metrics["members"]["test"]["gru"]["ndcg@10"] == pytest.approx(
        json.loads((tiny_gru / "metrics.json").read_text())["test"]["ndcg@10"], abs=1e-6)
    # `behavior-lm evaluate` on the saved directory reproduces the ensemble's test numbers
    rescored, _ = evaluate_run(out)
    for key in ("hr@10", "ndcg@10", "mrr@10"):
        assert rescored["ensemble"][key] == pytest.approx(metrics["test"][key], abs=1e-12)
    # the pipeline ranks a history exactly as the harness's fused scores do
    tok = AutoTokenizer.from_pretrained(out)
    model = BehaviorEnsembleModel.from_pretrained(out)
    history = ["50", "172", "133", "1"]
    ids = tok(" ".join(f"i:{i}" for i in history), return_tensors="pt")["input_ids"]
    cand = item_mask(tok, model.get_output_embeddings().out_features)
    scores = model.fused_scores(ids, torch.ones_like(ids), cand)[0]
    scores[tok.convert_tokens_to_ids([f"i:{i}" for i in history])] = float("-inf")   # seen filtered
    expected = [tok.convert_ids_to_tokens(i)[2:] for i in scores.topk(10).indices.tolist()]
    got = pipeline("next-behavior", model=str(out))(history, top_k=10)
    assert [r["item"] for r in got] == expected
    assert sum(r["score"] for r in got) < 1.0
    capsys.readouterr()
    assert main(["predict", str(out), "--history", "50 172 133", "--top_k", "3"]) == 0
    assert capsys.readouterr().out.count("\n| ") >= 3
    # what `push` uploads (members' weights, floors, card) loads as the same model
    staged = stage_run(out, tmp_path / "stage", "org/fused")
    assert "## Members" in (staged / "README.md").read_text()
    again = pipeline("next-behavior", model=str(staged))(history, top_k=10)
    assert [r["item"] for r in again] == expected
    # and the HTTP server serves it like any run
    from fastapi.testclient import TestClient

    from behavior_lm.serving.app import create_app

    client = TestClient(create_app(str(out)))
    assert client.post("/events", json={"events": [{"user": "u", "item": i} for i in history]}).status_code == 200
    served = client.post("/recommend", json={"user": "u", "top_k": 10}).json()["items"]
    assert [r["item"] for r in served] == expected


def test_rrf_ensemble_loads_in_the_pipeline(tiny_run, tiny_gru, tmp_path):
    out = build_ensemble([tiny_run, tiny_gru], "rrf", tmp_path / "rrf", floors=["popularity"],
                         weights=[1, 1, 0.5])
    weights = json.loads((out / "metrics.json").read_text())["ensemble"]["weights"]
    assert weights == pytest.approx({"tiny": 0.4, "gru": 0.4, "popularity": 0.2})
    rows = pipeline("next-behavior", model=str(out))(["50", "172"], top_k=20)
    assert len(rows) == 20 and all(r["score"] > 0 for r in rows)


def test_ensemble_refusals(tiny_run, tmp_path):
    with pytest.raises(RecipeError, match="does not apply to task next-item"):
        build_ensemble([tiny_run], "vote", tmp_path / "a")
    with pytest.raises(RecipeError, match="fits its weights"):
        build_ensemble([tiny_run], "weighted", tmp_path / "b", weights=[1.0])
    with pytest.raises(RecipeError, match="unknown shuffle"):
        build_ensemble([tiny_run], "mean", tmp_path / "c", floors=["shuffle"])
    with pytest.raises(RecipeError, match="not a finished run"):
        build_ensemble([tmp_path], "mean", tmp_path / "d")
    other = tmp_path / "other"                   # the same run with a different split setting
    other.mkdir()
    for f in tiny_run.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    recipe = (other / "recipe.yaml").read_text().replace("max_users: 60", "max_users: 59")
    (other / "recipe.yaml").write_text(recipe)
    with pytest.raises(RecipeError, match="data settings differ.*max_users"):
        build_ensemble([tiny_run, other], "mean", tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_runs_with_one_folder_name_stay_separate_members(tiny_run, tiny_gru, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    twins = []
    for folder, run in (("a", tiny_run), ("b", tiny_gru)):
        twin = tmp_path / folder / "model"
        twin.symlink_to(run, target_is_directory=True)
        twins.append(twin)
    out = build_ensemble(twins, "mean", tmp_path / "twins")
    names = [m["name"] for m in json.loads((out / "metrics.json").read_text())["ensemble"]["members"]]
    assert names == ["model-1", "model-2"]
    types = {json.loads((out / "members" / n / "config.json").read_text())["model_type"] for n in names}
    assert types == {"gpt2", "behavior-rnn"} or len(types) == 2


def test_vote_ensemble_on_a_classification_task(tmp_path):
    """next-class (like / dislike of the next rating): a BERT and a GRU classifier fused by
    majority vote; the ensemble's accuracy is the brute-force vote over the members' outputs."""
    from behavior_lm.data.pipeline import prepare_data
    from behavior_lm.arguments import DataArguments
    from behavior_lm.evaluation.run_eval import load_task_model, task_logits

    runs = []
    for model_type in ("bert", "gru"):
        out = tmp_path / model_type
        recipe = Path(QUICKSTART).parents[1] / "next-class" / f"{model_type}-ml-100k.yaml"
        assert main(["train", str(recipe), *TINY, "--output_dir", str(out)]) == 0
        runs.append(out)
    fused = build_ensemble(runs, "vote", tmp_path / "vote", weights=[1, 1])
    metrics = json.loads((fused / "metrics.json").read_text())
    data = prepare_data(DataArguments.of_run(runs[0]), template="classification")
    outs = [task_logits(load_task_model(r, "next-class"), data, "test", "next-class") for r in runs]
    labels = outs[0][1]
    probs = [torch.softmax(torch.as_tensor(lg), -1).numpy() for lg, _ in outs]
    votes = np.stack([p.argmax(-1) for p in probs])
    mean_p = np.mean(probs, axis=0)
    pred = np.array([np.bincount(votes[:, n], minlength=mean_p.shape[1]).argmax()
                     if len(set(votes[:, n])) == 1 else mean_p[n].argmax() for n in range(labels.size)])
    assert metrics["test"]["accuracy"] == pytest.approx(float((pred == labels).mean()))
    rescored, _ = evaluate_run(fused)
    assert rescored["ensemble"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_floor_distributions_rank_as_the_floors_and_sum_to_one():
    """What fusion mixes for a floor is a proper distribution with the floor's own order."""
    from datasets import Dataset

    from behavior_lm.evaluation.floors import FLOORS, build_floor

    rng = np.random.default_rng(0)
    vocab = 40
    candidates = torch.zeros(vocab, dtype=torch.bool)
    candidates[5:] = True
    train = Dataset.from_dict({"input_ids": [[1, *rng.integers(5, vocab, size=rng.integers(3, 15)).tolist()]
                                             for _ in range(60)]})
    ids = torch.tensor([[1, *rng.integers(5, vocab, size=8).tolist()] for _ in range(6)])
    ids[0, 1:] = 0                                     # one history with no items: pads only
    mask = (ids != 0).long()
    for name in FLOORS:
        floor = build_floor(name, train, candidates)
        scores, lp = floor(ids, mask)[:, 5:], floor.log_probs(ids, mask)
        assert torch.allclose(lp.exp().sum(-1), torch.ones(6), atol=1e-5), name
        assert torch.isinf(lp[:, :5]).all(), name
        for b in range(6):
            s, p = scores[b], lp[b, 5:]
            assert torch.equal(torch.sign(s[:, None] - s[None, :]), torch.sign(p[:, None] - p[None, :])), name
