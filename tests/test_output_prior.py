"""The output bias starts at the items' log frequency (behavior_lm/models/output_prior.py), which
keeps BERT4Rec's item embeddings from collapsing onto one popularity direction (issue 11)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

import behavior_lm  # noqa: F401  (registers the GRU/LSTM classes)
from behavior_lm.arguments import ModelArguments
from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.splits import leave_one_out
from behavior_lm.data.streams import StreamFormat, build_dataset_dict
from behavior_lm.models.auto import build_model, template_for
from behavior_lm.models.output_prior import init_output_bias, item_log_prior, output_bias
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer, item_mask
from behavior_lm.training.run import make_collator

N_ITEMS, LENGTH = 400, 40


def zipf_data(model_type: str, users: int = 300):
    """Histories drawn from a Zipf popularity (as real catalogues are skewed)."""
    rng = np.random.default_rng(0)
    pop = 1 / np.arange(1, N_ITEMS + 1) ** 1.1
    seqs = []
    for u in range(users):
        items = [str(i) for i in rng.choice(N_ITEMS, size=LENGTH, p=pop / pop.sum())]
        seqs.append(UserSequence(f"u{u}", items, ["interact"] * LENGTH, list(range(LENGTH)),
                                 [None] * LENGTH, list(range(LENGTH))))
    tok = build_tokenizer([i for s in seqs for i in s.items], (), template=template_for(model_type),
                          max_length=LENGTH + 1)
    dsd = build_dataset_dict(leave_one_out(seqs), tok, max_length=LENGTH + 1, fmt=StreamFormat(behaviors=False))
    return tok, dsd


def test_item_log_prior_is_the_add_one_log_frequency_of_training_items():
    tok, dsd = zipf_data("bert4rec", users=40)
    items = item_mask(tok)
    prior = item_log_prior(dsd["train"], items)
    counts = Counter(t for row in dsd["train"]["input_ids"] for t in row)        # brute force
    total = sum(counts[i] + 1 for i in range(len(tok)) if items[i])
    for i in range(len(tok)):
        if items[i]:
            assert prior[i].item() == pytest.approx(math.log((counts[i] + 1) / total), rel=1e-5)
    assert torch.all(prior[~items] == prior[items].min())       # no special token above any item
    assert torch.logsumexp(prior[items].double(), 0).item() == pytest.approx(0.0, abs=1e-5)


def test_bert4rec_bias_starts_at_the_prior_and_models_without_bias_are_untouched():
    tok, dsd = zipf_data("bert4rec", users=40)
    args = ModelArguments(model_type="bert4rec", hidden_size=16, num_layers=1, num_heads=2)
    model = build_model(args, tok, LENGTH + 1)
    items = item_mask(tok, model.get_output_embeddings().out_features)
    assert init_output_bias(model, dsd["train"], items, "prior") == "prior"
    assert torch.equal(output_bias(model).detach(), item_log_prior(dsd["train"], items))
    # the decoder reads the same tensor (BERT ties cls.predictions.bias to decoder.bias)
    assert model.get_output_embeddings().bias.data_ptr() == output_bias(model).data_ptr()
    assert init_output_bias(model, dsd["train"], items, "zero") == "zero"
    assert torch.count_nonzero(output_bias(model)) == 0
    tok_c, dsd_c = zipf_data("gpt2", users=40)
    gpt2 = build_model(ModelArguments(model_type="gpt2", hidden_size=16, num_layers=1, num_heads=2), tok_c, LENGTH + 1)
    assert init_output_bias(gpt2, dsd_c["train"], item_mask(tok_c, gpt2.get_output_embeddings().out_features)) == "none"


def top_direction_share(how: str, steps: int = 60) -> float:
    """Share of the item embeddings' energy on their top singular direction after ``steps`` AdamW
    steps of cloze training at lr 3e-3 (the ML-1M recipe's rate), output bias initialised ``how``."""
    tok, dsd = zipf_data("bert4rec")
    torch.manual_seed(0)
    args = ModelArguments(model_type="bert4rec", hidden_size=32, num_layers=1, num_heads=1, dropout=0.1,
                          output_bias_init=how)
    model = build_model(args, tok, LENGTH + 1)
    items = item_mask(tok, model.get_output_embeddings().out_features)
    init_output_bias(model, dsd["train"], items, how)
    collate, train = make_collator(args, tok), dsd["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = collate([train[i] for i in torch.randint(train.num_rows, (32,)).tolist()])
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    s = torch.linalg.svdvals(model.get_input_embeddings().weight.detach()[items])
    return float(s[0] ** 2 / (s ** 2).sum())


def test_prior_bias_keeps_item_embeddings_from_collapsing_onto_popularity():
    """With the stock zero bias, 60 steps put most of the item embeddings' energy on one direction
    (popularity learned through the item rows): the state in which ML-1M BERT4Rec stayed at the
    unigram entropy. Starting the bias at the prior keeps the rows apart."""
    zero, prior = top_direction_share("zero"), top_direction_share("prior")
    assert zero > 0.6, zero            # the pathology this guards against is reproduced here
    assert prior < 0.5, prior
