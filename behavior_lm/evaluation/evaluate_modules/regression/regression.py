"""behavior-lm regression metrics (MAE, RMSE) as an ``evaluate`` module, e.g. next-rating."""
import datasets
import evaluate

from behavior_lm.evaluation.metrics import mae, rmse

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted values.
    references: true values.
Returns:
    mae, rmse.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Regression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}))

    def _compute(self, predictions, references):
        return {"mae": mae(references, predictions), "rmse": rmse(references, predictions)}
