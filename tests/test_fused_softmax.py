"""The fused full softmax (behavior_lm/training/fused_softmax.py): the loss and every parameter's
gradient equal the model's own stock loss, chunk boundaries change nothing, bfloat16 matmuls stay
close, and a Trainer run uses it by default and records it."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import behavior_lm  # noqa: F401  (registers the GRU/LSTM classes)
from behavior_lm.training import fused_softmax
from behavior_lm.training.fused_softmax import ChunkedSoftmaxCrossEntropy, FusedSoftmax, hidden_states_forward
from behavior_lm.training.sampled_softmax import SAMPLED_MODEL_TYPES
from tests.test_sampled_softmax import batch_and_model


def grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def fused_loss(model, batch, fused: FusedSoftmax) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs, output_hidden_states=True, logits_to_keep=1)
    assert out.logits.size(1) == 1                     # the (batch, length, vocab) logits are never built
    return fused.loss(model, out.hidden_states[-1], batch["labels"])


def output_layer_problem(with_bias: bool, label_smoothing: float = 0.0):
    """Hidden rows, an output layer (and bias), targets, the parameters, and the float32 summed
    cross-entropy they should give (203 rows over 61 classes: several chunks at small CHUNK_ELEMENTS)."""
    torch.manual_seed(0)
    h = torch.randn(203, 16, requires_grad=True)
    w = (0.5 * torch.randn(61, 16)).requires_grad_()
    b = torch.randn(61, requires_grad=True) if with_bias else None
    t = torch.randint(0, 61, (203,))
    params = [x for x in (h, w, b) if x is not None]
    reference = F.cross_entropy(h @ w.T + (b if with_bias else 0), t, reduction="sum", label_smoothing=label_smoothing)
    return h, w, b, t, params, reference


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("model_type", SAMPLED_MODEL_TYPES)
def test_fused_loss_and_gradients_equal_the_stock_loss(model_type, multi):
    _, _, model, batch = batch_and_model(model_type, multi)
    stock = model(**batch).loss                         # the model's own causal-LM loss
    expected = grads(model, stock)
    got = fused_loss(model, batch, FusedSoftmax())
    assert got.item() == pytest.approx(stock.item(), rel=1e-6)
    actual = grads(model, got)
    assert actual.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(actual[name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("multi", [False, True])
def test_bert4rec_cloze_loss_and_gradients_equal_bert_for_masked_lm(multi):
    """The head runs on the masked rows only, and gives BertForMaskedLM's own cloze loss."""
    _, _, model, batch = batch_and_model("bert4rec", multi)
    labelled = batch["labels"] != -100
    assert 0 < labelled.sum() < batch["attention_mask"].sum()   # a cloze batch: some positions, not all
    head = model.cls
    stock = model(**batch).loss
    expected = grads(model, stock)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with hidden_states_forward(model) as hidden_only:
        out = model(**inputs, **hidden_only)
    assert out.logits.numel() == 0                       # no logits at all in the forward
    assert model.cls is head                             # and the head is back afterwards
    got = FusedSoftmax().loss(model, out.hidden_states[-1], batch["labels"], shift=False)
    assert got.item() == pytest.approx(stock.item(), rel=1e-6)
    actual = grads(model, got)
    assert actual.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(actual[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_the_cloze_head_sees_few_distinct_shapes():
    """The masked-row count differs in every batch; each new shape of the head's GELU built (and
    cached) another oneDNN primitive, and a long ML-1M BERT4Rec run grew to 20 GB. The head now
    runs on a row count from a short list (at most 1/8 padding), whatever the batch."""
    from behavior_lm.training.sampled_softmax import mlm_transform, row_bucket

    _, _, model, _ = batch_and_model("bert4rec", multi=False)
    seen: set[tuple[int, ...]] = set()
    mlm_transform(model).register_forward_hook(lambda module, args, out: seen.add(tuple(args[0].shape)))
    generator = torch.Generator().manual_seed(0)
    vocab, width = model.config.vocab_size, model.config.hidden_size
    counts = range(1000, 3000, 7)
    for count in counts:
        labels = torch.full((1, 3000), -100)
        labels[0, :count] = torch.randint(5, vocab, (count,), generator=generator)
        loss = FusedSoftmax().loss(model, torch.randn(1, 3000, width, generator=generator), labels, shift=False)
        assert torch.isfinite(loss)
    assert len(seen) <= 14, sorted(seen)
    assert all(count <= row_bucket(count) <= max(64 * -(-count // 64), count * 9 // 8) for count in range(70000))


def test_the_head_is_restored_when_the_forward_fails():
    _, _, model, _ = batch_and_model("bert4rec", multi=False)
    head = model.cls
    with pytest.raises(ValueError):
        with hidden_states_forward(model):
            model(input_ids=None)
    assert model.cls is head


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "gru"])
def test_bfloat16_matmuls_stay_close(model_type):
    _, _, model, batch = batch_and_model(model_type, multi=False)
    exact = fused_loss(model, batch, FusedSoftmax())
    expected = grads(model, exact)
    approx = fused_loss(model, batch, FusedSoftmax(torch.bfloat16))
    actual = grads(model, approx)
    assert approx.item() == pytest.approx(exact.item(), rel=1e-2)
    flat = torch.cat([g.flatten() for g in expected.values()])
    got = torch.cat([actual[n].flatten() for n in expected])
    assert F.cosine_similarity(flat, got, dim=0) > 0.999


@pytest.mark.parametrize("with_bias", [False, True])
def test_chunk_boundaries_change_nothing(monkeypatch, with_bias):
    torch.manual_seed(0)
    h = torch.randn(103, 8, requires_grad=True)
    w = torch.randn(37, 8, requires_grad=True)
    b = torch.randn(37, requires_grad=True) if with_bias else None
    t = torch.randint(0, 37, (103,))
    logits = h @ w.T + (b if with_bias else 0)
    reference = F.cross_entropy(logits, t, reduction="sum")
    ref_grads = torch.autograd.grad(reference * 0.5, [x for x in (h, w, b) if x is not None])
    for elements in (37 * 16, 37 * 50, 1 << 19):           # 7 chunks with a short last one, 3, 1
        monkeypatch.setattr(fused_softmax, "CHUNK_ELEMENTS", elements)
        loss = ChunkedSoftmaxCrossEntropy.apply(h, w, b, t, torch.float32)
        assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
        got = torch.autograd.grad(loss * 0.5, [x for x in (h, w, b) if x is not None])
        for g, r in zip(got, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_bias", [False, True])
def test_bfloat16_chunks_stay_close_to_float32(monkeypatch, with_bias):
    """bf16 without a bias takes the route where the softmax reads the bf16 logits directly
    (with a bias, the float32 one): either way the loss and the gradients stay within bf16
    rounding of the float32 cross-entropy, over any chunking."""
    h, w, b, t, params, reference = output_layer_problem(with_bias)
    ref_grads = torch.autograd.grad(reference * 0.25, params)
    assert fused_softmax._low_precision_softmax(torch.bfloat16, b) is not with_bias
    assert not fused_softmax._low_precision_softmax(torch.float32, None)
    for elements in (61 * 16, 61 * 70, 1 << 19):
        monkeypatch.setattr(fused_softmax, "CHUNK_ELEMENTS", elements)
        loss = ChunkedSoftmaxCrossEntropy.apply(h, w, b, t, torch.bfloat16)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(reference.item(), rel=2e-3)
        got = torch.autograd.grad(loss * 0.25, params)
        for g, r in zip(got, ref_grads):
            assert g.dtype == torch.float32
            assert F.cosine_similarity(g.flatten(), r.flatten(), dim=0) > 0.999
            assert (g - r).norm() < 0.02 * r.norm()


@pytest.mark.parametrize("model_type", SAMPLED_MODEL_TYPES)
def test_label_smoothing_equals_the_trainers_label_smoother(model_type):
    """``label_smoothing_factor`` through the fused loss: the loss and every gradient equal
    transformers' LabelSmoother on the model's own logits (it used to fall back to that stock path)."""
    from transformers.trainer_pt_utils import LabelSmoother

    _, _, model, batch = batch_and_model(model_type, False)
    with torch.no_grad():                               # peaked logits: at init they are near uniform
        model.get_output_embeddings().weight.mul_(30)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    stock = LabelSmoother(epsilon=0.1)(model(**inputs), batch["labels"], shift_labels=True)
    expected = grads(model, stock)
    got = fused_loss(model, batch, FusedSoftmax(label_smoothing=0.1))
    assert got.item() == pytest.approx(stock.item(), rel=1e-6)
    assert got.item() != pytest.approx(fused_loss(model, batch, FusedSoftmax()).item(), rel=1e-4)
    actual = grads(model, got)
    for name, g in expected.items():
        torch.testing.assert_close(actual[name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("matmul_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_label_smoothing_over_any_chunking(monkeypatch, matmul_dtype, with_bias):
    """Both softmax routes (float32, and bf16 logits read directly) and chunk boundaries."""
    h, w, b, t, params, reference = output_layer_problem(with_bias, label_smoothing=0.2)
    ref_grads = torch.autograd.grad(reference, params)
    tol = 1e-5 if matmul_dtype == torch.float32 else 2e-3
    for elements in (61 * 16, 61 * 70, 1 << 19):
        monkeypatch.setattr(fused_softmax, "CHUNK_ELEMENTS", elements)
        loss = ChunkedSoftmaxCrossEntropy.apply(h, w, b, t, matmul_dtype, 0.2)
        assert loss.item() == pytest.approx(reference.item(), rel=tol)
        for g, r in zip(torch.autograd.grad(loss, params), ref_grads):
            assert (g - r).norm() < max(tol, 1e-4) * 10 * r.norm()


@pytest.mark.parametrize("model_type", ["gpt2", "bert4rec"])
def test_runs_use_it_by_default_and_record_it(tmp_path, model_type):
    from behavior_lm.cli.main import main
    from conftest import QUICKSTART, TINY

    losses = {}
    for fused in ("true", "false"):
        out = tmp_path / fused
        assert main(["train", str(QUICKSTART), *TINY, "--model_type", model_type, "--fused_softmax", fused,
                     "--logging_steps", "1", "--output_dir", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())["behavior_lm"]
        assert config["softmax"] == {"kind": "full", "fused": fused == "true", "matmul_dtype": "float32",
                                     "label_smoothing": 0.0}
        losses[fused] = [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    # the same loss and gradients: the two runs follow the same trajectory up to float rounding
    assert len(losses["true"]) == len(losses["false"]) >= 2
    for a, b in zip(losses["true"], losses["false"]):
        assert a == pytest.approx(b, rel=1e-3)


def test_bf16_runs_train_in_bfloat16_and_rank_in_float32(tmp_path):
    """``bf16: true`` needs no ``use_cpu`` on a CPU-only machine; validation and test ranking run
    the float32 forward, so the run's own test metrics are what ``evaluate`` gets from its weights."""
    from behavior_lm.cli.main import main
    from behavior_lm.evaluation.run_eval import evaluate_run
    from conftest import QUICKSTART, TINY

    out = tmp_path / "run"
    assert main(["train", str(QUICKSTART), *TINY, "--model_type", "gru", "--bf16", "true",
                 "--output_dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["behavior_lm"]
    assert config["softmax"] == {"kind": "full", "fused": True, "matmul_dtype": "bfloat16", "label_smoothing": 0.0}
    metrics = json.loads((out / "metrics.json").read_text())
    rescored, _ = evaluate_run(out)
    for key in ("hr@10", "ndcg@10", "mrr@20"):
        assert rescored["gru"][key] == pytest.approx(metrics["test"][key], abs=1e-12), key


def test_ranking_under_bf16_mixed_precision_runs_the_float32_forward():
    from accelerate import Accelerator

    from behavior_lm.training.trainer import full_precision

    _, _, model, batch = batch_and_model("gpt2", multi=False)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        exact = model(**inputs).logits
        prepared = Accelerator(mixed_precision="bf16", cpu=True).prepare(model)
        assert "_original_forward" in prepared.__dict__        # accelerate wrapped forward in autocast
        mixed = prepared(**inputs).logits
        with full_precision(prepared) as plain:
            restored = plain(**inputs).logits
        again = prepared(**inputs).logits                       # and the wrapper is back for training
    assert not torch.equal(mixed, exact)
    assert torch.equal(restored, exact)
    assert torch.equal(again, mixed)
