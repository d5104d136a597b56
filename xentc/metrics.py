"""scikit-learn's ``log_loss``, computed by xentc's engines.

``log_loss`` is a drop-in for ``sklearn.metrics.log_loss`` (1.9): the same
checks in the same order, with the same messages, warnings and numbers.
scikit-learn is not needed: what its ``LabelBinarizer`` and
``type_of_target`` do for this metric is written again here.

The work is split by size. The labels (O(N)) become one int64 class index
per sample in their own namespace; only their distinct values (O(C)) come to
the host, for the checks and the messages (pyopencl labels come whole: that
namespace finds distinct values with NumPy). The probabilities (O(N*C)) are
read once, by the engine's ``proba_rows`` (their extremes, row sums and each
sample's probability of its class), or by its ``rows`` for logits. What is
left is O(N), in the probabilities' namespace.
"""
import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import _dispatch
from ._args import n_threads as _n_threads
from ._engines import RowJob

__all__ = ["InvalidParameterError", "log_loss"]


class InvalidParameterError(ValueError, TypeError):
    """An argument of the wrong kind: both a ValueError and a TypeError, as in scikit-learn."""


class _Labels(NamedTuple):
    """Encoded labels: the sorted classes (NumPy) and, in the labels' namespace,
    either each sample's class index (`codes`) or a multilabel indicator matrix."""
    classes: np.ndarray
    codes: object = None
    indicator: object = None


def log_loss(y_true, y_proba=None, *, normalize=True, sample_weight=None, labels=None,
             y_pred="deprecated", from_logits=False, n_threads=None, backend="auto"):
    r"""Log loss (cross-entropy) of predicted probabilities, as ``sklearn.metrics.log_loss``.

    The mean, or sum, over samples of :math:`-\log p_{i, y_i}`, with each
    probability clipped to ``[eps, 1 - eps]`` (``eps`` the machine epsilon of
    its dtype). Arguments, results, warnings and errors are those of
    scikit-learn 1.9; the arrays may come from any array library, and the
    work on them is done in their namespace and on their device.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or (n_samples, n_classes)
        True labels (integers, strings, ...), or a multilabel indicator matrix.
    y_proba : array-like of shape (n_samples, n_classes) or (n_samples,)
        Predicted probabilities, columns in the sorted order of the labels
        (as ``LabelBinarizer`` sorts them). A 1-D array holds the probability
        of the second (greater) of two labels. Other dtypes than floating
        point become float64.
    normalize : bool, default True
        Return the (weighted) mean loss per sample; else the (weighted) sum.
    sample_weight : array-like of shape (n_samples,), optional
        Weight of each sample.
    labels : array-like, optional
        All the labels, for classes absent from `y_true`; default the
        distinct values of `y_true`. Sorted before use.
    y_pred : array-like, optional
        Former name of `y_proba` (deprecated in scikit-learn 1.9).
    from_logits : bool, default False
        `y_proba` holds raw scores (logits): the probabilities are their
        softmax over each row, or for 1-D scores the sigmoid of the second
        label's score, and the loss is computed from the exact log-sum-exp
        of each row, without clipping. Scores may be ``-inf`` (a class of
        probability zero); NaN or ``+inf`` raise as in the check of
        probabilities.
    n_threads : int, optional
        Threads of the C core; default all cores. Results do not depend on it.
    backend : {"auto", "cpu", "opencl", "generic"}, default "auto"
        Engine, as for `xentc.cross_entropy`.

    Returns
    -------
    float
        The log loss.

    Raises
    ------
    ValueError
        Probabilities outside ``[0, 1]``, NaN or infinite; inconsistent
        numbers of samples; a single label; a number of classes that differs
        from the columns of `y_proba`; labels of `y_true` missing from
        `labels`; all-zero sample weights; ... with scikit-learn's messages.
    ZeroDivisionError
        `normalize` with sample weights summing to zero.
    TypeError
        `y_proba` missing, or an argument of the wrong kind (raised as an
        error that is also a ValueError, as scikit-learn does).

    Warns
    -----
    UserWarning
        Rows of `y_proba` that do not sum to one (they are used as given);
        `labels` not in sorted order.
    FutureWarning
        `y_pred` given.

    Notes
    -----
    The per-sample losses are computed in the dtype of `y_proba`, as
    scikit-learn does, but summed in float64: float32 and float16 results
    may differ from scikit-learn's in their last digits, towards the exact
    value. A missing `y_proba` is a TypeError (scikit-learn 1.9 reports
    "Input contains NaN.").

    Examples
    --------
    >>> from xentc import log_loss
    >>> round(log_loss(["spam", "ham", "ham", "spam"],
    ...                [[.1, .9], [.9, .1], [.8, .2], [.35, .65]]), 7)
    0.2161619
    >>> round(log_loss([1, 0, 2], [[.2, .7, .1], [.6, .2, .2], [.6, .1, .3]]), 7)
    0.6904911
    """
    _check_params(y_true, y_proba, normalize, sample_weight, labels, y_pred, from_logits)
    y_proba = _renamed(y_proba, y_pred)
    n_threads = _n_threads(n_threads)
    if _dispatch.is_dask(y_proba):  # chunk by chunk, exact sums
        from . import _dask
        return _dask.log_loss(y_true, y_proba, normalize=normalize, sample_weight=sample_weight,
                              labels=labels, from_logits=from_logits, n_threads=n_threads,
                              backend=backend)
    xp, p = _float_array(y_proba)
    engine = _dispatch.engine_for(xp, p, backend)
    xy, y = _as_array(y_true)
    w = None if sample_weight is None else _as_array(sample_weight)[1]
    # scikit-learn checks the values of y_proba before the labels, but the one
    # pass over y_proba wants the encoded labels: their errors and warning wait.
    notes, label_error, enc = [], None, None
    try:
        enc = _encode_labels(y_true, xy, y, labels, notes)
    except (ValueError, TypeError) as exc:
        label_error = exc
    rows = xp.reshape(p, (-1, 1)) if p.ndim < 2 else p
    # Each sample's column, where the pass can pick its probability.
    target = None
    if (enc is not None and enc.codes is not None and rows.shape[1] > 1
            and enc.classes.shape[0] == rows.shape[1] and y.ndim and y.shape[0] == rows.shape[0]):
        target = _to(xp, enc.codes, p)
    total = picked = None
    if from_logits:
        _check_shape(p)
    else:
        total, picked = _check_proba(xp, engine, p, rows, target, n_threads)
    lengths = [rows.shape[0], _num_samples(y)] + ([] if w is None else [_num_samples(w)])
    if len(set(lengths)) > 1:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: {lengths}")
    if w is not None:
        w = _to(xp, _check_sample_weight(w, rows.shape[0]), p, _sum_dtype(xp))
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    if label_error is not None:
        raise label_error
    if total is not None and rows.shape[1] > 1 and not _sums_to_one(xp, total):
        warnings.warn("The y_prob values do not sum to one. Make sure to pass probabilities.",
                      UserWarning, stacklevel=2)
    n_columns = max(rows.shape[1], 2)  # one column: the second of two classes
    if enc.classes.shape[0] != n_columns:
        if labels is None:
            raise ValueError(
                f"y_true and y_prob contain different number of classes: "
                f"{enc.classes.shape[0]} vs {n_columns}. Please provide the true labels "
                f"explicitly through the labels argument. Classes found in y_true: {enc.classes}")
        raise ValueError(f"The number of classes in labels is different from that in y_prob. "
                         f"Classes found in labels: {enc.classes}")
    if target is None and enc.codes is not None:
        target = _to(xp, enc.codes, p)
    if from_logits:
        nll = _logit_losses(xp, engine, rows, target, enc.indicator, p, n_threads)
    else:
        nll = _proba_losses(xp, rows, target, picked, enc.indicator, p)
    return _average(xp, nll, w, normalize, rows if from_logits else None)


def _check_proba(xp, engine, p, rows, target, n_threads):
    """scikit-learn's checks of probabilities, from one pass of the engine over them.

    Returns the row sums and the probabilities of the samples' classes
    (None without `target`).
    """
    total = picked = None
    if rows.shape[0] and rows.shape[1]:
        lo, hi, total, picked = engine.proba_rows(xp, rows, target, n_threads=n_threads)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(_non_finite_message(math.isnan(lo) or math.isnan(hi), "", p.dtype))
    _check_shape(p)  # after the values, as in scikit-learn: an empty p has none
    if hi > 1:
        raise ValueError(f"y_prob contains values greater than 1: {hi}")
    if lo < 0:
        raise ValueError(f"y_prob contains values lower than 0: {lo}")
    return total, picked


def _sums_to_one(xp, total):
    """scikit-learn's ``all(isclose(total, 1, rtol=sqrt(eps)))``, from the extreme row sums.

    The same arithmetic in the same dtype, on two reductions rather than
    three temporaries of the rows' size.
    """
    one = xp.ones_like(total[:1])
    tol = 1e-8 + math.sqrt(xp.finfo(total.dtype).eps) * one
    # axis=0: the extremes stay arrays of xp (the OpenCL namespace brings
    # whole-array ones to the host).
    high, low = xp.max(total, axis=0), xp.min(total, axis=0)
    return bool(xp.all(xp.maximum(high - one, one - low) <= tol))


def _is_array_like(x):
    # scikit-learn's "array-like": something with a length, a shape or an
    # array interface, that NumPy does not call a scalar.
    return ((hasattr(x, "__len__") or hasattr(x, "shape") or hasattr(x, "__array__"))
            and not np.isscalar(x))


def _check_params(y_true, y_proba, normalize, sample_weight, labels, y_pred, from_logits):
    """Argument kinds, checked in the order of the signature as scikit-learn does."""
    flag = "an instance of 'bool' or an instance of 'numpy.bool'"
    checks = (("y_true", y_true, _is_array_like(y_true), "an array-like"),
              ("y_proba", y_proba, y_proba is None or _is_array_like(y_proba), "an array-like"),
              ("normalize", normalize, isinstance(normalize, (bool, np.bool_)), flag),
              ("sample_weight", sample_weight,
               sample_weight is None or _is_array_like(sample_weight), "an array-like or None"),
              ("labels", labels, labels is None or _is_array_like(labels), "an array-like or None"),
              ("y_pred", y_pred, isinstance(y_pred, str) or _is_array_like(y_pred),
               "an array-like or an instance of 'str'"),
              ("from_logits", from_logits, isinstance(from_logits, (bool, np.bool_)), flag))
    for name, value, ok, expected in checks:
        if not ok:
            raise InvalidParameterError(f"The {name!r} parameter of log_loss must be {expected}. "
                                         f"Got {value!r} instead.")


def _renamed(y_proba, y_pred):
    """`y_proba`, or `y_pred` given under its former name."""
    if not (isinstance(y_pred, str) and y_pred == "deprecated"):
        if y_proba is not None:
            raise ValueError("Cannot use both `y_pred` and `y_proba`. `y_pred` is deprecated, "
                             "use `y_proba` instead.")
        warnings.warn("`y_pred` was renamed to `y_proba` in version 1.9 and will be removed "
                      "in 1.11. Use `y_proba` instead.", FutureWarning, stacklevel=3)
        y_proba = y_pred
    if y_proba is None:
        raise TypeError("log_loss() missing 1 required positional argument: 'y_proba'")
    return y_proba


def _as_array(a):
    """(namespace, array): `a` itself if it is an array, else NumPy's array of it."""
    try:
        return _dispatch.namespace(a), a
    except TypeError:  # lists, tuples, pandas objects
        pass
    try:
        a = np.asarray(a)
    except ValueError:  # ragged nesting: an array of objects, as scikit-learn makes
        a = np.asarray(a, dtype=object)
    return _dispatch.namespace(a), a


def _float_array(a):
    """`a` as a floating-point array of at most 2 dimensions, as scikit-learn's check_array:
    floating dtypes are kept, others become float64."""
    xp, arr = _as_array(a)
    if isinstance(arr, np.ndarray) and arr.dtype.kind in "OSUV":
        # Text is parsed from the argument itself, so that NumPy's errors quote it.
        xp, arr = _as_array(np.asarray(a, dtype=np.float64))
    if xp.isdtype(arr.dtype, "complex floating"):
        raise ValueError(f"Complex data not supported\n{arr}\n")
    if not xp.isdtype(arr.dtype, "real floating"):
        arr = xp.astype(arr, xp.float64)
    if arr.ndim > 2:
        raise ValueError(f"Found array with dim {arr.ndim}, while dim <= 2 is required.")
    return xp, arr


def _num_samples(a):
    if a.ndim == 0:
        raise TypeError(f"Input should have at least 1 dimension i.e. satisfy `len(x.shape) > 0`, "
                        f"got scalar `{a!r}` instead.")
    return a.shape[0]


def _check_shape(p):
    """scikit-learn's checks of an empty y_proba."""
    n_samples = _num_samples(p)
    for what, n in (("sample(s)", n_samples), ("feature(s)", p.shape[-1])):
        if n == 0:
            raise ValueError(f"Found array with 0 {what} (shape={tuple(p.shape)}) while a "
                             f"minimum of 1 is required.")


def _numpy_dtype(dtype):
    """The NumPy dtype named like `dtype` of any namespace (messages name NumPy's)."""
    if isinstance(dtype, np.dtype):
        return dtype
    name = str(dtype).rsplit(".", 1)[-1]
    return np.dtype(name) if hasattr(np, name) else name


def _non_finite_message(has_nan, name, dtype):
    what = "NaN" if has_nan else f"infinity or a value too large for {_numpy_dtype(dtype)!r}"
    return f"Input {name}contains {what}."


def _check_finite(xp, a, name):
    """NaN (first) or infinities in the floating-point array `a` raise as in scikit-learn."""
    if xp.isdtype(a.dtype, "real floating"):
        has_nan = bool(xp.any(xp.isnan(a)))
        if has_nan or bool(xp.any(xp.isinf(a))):
            raise ValueError(_non_finite_message(has_nan, name, a.dtype))


def _check_sample_weight(w, n_samples):
    """scikit-learn's checks of sample weights already known to hold `n_samples` rows."""
    xw = _dispatch.namespace(w)
    _check_finite(xw, w, "sample_weight ")
    if w.ndim != 1:
        raise ValueError(f"Sample weights must be 1D array or scalar, got {w.ndim}D array. "
                         f"Expected either a scalar value or a 1D array of length {n_samples}.")
    if bool(xw.all(w == 0)):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return w


def _to(xp, a, like, dtype=None):
    """`a` as an array of namespace `xp` on the device of `like` (itself when it is
    one), converted to `dtype` on the way if given.

    Host arrays (labels, weights) may go to an OpenCL device; pyopencl arrays
    never leave theirs.
    """
    xa = _dispatch.namespace(a)
    if xa is xp and _dispatch.device(a) == _dispatch.device(like):
        return a
    if _dispatch.device_of(xa, a).startswith("opencl:"):
        _dispatch.namespace(a, like)  # raises, saying why, unless `like` is on OpenCL too
    return xp.asarray(a, dtype=dtype, device=_dispatch.device(like))


# ---------------------------------------------------------------------------
# labels: scikit-learn's type_of_target / unique_labels / LabelBinarizer
# ---------------------------------------------------------------------------


def _integral_float(xp, a):
    """Whether the floating-point `a` holds only integers."""
    if not xp.isdtype(a.dtype, "real floating"):
        return False
    with np.errstate(invalid="ignore"):  # NaN and infinities do not convert
        return bool(xp.all(xp.astype(xp.astype(a, xp.int64), a.dtype) == a))


def _is_indicator(xp, a):
    """scikit-learn's is_multilabel: 2 columns or more, at most two distinct integer values."""
    if not (a.ndim == 2 and a.shape[1] > 1):
        return False
    values = xp.unique_values(a)
    return values.shape[0] < 3 and (
        xp.isdtype(a.dtype, ("bool", "signed integer", "unsigned integer"))
        or _integral_float(xp, values))


def _target_type(xp, y, name):
    """scikit-learn's type_of_target and its errors, for the label array `y`.

    "binary" and "multiclass" are not told apart, log_loss treats them alike:
    both are "multiclass" (but for an empty 1-D `y`). `name` names `y` in
    the messages about non-finite values.
    """
    if _is_indicator(xp, y):
        return "multilabel-indicator"
    if isinstance(y, np.ndarray) and y.ndim and y.shape[0]:
        first = y[0]
        if isinstance(first, bytes):
            raise TypeError("Support for labels represented as bytes is not supported. Convert "
                            "the labels to a string or integer format.")
        if (isinstance(first, Sequence) and not isinstance(first, str)
                and not hasattr(first, "__array__")):
            raise ValueError("You appear to be using a legacy multi-label data representation. "
                             "Sequence of sequences are no longer supported; use a binary array "
                             "or sparse matrix instead - the MultiLabelBinarizer transformer can "
                             "convert to this format.")
    if y.ndim not in (1, 2):
        return "unknown"
    if not min(y.shape):
        return "binary" if y.ndim == 1 else "unknown"
    if isinstance(y, np.ndarray) and y.dtype == object and not isinstance(y.flat[0], str):
        return "unknown"
    suffix = "-multioutput" if y.ndim == 2 and y.shape[1] > 1 else ""
    if xp.isdtype(y.dtype, "real floating") and not _integral_float(xp, y):
        _check_finite(xp, y, name)
        return "continuous" + suffix
    return "multiclass" + suffix


def _unique_codes(xp, y):
    """Sorted distinct values of the 1-D `y` (NumPy) and each element's index among them."""
    if isinstance(y, np.ndarray) and y.dtype.kind in "biu" and y.size:
        lo, hi = int(y.min()), int(y.max())
        # np.unique sorts, O(N log N); labels are mostly a short run of integers,
        # whose classes and indices a count over the run finds in O(N).
        if hi - lo <= 2 * y.size and hi <= np.iinfo(np.int64).max:
            shifted = y.astype(np.int64, copy=False)
            if lo:
                shifted = shifted - lo
            present = np.bincount(shifted, minlength=hi - lo + 1) > 0
            classes = (np.flatnonzero(present) + lo).astype(y.dtype)
            if classes.size == present.size:
                return classes, shifted
            return classes, (np.cumsum(present) - 1)[shifted]
    values, codes = xp.unique_inverse(y)
    classes = _dispatch.to_numpy(values)
    order = np.argsort(classes, kind="stable")
    if np.any(order != np.arange(order.size)):  # the array API leaves unique's order open
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        classes = classes[order]
        codes = xp.take(xp.asarray(rank, device=_dispatch.device(codes)), codes)
    return classes, xp.astype(codes, xp.int64)


def _fit_classes(xp, a, original):
    """LabelBinarizer.fit: (classes, codes or None, type) of the label array `a`.

    `original` is the argument as given, which scikit-learn's messages show.
    """
    kind = _target_type(xp, a, "y ")
    if "multioutput" in kind:
        raise ValueError("Multioutput target data is not supported with label binarization")
    if _num_samples(a) == 0:
        raise ValueError(f"y has 0 samples: {original!r}")
    if kind == "multilabel-indicator":
        return np.arange(a.shape[1]), None, kind
    if kind not in ("binary", "multiclass"):
        raise ValueError(f"Unknown label type: {(original,)!r}")
    # NumPy turns a list of strings and numbers into strings; scikit-learn
    # looks at the list's own elements.
    if (isinstance(original, (list, tuple)) and a.dtype.kind == "U"
            and not all(isinstance(v, str) for v in original)):
        raise ValueError(f"Mix of label input types (string and number); Got {np.unique(a)}.")
    classes, codes = _unique_codes(xp, xp.reshape(a, (-1,)))
    return classes, codes, kind


def _encode_labels(y_true, xy, y, labels, notes):
    """The classes and each sample's class, as scikit-learn's LabelBinarizer finds them.

    Raises scikit-learn's errors in its order; its warning about unsorted
    `labels` is appended to `notes`.
    """
    if labels is None:
        classes, codes, kind = _fit_classes(xy, y, y_true)
        if classes.shape[0] == 1:
            raise ValueError(f"y_true contains only one label ({classes[0]}). Please provide the "
                             f"list of all expected class labels explicitly through the labels "
                             f"argument.")
        if kind == "multilabel-indicator":
            return _Labels(classes, indicator=y)
        return _Labels(classes, codes=codes)
    xl, lab = _as_array(labels)
    classes, _, kind_labels = _fit_classes(xl, lab, labels)
    given = _dispatch.to_numpy(lab)
    if not np.all(classes == given):
        notes.append(f"Labels passed were {labels}. But this function assumes labels are ordered "
                     f"lexicographically. Pass the ordered labels={classes.tolist()} and ensure "
                     f"that the columns of y_prob correspond to this ordering.")
    y_classes, y_codes = _unique_codes(xy, xy.reshape(y, (-1,)))
    if not np.all(np.isin(y_classes, given)):
        # The message shows the labels as Python sees them in the arguments.
        seen = y_true if isinstance(y_true, (list, tuple, np.ndarray)) else _dispatch.to_numpy(y)
        allowed = labels if isinstance(labels, (list, tuple, np.ndarray)) else given
        raise ValueError(f"y_true contains values {set(seen) - set(allowed)} not belonging to "
                         f"the passed labels {labels}.")
    if classes.shape[0] == 1:
        raise ValueError(f"The labels array needs to contain at least two labels, got {classes}.")
    kind = _target_type(xy, y, "")
    if kind == "multilabel-indicator" and kind_labels != kind:
        raise ValueError("The object was not fitted with multilabel input.")
    if "multioutput" in kind:
        raise ValueError("Multioutput target data is not supported with label binarization")
    if kind == "unknown":
        raise ValueError("The type of target data is not known")
    if kind == "multilabel-indicator":
        if y.shape[1] != classes.shape[0]:
            raise ValueError(f"classes {classes} mismatch with the labels "
                             f"{np.arange(y.shape[1])} found in the data")
        return _Labels(classes, indicator=y)
    if kind != "multiclass":
        raise ValueError(f"{kind} target data is not supported with label binarization")
    index = np.searchsorted(classes, y_classes)
    return _Labels(classes, codes=xy.take(xy.asarray(index, device=_dispatch.device(y)), y_codes))


# ---------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------


def _proba_losses(xp, rows, target, picked, indicator, p):
    """-log of the clipped probability of each sample's class(es), in p's dtype."""
    eps = float(xp.finfo(p.dtype).eps)
    if indicator is not None:
        probs = rows if rows.shape[1] > 1 else xp.concat([1 - rows, rows], axis=1)
        ind = xp.astype(_to(xp, indicator, p), p.dtype)
        return -xp.sum(ind * xp.log(xp.clip(probs, eps, 1 - eps)), axis=1)
    if picked is None:  # one column: the probability of the second class
        picked = xp.where(target == 1, rows[:, 0], 1 - rows[:, 0])
    return -xp.log(xp.clip(picked, eps, 1 - eps))


def _logit_losses(xp, engine, rows, target, indicator, p, n_threads):
    """Cross-entropy of each sample from the scores, through the engine's log-sum-exp."""
    if rows.shape[1] == 1:  # the second class's score against a first class's 0
        rows = xp.concat([xp.zeros_like(rows), rows], axis=1)
    if indicator is not None:
        soft = xp.astype(_to(xp, indicator, p), p.dtype)
        return engine.rows(xp, RowJob(rows, soft=soft, n_threads=n_threads))[0]
    return engine.rows(xp, RowJob(rows, target=target, n_threads=n_threads))[0]


def _sum_dtype(xp):
    """float64, what the sums run in, unless `xp` lacks it (an OpenCL device
    without cl_khr_fp64, JAX without x64): then float32."""
    real = xp.__array_namespace_info__().dtypes(kind="real floating")
    return xp.float64 if "float64" in real else xp.float32


def _float(a):
    """The value of the 0-d array `a` as a Python float (pyopencl arrays, which
    have no ``__float__``, through the host)."""
    return float(a) if hasattr(a, "__float__") else float(_dispatch.to_numpy(a))


def _average(xp, nll, w, normalize, logits):
    """The (weighted) mean or sum of the per-sample losses, accumulated in float64
    (see `_sum_dtype`).

    `logits` (for scores only) tells the cause of a NaN loss: NaN or
    infinite scores raise as non-finite probabilities do.
    """
    dtype = _sum_dtype(xp)
    nll = xp.astype(nll, dtype, copy=False)
    if w is not None:
        w = xp.astype(w, dtype, copy=False)
        nll = nll * w
    total = _float(xp.sum(nll))
    if math.isnan(total) and logits is not None:
        raise ValueError(_non_finite_message(bool(xp.any(xp.isnan(logits))), "", logits.dtype))
    if not normalize:
        return total
    scale = float(nll.shape[0]) if w is None else _float(xp.sum(w))
    if scale == 0:
        raise ZeroDivisionError("Weights sum to zero, can't be normalized")
    return total / scale
