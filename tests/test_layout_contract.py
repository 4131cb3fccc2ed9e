"""Train and score the same way: every position that scoring reads was a training target position,
and scores do not depend on the padding side.

The positions are observed, not recomputed: a forward pre-hook on each model's backbone records
the attention masks that scoring passes, and the position it reads is each row's last real token
(the end of the history, or the appended ``<b>`` / ``[MASK]``). Training positions come from a real
collated training batch and its labels; for GPT-2 and BERT4Rec the learned position embeddings must
also have received a gradient at every row scoring reads.
"""
from __future__ import annotations

import pytest
import torch

import behavior_lm  # noqa: F401  (registers the GRU/LSTM classes)
from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.splits import leave_one_out
from behavior_lm.data.streams import StreamFormat, build_dataset_dict, context_events, window_events
from behavior_lm.evaluation.scoring import last_positions, next_item_scores, next_token_scores
from behavior_lm.models.auto import MODEL_TYPES, build_model, template_for
from behavior_lm.tokenization.behavior_tokenizer import behavior_token_ids, build_tokenizer, item_mask
from behavior_lm.arguments import ModelArguments
from behavior_lm.data.collators import IGNORE_INDEX, BehaviorCollator
from behavior_lm.training.run import make_collator

BEHAVIORS = ["pv", "cart", "buy"]
MAX_LENGTH = 11          # one behavior: 10 events per window; two tokens per event: 5


def sequences(multi: bool) -> list[UserSequence]:
    """Users with histories from shorter than one window to several windows long."""
    out = []
    for u, n in enumerate([3, 4, 7, 12, 15, 30, 31, 33, 40]):
        items = [str((u * 7 + 3 * j) % 25) for j in range(n)]
        behaviors = [BEHAVIORS[(u + j) % 3] for j in range(n)] if multi else ["interact"] * n
        out.append(UserSequence(f"u{u}", items, behaviors, list(range(n)), [None] * n, list(range(n))))
    return out


def tiny_setup(model_type: str, multi: bool):
    torch.manual_seed(0)
    seqs = sequences(multi)
    fmt = StreamFormat(behaviors=multi)
    tok = build_tokenizer([i for s in seqs for i in s.items], BEHAVIORS if multi else (),
                          template=template_for(model_type), max_length=MAX_LENGTH)
    dsd = build_dataset_dict(leave_one_out(seqs), tok, max_length=MAX_LENGTH, fmt=fmt)
    args = ModelArguments(model_type=model_type, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0,
                          mask_probability=0.5)
    model = build_model(args, tok, MAX_LENGTH)
    return tok, dsd, model, make_collator(args, tok)


def kind(tok, token_id: int) -> str:
    """What sits at a position: the appended/training [MASK], a behavior, an item, [BOS]."""
    t = tok.convert_ids_to_tokens(int(token_id))
    return {"[MASK]": "mask", "[BOS]": "bos"}.get(t, "behavior" if t.startswith("<") else "item")


def trained_positions(tok, batch: dict, masked: bool) -> set[tuple[int, str]]:
    """(position, kind of input token) pairs whose output carries a training loss."""
    ids, labels = batch["input_ids"], batch["labels"]
    out = set()
    for r in range(ids.size(0)):
        for p in range(ids.size(1)):
            target = labels[r, p] if masked else (labels[r, p + 1] if p + 1 < ids.size(1) else IGNORE_INDEX)
            if target != IGNORE_INDEX:
                out.add((p, kind(tok, ids[r, p])))
    return out


def scored_positions(tok, model, dsd) -> set[tuple[int, str]]:
    """(position, kind) pairs that ranking reads on the test rows, as observed at the backbone."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module, _args, kwargs):
        seen.append((kwargs["input_ids"], kwargs["attention_mask"]))

    handle = model.base_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        batch = BehaviorCollator(tok.pad_token_id)([dict(r) for r in dsd["test"]])
        b_ids = torch.tensor(list(behavior_token_ids(tok).values()), dtype=torch.long)
        cand = item_mask(tok, model.get_output_embeddings().out_features)
        next_item_scores(model.eval(), batch["input_ids"], batch["attention_mask"], cand, b_ids)
        if b_ids.numel():                                         # and given the target's behavior
            next_item_scores(model, batch["input_ids"], batch["attention_mask"], cand, b_ids,
                             batch["target_behavior"])
    finally:
        handle.remove()
    out = set()
    for ids, mask in seen:
        pos = last_positions(mask)
        out |= {(int(p), kind(tok, ids[r, p])) for r, p in enumerate(pos)}
    return out


@pytest.mark.parametrize("multi", [False, True], ids=["one-behavior", "multi-behavior"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_position_scoring_reads_was_trained(model_type, multi):
    tok, dsd, model, collator = tiny_setup(model_type, multi)
    masked = model_type == "bert4rec"
    torch.manual_seed(1)
    batch = collator([dict(r) for r in dsd["train"]])
    trained = trained_positions(tok, batch, masked)
    scored = scored_positions(tok, model, dsd)
    assert max(p for p, _ in scored) >= MAX_LENGTH - 4, "test histories should fill the context"
    assert scored <= trained, f"scored but never trained: {sorted(scored - trained)}"

    # the learned position embeddings that scoring reads all received a gradient
    model.train()
    model.zero_grad()
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
    table = {"gpt2": lambda m: m.transformer.wpe, "bert4rec": lambda m: m.bert.embeddings.position_embeddings}
    if model_type in table:
        grad = table[model_type](model).weight.grad
        for p, _ in scored:
            assert grad[p].abs().sum() > 0, f"position {p} is read by scoring but got no gradient"


def test_context_is_one_event_shorter_than_a_training_window():
    one, two = StreamFormat(), StreamFormat(behaviors=True)
    assert (window_events(MAX_LENGTH, one), context_events(MAX_LENGTH, one)) == (10, 9)
    assert (window_events(MAX_LENGTH, two), context_events(MAX_LENGTH, two)) == (5, 4)
    assert (window_events(12, two), context_events(12, two)) == (5, 4)       # odd room: whole events
    with pytest.raises(ValueError, match="at least 2"):
        window_events(4, two)


def pad(rows: list[list[int]], side: str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[r, span], mask[r, span] = torch.tensor(row), 1
    return ids, mask


@pytest.mark.parametrize("multi", [False, True], ids=["one-behavior", "multi-behavior"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_scores_do_not_depend_on_the_padding_side(model_type, multi):
    """Left-padded, right-padded and unpadded single rows give the same scores (mixture and
    conditioned too on multi-behavior streams)."""
    tok, dsd, model, _ = tiny_setup(model_type, multi)
    model.eval()
    rows = [list(r["input_ids"]) for r in dsd["test"]]
    assert len(set(map(len, rows))) > 2
    cand = item_mask(tok, model.get_output_embeddings().out_features)
    b_ids = torch.tensor(list(behavior_token_ids(tok).values()), dtype=torch.long)
    given = torch.tensor(dsd["test"]["target_behavior_id"]) if multi else None
    single = torch.cat([next_item_scores(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long),
                                         cand, b_ids, None if given is None else given[i:i + 1])
                        for i, r in enumerate(rows)])
    for side in ("right", "left"):
        ids, mask = pad(rows, side, tok.pad_token_id)
        batched = next_item_scores(model, ids, mask, cand, b_ids, given)
        assert torch.allclose(batched[:, cand], single[:, cand], atol=1e-4), side
        plain = next_token_scores(model, ids, mask)
        alone = torch.cat([next_token_scores(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))
                           for r in rows])
        assert torch.allclose(plain, alone, atol=1e-4), side


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_models_honour_the_attention_mask(cell):
    """The raw forward (a user's own scorer): states at real tokens do not see pad tokens."""
    tok, dsd, model, _ = tiny_setup(cell, False)
    model.eval()
    rows = [list(r["input_ids"]) for r in dsd["test"]][:4]
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([r])).logits[0] for r in rows]
        for side in ("right", "left"):
            ids, mask = pad(rows, side, tok.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask).logits
            for r, row in enumerate(rows):
                real = logits[r][mask[r].bool()]
                assert torch.allclose(real, alone[r], atol=1e-5), (side, r)


def test_pipeline_serializes_histories_exactly_as_the_scored_rows(tmp_path):
    """Time-gap, session and item side tokens: what ``pipeline()`` feeds the model for a history
    equals the test row the harness scored, token for token (settings read from config.json)."""
    from transformers import pipeline

    from behavior_lm.data.splits import leave_one_out
    from behavior_lm.inference.pipelines import parse_history
    from behavior_lm.arguments import BehaviorTrainingArguments, DataArguments
    from behavior_lm.training.run import describe_run_in_config

    steps = [5, 700, 40, 4000, 90_000, 30, 2_000_000, 61]
    seqs = []
    for u in range(6):
        n = 6 + 5 * u
        ts = [sum(steps[(u + k) % len(steps)] for k in range(j)) for j in range(n)]
        seqs.append(UserSequence(f"u{u}", [str((u + 2 * j) % 13) for j in range(n)],
                                 [BEHAVIORS[(u * j) % 3] for j in range(n)], ts, [None] * n, list(range(n))))
    side = {str(i): f"c{i % 4}" for i in range(12)}                  # item 12 has no category
    fmt = StreamFormat(behaviors=True, time_gaps=True, session_gap=1800, item_side="category", side_values=side)
    split = leave_one_out(seqs)
    tok = build_tokenizer([i for s in seqs for i in s.items], BEHAVIORS, max_length=30,
                          extra_tokens=fmt.extra_tokens())
    dsd = build_dataset_dict(split, tok, max_length=30, fmt=fmt)
    model = build_model(ModelArguments(model_type="llama", hidden_size=16, num_layers=1, num_heads=2,
                                       dropout=0.0), tok, 30)
    data_args = DataArguments(max_length=30, time_gaps=True, session_gap=1800, item_side="category")
    info = {"prepared": {"behaviors": BEHAVIORS}, "stream": fmt.describe(), "class_names": []}
    describe_run_in_config(model.config, data_args, ModelArguments(model_type="llama", dropout=0.0),
                           BehaviorTrainingArguments(output_dir=str(tmp_path)), info)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "item_side.json").write_text(__import__("json").dumps({"column": "category", "values": side}))
    pipe = pipeline("next-behavior", model=str(tmp_path))
    for example, row in zip(split.test, dsd["test"]):
        h = example.history
        events = list(zip(h.items, h.behaviors, h.timestamps))
        got = pipe.preprocess(parse_history(events))["input_ids"][0].tolist()
        assert got == row["input_ids"], (pipe.tokenizer.convert_ids_to_tokens(got),
                                         pipe.tokenizer.convert_ids_to_tokens(row["input_ids"]))
    tokens = {t for row in dsd["test"] for t in tok.convert_ids_to_tokens(row["input_ids"])}
    assert {"[SESSION]", "category:c1"} <= tokens and any(t.startswith("[gap:") for t in tokens)
    with pytest.raises(ValueError, match="time-gap/session"):
        pipe([("1", "pv"), ("2", "buy")])
