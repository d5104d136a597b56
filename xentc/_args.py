"""Checks of the arguments that several public modules share (``_api``, ``metrics``).

They sit below those modules so that each of them calls only the layers
under it, never another's private names.
"""
import operator


def n_threads(value):
    """`value` checked as a thread count: None (all cores) or an integer >= 1."""
    if value is None:
        return None
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"`n_threads` must be an integer or None, got {value!r}") from None
    if n < 1:
        raise ValueError(f"`n_threads` must be >= 1, got {n}")
    return n


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
