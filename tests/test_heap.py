"""keep_freed_memory: a large tensor allocated again after a free reuses the heap's pages instead of
a fresh mmap that the kernel faults in page by page. Each case runs in its own interpreter: the
setting is process-wide and must not leak into the test session."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from behavior_lm.training.heap import _glibc

PROBE = """
import json, resource, sys, torch
from behavior_lm.training.heap import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
for _ in range(4):                              # warm-up: the heap grows to its high-water mark
    x = torch.ones(16 * 2**20)                  # 64 MiB: above glibc's largest mmap threshold
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    x = torch.ones(16 * 2**20)
    del x
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt only (Linux); elsewhere keep_freed_memory does nothing")
def test_freed_tensors_reuse_pages():
    pages = 4 * 64 * 2**20 // 4096                   # what four fresh 64 MiB mappings fault in
    off, on = probe("off"), probe("on")
    assert on["applied"] is True
    assert off["faults"] > 0.9 * pages              # glibc's default: mmap, fault, munmap each time
    assert on["faults"] < 0.05 * pages              # kept: the pages of the first tensor are reused


def test_trainer_applies_it_on_cpu(tmp_path):
    """The Trainer of a CPU run applies it (the flag's default), in its own process."""
    code = """
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
from behavior_lm.arguments import BehaviorTrainingArguments
from behavior_lm.training import heap
from behavior_lm.training.trainer import BehaviorTrainer
model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=10, n_positions=8))
args = BehaviorTrainingArguments(output_dir=sys.argv[1], report_to=[], use_cpu=True, eval_strategy="no", save_strategy="no", keep_freed_memory=sys.argv[2] == "1")
BehaviorTrainer(model=model, args=args)
print(heap._applied)
"""
    for flag, expected in (("1", str(_glibc() is not None)), ("0", "False")):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path), flag], capture_output=True, text=True, check=True)
        assert done.stdout.strip().splitlines()[-1] == expected
