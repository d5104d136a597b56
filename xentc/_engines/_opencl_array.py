"""The array namespace of pyopencl arrays that xentc's API layer computes with.

Copies, reductions and gathers run xentc's own kernels (`_opencl_runtime`);
element-wise arithmetic is pyopencl's. The namespace covers what the API
layer needs, no more: anything else raises NotImplementedError naming it.
"""
import math
import operator
from typing import ClassVar

import numpy as np

from . import _opencl_runtime as rt

try:
    import pyopencl as cl
    import pyopencl.array as cla
    from pyopencl import clmath
    from pyopencl.tools import get_or_register_dtype
except ImportError:  # optional dependency: `import xentc` works without it
    cl = cla = clmath = None
else:
    # pyopencl's element-wise kernels (astype, the API layer's arithmetic) name
    # dtypes through a registry without float16: on a device with cl_khr_fp16
    # (Intel's CPU runtime) half arrays failed there. Registering it again is a no-op.
    get_or_register_dtype("half", np.float16)

RED_SUM, RED_MIN, RED_MAX, RED_COUNT = 0, 1, 2, 3


def copy_into(dst, src):
    """dst[...] = src for one shape and item size, any strides, on dst's queue."""
    if dst.size == 0:
        return dst
    size = dst.dtype.itemsize
    if any(s % size for s in src.strides + dst.strides):
        raise ValueError("pyopencl array strides are not multiples of its item size")
    # A 0-d copy has no geometry, but a buffer cannot be empty.
    geom = np.array([*dst.shape, *(s // size for s in src.strides + dst.strides)] or [0],
                    dtype=np.int64)
    geom_buf = cl.Buffer(dst.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                         hostbuf=geom)
    elem = np.dtype(f"u{size}")
    groups = rt.stride_groups(dst.queue, elem, "xentc_copy", dst.size)
    rt.launch(dst.queue, elem, "xentc_copy", groups,
              (np.int64(dst.size), np.int32(dst.ndim), geom_buf, *rt.buf(src), *rt.buf(dst)),
              [src], [dst])
    return dst


def c_contiguous(a):
    """`a` if C-contiguous, else a C-contiguous copy on its queue."""
    return a if a.flags.c_contiguous else copy_into(rt.empty(a, a.shape), a)


def moveaxis(a, source, destination):
    """`a` with axis `source` moved to `destination`, as a C-contiguous array."""
    src = operator.index(source) % a.ndim
    dst = operator.index(destination) % a.ndim
    order = [k for k in range(a.ndim) if k != src]
    order.insert(dst, src)
    return c_contiguous(a.transpose(order))


def as_type(a, dtype):
    """`a` as a C-contiguous array of `dtype` (a copy only when needed)."""
    a = c_contiguous(a)
    return a if a.dtype == dtype else a.astype(dtype)


def reduce(a, op, axis=None):
    """Reduction of `a` on its queue: whole (a 0-d array) or along `axis`.

    Floats accumulate in ACC_T and give `a`'s dtype; integers accumulate in
    and give int64 (uint64 for unsigned).
    """
    queue, dtype = a.queue, np.dtype(a.dtype)
    if dtype.kind == "b":
        a, dtype = a.view(np.uint8), np.dtype(np.uint8)
    if axis is None:
        shape, a = (), c_contiguous(a).reshape(-1)
    else:
        axis = operator.index(axis) % a.ndim
        shape = a.shape[:axis] + a.shape[axis + 1:]
        a = moveaxis(a, axis, -1)
    if dtype.kind == "f":
        rt.check_dtype(queue.device, dtype)
        acc, out_dtype = rt.acc_dtype(dtype), dtype
        ident = {RED_MIN: np.inf, RED_MAX: -np.inf}.get(op, 0)
    else:
        acc = out_dtype = np.dtype(np.int64 if dtype.kind == "i" else np.uint64)
        info = np.iinfo(dtype)
        ident = {RED_MIN: info.max, RED_MAX: info.min}.get(op, 0)
    ident, n = acc.type(ident), a.size
    group = rt.kernel(queue, dtype, "xentc_reduce")[1]
    if axis is None:
        # Stage 1: at most `group` partial results, so that one group ends it.
        row_len = max(1, -(-n // min(group, max(1, -(-n // group)))))
        n_rows = max(1, -(-n // row_len))
    else:
        n_rows, row_len = math.prod(shape), a.shape[-1]
    part = rt.empty(a, (n_rows,), acc)
    if n_rows:
        rt.launch(queue, dtype, "xentc_reduce", n_rows,
                  (np.int64(n), np.int64(row_len), *rt.buf(a), np.int32(op), ident,
                   part.base_data), [a], [part])
    if axis is not None:
        return as_type(part, out_dtype).reshape(shape)
    out = rt.empty(a, (), out_dtype)
    rt.launch(queue, dtype, "xentc_reduce_final", 1,
              (np.int64(n_rows), part.base_data, np.int32(op), ident, *rt.buf(out)), [part], [out])
    return out


def take_rows(a, idx):
    """out[i, k] = a[i, idx[i, k]] for 2-D `a` and `idx` with as many rows."""
    a, idx = c_contiguous(a), as_type(idx, np.int64)
    out = rt.empty(a, idx.shape)
    if out.size:
        elem = np.dtype(f"u{a.dtype.itemsize}")
        groups = rt.stride_groups(a.queue, elem, "xentc_take", out.size)
        rt.launch(a.queue, elem, "xentc_take", groups,
                  (np.int64(a.shape[0]), np.int64(a.shape[1]), np.int64(idx.shape[1]),
                   *rt.buf(a), *rt.buf(idx), *rt.buf(out)), [a, idx], [out])
    return out



# ---------------------------------------------------------------------------
# the namespace of pyopencl arrays
# ---------------------------------------------------------------------------


def _unsupported(what):
    return NotImplementedError(
        f"{what} is not available for pyopencl arrays: xentc's OpenCL namespace covers what "
        f"its API layer needs (use backend='auto' or 'opencl' for pyopencl arrays; "
        f"backend='generic' cannot serve them)")


class _Info:
    """The array API's inspection object for the OpenCL namespace (one device: the queue's)."""

    def __init__(self, queue):
        self._device = queue.device

    def capabilities(self):
        """What the namespace supports beyond the basics: no data-dependent shapes."""
        return {"boolean indexing": False, "data-dependent shapes": False,
                "max dimensions": None}

    def default_device(self):
        """The queue's ``pyopencl.Device``."""
        return self._device

    def devices(self):
        """The one device of the namespace."""
        return [self._device]

    def default_dtypes(self, *, device=None):
        """float64 where the device has it (else float32), int64 for integers and indices."""
        real = np.dtype(np.float64 if rt.has_fp64(self._device) else np.float32)
        return {"real floating": real, "complex floating": np.result_type(real, np.complex64),
                "integral": np.dtype(np.int64), "indexing": np.dtype(np.int64)}

    def dtypes(self, *, device=None, kind=None):
        """{name: dtype} of the dtypes arrays may have here, of `kind` if given."""
        names = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                 "uint64", "float16", "float32"]
        names += ["float64"] if rt.has_fp64(self._device) else []
        found = {n: np.dtype(n) for n in names}
        if kind is None:
            return found
        return {n: d for n, d in found.items() if Namespace.isdtype(d, kind)}


class Namespace:
    """The array-API functions xentc's API layer calls, over ``pyopencl.array`` on one queue.

    Results are C-contiguous ``pyopencl.array.Array`` on the queue:
    pyopencl's element-wise kernels and ``get()`` assume contiguous data, so
    `moveaxis` copies where NumPy would return a view. Exceptions:
    whole-array `min`, `max`, `all` and `any` bring their scalar to the host
    as a 0-d NumPy array (pyopencl arrays have no ``__int__``, and the API
    layer's checks need the value there); `unique_values` and
    `unique_inverse` sort on the host. Booleans are int8, as pyopencl's
    comparisons give them. Namespaces compare equal whatever their queue:
    they are one library, and the dispatch layer's cache of engine choices
    then holds one entry (and one queue) per device and backend.
    """

    __name__ = "pyopencl.array"
    float16, float32, float64 = (np.dtype(t) for t in (np.float16, np.float32, np.float64))
    int8, int16, int32, int64 = (np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))
    uint8, uint16, uint32, uint64 = (np.dtype(t) for t in (np.uint8, np.uint16, np.uint32,
                                                           np.uint64))
    bool = np.dtype(np.int8)
    _KINDS: ClassVar[dict] = {"bool": "b", "signed integer": "i", "unsigned integer": "u",
                              "integral": "iu", "real floating": "f", "complex floating": "c",
                              "numeric": "iufc"}

    def __init__(self, queue):
        self.queue = queue

    def __eq__(self, other):
        return isinstance(other, Namespace)

    def __hash__(self):
        return hash(Namespace)

    def __repr__(self):
        return f"<xentc namespace for pyopencl.array on {self.queue.device.name!r}>"

    def __getattr__(self, attr):
        # An AttributeError, so that hasattr() and getattr(..., default) keep working.
        raise AttributeError(str(_unsupported(f"`{attr}`")))

    def __array_namespace_info__(self):
        """The array API's inspection object (default dtypes, the device)."""
        return _Info(self.queue)

    def _array(self, value, dtype=None):
        """A C-contiguous device array from a pyopencl array or a host value."""
        if rt.is_cl(value):
            return as_type(value, value.dtype if dtype is None else np.dtype(dtype))
        return cla.to_device(self.queue, np.asarray(value, dtype=dtype))

    def _full(self, shape, value, dtype):
        out = cla.empty(self.queue, tuple(shape), np.dtype(dtype))
        out.fill(value)
        return out

    # -- dtypes ------------------------------------------------------------

    @staticmethod
    def isdtype(dtype, kind):
        """Whether `dtype` is of `kind` (a name, a dtype or a tuple of them), as the array API."""
        if isinstance(kind, tuple):
            return any(Namespace.isdtype(dtype, k) for k in kind)
        dtype = np.dtype(dtype)
        if not isinstance(kind, str):
            return dtype == np.dtype(kind)
        if kind not in Namespace._KINDS:
            raise ValueError(f"unknown dtype kind {kind!r}")
        return dtype.kind in Namespace._KINDS[kind]

    def astype(self, x, dtype, /, *, copy=True):
        """`x` as `dtype`, a copy only when needed unless `copy`; TypeError for
        float64 on a device without it."""
        x = c_contiguous(x)
        if x.dtype == np.dtype(dtype):
            return x.copy() if copy else x
        rt.check_dtype(self.queue.device, dtype)
        return x.astype(dtype)

    @staticmethod
    def finfo(type, /):
        """NumPy's ``finfo`` of a dtype or of an array's dtype."""
        return np.finfo(type.dtype if rt.is_cl(type) else type)

    # -- creation ----------------------------------------------------------

    def asarray(self, obj, /, *, dtype=None, device=None, copy=None):
        """`obj` on the queue: pyopencl arrays as they are, host values copied there.

        `device`, if given, must be the queue's ``pyopencl.Device``.
        """
        if device is not None and device != self.queue.device:
            raise ValueError(f"this namespace's arrays live on {self.queue.device.name!r}, "
                             f"not on {device!r}")
        a = self._array(obj, dtype)
        return a.copy() if copy and a is obj else a

    def empty(self, shape, *, dtype=None, device=None):
        """An uninitialized array (float32 by default)."""
        return cla.empty(self.queue, tuple(shape), np.dtype(dtype or np.float32))

    def empty_like(self, x, /, *, dtype=None, device=None):
        """An uninitialized array of `x`'s shape."""
        return rt.empty(x, x.shape, dtype)

    def zeros(self, shape, *, dtype=None, device=None):
        """An array of zeros (float32 by default)."""
        return self._full(shape, 0, dtype or np.float32)

    def ones(self, shape, *, dtype=None, device=None):
        """An array of ones (float32 by default)."""
        return self._full(shape, 1, dtype or np.float32)

    def full(self, shape, fill_value, *, dtype=None, device=None):
        """An array filled with `fill_value`."""
        return self._full(shape, fill_value, dtype or np.asarray(fill_value).dtype)

    def zeros_like(self, x, /, *, dtype=None, device=None):
        """Zeros of `x`'s shape and (by default) dtype."""
        return self._full(x.shape, 0, dtype or x.dtype)

    def ones_like(self, x, /, *, dtype=None, device=None):
        """Ones of `x`'s shape and (by default) dtype."""
        return self._full(x.shape, 1, dtype or x.dtype)

    def full_like(self, x, /, fill_value, *, dtype=None, device=None):
        """`fill_value` in `x`'s shape and (by default) dtype."""
        return self._full(x.shape, fill_value, dtype or x.dtype)

    # -- shape -------------------------------------------------------------

    def reshape(self, x, /, shape, *, copy=None):
        """`x` with a new shape (C order; one entry may be -1).

        Raises ValueError with ``copy=False`` where only a copy gives the shape.
        """
        if copy is False and not x.flags.c_contiguous:
            raise ValueError("this reshape of a non-contiguous pyopencl array needs a copy")
        a = c_contiguous(x).reshape(tuple(shape))
        return a.copy() if copy and a.base_data is x.base_data else a

    def moveaxis(self, x, source, destination, /):
        """`x` with axis `source` moved to `destination`, as a C-contiguous array."""
        return moveaxis(x, source, destination)

    def expand_dims(self, x, /, *, axis=0):
        """`x` with a new axis of length one at `axis`."""
        axis = operator.index(axis)
        if not -x.ndim - 1 <= axis <= x.ndim:
            raise ValueError(f"`axis` {axis} is out of range for {x.ndim + 1} dimensions")
        axis %= x.ndim + 1
        return self.reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])

    # -- element-wise ------------------------------------------------------

    def where(self, condition, x1, x2, /):
        """`x1` where `condition` is nonzero, else `x2` (one shape, or 0-d values)."""
        cond = self._array(condition)
        if cond.dtype.kind not in "bu" and cond.dtype != np.int8:  # if_positive tests > 0
            cond = cond != 0
        # Python scalars take the arrays' dtype, as in the array API.
        arrays = [a for a in (x1, x2) if rt.is_cl(a)]
        dtype = np.result_type(*(a.dtype for a in arrays)) if arrays else np.asarray(x1).dtype
        a, b = self._array(x1, dtype), self._array(x2, dtype)
        for v in (a, b):
            if v.shape not in ((), cond.shape):
                raise _unsupported(f"where() broadcasting {v.shape} to {cond.shape}")
        return cla.if_positive(cond, a, b)

    def multiply(self, x1, x2, /):
        """x1 * x2: arrays of one shape, or with a scalar or a 0-d array."""
        return x1 * x2

    def divide(self, x1, x2, /):
        """x1 / x2: arrays of one shape, or with a scalar or a 0-d array."""
        return x1 / x2

    def maximum(self, x1, x2, /):
        """The larger of x1 and x2, NaN where either is: arrays of one shape, or with a
        0-d array."""
        return cla.maximum(c_contiguous(x1), c_contiguous(x2))

    def clip(self, x, /, min=None, max=None):
        """`x` limited to [`min`, `max`] (Python scalars, or arrays of x's shape); NaN
        stays NaN."""
        x = c_contiguous(x)
        for bound, limit in ((min, cla.maximum), (max, cla.minimum)):
            if bound is not None:
                # A Python float would make the bound a double in the kernel.
                x = limit(x, bound if rt.is_cl(bound) else x.dtype.type(bound))
        return x

    def log(self, x, /):
        """The natural logarithm of each element."""
        return clmath.log(c_contiguous(x))

    def isnan(self, x, /):
        """Which elements are NaN (none in integer arrays)."""
        x = c_contiguous(x)
        if x.dtype.kind != "f":
            return self.zeros_like(x, dtype=self.bool)
        return x != x  # noqa: PLR0124 - NaN alone is unequal to itself; pyopencl has no isnan

    def isinf(self, x, /):
        """Which elements are infinite (none in integer arrays)."""
        x = c_contiguous(x)
        return abs(x) == np.inf if x.dtype.kind == "f" else self.zeros_like(x, dtype=self.bool)

    def isfinite(self, x, /):
        """Which elements are finite (all in integer arrays)."""
        x = c_contiguous(x)
        if x.dtype.kind != "f":
            return self.ones_like(x, dtype=self.bool)
        return abs(x) < np.inf  # False for NaN and +-inf

    def concat(self, arrays, /, *, axis=0):
        """`arrays` joined along `axis`, in their result dtype; the other axes must match."""
        first = arrays[0]
        axis = operator.index(axis) % first.ndim
        if any(a.shape[:axis] + a.shape[axis + 1:] != first.shape[:axis] + first.shape[axis + 1:]
               for a in arrays):
            raise ValueError(f"concat() along axis {axis} needs arrays whose other axes "
                             f"match, got shapes {[a.shape for a in arrays]}")
        dtype = np.result_type(*(a.dtype for a in arrays))
        shape = list(first.shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        out = rt.empty(first, shape, dtype)
        start = 0
        for a in arrays:
            span = (slice(None),) * axis + (slice(start, start + a.shape[axis]),)
            copy_into(out[span], as_type(a, dtype))
            start += a.shape[axis]
        return out

    # -- sets --------------------------------------------------------------
    # Through the host with NumPy: they serve labels, one value per sample
    # (O(N), not the O(N*C) work that stays on the device), whose few distinct
    # values the API layer needs on the host anyway; the results are on the device.

    def unique_values(self, x, /):
        """The sorted distinct elements of `x`, as a 1-D array."""
        return self._array(np.unique(c_contiguous(x).get()))

    def unique_inverse(self, x, /):
        """(sorted distinct elements, each element's index among them in x's shape)."""
        values, inverse = np.unique(c_contiguous(x).get(), return_inverse=True)
        return self._array(values), self._array(inverse.reshape(x.shape))

    # -- indexing ----------------------------------------------------------

    def take(self, x, indices, /, *, axis=None):
        """x[indices] for 1-D `x`; indices must lie in ``[0, len(x))``."""
        if x.ndim != 1 or axis not in (None, 0, -1):
            raise _unsupported("take() beyond 1-D arrays")
        idx = self._array(indices)
        return take_rows(x.reshape(1, x.shape[0]), idx.reshape(1, idx.size)).reshape(idx.shape)

    def take_along_axis(self, x, indices, /, *, axis=-1):
        """out[i, k] = x[i, indices[i, k]] for 2-D `x`; indices in ``[0, x.shape[1])``."""
        if x.ndim != 2 or axis not in (1, -1):
            raise _unsupported("take_along_axis() beyond the last axis of 2-D arrays")
        if indices.ndim != 2 or indices.shape[0] != x.shape[0]:
            raise ValueError(f"`indices` of shape {indices.shape} do not match "
                             f"{x.shape} along the first axis")
        return take_rows(x, indices)

    # -- reductions --------------------------------------------------------

    @staticmethod
    def _no_keepdims(what, keepdims):
        if keepdims:
            raise _unsupported(f"{what}(keepdims=True)")

    def sum(self, x, /, *, axis=None, dtype=None, keepdims=False):
        """Sum on the device in a fixed order; floats accumulate in float32 (float64 for
        float64) and give `x`'s dtype, integers give int64 (uint64 if unsigned)."""
        self._no_keepdims("sum", keepdims)
        total = reduce(x, RED_SUM, axis)
        return total if dtype is None else as_type(total, np.dtype(dtype))

    def count_nonzero(self, x, /, *, axis=None, keepdims=False):
        """Number of nonzero elements, as an int64 array on the device."""
        self._no_keepdims("count_nonzero", keepdims)
        if x.dtype.kind == "f":  # counted as integers: a float16 count would round
            x = c_contiguous(x) != 0
        return as_type(reduce(x, RED_COUNT, axis), np.dtype(np.int64))

    def _extremum(self, x, op, what, axis, keepdims):
        self._no_keepdims(what, keepdims)
        if x.size == 0:
            raise ValueError(f"zero-size array to reduction operation {what} "
                             f"which has no identity")
        if axis is not None:
            return as_type(reduce(x, op, axis), x.dtype)
        return reduce(x, op).get().astype(x.dtype)

    def min(self, x, /, *, axis=None, keepdims=False):
        """Smallest element (NaN if any): whole-array as a 0-d NumPy array on the host."""
        return self._extremum(x, RED_MIN, "min", axis, keepdims)

    def max(self, x, /, *, axis=None, keepdims=False):
        """Largest element (NaN if any): whole-array as a 0-d NumPy array on the host."""
        return self._extremum(x, RED_MAX, "max", axis, keepdims)

    def _n_true(self, x, what, axis, keepdims):
        if axis is not None:
            raise _unsupported(f"{what}(axis=...)")
        return int(self.count_nonzero(x, keepdims=keepdims).get())

    def all(self, x, /, *, axis=None, keepdims=False):
        """Whether every element is nonzero (NaN is): whole-array only, a 0-d NumPy bool on
        the host, as whole-array `min`."""
        return np.asarray(self._n_true(x, "all", axis, keepdims) == x.size)

    def any(self, x, /, *, axis=None, keepdims=False):
        """Whether some element is nonzero (NaN is): whole-array only, a 0-d NumPy bool on
        the host, as whole-array `max`."""
        return np.asarray(self._n_true(x, "any", axis, keepdims) > 0)


def namespace(*arrays):
    """The namespace of pyopencl arrays for the API layer, on the first array's queue.

    Parameters
    ----------
    *arrays : pyopencl.array.Array or None
        The caller's arrays (None entries are skipped).

    Returns
    -------
    object
        An array namespace over ``pyopencl.array`` bound to the queue of the
        first array.

    Raises
    ------
    TypeError
        A host array among pyopencl arrays (xentc never copies between host
        and device implicitly), or a dtype the device cannot compute with.
    ValueError
        Arrays without a queue, or on different contexts.
    """
    rt.require()
    arrays = [a for a in arrays if a is not None]
    for a in arrays:
        if not rt.is_cl(a):
            raise TypeError(f"pyopencl arrays cannot be mixed with {type(a).__module__}."
                            f"{type(a).__name__}: xentc does not copy between host and device "
                            f"implicitly; copy it with pyopencl.array.to_device(queue, array)")
    queue = arrays[0].queue
    if any(a.queue is None for a in arrays):
        raise ValueError("a pyopencl array has no queue: attach one with array.with_queue(queue)")
    if any(a.context != queue.context for a in arrays):
        raise ValueError("pyopencl arrays are on different OpenCL contexts")
    for a in arrays:
        # pyopencl's own element-wise kernels, which the API layer uses, do
        # half arithmetic; the row kernel alone would not need it.
        if a.dtype == np.float16 and not rt.has_fp16(queue.device):
            raise TypeError(f"float16 pyopencl arrays need a device with half-precision "
                            f"arithmetic (cl_khr_fp16); {queue.device.name!r} has none "
                            f"(float16 NumPy arrays with backend='opencl' work anywhere)")
        rt.check_dtype(queue.device, a.dtype)
    return Namespace(queue)
