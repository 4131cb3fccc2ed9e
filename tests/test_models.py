"""One matrix over every registered next-behavior model type (tiny configs built here):
Auto resolution, save/load equality, two Trainer steps change the weights, the harness scores it."""
from __future__ import annotations

import torch
import pytest
from datasets import Dataset
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSequenceClassification,
                          AutoTokenizer, TrainingArguments)

import behavior_lm  # noqa: F401  (registers the GRU/LSTM classes)
from behavior_lm.evaluation.harness import evaluate_baselines, evaluate_model, markov_scorer
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.models.auto import MODEL_TYPES, build_model
from behavior_lm.tasks import get_task
from behavior_lm.models.rnn import BehaviorRNNConfig
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer, item_mask
from behavior_lm.arguments import ModelArguments
from behavior_lm.data.collators import BehaviorCollator
from behavior_lm.training.run import make_collator
from behavior_lm.training.trainer import BehaviorTrainer, make_compute_metrics


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([str(i) for i in range(12)], max_length=16)


def tiny(model_type, tok):
    args = ModelArguments(model_type=model_type, hidden_size=16, num_layers=2, num_heads=2, dropout=0.0)
    return build_model(args, tok, 16)


def data(tok):
    ids = tok.convert_tokens_to_ids
    bos = tok.bos_token_id
    train = Dataset.from_dict({"input_ids": [[bos] + ids([f"i:{(u + j) % 12}" for j in range(6)])
                                             for u in range(8)]})
    evals = Dataset.from_dict({"input_ids": [[bos] + ids(["i:1", "i:2"]), [bos] + ids(["i:5"])],
                               "target": ids(["i:3", "i:6"]), "seen": [ids(["i:1", "i:2"]), ids(["i:5"])]})
    return train, evals


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_auto_resolution_and_save_load_equality(model_type, tok, tmp_path):
    model = tiny(model_type, tok).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config)
    auto = AutoModelForMaskedLM if model_type == "bert4rec" else AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert (tmp_path / "model.safetensors").is_file()
    x = AutoTokenizer.from_pretrained(tmp_path)("i:1 i:2 i:3", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**x).logits, loaded(**x).logits, atol=1e-6)
    assert loaded.get_output_embeddings().weight.data_ptr() == \
        loaded.get_input_embeddings().weight.data_ptr()  # tied, as declared


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_two_trainer_steps_change_weights_and_harness_scores(model_type, tok, tmp_path):
    model = tiny(model_type, tok)
    train, evals = data(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to="none", remove_unused_columns=False,
                             save_strategy="no", disable_tqdm=True, use_cpu=True)
    collator = make_collator(ModelArguments(model_type=model_type), tok)
    trainer = BehaviorTrainer(model=model, args=args, train_dataset=train, eval_dataset=evals,
                              data_collator=collator,
                              compute_metrics=make_compute_metrics([1, 5]),
                              item_mask=item_mask(tok, model.get_output_embeddings().out_features))
    trainer.train()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed, "no parameter changed after two steps"
    metrics = trainer.evaluate()
    for key in ("eval_hr@1", "eval_ndcg@5", "eval_mrr@5", "eval_loss"):
        assert key in metrics
    assert metrics["eval_num_ranked"] == 2
    # the standalone harness gives the same numbers as the Trainer's evaluation step
    protocol = EvalProtocol(ks=(1, 5))
    direct = evaluate_model(model, evals, tok, protocol, batch_size=1)
    for k in ("hr@1", "ndcg@5", "mrr@5"):
        assert direct[k] == pytest.approx(metrics[f"eval_{k}"], abs=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_rnn_sequence_classification_head(cell, tmp_path):
    cfg = BehaviorRNNConfig(vocab_size=20, hidden_size=8, cell=cell, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    x = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    mask = (x != 0).long()
    out = model(input_ids=x, attention_mask=mask, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.item() > 0
    # the pooled state is the last real token's: padding more does not change the logits
    wider = torch.cat([x, torch.zeros(2, 3, dtype=torch.long)], 1)
    assert torch.allclose(model(input_ids=wider, attention_mask=(wider != 0).long()).logits, out.logits)
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.allclose(again(input_ids=x, attention_mask=mask).logits, out.logits)


def test_rnn_initialisation():
    for cell in ("gru", "lstm"):
        m = AutoModelForCausalLM.from_config(BehaviorRNNConfig(vocab_size=20, hidden_size=8, cell=cell))
        w = m.rnn.encoder.weight_hh_l0                      # (gates * 8, 8), orthogonal columns
        assert torch.allclose(w.T @ w, torch.eye(8), atol=1e-5)
        bias = m.rnn.encoder.bias_ih_l0
        if cell == "lstm":
            assert bias[8:16].tolist() == [1.0] * 8 and bias[:8].abs().sum() == 0
        else:
            assert bias.abs().sum() == 0


def test_markov_floor_against_hand_counts(tok):
    ids = tok.convert_tokens_to_ids
    bos = tok.bos_token_id
    train = Dataset.from_dict({"input_ids": [[bos] + ids(["i:1", "i:2", "i:1", "i:3"]),
                                             [bos] + ids(["i:1", "i:2"])]})
    scorer = markov_scorer(train, len(tok), item_mask(tok))
    batch = BehaviorCollator(tok.pad_token_id)([{"input_ids": [bos] + ids(["i:4", "i:1"]),
                                                 "target": ids("i:2"), "seen": []}])
    scores = scorer(batch)[0]
    # transitions out of i:1: -> i:2 twice, -> i:3 once; popularity only breaks ties (< 1)
    assert scores[ids("i:2")] > scores[ids("i:3")] > scores[ids("i:4")]
    assert scores[ids("i:2")] == pytest.approx(2 + 2 / 4, abs=1e-6)   # count + pop(2) / (max 3 + 1)
    evals = Dataset.from_dict({"input_ids": [[bos] + ids(["i:4", "i:1"])], "target": [ids("i:3")],
                               "seen": [[]]})
    res = evaluate_baselines(["popularity", "markov"], train, evals, tok, EvalProtocol(ks=(1, 2)))
    assert res["markov"]["hr@2"] == 1.0 and res["markov"]["hr@1"] == 0.0


def test_cloze_collator_masks_items_and_always_the_last(tok):
    collator = make_collator(ModelArguments(model_type="bert4rec", mask_probability=0.0), tok)
    ids = tok.convert_tokens_to_ids
    rows = [{"input_ids": [tok.bos_token_id] + ids(["i:1", "i:2", "i:3"])},
            {"input_ids": [tok.bos_token_id] + ids(["i:4"])}]
    batch = collator(rows)
    m = tok.mask_token_id
    assert batch["input_ids"].tolist() == [[tok.bos_token_id] + ids(["i:1", "i:2"]) + [m],
                                           [tok.bos_token_id, m, tok.pad_token_id, tok.pad_token_id]]
    assert batch["labels"].tolist() == [[-100, -100, -100, ids("i:3")], [-100, ids("i:4"), -100, -100]]
    everything = make_collator(ModelArguments(model_type="bert4rec", mask_probability=1.0), tok)(rows)
    assert (everything["input_ids"][0, 1:] == m).all()            # items masked, [BOS] never
    assert everything["input_ids"][0, 0] == tok.bos_token_id


def test_cloze_collator_masks_the_last_item_with_its_probability(tok):
    """mask_last_probability 0: random masks only (BERT4Rec's own training); in between: each row's
    last item is masked at that rate; the default (1) draws nothing more, so earlier runs' masks stay."""
    ids = tok.convert_tokens_to_ids
    rows = [{"input_ids": [tok.bos_token_id] + ids(["i:1", "i:2", "i:3"])} for _ in range(4000)]
    never = make_collator(ModelArguments(model_type="bert4rec", mask_probability=0.0, mask_last_probability=0.0), tok)
    batch = never(rows)
    assert (batch["labels"] == -100).all() and (batch["input_ids"] != tok.mask_token_id).all()
    half = make_collator(ModelArguments(model_type="bert4rec", mask_probability=0.0, mask_last_probability=0.5), tok)
    rate = (half(rows)["input_ids"][:, -1] == tok.mask_token_id).float().mean().item()
    assert abs(rate - 0.5) < 0.05
    torch.manual_seed(3)
    always = make_collator(ModelArguments(model_type="bert4rec", mask_probability=0.3), tok)(rows[:50])
    torch.manual_seed(3)
    chosen = torch.rand(50, 4) < 0.3                       # the default's only draw: the random masks
    chosen[:, 0] = False                                    # [BOS] is never masked
    chosen[:, -1] = True
    assert torch.equal(always["labels"] != -100, chosen)


def test_masked_scoring_appends_mask_after_history(tok):
    from behavior_lm.evaluation.scoring import append_token
    ids = torch.tensor([[2, 10, 11, 0], [2, 12, 0, 0]])
    att = (ids != 0).long()
    new_ids, new_att, pos = append_token(ids, att, 4, 0)
    assert new_ids.tolist() == [[2, 10, 11, 4, 0], [2, 12, 4, 0, 0]]
    assert pos.tolist() == [3, 2] and new_att.sum(1).tolist() == [4, 3]


CLASSIFIERS = [("bert", "next-class"), ("gru", "next-rating"), ("lstm", "next-class"),
               ("bert", "event-class")]


@pytest.mark.parametrize("model_type,task", CLASSIFIERS, ids=lambda v: str(v))
def test_classifiers_auto_save_load_and_train(model_type, task, tmp_path):
    from transformers import AutoModelForTokenClassification

    from behavior_lm.evaluation.task_metrics import make_task_metrics

    tok = build_tokenizer([str(i) for i in range(12)], template="classification", max_length=16)
    args = ModelArguments(model_type=model_type, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0)
    model = get_task(task).build_model(args, tok, 16, num_labels=2)
    rows = [tok(f"i:{u} i:{u + 1}", f"i:{(u + 2) % 12}")["input_ids"] for u in range(8)]
    if task == "event-class":
        labels = [[-100] + [u % 2] * (len(r) - 2) + [-100] for u, r in enumerate(rows)]
    elif task == "next-rating":
        labels = [float(u % 5) for u in range(8)]
    else:
        labels = [u % 2 for u in range(8)]
    ds = Dataset.from_dict({"input_ids": rows, "labels": labels})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    targs = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                              learning_rate=1e-2, report_to="none", remove_unused_columns=False,
                              save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = BehaviorTrainer(model=model, args=targs, train_dataset=ds, eval_dataset=ds,
                              data_collator=BehaviorCollator(tok.pad_token_id),
                              compute_metrics=make_task_metrics(task, 2))
    trainer.train()
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())
    metrics = trainer.evaluate()
    assert ("eval_mae" in metrics) if task == "next-rating" else ("eval_f1_macro" in metrics)
    model.eval().save_pretrained(tmp_path / "m")
    auto = AutoModelForTokenClassification if task == "event-class" else AutoModelForSequenceClassification
    loaded = auto.from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is type(model)
    x = torch.tensor([rows[0]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, loaded(input_ids=x).logits, atol=1e-6)


def test_item_cloze_loss_normalises_over_items_only(tok):
    """``cloze_loss: items``: cross-entropy of the masked targets among item tokens (brute force)."""
    from types import SimpleNamespace

    from behavior_lm.training.trainer import item_cloze_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 5, len(tok))
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 4], labels[1, 2] = tok.convert_tokens_to_ids(["i:3", "i:7", "i:0"])
    items = item_mask(tok)
    got = item_cloze_loss(items)(SimpleNamespace(logits=logits), labels)
    want = []
    for r, p in ((0, 1), (1, 2), (1, 4)):
        row = logits[r, p][items]
        target = int(items[: labels[r, p]].sum())                 # index among the item tokens
        want.append(-torch.log_softmax(row, dim=-1)[target])
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-6)
    assert torch.allclose(item_cloze_loss(items)(SimpleNamespace(logits=logits), labels, num_items_in_batch=6),
                          torch.stack(want).sum() / 6, atol=1e-6)
