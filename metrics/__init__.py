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
