"""Argument validation: every documented error, on both engines."""

from __future__ import annotations

import re

import numpy as np
import pytest

import xentc


def _x(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def _t(*values):
    return np.array(values, np.int64)


def _mentions(*words):
    """A regex that matches a message containing every word (in any order)."""
    return "(?s)" + "".join(f"(?=.*{re.escape(str(w))}(?![0-9]))" for w in words)


CE = xentc.cross_entropy
NLL = xentc.nll_loss
WG = xentc.cross_entropy_with_grad

# id -> (call(backend), exception, match)
ERRORS = {
    # out-of-range class targets
    "target_too_large": (lambda b: CE(_x(3, 5), _t(0, 7, 1), backend=b), IndexError, _mentions("7", "5")),
    "target_equals_C": (lambda b: CE(_x(3, 5), _t(0, 5, 1), backend=b), IndexError, _mentions("5")),
    "target_negative": (lambda b: CE(_x(3, 5), _t(0, -1, 1), backend=b), IndexError, _mentions("-1", "5")),
    "target_oob_reduction_none": (
        lambda b: CE(_x(3, 5), _t(0, 9, 1), reduction="none", backend=b), IndexError, _mentions("9", "5")),
    "target_oob_with_smoothing": (
        lambda b: CE(_x(3, 5), _t(0, 6, 1), label_smoothing=0.2, backend=b), IndexError, _mentions("6", "5")),
    "target_oob_last_of_many": (
        lambda b: CE(_x(4096, 11), np.r_[np.zeros(4095, np.int64), 123], backend=b), IndexError,
        _mentions("123", "11")),
    "target_oob_kdim": (
        lambda b: CE(_x(2, 5, 3), np.array([[0, 1, 2], [3, 4, 8]]), backend=b), IndexError, _mentions("8", "5")),
    "target_oob_1d_input": (lambda b: CE(_x(5), np.array(5), backend=b), IndexError, _mentions("5")),
    "target_oob_int8": (
        lambda b: CE(_x(2, 5), np.array([0, -1], np.int8), backend=b), IndexError, _mentions("-1", "5")),
    "target_oob_uint8": (
        lambda b: CE(_x(2, 5), np.array([0, 255], np.uint8), backend=b), IndexError, _mentions("255", "5")),
    "target_ignore_index_other": (
        lambda b: CE(_x(2, 5), _t(0, -100), ignore_index=-1, backend=b), IndexError, _mentions("-100", "5")),
    "target_uint64_huge": (
        lambda b: CE(_x(2, 5), np.array([0, 2**64 - 1], np.uint64), ignore_index=-1, backend=b), IndexError,
        _mentions("18446744073709551615", "5")),
    "target_uint64_above_int64": (
        lambda b: CE(_x(2, 5), np.array([0, 2**63 + 3], np.uint64), backend=b), IndexError,
        _mentions("9223372036854775811", "5")),
    "target_oob_threaded": (
        lambda b: CE(_x(4096, 300), np.r_[np.zeros(2000, np.int64), 300, np.zeros(2095, np.int64)],
                     n_threads=2, reduction="none", backend=b), IndexError, _mentions("300")),
    "nll_target_oob": (lambda b: NLL(_x(3, 5), _t(0, 7, 1), backend=b), IndexError, _mentions("7", "5")),
    # target shape
    "target_batch_mismatch": (lambda b: CE(_x(3, 5), _t(0, 1), backend=b), ValueError, "target"),
    "target_0d_for_2d_input": (lambda b: CE(_x(3, 5), np.array(1), backend=b), ValueError, "target"),
    "target_too_many_dims": (lambda b: CE(_x(3, 5), np.zeros((3, 5), np.int64), backend=b), ValueError, "target"),
    "target_kdim_mismatch": (lambda b: CE(_x(2, 5, 3), np.zeros((2, 4), np.int64), backend=b), ValueError, "target"),
    "soft_target_shape": (lambda b: CE(_x(3, 5), _x(3, 4), backend=b), ValueError, "target"),
    "soft_target_transposed_shape": (lambda b: CE(_x(3, 5), _x(5, 3), backend=b), ValueError, "target"),
    "nll_target_batch_mismatch": (lambda b: NLL(_x(3, 5), _t(0, 1), backend=b), ValueError, "target"),
    # weight
    "weight_too_short": (lambda b: CE(_x(3, 5), _t(0, 1, 2), weight=_x(4), backend=b), ValueError, "weight"),
    "weight_too_long": (lambda b: CE(_x(3, 5), _t(0, 1, 2), weight=_x(6), backend=b), ValueError, "weight"),
    "weight_2d": (lambda b: CE(_x(3, 5), _t(0, 1, 2), weight=_x(1, 5), backend=b), ValueError, "weight"),
    "weight_int": (
        lambda b: CE(_x(3, 5), _t(0, 1, 2), weight=np.ones(5, np.int64), backend=b), TypeError, "weight"),
    "weight_bool": (
        lambda b: CE(_x(3, 5), _t(0, 1, 2), weight=np.ones(5, bool), backend=b), TypeError, "weight"),
    "nll_weight_too_short": (lambda b: NLL(_x(3, 5), _t(0, 1, 2), weight=_x(4), backend=b), ValueError, "weight"),
    "nll_weight_int": (
        lambda b: NLL(_x(3, 5), _t(0, 1, 2), weight=np.ones(5, np.int32), backend=b), TypeError, "weight"),
    # label smoothing
    "smoothing_negative": (
        lambda b: CE(_x(3, 5), _t(0, 1, 2), label_smoothing=-0.1, backend=b), ValueError, "label_smoothing"),
    "smoothing_above_one": (
        lambda b: CE(_x(3, 5), _t(0, 1, 2), label_smoothing=1.1, backend=b), ValueError, "label_smoothing"),
    "smoothing_nan": (
        lambda b: CE(_x(3, 5), _t(0, 1, 2), label_smoothing=float("nan"), backend=b), ValueError, "label_smoothing"),
    "smoothing_soft_above_one": (
        lambda b: CE(_x(3, 5), _x(3, 5), label_smoothing=1.5, backend=b), ValueError, "label_smoothing"),
    # reduction
    "reduction_unknown": (lambda b: CE(_x(3, 5), _t(0, 1, 2), reduction="avg", backend=b), ValueError, "reduction"),
    "reduction_case": (lambda b: CE(_x(3, 5), _t(0, 1, 2), reduction="Mean", backend=b), ValueError, "reduction"),
    "nll_reduction_unknown": (
        lambda b: NLL(_x(3, 5), _t(0, 1, 2), reduction="avg", backend=b), ValueError, "reduction"),
    # input dtype
    "input_int": (lambda b: CE(np.zeros((3, 5), np.int32), _t(0, 1, 2), backend=b), TypeError, "input"),
    "input_bool": (lambda b: CE(np.zeros((3, 5), bool), _t(0, 1, 2), backend=b), TypeError, "input"),
    "input_complex": (lambda b: CE(np.zeros((3, 5), np.complex64), _t(0, 1, 2), backend=b), TypeError, "input"),
    "nll_input_int": (lambda b: NLL(np.zeros((3, 5), np.int64), _t(0, 1, 2), backend=b), TypeError, "input"),
    # soft targets and ignore_index
    "soft_with_ignore_index_0": (lambda b: CE(_x(3, 5), _x(3, 5), ignore_index=0, backend=b), ValueError,
                                 "ignore_index"),
    "soft_with_ignore_index_3": (lambda b: CE(_x(3, 5), _x(3, 5), ignore_index=3, backend=b), ValueError,
                                 "ignore_index"),
    # degenerate shapes
    "zero_classes": (lambda b: CE(_x(3, 0), _t(0, 0, 0), backend=b), ValueError, None),
    "zero_classes_soft": (lambda b: CE(_x(3, 0), _x(3, 0), backend=b), ValueError, None),
    "zero_dim_input": (lambda b: CE(np.ones((), np.float32), np.array(0), backend=b),
                       ValueError, None),
    "nll_zero_classes": (lambda b: NLL(_x(3, 0), _t(0, 0, 0), backend=b), ValueError, None),
    # axis
    "axis_too_large": (lambda b: CE(_x(3, 5), _t(0, 1, 2), axis=2, backend=b), ValueError, None),
    "axis_too_negative": (lambda b: CE(_x(3, 5), _t(0, 1, 2), axis=-3, backend=b), ValueError, None),
    "axis_1d_input": (lambda b: CE(_x(5), np.array(1), axis=1, backend=b), ValueError, None),
    "log_softmax_axis": (lambda b: xentc.log_softmax(_x(3, 5), axis=2, backend=b), ValueError, None),
    "softmax_axis": (lambda b: xentc.softmax(_x(3, 5), axis=-3, backend=b), ValueError, None),
    "logsumexp_axis": (lambda b: xentc.logsumexp(_x(3, 5), axis=5, backend=b), ValueError, None),
    # n_threads
    "n_threads_zero": (lambda b: CE(_x(3, 5), _t(0, 1, 2), n_threads=0, backend=b), ValueError, None),
    "n_threads_negative": (lambda b: CE(_x(3, 5), _t(0, 1, 2), n_threads=-2, backend=b), ValueError, None),
    "nll_n_threads_zero": (lambda b: NLL(_x(3, 5), _t(0, 1, 2), n_threads=0, backend=b), ValueError, None),
    "log_softmax_n_threads": (lambda b: xentc.log_softmax(_x(3, 5), n_threads=0, backend=b), ValueError, None),
    "softmax_n_threads": (lambda b: xentc.softmax(_x(3, 5), n_threads=-1, backend=b), ValueError, None),
    "logsumexp_n_threads": (lambda b: xentc.logsumexp(_x(3, 5), n_threads=0, backend=b), ValueError, None),
    # n_threads past a C int, ignore_index past int64: ValueError, not OverflowError
    "n_threads_past_c_int": (
        lambda b: CE(_x(3, 5), _t(0, 1, 2), n_threads=2**31, backend=b), ValueError, "n_threads"),
    "with_grad_n_threads_past_c_int": (
        lambda b: WG(_x(3, 5), _t(0, 1, 2), n_threads=2**31, backend=b), ValueError, "n_threads"),
    "nll_n_threads_past_c_int": (
        lambda b: NLL(_x(3, 5), _t(0, 1, 2), n_threads=2**31, backend=b), ValueError, "n_threads"),
    "softmax_n_threads_past_c_int": (
        lambda b: xentc.softmax(_x(3, 5), n_threads=2**31, backend=b), ValueError, "n_threads"),
    "logsumexp_n_threads_past_c_int": (
        lambda b: xentc.logsumexp(_x(3, 5), n_threads=2**31, backend=b), ValueError, "n_threads"),
    "ignore_index_past_int64": (
        lambda b: CE(_x(3, 5), _t(0, 1, 2), ignore_index=2**63, backend=b), ValueError, "ignore_index"),
    "ignore_index_below_int64": (
        lambda b: CE(_x(3, 5), _t(0, 1, 2), ignore_index=-2**63 - 1, backend=b), ValueError, "ignore_index"),
    "with_grad_ignore_index_past_int64": (
        lambda b: WG(_x(3, 5), _t(0, 1, 2), ignore_index=2**63, backend=b), ValueError, "ignore_index"),
    "nll_ignore_index_past_int64": (
        lambda b: NLL(_x(3, 5), _t(0, 1, 2), ignore_index=2**63, backend=b), ValueError, "ignore_index"),
    "ignore_index_float": (
        lambda b: CE(_x(3, 5), _t(0, 1, 2), ignore_index=float("inf"), backend=b), TypeError, "ignore_index"),
    # input dtype for the softmax family
    "log_softmax_int": (lambda b: xentc.log_softmax(np.zeros((3, 5), np.int32), backend=b), TypeError, None),
    "softmax_int": (lambda b: xentc.softmax(np.zeros((3, 5), np.int64), backend=b), TypeError, None),
    "logsumexp_int": (lambda b: xentc.logsumexp(np.zeros((3, 5), np.int16), backend=b), TypeError, None),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors(case, backend):
    call, exc, match = ERRORS[case]
    with pytest.raises(exc, match=match):
        call(backend)


@pytest.mark.parametrize(
    "call",
    [
        lambda: CE(_x(3, 5), _t(0, 1, 2), backend="gpu"),
        lambda: CE(_x(3, 5), _t(0, 1, 2), backend=""),
        lambda: CE(_x(3, 5), _t(0, 1, 2), backend="CPU"),
        lambda: NLL(_x(3, 5), _t(0, 1, 2), backend="torch"),
        lambda: xentc.log_softmax(_x(3, 5), backend="gpu"),
        lambda: xentc.softmax(_x(3, 5), backend="gpu"),
        lambda: xentc.logsumexp(_x(3, 5), backend="gpu"),
    ],
    ids=["ce_gpu", "ce_empty", "ce_upper", "nll_torch", "log_softmax", "softmax", "logsumexp"],
)
def test_unknown_backend(call):
    with pytest.raises(ValueError, match="backend"):
        call()


def test_index_error_message_format(backend):
    with pytest.raises(IndexError) as info:
        CE(_x(2, 5), _t(1, 7), backend=backend)
    msg = str(info.value)
    assert "target" in msg
    assert re.search(r"\b7\b", msg) and re.search(r"\b5\b", msg), msg


def test_ignored_targets_may_be_any_value(backend):
    # ignore_index need not be a valid class, and is never range-checked.
    x = _x(3, 5) + np.arange(5, dtype=np.float32)
    for ignore_index in (-100, -1, 5, 1000, 2**40, -2**63, 2**63 - 1):
        t = np.array([ignore_index, 1, ignore_index])
        got = CE(x, t, ignore_index=ignore_index, reduction="none", backend=backend)
        assert got[0] == 0 and got[2] == 0 and got[1] > 0


def test_valid_boundaries_are_accepted(backend):
    x = _x(2, 5)
    for smoothing in (0.0, 1.0):
        CE(x, _t(0, 4), label_smoothing=smoothing, backend=backend)
    CE(x, _x(2, 5), ignore_index=-100, backend=backend)  # soft target with the default ignore_index
    CE(x, _x(2, 5), ignore_index=-1, backend=backend)  # negative ignore_index is allowed with soft targets
    for n_threads in (1, 2, None, np.int64(2), 2**31 - 1):  # capped by the rows' chunks
        CE(x, _t(0, 4), n_threads=n_threads, backend=backend)
    for smoothing in (1, 0, np.float32(0.25), np.float64(0.5)):  # any real number in [0, 1]
        CE(x, _t(0, 4), label_smoothing=smoothing, backend=backend)


# ---------------------------------------------------------------------------
# arrays that are missing, not arrays, or of different libraries: the
# namespace is resolved in one place (_dispatch.namespace), which names them
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("call, name", [
    (lambda: CE(None, _t(0, 1, 2)), "input"),
    (lambda: CE(_x(3, 5), None), "target"),
    (lambda: CE([[0.1, 0.9]], _t(1)), "input"),
    (lambda: CE(_x(3, 5), 2), "target"),
    (lambda: NLL(None, _t(0, 1, 2)), "input"),
    (lambda: WG(None, _t(0, 1, 2)), "input"),
    (lambda: xentc.softmax(None), "x"),
    (lambda: xentc.logsumexp([1.0, 2.0]), "x"),
    (lambda: xentc.linear_cross_entropy(_x(3, 4), None, _t(0, 1, 2)), "linear_weight"),
], ids=["ce_input_none", "ce_target_none", "ce_input_list", "ce_target_int", "nll_input_none",
        "with_grad_input_none", "softmax_none", "logsumexp_list", "linear_weight_none"])
def test_a_missing_or_non_array_argument_is_named(call, name):
    with pytest.raises(TypeError, match=rf"^`{name}` must be an array \(NumPy, torch"):
        call()


def test_optional_arrays_may_be_none():
    got = CE(_x(3, 5), _t(0, 1, 2), None, sample_weight=None, reduction="none")
    np.testing.assert_allclose(got, np.log(5), rtol=1e-6)


def test_arrays_of_different_libraries_are_named():
    torch = pytest.importorskip("torch")
    x, t, w = _x(3, 5), _t(0, 1, 2), np.ones(5, np.float32)
    with pytest.raises(TypeError) as info:
        CE(torch.from_numpy(x), t)
    msg = str(info.value)
    assert "Multiple namespaces" not in msg
    assert msg.startswith("arrays of different libraries: `input` is a torch array, "
                          "`target` is a numpy array"), msg
    assert "pass `target` as torch array too, e.g. torch.asarray(target)" in msg, msg
    with pytest.raises(TypeError, match=_mentions("`input` and `target` are numpy arrays",
                                                  "`weight` is a torch array",
                                                  "numpy.asarray(weight)")):
        CE(x, t, torch.from_numpy(w))
    with pytest.raises(TypeError, match=_mentions("`sample_weight` is a torch array")):
        CE(x, t, sample_weight=torch.ones(3))
    # What the message says to do works.
    want = CE(torch.from_numpy(x), torch.from_numpy(t))
    assert float(CE(torch.from_numpy(x), torch.asarray(t))) == float(want)
