"""Llama training steps with transformers' RMSNorm and rotary embedding against behavior_lm/models/fused_llama.py.

Usage: python scripts/bench_fused_llama.py [--steps 30] [--threads 1]

The Llama of ``scripts/bench_peers.py`` (width 64, 2 blocks of 2 heads, MLP 64, attention dropout
0.2, windows of 51, batch 128, 1,689 tokens as ML-100K's vocabulary): a training step as the
Trainer runs it on CPU (PCG64 dropout masks, the fused full-softmax cross-entropy of
behavior_lm/training/fused_softmax.py, AdamW) on random histories, float32 and bf16 autocast.
One model, switched between the two implementations step by step (the norms change class, the
rotary function is swapped and put back), so load on the machine hits both alike. Time is CPU time
of this process (``time.process_time``), which this machine's neighbours disturb less than wall
time. Prints the median step of each and the ratio as a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from behavior_lm.models import fused_llama
from behavior_lm.models.fast_dropout import use_fast_dropout
from behavior_lm.models.fused_llama import FusedLlamaRMSNorm
from behavior_lm.training.fused_softmax import FusedSoftmax, hidden_states_forward

VOCAB, LENGTH, BATCH = 1689, 51, 128


def switch(model: torch.nn.Module, fused: bool) -> None:
    """The model's norms and the process's rotary embedding: fused (ours) or transformers' own."""
    for module in model.modules():
        if isinstance(module, LlamaRMSNorm):
            module.__class__ = FusedLlamaRMSNorm if fused else LlamaRMSNorm
    modeling_llama.apply_rotary_pos_emb = (fused_llama.fused_apply_rotary_pos_emb if fused
                                           else fused_llama.ORIGINAL_APPLY_ROTARY_POS_EMB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant and dtype")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=LENGTH,
                         attention_dropout=0.2, tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).train()
    use_fast_dropout(model)   # as a CPU training run
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(3, VOCAB, (BATCH, LENGTH))
    loss = FusedSoftmax()
    print(f"\n{args.threads} thread(s), batch {BATCH} x {LENGTH}, median of {args.steps} steps (CPU time)\n")
    print("| precision | transformers (ms/step) | fused (ms/step) | ratio |\n|---|---:|---:|---:|")
    for bf16 in (False, True):
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(2 * (args.steps + 2)):
            fused = bool(i % 2)
            switch(model, fused)
            start = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                with hidden_states_forward(model) as hidden_only:
                    hidden = model(input_ids=ids, **hidden_only).hidden_states[-1]
            loss.matmul_dtype = torch.bfloat16 if bf16 else torch.float32
            loss.loss(model, hidden, ids).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 4:   # two warm-up steps each
                times[fused].append(time.process_time() - start)
        base, fast = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {'bf16 autocast' if bf16 else 'float32'} | {1e3 * base:.1f} | {1e3 * fast:.1f} | "
              f"{base / fast:.2f}x |")
    switch(model, False)


if __name__ == "__main__":
    main()
