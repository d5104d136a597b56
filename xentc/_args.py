"""Checks of the arguments that several public modules share (``_api``, ``metrics``).

They sit below those modules so that each of them calls only the layers
under it, never another's private names.
"""
import operator

# The C core takes the thread count as a C int and ignore_index as an int64:
# checked here, once, so that no value reaches it as an OverflowError.
_C_INT_MAX = 2**31 - 1
_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1


def n_threads(value):
    """`value` checked as a thread count: None (all cores) or an integer in [1, 2**31 - 1]."""
    if value is None:
        return None
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"`n_threads` must be an integer or None, got {value!r}") from None
    if not 1 <= n <= _C_INT_MAX:
        raise ValueError(f"`n_threads` must be in [1, {_C_INT_MAX}], got {n}")
    return n


def ignore_index(value):
    """`value` checked as a class index to ignore: an integer that fits int64, as a Python int."""
    try:
        i = operator.index(value)
    except TypeError:
        raise TypeError(f"`ignore_index` must be an integer, got {value!r}") from None
    if not _INT64_MIN <= i <= _INT64_MAX:
        raise ValueError(f"`ignore_index` must be in [-2**63, 2**63 - 1] (int64), got {i}")
    return i


def class_axis(ndim, axis):
    """Normalize `axis` (None: torch's class dim, 1, or 0 for 1-D input)."""
    if ndim == 0:
        raise ValueError("`input` must have at least one dimension (the classes)")
    if axis is None:
        return 0 if ndim == 1 else 1
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"`axis` must be an integer, got {axis!r}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"`axis` {axis} is out of range for input with {ndim} dimensions")
    return axis % ndim
