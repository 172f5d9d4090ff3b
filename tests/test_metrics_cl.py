"""CL metrics on hand-computed matrices, and a cross-check against Avalanche's definitions."""

import numpy as np
import pytest
import torch

from metrics.cl import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    cl_summary,
    forgetting,
    forward_transfer,
)
from tests.conftest import BLOBS

R = [[0.9, 0.1, 0.2], [0.7, 0.8, 0.1], [0.5, 0.6, 0.9]]
# accuracy on exp 0 first rises (0.5 -> 0.9) then drops: max-drop forgetting differs from BWT
R_PEAK = [[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.6, 0.7, 0.9]]


def test_average_accuracy_by_hand():
    assert average_accuracy(R) == pytest.approx((0.5 + 0.6 + 0.9) / 3)
    assert average_accuracy(R, 0) == pytest.approx(0.9)
    assert average_accuracy(R, 1) == pytest.approx(0.75)


def test_average_incremental_accuracy_by_hand():
    assert average_incremental_accuracy(R) == pytest.approx((0.9 + 0.75 + 2.0 / 3) / 3)


def test_forgetting_is_average_max_drop():
    assert forgetting(R) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.6)) / 2)
    assert forgetting(R, 1) == pytest.approx(0.2)
    assert forgetting(R, 0) == 0.0
    # max over l in j..t-1, not the diagonal: 0.9 - 0.6 for exp 0, 0.8 - 0.7 for exp 1
    assert forgetting(R_PEAK) == pytest.approx((0.3 + 0.1) / 2)


def test_bwt_by_hand():
    assert backward_transfer(R) == pytest.approx(((0.5 - 0.9) + (0.6 - 0.8)) / 2)
    assert backward_transfer(R_PEAK) == pytest.approx(0.0)


def test_fwt_uses_previous_row_minus_random_init():
    b = [0.1, 0.05, 0.3]
    assert forward_transfer(R, b) == pytest.approx(((0.1 - 0.05) + (0.1 - 0.3)) / 2)
    with pytest.raises(ValueError, match="one entry per column"):
        forward_transfer(R, [0.1, 0.2])


def test_summary_keys_and_bad_shapes():
    assert set(cl_summary(R, [0, 0, 0])) == {"cl/avg_acc", "cl/avg_inc_acc", "cl/forgetting", "cl/bwt", "cl/fwt"}
    with pytest.raises(ValueError, match="2-D"):
        average_accuracy([0.1, 0.2])


def _avalanche_stream_metrics(R_run, b):
    """Feed a run's accuracies to Avalanche's standalone metrics the way its plugins do."""
    from avalanche.evaluation.metrics import BWT, Forgetting, ForwardTransfer

    R_run = np.asarray(R_run)
    T = len(R_run)
    bwt, fgt, fwt = BWT(), Forgetting(), ForwardTransfer()
    for k in range(T):
        fwt.update(k, b[k], initial=True)
    for t in range(T):
        for k in range(T):
            if k == t:
                bwt.update(k, R_run[t, k], initial=True)
                fgt.update(k, R_run[t, k], initial=True)
            elif k < t:
                bwt.update(k, R_run[t, k])
                fgt.update(k, R_run[t, k])
            elif k == t + 1:
                fwt.update(k, R_run[t, k])
    last = lambda d: np.mean([v for k, v in d.items() if k < T - 1])  # noqa: E731
    return last(bwt.result()), last(fgt.result()), np.mean(list(fwt.result().values()))


def test_cross_check_with_avalanche_on_a_real_run(make_cfg):
    """One run; accuracies recomputed with Avalanche's Accuracy metric from the model's predictions,
    and BWT / forgetting / FWT with Avalanche's definitions, agree with ours."""
    from avalanche.evaluation.metrics import Accuracy

    from clframe.runner import build, predict, run

    cfg = make_cfg(*BLOBS, "strategy=naive")
    result = run(cfg)
    R_run, b = np.asarray(result["accuracy_matrix"]), result["random_init_acc"]
    ours_bwt, ours_fwt = result["metrics"]["cl/bwt"], result["metrics"]["cl/fwt"]
    av_bwt, av_fgt, av_fwt = _avalanche_stream_metrics(R_run, b)
    assert ours_bwt == pytest.approx(av_bwt, abs=1e-9)
    assert -ours_bwt == pytest.approx(av_fgt, abs=1e-9)  # Avalanche "forgetting" = first - last = -BWT
    assert ours_fwt == pytest.approx(av_fwt, abs=1e-9)
    assert result["metrics"]["cl/forgetting"] >= av_fgt - 1e-9  # max-drop >= first-minus-last

    # last row: recompute every experience's accuracy with Avalanche's Accuracy from saved weights
    stream, strategy = build(cfg)
    ckpt = torch.load(f"{cfg.run_dir}/checkpoints/last.pt", weights_only=True)
    strategy.load_checkpoint_state(ckpt["extra"])
    strategy.load_state_dict(ckpt["model"])
    for j, exp in enumerate(stream.learn_experiences):
        acc = Accuracy()
        acc.update(predict(strategy, exp.test, torch.device("cpu")).argmax(1), exp.test.y)
        assert acc.result() == pytest.approx(R_run[-1, j], abs=1e-6)
