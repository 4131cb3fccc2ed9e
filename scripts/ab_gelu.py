"""A/B of GPT-2's activation kernel: gelu_new (GPT-2's default, several elementwise ops) against
gelu_pytorch_tanh (the same tanh approximation as one fused kernel), 22 training steps of the
quickstart recipe at 1 thread, alternating, 3 repeats; prints the medians and their ratio.

Usage: python scripts/ab_gelu.py   (reads ML-100K from $BEHAVIOR_LM_CACHE)
"""
import statistics
import time
from pathlib import Path

import torch
torch.set_num_threads(1)
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM
from behavior_lm.training.recipes import parse_recipe
from behavior_lm.data.pipeline import prepare_data
from behavior_lm.models.auto import build_config
from behavior_lm.training.run import make_collator
d, m, t, _ = parse_recipe(str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "gpt2-ml-100k.yaml"), ["--output_dir", "/tmp/x"])
data = prepare_data(d)
col = make_collator(m, data.tokenizer)
g = torch.Generator().manual_seed(0)
batches = list(DataLoader(data.datasets["train"].with_format(None), batch_size=64, shuffle=True, collate_fn=col, generator=g))[:25]
res = {"gelu_new": [], "gelu_pytorch_tanh": []}
for rep in range(3):
    for act in res:
        torch.manual_seed(0)
        cfg = build_config(m, data.tokenizer, d.max_length); cfg.activation_function = act
        model = AutoModelForCausalLM.from_config(cfg); model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for b in batches[:3]:
            model(**b).loss.backward(); opt.step(); opt.zero_grad()
        t0 = time.perf_counter()
        for b in batches[3:]:
            model(**b).loss.backward(); opt.step(); opt.zero_grad()
        res[act].append(time.perf_counter() - t0)
for act, v in res.items():
    print(act, "median s for 22 steps", round(statistics.median(v), 3), [round(x, 3) for x in v])
print("ratio tanh-kernel / gelu_new:", round(statistics.median(res["gelu_pytorch_tanh"]) / statistics.median(res["gelu_new"]), 3))
