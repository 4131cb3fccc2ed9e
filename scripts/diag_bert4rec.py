"""Short in-process training runs of a masked-item model, to find what keeps it at the popularity
level (issue 11). Each variant trains the recipe's model on the recipe's training windows for a
fixed number of AdamW steps and prints the cloze loss every ``--every`` steps, plus how much of the
item-embedding variance lies on one direction (the collapse that a popularity-only model shows).

    BEHAVIOR_LM_DATA=../shared/datasets python scripts/diag_bert4rec.py recipes/next-item/bert4rec-ml-1m.yaml \
        --steps 300 --variant stock --variant zero_bias

"stock" is the recipe as it stands (output bias at the item prior); each other variant changes one thing.
The loop draws each step's rows with replacement (``--data_seed``); ``permutation`` draws each row
once per epoch as the Trainer's sampler does, and ``trainer`` / ``trainer_replacement`` run the same
model, rows and loss through ``BehaviorTrainer`` (the two check that the Trainer path learns as
this loop does; docs/benchmarks.md, "BERT4Rec: three seeds, gradient clipping, and the Trainer
against a plain loop").
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from behavior_lm.data.pipeline import prepare_data
from behavior_lm.models.fast_dropout import use_fast_dropout
from behavior_lm.models.output_prior import init_output_bias
from behavior_lm.tasks import build_model, template_for
from behavior_lm.tokenization.behavior_tokenizer import item_mask
from behavior_lm.training.fused_softmax import FusedSoftmax, hidden_states_forward
from behavior_lm.training.recipes import parse_recipe
from behavior_lm.training.run import make_collator

VARIANTS = ("stock", "no_embedding_ln", "no_dropout", "lr1e-3", "mask0.5", "recenter", "zero_bias",
            "init0.1", "zero_bias_init0.1", "no_transform", "zero_bias_no_transform", "fast_dropout",
            "fused_adamw", "permutation", "trainer", "trainer_replacement")


def collapse(model) -> float:
    e = model.get_input_embeddings().weight.detach()
    s = torch.linalg.svdvals(e)
    return float(s[0] ** 2 / (s ** 2).sum())


def run(recipe: str, variant: str, steps: int, every: int, batch: int, extra: list[str] = (),
        data_seed: int = 0) -> None:
    overrides = []
    if variant.startswith("zero_bias"):
        overrides += ["--output_bias_init", "zero"]
    if variant.endswith("init0.1"):
        overrides += ["--initializer_range", "0.1"]
    if variant == "no_dropout":
        overrides = ["--dropout", "0"]
    if variant == "mask0.5":
        overrides = ["--mask_probability", "0.5"]
    data_args, model_args, training_args, _ = parse_recipe(recipe, [*extra, *overrides])
    torch.manual_seed(training_args.seed)
    data = prepare_data(data_args, template=template_for(model_args.model_type))
    tok, train = data.tokenizer, data.datasets["train"]
    model = build_model(model_args, tok, data_args.max_length)
    if variant == "no_embedding_ln":
        model.bert.embeddings.LayerNorm = nn.Identity()
    if variant.endswith("no_transform"):     # the tied decoder straight on the encoder's output
        model.cls.predictions.transform = nn.Identity()
    if variant == "fast_dropout":            # the PCG64 masks and attention a training run uses
        use_fast_dropout(model)
    collator = make_collator(model_args, tok)
    items = item_mask(tok, model.get_output_embeddings().out_features)
    init_output_bias(model, train, items, model_args.output_bias_init)   # as a training run does
    if variant.startswith("trainer"):        # the same model, rows and loss through BehaviorTrainer
        return run_trainer(model, collator, train, training_args, steps, every, batch, variant)
    lr = 1e-3 if variant == "lr1e-3" else training_args.learning_rate
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=training_args.weight_decay,
                            fused=variant == "fused_adamw" or None)   # the Trainer's adamw_torch_fused
    warm = max(training_args.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    g = torch.Generator().manual_seed(data_seed)      # which rows each step draws (with replacement)
    model.train()
    t0, acc, n, order = time.time(), 0.0, 0, []
    for step in range(1, steps + 1):
        if variant == "permutation":         # each row once per epoch, as the Trainer's sampler
            if not order:
                order = torch.randperm(train.num_rows, generator=g).tolist()
            idx, order = order[:batch], order[batch:]
        else:
            idx = torch.randint(train.num_rows, (batch,), generator=g).tolist()
        b = collator([train[i] for i in idx])
        labels = b.pop("labels")          # BertForMaskedLM's cloze loss, the head on masked rows only
        with hidden_states_forward(model) as hidden_only:
            out = model(**b, **hidden_only)
        loss = FusedSoftmax().loss(model, out.hidden_states[-1], labels, shift=False)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad()
        if variant == "recenter":
            with torch.no_grad():
                w = model.get_input_embeddings().weight
                w[items] -= w[items].mean(0)
        acc, n = acc + float(loss.detach()), n + 1
        if step % every == 0:
            print(f"{variant:>16} step {step:5d} loss {acc / n:.3f} collapse {collapse(model):.3f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
            acc, n = 0.0, 0


def run_trainer(model, collator, train, training_args, steps: int, every: int, batch: int,
                variant: str) -> None:
    """The loop above as the Trainer runs it (constant rate after the warm-up, as above)."""
    import dataclasses
    import tempfile

    from behavior_lm.training.trainer import BehaviorTrainer

    args = dataclasses.replace(
        training_args, output_dir=tempfile.mkdtemp(), max_steps=steps, logging_steps=every,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False, report_to=[],
        per_device_train_batch_size=batch, lr_scheduler_type="constant_with_warmup", disable_tqdm=True)
    trainer = BehaviorTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                              output_loss=FusedSoftmax())
    if variant == "trainer_replacement":     # rows drawn as the loop above draws them
        trainer._get_train_sampler = lambda *a: torch.utils.data.RandomSampler(
            train, replacement=True, num_samples=steps * batch)
    trainer.train()
    for log in trainer.state.log_history:
        if "loss" in log:
            print(f"{variant:>16} step {log['step']:5d} loss {log['loss']:.3f} grad_norm {log['grad_norm']:.2f}",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("recipe")
    p.add_argument("--variant", action="append", choices=VARIANTS)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--data_seed", type=int, default=0, help="seed of the rows drawn per step")
    p.add_argument("--extra", default="", help="recipe flags for every variant, e.g. '--mask_probability 0.2'")
    a = p.parse_args()
    for v in a.variant or ["stock"]:
        run(a.recipe, v, a.steps, a.every, a.batch, a.extra.split(), a.data_seed)


if __name__ == "__main__":
    main()
