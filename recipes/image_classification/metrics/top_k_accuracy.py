"""Top-k accuracy for the `evaluate` library, from each example's k best class indices.

A local metric module: `evaluate.load("<path to this file>")` imports it without any download, so
the recipes score offline. It takes the top-k predictions, not the logits, so that an evaluation
never holds all the classes' scores (ImageNet: 1000 per image).

Example:
    >>> import evaluate
    >>> metric = evaluate.load("recipes/image_classification/metrics/top_k_accuracy.py", keep_in_memory=True)
    >>> metric.compute(predictions=[[3, 1], [0, 2]], references=[1, 2], k=[1, 2])
    {'top1_accuracy': 0.0, 'top2_accuracy': 1.0}
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Fraction of the examples whose label is among their k best predicted classes."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): each example's class indices, best first (at least one).
    references (`list` of `int`): each example's true class.
    k (`list` of `int`, *optional*, defaults to `[1, 5]`): the k's to report. A k larger than the
        number of predicted indices counts all of them (with 5 or fewer classes top-5 is 1.0).
Returns:
    `top{k}_accuracy` for each k: a float in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.ndim != 2 or len(predictions) != len(references):
            raise ValueError(
                f"predictions must be one row of class indices per reference, got shape {predictions.shape} "
                f"for {len(references)} references"
            )
        hits = predictions == references[:, None]
        return {f"top{kk}_accuracy": float(hits[:, :kk].any(axis=1).mean()) for kk in k}
