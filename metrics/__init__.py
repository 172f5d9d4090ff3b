"""Pure metric functions (numpy/torch in, floats out)."""

from metrics.cl import (
    accuracy_matrix_from_rows,
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    cl_summary,
    curves,
    forgetting,
    forward_transfer,
    fwt_undefined_reason,
    retained_matrix,
    undefined_metrics,
)

__all__ = [
    "accuracy_matrix_from_rows",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "cl_summary",
    "curves",
    "forgetting",
    "forward_transfer",
    "fwt_undefined_reason",
    "retained_matrix",
    "undefined_metrics",
]
from metrics import (
    retrieval_eval,  # noqa: E402,F401  (issue 5: registers the "retrieval" evaluator)
    unlearning_eval,  # noqa: E402,F401  (issue 8: registers the "unlearning" evaluator)
)
