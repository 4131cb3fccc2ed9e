"""behavior-lm ranking metrics (HR, NDCG, MRR at K) as an ``evaluate`` module.

Inputs: ``predictions`` are score vectors over the candidates (one per example), ``references``
the index of the target in that vector. ``compute(..., ks=[5, 10, 20], exclude=[[...], ...])``:
``exclude`` lists candidate indices to drop per example (seen items; the target never is).
Ties count against the target, exactly as in ``behavior-lm evaluate``.
"""
import datasets
import evaluate
import torch

from behavior_lm.evaluation.metrics import DEFAULT_KS, rank_of_target, ranking_metrics

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of score lists, one per example (higher = more likely next).
    references: list of ints, the target's index in its score list.
    ks: cut-offs (default 5, 10, 20).
    exclude: optional list of index lists to remove from each ranking (the target is kept).
Returns:
    hr@K, ndcg@K, mrr@K for every K, and num_examples.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Ranking(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references, ks=DEFAULT_KS, exclude=None):
        scores = torch.tensor(predictions, dtype=torch.float32)
        targets = torch.tensor(references, dtype=torch.long)
        padded = None
        if exclude is not None:  # ragged index lists -> (batch, n) padded with -1, as the harness
            width = max((len(cols) for cols in exclude), default=0)
            padded = torch.full((len(exclude), width), -1, dtype=torch.long)
            for row, cols in enumerate(exclude):
                padded[row, : len(cols)] = torch.as_tensor(list(cols), dtype=torch.long)
        ranks = rank_of_target(scores, targets, None, padded)
        return {**ranking_metrics(ranks, tuple(ks)), "num_examples": int(targets.numel())}
