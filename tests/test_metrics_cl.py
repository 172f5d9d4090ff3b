"""CL metrics on hand-computed matrices, and a cross-check against Avalanche's definitions."""

import math

import numpy as np
import pytest
import torch

from clframe.errors import ConfigError
from clframe.metrics.cl import (
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


def test_summary_fwt_only_in_domain_il():
    b = [0.1, 0.05, 0.3]
    for setting in ("class", "task"):
        s = cl_summary(R, b, setting=setting)
        assert s["cl/fwt"] is None and s["cl/avg_acc"] == pytest.approx(2.0 / 3)
        assert set(undefined_metrics(setting)) == {"cl/fwt"}
        assert undefined_metrics(setting)["cl/fwt"] == fwt_undefined_reason(setting)
    assert cl_summary(R, b)["cl/fwt"] is None  # default setting: class
    assert cl_summary(R, b, setting="domain")["cl/fwt"] == pytest.approx(((0.1 - 0.05) + (0.1 - 0.3)) / 2)
    assert "cl/fwt" not in cl_summary(R, setting="domain")  # nothing to compare against without random_init
    assert undefined_metrics("domain") == {}


def test_fwt_undefined_reason():
    assert fwt_undefined_reason("domain") is None
    for setting in ("class", "task"):
        reason = fwt_undefined_reason(setting)
        assert "masked" in reason and "R[j-1, j] is 0" in reason and setting in reason
    with pytest.raises(ConfigError, match="valid choices: class, task, domain"):
        fwt_undefined_reason("online")


NAN = float("nan")
R_NAN0 = [[NAN, 0.1, 0.2], [NAN, 0.8, 0.1], [NAN, 0.6, 0.9]]  # every class of experience 0 forgotten
R_NAN1 = [[0.9, NAN, 0.2], [0.7, NAN, 0.1], [0.5, NAN, 0.9]]  # every class of experience 1 forgotten


@pytest.mark.filterwarnings("error")  # no "mean of empty slice" warnings either
def test_nan_columns_are_ignored():
    assert average_accuracy(R_NAN0) == pytest.approx((0.6 + 0.9) / 2)
    assert average_accuracy(R_NAN0, 1) == pytest.approx(0.8)
    assert math.isnan(average_accuracy(R_NAN0, 0))  # nothing asked after experience 0
    assert average_incremental_accuracy(R_NAN0) == pytest.approx((0.8 + 0.75) / 2)
    assert forgetting(R_NAN0) == pytest.approx(0.8 - 0.6)
    assert math.isnan(forgetting(R_NAN0, 1))  # the only earlier column is not asked any more
    assert forgetting(R_NAN0, 0) == 0.0
    assert backward_transfer(R_NAN0) == pytest.approx(0.6 - 0.8)
    assert math.isnan(backward_transfer(R_NAN0, 1))
    b = [0.1, 0.05, 0.3]
    assert forward_transfer(R_NAN0, b) == pytest.approx(((0.1 - 0.05) + (0.1 - 0.3)) / 2)  # column 0 never enters
    assert average_accuracy(R_NAN1) == pytest.approx((0.5 + 0.9) / 2)
    assert forgetting(R_NAN1) == pytest.approx(0.9 - 0.5)
    assert backward_transfer(R_NAN1) == pytest.approx(0.5 - 0.9)
    assert forward_transfer(R_NAN1, b) == pytest.approx(0.1 - 0.3)
    assert math.isnan(forward_transfer(R_NAN1, [0.1, NAN, NAN]))
    expected = {"cl/avg_acc": 0.7, "cl/avg_inc_acc": (0.9 + 0.7 + 0.7) / 3, "cl/forgetting": 0.4, "cl/bwt": -0.4}
    assert cl_summary(R_NAN1, b, setting="domain") == pytest.approx({**expected, "cl/fwt": -0.2})


# 3 classes; column 0 tests classes {0, 1}, column 1 tests class {2}; two evaluation rows
TOTAL = np.array([[[4, 2, 0], [0, 0, 5]]] * 2)
CORRECT = np.array([[[3, 1, 0], [0, 0, 0]], [[2, 2, 0], [0, 0, 4]]])


def test_retained_matrix_by_hand():
    np.testing.assert_allclose(retained_matrix(CORRECT, TOTAL), [[4 / 6, 0.0], [4 / 6, 0.8]])
    np.testing.assert_allclose(retained_matrix(CORRECT, TOTAL, {1}), [[3 / 4, 0.0], [2 / 4, 0.8]])
    np.testing.assert_allclose(retained_matrix(CORRECT, TOTAL, [0, 1]), [[NAN, 0.0], [NAN, 0.8]])
    np.testing.assert_allclose(retained_matrix(CORRECT, TOTAL, (2,)), [[4 / 6, NAN], [4 / 6, NAN]])
    with pytest.raises(ValueError, match="same 3-D shape"):
        retained_matrix(CORRECT, TOTAL[:1])
    with pytest.raises(ValueError, match="out of range"):
        retained_matrix(CORRECT, TOTAL, {3})
    with pytest.raises(ValueError, match="out of range"):
        retained_matrix(CORRECT, TOTAL, {-1})


def _per_class_counts(correct_by_row, classes_of, n_test=10):
    """``(rows, columns, classes)`` counts from per-row, per-class correct counts; ``n_test`` samples per class."""
    rows, n_classes = len(correct_by_row), len(correct_by_row[0])
    correct, total = np.zeros((rows, len(classes_of), n_classes)), np.zeros((rows, len(classes_of), n_classes))
    for j, classes in enumerate(classes_of):
        for c in classes:
            total[:, j, c] = n_test
            correct[:, j, c] = [row[c] for row in correct_by_row]
    return correct, total


# 3 experiences x 2 classes, 10 test samples per class. Class 1 is forgotten between learn steps 1 and 2
# by a perfect unlearner: its accuracy goes to 0, every other class's counts never change after learning.
UNLEARN_COUNTS = [[9, 8, 0, 0, 0, 0], [9, 8, 9, 9, 0, 0], [9, 0, 9, 9, 10, 8]]
CLASSES_OF = [[0, 1], [2, 3], [4, 5]]


def test_perfect_unlearner_is_not_forgetting():
    correct, total = _per_class_counts(UNLEARN_COUNTS, CLASSES_OF)
    everything = retained_matrix(correct, total)  # the old, all-classes matrix
    np.testing.assert_allclose(everything, [[0.85, 0, 0], [0.85, 0.9, 0], [0.45, 0.9, 0.9]])
    assert forgetting(everything) == pytest.approx((0.85 - 0.45) / 2)  # unlearning counted as forgetting
    assert average_accuracy(everything) == pytest.approx((0.45 + 0.9 + 0.9) / 3)
    retained = retained_matrix(correct, total, removed={1})
    np.testing.assert_allclose(retained, [[0.9, 0, 0], [0.9, 0.9, 0], [0.9, 0.9, 0.9]])
    assert forgetting(retained) == 0.0 and backward_transfer(retained) == 0.0
    kept = [c for c in range(6) if c != 1]
    assert average_accuracy(retained) == pytest.approx(sum(UNLEARN_COUNTS[2][c] for c in kept) / (10 * len(kept)))
    # when a whole experience is forgotten its column leaves the matrix
    gone = retained_matrix(correct, total, removed={0, 1})
    assert math.isnan(gone[2, 0]) and average_accuracy(gone) == pytest.approx(0.9) and forgetting(gone) == 0.0


def test_curves_use_the_classes_asked_at_each_time():
    correct, total = _per_class_counts(UNLEARN_COUNTS, CLASSES_OF)
    c = curves(correct, total, removed_at=[(), (), {1}])
    assert c["cl/avg_acc"] == pytest.approx([0.85, (0.85 + 0.9) / 2, 0.9])
    # the forget event removes class 1 from every row of the matrix used at t=2, so the earlier 0.85 on
    # experience 0 (which included class 1) is not compared against 0.9 on class 0 alone
    assert c["cl/forgetting"] == [0.0, 0.0, 0.0]
    everything = retained_matrix(correct, total)
    plain = curves(correct, total, removed_at=[(), (), ()])  # no forget request: the runner's old curves
    assert plain["cl/avg_acc"] == pytest.approx([average_accuracy(everything, t) for t in range(3)])
    assert plain["cl/forgetting"] == pytest.approx([0.0, 0.0, 0.2])
    with pytest.raises(ValueError, match="one entry per row"):
        curves(correct, total, removed_at=[()])


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

    from clframe.runner import accuracy, build, predict, run

    cfg = make_cfg(*BLOBS, "strategy=naive")
    result = run(cfg)
    assert result["random_init_acc"] is None  # class-IL: only FWT would use it, and FWT is undefined here
    fresh_stream, fresh = build(cfg)  # the same seed: the run's randomly initialised model
    b = [accuracy(fresh, e.test, torch.device("cpu")) for e in fresh_stream.experiences]
    R_run = np.asarray(result["accuracy_matrix"])
    ours_bwt, ours_fwt = result["metrics"]["cl/bwt"], forward_transfer(R_run, b)
    # class-IL: FWT is not reported, because future classes are masked and it is a constant, -mean(b[1:])
    assert result["metrics"]["cl/fwt"] is None
    assert [R_run[j - 1, j] for j in range(1, len(R_run))] == [0.0] * (len(R_run) - 1)
    assert ours_fwt == pytest.approx(-np.mean(b[1:]), abs=1e-12)
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


def test_headline_leaves_out_undefined_metrics(capsys, tmp_path):
    """The printed summary and ``clframe compare`` skip a None metric and print why it is undefined."""
    import json

    from clframe.report import compare_table, print_summary

    result = {
        "scenario": "split",
        "strategy": "naive",
        "seed": 0,
        "status": "complete",
        "accuracy_matrix": R,
        "metrics": cl_summary(R, [0.1, 0.05, 0.3], setting="class"),
        "undefined_metrics": undefined_metrics("class"),
    }
    print_summary({**result, "accuracy_matrix": [[None, 0.5]], "setting": "domain"})  # None: all forgotten
    assert "exp 0" + " " * 12 + "–   50.00" in capsys.readouterr().out.splitlines()
    print_summary({**result, "accuracy_matrix": [[None, 0.5]]})  # class-IL: a future cell is 0 by masking
    assert "exp 0" + " " * 12 + "–       ·" in capsys.readouterr().out.splitlines()
    print_summary(result)
    lines = capsys.readouterr().out.splitlines()
    assert "  cl/avg_acc         66.67" in lines
    reason = fwt_undefined_reason("class")
    assert [ln for ln in lines if "cl/fwt" in ln] == ["  cl/fwt           not reported: " + reason]
    (tmp_path / "metrics.json").write_text(json.dumps(result))
    assert compare_table([str(tmp_path)]).splitlines()[-1].endswith("| 66.67 | 77.22 | 30.00 | -30.00 | – |")
