"""Scoring a catalogue in item chunks (behavior_lm/evaluation/scoring.py: chunked_ranks,
chunked_top_k) gives exactly what the whole ``(batch, vocab)`` logits give, for every chunk size,
with seen items filtered, ties, biases and targets in any chunk."""
from __future__ import annotations

import pytest
import torch

import behavior_lm  # noqa: F401
from behavior_lm.evaluation.metrics import rank_of_target
from behavior_lm.evaluation.scoring import (chunked_ranks, chunked_top_k, next_token_features,
                                            next_token_scores, output_layer, score_ranks)
from tests.test_layout_contract import tiny_setup
from behavior_lm.training.run import make_collator
from behavior_lm.arguments import ModelArguments


def case(seed: int, vocab: int = 97, batch: int = 6, hidden: int = 8, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, hidden, generator=g)
    weight = torch.randn(vocab, hidden, generator=g)
    if ties:                                              # exact ties with the target
        weight[10:20] = weight[5]
    bias = torch.randn(vocab, generator=g)
    candidates = torch.rand(vocab, generator=g) > 0.1
    targets = torch.randint(0, vocab, (batch,), generator=g)
    candidates[targets] = True
    seen = torch.randint(0, vocab, (batch, 12), generator=g)
    seen[:, -3:] = -1                                     # padding of the seen lists
    seen[0, 0] = targets[0]                               # a repeat: the target stays rankable
    return features, weight, bias, targets, candidates, seen


@pytest.mark.parametrize("chunk", [1, 7, 32, 97, 1000])
@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_chunked_ranks_and_loss_equal_the_whole_logits(chunk, seed, ties):
    features, weight, bias, targets, candidates, seen = case(seed, ties=ties)
    logits = features @ weight.T + bias
    want_ranks, want_loss = score_ranks(logits, targets, candidates, seen)
    ranks, loss = chunked_ranks(features, weight, bias, targets, candidates, seen, chunk=chunk)
    assert torch.equal(ranks, want_ranks)
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-5)
    ranks_all, _ = chunked_ranks(features, weight, None, targets, candidates, None, chunk=chunk)
    assert torch.equal(ranks_all, rank_of_target(features @ weight.T, targets, candidates, None))


@pytest.mark.parametrize("chunk", [1, 5, 40, 97])
def test_chunked_top_k_is_the_brute_force_top_k(chunk):
    features, weight, bias, _, candidates, seen = case(3)
    logits = (features @ weight.T + bias).masked_fill(~candidates, float("-inf"))
    for b in range(seen.size(0)):
        logits[b, seen[b][seen[b] >= 0]] = float("-inf")
    want = logits.topk(10, dim=1)
    scores, ids = chunked_top_k(features, weight, bias, 10, candidates, seen, chunk=chunk)
    assert torch.allclose(scores, want.values) and torch.equal(ids, want.indices)


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "gru", "bert4rec"])
def test_features_times_the_output_layer_are_the_models_scores(model_type):
    tok, dsd, model, _ = tiny_setup(model_type, multi=False)
    model.eval()
    batch = make_collator(ModelArguments(model_type=model_type), tok)(
        [dsd["test"][i] for i in range(dsd["test"].num_rows)])
    weight, bias = output_layer(model)
    features = next_token_features(model, batch["input_ids"], batch["attention_mask"])
    want = next_token_scores(model, batch["input_ids"], batch["attention_mask"])
    got = features @ weight.T + (0 if bias is None else bias)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("model_type", ["gpt2", "bert4rec"])
def test_evaluation_in_chunks_equals_whole_catalogue_evaluation(model_type):
    """The harness and the Trainer take the chunked path past ``item_chunk`` tokens and report
    the same metrics as with whole logits."""
    from behavior_lm.evaluation.harness import evaluate_model
    from behavior_lm.evaluation.protocol import EvalProtocol

    tok, dsd, model, _ = tiny_setup(model_type, multi=False)
    protocol = EvalProtocol(split="leave_one_out", filter_seen=True, ks=(1, 5, 10))
    whole = evaluate_model(model, dsd["test"], tok, protocol, batch_size=4, item_chunk=0)
    chunked = evaluate_model(model, dsd["test"], tok, protocol, batch_size=4, item_chunk=7)
    for key in whole:
        if key != "eval_seconds":
            assert chunked[key] == whole[key], key
