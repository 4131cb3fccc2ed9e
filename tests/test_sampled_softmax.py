"""Sampled softmax with log-Q correction (behavior_lm/training/sampled_softmax.py): the hidden
states it reads give exactly the stock logits, the estimate converges to the full cross-entropy as
the number of negatives grows (uniform and popularity proposals, one- and multi-behavior streams),
and a run trains through the Trainer with it."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import behavior_lm  # noqa: F401  (registers the GRU/LSTM classes)
from behavior_lm.arguments import ModelArguments
from behavior_lm.data.collators import IGNORE_INDEX
from behavior_lm.errors import RecipeError
from behavior_lm.evaluation.run_eval import evaluate_run
from behavior_lm.models.auto import build_model, template_for
from behavior_lm.models.output_prior import item_log_prior
from behavior_lm.tokenization.behavior_tokenizer import item_mask
from behavior_lm.training.run import make_collator
from behavior_lm.training.sampled_softmax import SAMPLED_MODEL_TYPES, SampledSoftmax
from tests.test_layout_contract import MAX_LENGTH, tiny_setup


def batch_and_model(model_type: str, multi: bool):
    tok, dsd, model, _ = tiny_setup(model_type, multi)
    model.eval()                                       # no dropout: compare against one forward
    args = ModelArguments(model_type=model_type)
    batch = make_collator(args, tok)([dsd["train"][i] for i in range(dsd["train"].num_rows)])
    return tok, dsd, model, batch


def full_cross_entropy(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def sampled_loss(model, batch, sampler: SampledSoftmax, step: int = 0) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True, logits_to_keep=1)
    assert out.logits.size(1) == 1                     # the (batch, length, vocab) logits are never built
    return sampler.loss(model, out.hidden_states[-1], batch["labels"], step)


@pytest.mark.parametrize("model_type", SAMPLED_MODEL_TYPES)
def test_sampled_loss_equals_the_brute_force_over_the_stock_logits(model_type):
    tok, dsd, model, batch = batch_and_model(model_type, multi=True)
    items = item_mask(tok, model.get_output_embeddings().out_features)
    sampler = SampledSoftmax.build(items, "popularity", 7, seed=3, log_prior=item_log_prior(dsd["train"], items),
                                   pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        got = sampled_loss(model, batch, sampler, step=5)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    negatives, _ = sampler.draw(5)
    prior = item_log_prior(dsd["train"], items).double()
    q = prior - torch.logsumexp(prior[items], 0)          # the proposal over items, by hand
    total, count = 0.0, 0
    for b in range(labels.size(0)):
        for t in range(labels.size(1)):
            y = int(labels[b, t])
            if y == IGNORE_INDEX:
                continue
            corr = (lambda v: float(q[v] + torch.log(torch.tensor(7.0))) if items[v] else 0.0)
            row = [float(logits[b, t, y])]                        # the target: exact
            row += [float(logits[b, t, v]) - corr(int(v)) for v in negatives if int(v) != y]
            row += [float(logits[b, t, v]) for v in range(len(tok))
                    if not items[v] and v != tok.pad_token_id and v != y]
            total -= float(torch.log_softmax(torch.tensor(row, dtype=torch.float64), 0)[0])
            count += 1
    assert got.item() == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize("proposal", ["uniform", "popularity"])
@pytest.mark.parametrize("multi", [False, True])
def test_many_negatives_approach_the_full_cross_entropy(proposal, multi):
    """With K >> catalogue the corrected estimate tends to the full softmax; without log-Q the
    popularity proposal would be off by the log-frequency of the sampled items."""
    tok, dsd, model, batch = batch_and_model("gpt2", multi)
    items = item_mask(tok, model.get_output_embeddings().out_features)
    sampler = SampledSoftmax.build(items, proposal, 20000, seed=0, log_prior=item_log_prior(dsd["train"], items),
                                   pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        full, got = full_cross_entropy(model, batch), sampled_loss(model, batch, sampler)
    assert got.item() == pytest.approx(full.item(), rel=0.01)


def test_negatives_are_a_function_of_seed_and_step():
    items = torch.zeros(50, dtype=torch.bool)
    items[5:] = True
    a, b = SampledSoftmax.build(items, "uniform", 16, seed=1), SampledSoftmax.build(items, "uniform", 16, seed=1)
    assert torch.equal(a.draw(7)[0], b.draw(7)[0])           # a resumed run draws the same negatives
    assert not torch.equal(a.draw(7)[0], a.draw(8)[0])
    assert bool(items[a.draw(3)[0]].all())                     # only items are drawn
    assert a.draw(3)[0].unique().numel() == 16                  # uniform: without replacement
    everything = SampledSoftmax.build(items, "uniform", 1000, seed=1)
    negatives, correction = everything.draw(0)                 # K >= n: every item once, no correction
    assert sorted(negatives.tolist()) == list(range(5, 50)) and torch.all(correction == 0)
    cold = torch.arange(5, 45)
    c = SampledSoftmax.build(items, "uniform", 200, seed=1, exclude=cold)
    assert set(c.draw(0)[0].tolist()) <= set(range(45, 50))    # cold items are never negatives


@pytest.mark.slow
def test_sampled_run_trains_and_records_it(tmp_path):
    from behavior_lm.cli.main import main
    from conftest import QUICKSTART, TINY

    out = tmp_path / "run"
    assert main(["train", str(QUICKSTART), *TINY, "--model_type", "gru", "--softmax", "sampled",
                 "--num_negatives", "64", "--negative_sampling", "popularity", "--eval_item_chunk", "100",
                 "--output_dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["behavior_lm"]["softmax"] == {"kind": "sampled", "num_negatives": 64,
                                                "negative_sampling": "popularity"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["ndcg@10"] <= 1.0 and metrics["test"]["num_ranked"] == 60
    losses = [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert losses and all(l == l for l in losses)              # finite, logged by the Trainer
    # the Trainer ranked in chunks of 100 items; `evaluate` ranks the whole catalogue at once
    rescored, _ = evaluate_run(out)
    for key in ("hr@10", "ndcg@10", "mrr@20"):
        assert rescored["gru"][key] == pytest.approx(metrics["test"][key], abs=1e-12), key


def test_sampled_softmax_is_refused_where_it_does_not_apply():
    from behavior_lm.training.recipes import parse_recipe

    for extra in (["--model_type", "bert4rec"], ["--task", "next-class", "--model_type", "gru"]):
        with pytest.raises(RecipeError, match="softmax"):
            parse_recipe(None, ["--softmax", "sampled", *extra])
    with pytest.raises(RecipeError, match="num_negatives"):
        parse_recipe(None, ["--softmax", "sampled", "--num_negatives", "0", "--model_type", "gpt2"])
    with pytest.raises(RecipeError, match="label_smoothing_factor"):
        parse_recipe(None, ["--softmax", "sampled", "--label_smoothing_factor", "0.1", "--model_type", "gpt2"])
