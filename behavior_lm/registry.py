"""What ``import behavior_lm`` registers, as one idempotent function (the console script calls it
after its cheap checks; see ``behavior_lm_cli``)."""
from __future__ import annotations

_registered = False


def register() -> None:
    """Register the GRU/LSTM and text-ranker classes with the Auto classes, the tasks (and their
    row builders with the data layer) and ``pipeline("next-behavior")``. Idempotent."""
    global _registered
    if _registered:
        return
    from behavior_lm.models import rnn as _rnn  # noqa: F401  (registers GRU/LSTM with the Auto classes)
    from behavior_lm.models import text_ranker as _text_ranker  # noqa: F401  (registers the text ranker)
    from behavior_lm import tasks as _tasks  # noqa: F401  (registers the tasks, and their rows with the data layer)
    from behavior_lm.inference.pipelines import register as register_pipeline

    register_pipeline()  # pipeline("next-behavior", model=...)
    _registered = True
