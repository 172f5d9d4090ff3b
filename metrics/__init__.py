"""Pure metric functions (numpy/torch in, floats out); the evaluators that use them register by name
(every module here is imported by :func:`clframe.registry.load_plugins`)."""

from clframe.evaluation import retained_matrix
from clframe.metrics.cl import (
    accuracy_matrix_from_rows,
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    cl_report,
    cl_summary,
    curves,
    forgetting,
    forward_transfer,
    fwt_undefined_reason,
    undefined_metrics,
)

__all__ = [
    "accuracy_matrix_from_rows",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "cl_report",
    "cl_summary",
    "curves",
    "forgetting",
    "forward_transfer",
    "fwt_undefined_reason",
    "retained_matrix",
    "undefined_metrics",
]
