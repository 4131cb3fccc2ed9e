"""behavior-lm classification metrics as an ``evaluate`` module.

Accuracy, per-class and macro precision / recall / F1 (a class never predicted has precision 0,
so ignoring a rare class such as ``buy`` is punished) and, for two classes with ``scores`` (the
positive-class probability), ROC-AUC. Same functions as ``behavior-lm evaluate``.
"""
import datasets
import evaluate

from behavior_lm.evaluation.metrics import accuracy, precision_recall_f1, roc_auc

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids.
    references: true class ids.
    labels: optional class ids to report (default: those seen in either list).
    scores: optional positive-class scores (binary only) for ROC-AUC.
Returns:
    accuracy, precision/recall/f1 per class (suffix _<class>) and macro, roc_auc when scores are given.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references, labels=None, scores=None):
        out = {"accuracy": accuracy(references, predictions),
               **precision_recall_f1(references, predictions, labels)}
        if scores is not None:
            out["roc_auc"] = roc_auc(references, scores)
        return out
