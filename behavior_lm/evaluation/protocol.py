"""The evaluation protocol, stated explicitly and written next to every number.

Published next-item numbers are only comparable inside one protocol (full vs sampled candidates,
seen-item filtering, which event is the target). So the protocol is an object that is saved into
``metrics.json`` and the results table, never an implicit default.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from behavior_lm.evaluation.metrics import DEFAULT_KS


@dataclass(frozen=True)
class EvalProtocol:
    split: str = "leave_one_out"          # or "temporal"
    candidates: str = "full"              # every item in the catalogue is ranked; semantic-id runs:
    #                                       "beam search (N beams)": only the generated items are ranked
    filter_seen: bool = True              # items in the user's history are removed (target kept)
    ks: tuple[int, ...] = DEFAULT_KS
    ties: str = "pessimistic"             # rank = number of other items scoring >= the target
    target: str = "last event per user (test); second-to-last (validation)"
    max_length: int = 200                 # history tokens the model sees (most recent kept)
    # multi-behavior streams: "mixture" ranks by sum_b P(b|h) P(item|h,b); "target behavior"
    # appends the target's <b> first (what will they buy next); "none": one-behavior stream
    behavior_scoring: str = "none"

    @property
    def condition_on_behavior(self) -> bool:
        return self.behavior_scoring == "target behavior"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ks"] = list(self.ks)
        return d

    def describe(self) -> str:
        seen = "seen items filtered" if self.filter_seen else "seen items kept"
        scoring = {"mixture": ", items ranked by the mixture over next behaviors",
                   "target behavior": ", items ranked given the target's behavior"}.get(self.behavior_scoring, "")
        floors = "" if self.candidates == "full" else " (the floors rank the full catalogue)"
        return (f"{self.split.replace('_', '-')}, {self.candidates} ranking{floors}, {seen}{scoring}, "
                f"ties pessimistic, K in {list(self.ks)}")

    @classmethod
    def from_dict(cls, d: dict) -> "EvalProtocol":
        d = dict(d)
        d.pop("extra", None)                       # runs written before the field was dropped
        d["ks"] = tuple(d.get("ks", DEFAULT_KS))
        return cls(**d)
