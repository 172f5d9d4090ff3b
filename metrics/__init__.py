"""Pure metric functions (numpy/torch in, floats out)."""

from metrics.cl import (
    accuracy_matrix_from_rows,
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    cl_summary,
    forgetting,
    forward_transfer,
)

__all__ = [
    "accuracy_matrix_from_rows",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "cl_summary",
    "forgetting",
    "forward_transfer",
]
from metrics import (
    retrieval_eval,  # noqa: E402,F401  (issue 5: registers the "retrieval" evaluator)
    unlearning_eval,  # noqa: E402,F401  (issue 8: registers the "unlearning" evaluator)
)
