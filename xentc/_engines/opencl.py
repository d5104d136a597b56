"""The OpenCL engine: the row maths on any OpenCL device, through pyopencl.

The kernels (``_opencl_source``) follow the C core's numerics: the row max,
then ``exp(x - max)`` summed with the exact ones (``x == max``) counted
apart, then ``log1p``; the linear sums of label smoothing and soft targets
are taken relative to the max, so they stay exact for logits of any
magnitude. ``_opencl_runtime`` builds them safely (a vector width proven in a
child process first) and launches them; ``_opencl_array`` is the array
namespace of pyopencl arrays. This module is the engine: the shared
signature of ``xentc._engines`` over those.

Two kinds of caller reach it:

* ``pyopencl.array.Array`` arguments (``backend="auto"``): `namespace`
  gives the API layer a small array namespace over pyopencl.array on the
  arrays' queue; every step stays on the device (but the distinct values
  of log_loss's labels, found with NumPy), results are pyopencl arrays on
  that queue.
* CPU arrays of any library (NumPy, torch, ...), only with
  ``backend="opencl"``: `rows` (and `proba_rows`) copies them to a default queue
  (``PYOPENCL_CTX`` picks its device), runs there and copies the results
  back into the caller's namespace. The copy is what the caller asked for.

pyopencl is optional: this module imports without it, `devices` then lists
nothing, and asking for the engine raises an ImportError naming the extra
to install.
"""
import numpy as np

from .. import _dispatch
from . import _opencl_array as ca
from . import _opencl_runtime as rt
from . import is_numpy
from ._job import OUT_KINDS
from ._opencl_array import namespace  # noqa: F401  (part of the engine's interface)

name = "opencl"

_HAS_TARGET, _HAS_SOFT, _HAS_WEIGHT, _HAS_LOSS, _HAS_LSE, _HAS_ROW_SCALE = 1, 2, 4, 8, 16, 32
_HAS_SCALE, _HAS_CAP = 64, 128
# CPU devices take a row per work-item (their SIMD is in VEC, and trees across
# work-items only cost there).
_CPU_ROW_PER_ITEM = True
# Vectors each lane of the row kernel takes before a row gets more lanes.
_ELEMS_PER_LANE = 8
_FLOATS = (np.float16, np.float32, np.float64)


def devices():
    """Describe the OpenCL devices that pyopencl finds and the kernels' vector widths.

    Choosing a width may build and run a probe program in a child process
    per floating dtype (once per device and driver: the verdicts are cached
    on disk; see ``xentc._engines._opencl_probe``).

    Returns
    -------
    list of str
        One line per device: platform, device name, type, compute units,
        driver version, whether it has float64 and float16 arithmetic, and
        per dtype the row kernel's vector width with the widths that failed
        and why; empty when pyopencl is not installed or finds no platform.
    """
    cl = rt.cl
    if cl is None:
        return []
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader reports "no platform" as an error
        return []
    found = []
    for platform in platforms:
        try:
            devs = platform.get_devices()
        except cl.Error:
            continue
        for dev in devs:
            kinds = [k for k in ("GPU", "CPU", "ACCELERATOR", "CUSTOM")
                     if dev.type & getattr(cl.device_type, k)]
            widths = []
            for dtype in (np.dtype(t) for t in _FLOATS):
                if dtype == np.float64 and not rt.has_fp64(dev):
                    continue
                vec, notes = rt.select_width(dev, dtype, rt.forced_width()
                                             or rt.preferred_width(dev, dtype))
                widths.append(f"{dtype} VEC {vec or 'none'}"
                              + (f" [{'; '.join(notes)}]" if notes else ""))
            found.append(f"{platform.name.strip()}: {dev.name.strip()} "
                         f"({' | '.join(kinds) or 'other'}, "
                         f"{dev.max_compute_units} compute units, "
                         f"driver {dev.driver_version.strip()}, "
                         f"float64 {'yes' if rt.has_fp64(dev) else 'no'}, "
                         f"float16 {'yes' if rt.has_fp16(dev) else 'no'}; "
                         f"{', '.join(widths)})")
    return found


def clear_cache():
    """Drop the built programs, the width choices and the default queue, and with
    them their contexts (the probe verdicts on disk stay).

    Returns
    -------
    None
    """
    rt.clear_cache()


def device_key(array):
    """A hashable name of the OpenCL device of a pyopencl array.

    Parameters
    ----------
    array : pyopencl.array.Array

    Returns
    -------
    str
        ``"opencl:<device name> (<platform name>)"``.
    """
    device = array.queue.device if array.queue is not None else array.context.devices[0]
    return f"opencl:{device.name} ({device.platform.name})"


def accepts(xp, device, explicit):
    """Whether this engine serves arrays of `xp` (see ``xentc._engines``).

    Parameters
    ----------
    xp : namespace
        The caller's array namespace.
    device : str
        Its device key (every OpenCL device is served).
    explicit : bool
        Whether the caller named ``backend="opencl"``.

    Returns
    -------
    bool
        True for pyopencl arrays; for CPU arrays of any namespace only when
        `explicit` (they are then copied to the default device and back).

    Raises
    ------
    ImportError
        `explicit` without pyopencl installed, naming what to install.
    """
    if isinstance(xp, ca.Namespace):
        return True
    if not explicit:
        return False
    rt.require()
    return "cpu" in device.lower()


# ---------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------


def _rows_layout(a):
    """(array, row stride in elements) with each row's elements contiguous (copied if not)."""
    if _row_strided(a):
        return a, a.strides[0] // a.dtype.itemsize
    return ca.copy_into(rt.empty(a, a.shape), a), a.shape[1]


def _lanes_per_row(device, n_classes, group, vec):
    """A power of two: 1 (a row per work-item) for short rows or a CPU device, up to
    the group size for long rows."""
    if _CPU_ROW_PER_ITEM and rt.is_cpu(device):
        return 1
    want = max(1, -(-n_classes // (_ELEMS_PER_LANE * vec)))
    return min(group, 1 << (want - 1).bit_length())


def _vector(a, dtype):
    """The 1-D pyopencl array `a` contiguous in `dtype`, as the kernels read it (a copy only
    for a caller that did not convert it already)."""
    return None if a is None else ca.as_type(a, np.dtype(dtype))


def _device_rows(job):
    """`rows` for a job of pyopencl arrays, on x's queue."""
    x = job.x
    queue, dtype = x.queue, np.dtype(x.dtype)
    if dtype.kind != "f":
        raise TypeError(f"`x` must be a floating-point array, got dtype {dtype}")
    rt.check_dtype(queue.device, dtype)
    acc = rt.acc_dtype(dtype)
    n_rows, n_classes = x.shape
    soft = job.soft
    if soft is not None and soft.dtype != dtype:
        soft = ca.as_type(soft, dtype)
    job = job.replace(target=_vector(job.target, np.int64), soft=soft,
                      weight=_vector(job.weight, acc),
                      grad_row_scale=_vector(job.grad_row_scale, acc))
    loss = rt.empty(x, (n_rows,), acc) if job.has_loss else None
    lse = rt.empty(x, (n_rows,), acc) if job.want_lse else None
    out, res = job.out, None
    if job.out_kind != "none":
        if out is not None and (tuple(out.shape) != (n_rows, n_classes) or out.dtype != dtype):
            raise ValueError(f"`out` must have shape {(n_rows, n_classes)} and dtype {dtype}, "
                             f"got {tuple(out.shape)} and {out.dtype}")
        res = out if out is not None and _row_strided(out) else rt.empty(x, (n_rows, n_classes))
    if n_rows:
        prog = rt.program(queue.context, queue.device, dtype)
        group = prog.kernels["xentc_rows"][1]
        lanes = _lanes_per_row(queue.device, n_classes, group, prog.vec)
        args, inputs = _rows_args(job, acc, lanes, loss, lse, res)
        rt.launch(queue, dtype, "xentc_rows", -(-n_rows // (group // lanes)), args, inputs,
                  [loss, lse, res])
    if out is not None and res is not None and res is not out:
        res = ca.copy_into(out, res)  # a new array: copied into a strided `out`
    return loss, lse, res


def _row_strided(a):
    """Whether each row of the 2-D pyopencl array `a` has its elements contiguous."""
    size = a.dtype.itemsize
    return (a.shape[1] <= 1 or a.strides[1] == size) and a.strides[0] % size == 0


def _rows_args(job, acc, lanes, loss, lse, res):
    """The positional arguments of the ``xentc_rows`` kernel (its ABI, in
    ``_opencl_source``) from `job`, and the arrays it reads."""
    x, x_stride = _rows_layout(job.x)
    soft, q_stride = (None, 0) if job.soft is None else _rows_layout(job.soft)
    n_rows, n_classes = x.shape
    e = float(job.label_smoothing)
    scale, cap = float(job.logit_scale), job.softcap
    # The kernel maps logits only under these flags: the default reads them as they are.
    flags = ((_HAS_CAP if cap is not None else _HAS_SCALE if scale != 1 else 0)
             | (_HAS_TARGET if job.target is not None else 0)
             | (_HAS_SOFT if soft is not None else 0)
             | (_HAS_WEIGHT if job.weight is not None else 0)
             | (_HAS_LOSS if loss is not None else 0) | (_HAS_LSE if lse is not None else 0)
             | (_HAS_ROW_SCALE if job.grad_row_scale is not None else 0))
    args = (np.int64(n_rows), np.int64(n_classes), np.uint32(lanes),
            *rt.buf(x), np.int64(x_stride),
            *rt.buf(job.target), np.int64(job.ignore_index),
            *rt.buf(soft), np.int64(q_stride),
            *rt.buf(job.weight),
            acc.type(e), acc.type(1.0 - e), acc.type(e / n_classes),
            *rt.buf(loss), *rt.buf(lse),
            np.int32(OUT_KINDS.index(job.out_kind)), *rt.buf(res),
            np.int64(0 if res is None else res.strides[0] // res.dtype.itemsize),
            acc.type(job.grad_scale), *rt.buf(job.grad_row_scale),
            acc.type(scale), acc.type(1.0 if cap is None else cap),
            acc.type(job.lse_square_scale), np.int32(flags))
    return args, [x, job.target, soft, job.weight, job.grad_row_scale, res]


def rows(xp, job):
    """Per-row loss / lse / second result on an OpenCL device; see ``xentc._engines``.

    Parameters
    ----------
    xp : namespace
        The namespace of ``job.x``: the OpenCL namespace for pyopencl arrays,
        or that of CPU arrays (``backend="opencl"``), which are copied to the
        default queue through NumPy (DLPack) and the results copied back.
    job : RowJob
        Its `x` (M, C) logits: float16 (storage; float32 arithmetic),
        float32, or float64 where the device has it; `out` may be `x`
        itself; `n_threads` is ignored (the device sets its own parallelism).

    Returns
    -------
    tuple
        ``(loss, lse, out)`` as pyopencl arrays on x's queue (arrays of `xp`
        for CPU input), None where not asked for.
    """
    rt.require()
    if rt.is_cl(job.x):
        return _device_rows(job)
    return _host_rows(xp, job)


def _host_to_device(queue, xp, a, widen):
    """A CPU array of any library as a pyopencl array on `queue` (None stays None).

    With `widen`, floating arrays go as float32 (for dtypes NumPy lacks: bfloat16).
    """
    if a is None or rt.is_cl(a):  # already there (a job's targets, after `targets`)
        return a
    if widen and xp.isdtype(a.dtype, "real floating"):
        a = xp.astype(a, xp.float32)
    return rt.cla.to_device(queue, np.ascontiguousarray(_dispatch.numpy_view(a)))


def _device_to_host(xp, a):
    """A pyopencl array as an array of `xp` on the host (None stays None)."""
    if a is None:
        return None
    a = a.get()
    return a if is_numpy(xp) else xp.from_dlpack(a)


def _widened(xp, dtype):
    """Whether host arrays of `dtype` go to the device as float32: floating dtypes
    NumPy lacks (bfloat16), which no copy through NumPy can carry."""
    return dtype not in (xp.float16, xp.float32, xp.float64)


def _host_rows(xp, job):
    """`rows` for CPU arrays: copied to the default queue, the results copied back to `xp`."""
    queue = rt.default_queue()
    wide = _widened(xp, job.x.dtype)  # `out` comes back in x's dtype

    def dev(a):
        return _host_to_device(queue, xp, a, wide)

    loss, lse, res = _device_rows(job.replace(
        x=dev(job.x), target=_host_to_device(queue, xp, job.target, False), soft=dev(job.soft),
        weight=dev(job.weight), grad_row_scale=dev(job.grad_row_scale), out=None))
    loss, lse, res = (_device_to_host(xp, a) for a in (loss, lse, res))
    if res is not None and wide:
        res = xp.astype(res, job.x.dtype)
    if res is not None and job.out is not None:
        job.out[...] = res
        res = job.out
    return loss, lse, res


def targets(xp, job):
    """Check class targets and sum their weights on the device; see ``xentc._engines``.

    Parameters
    ----------
    xp : namespace
        The namespace of the job's arrays (pyopencl arrays, or CPU arrays,
        whose target and weight are copied to the default queue here, once).
    job : RowJob
        Its (M,) int64 `target`, `ignore_index`, (C,) `weight` and the
        number of classes C of `x` are read.

    Returns
    -------
    job : RowJob
        `job` with its target and weight as pyopencl arrays, to pass to `rows`.
    float
        The sum of ``weight[target]`` over the targets that are not
        `ignore_index` (their count without `weight`): the mean's denominator.

    Raises
    ------
    IndexError
        For the first target outside ``[0, C)`` that is not `ignore_index`.
    """
    rt.require()
    target, weight = job.target, job.weight
    if not rt.is_cl(target):
        queue = rt.default_queue()
        target, weight = (_host_to_device(queue, xp, a, False) for a in (target, weight))
    target = ca.as_type(target, np.dtype(np.int64))
    weight = None if weight is None else ca.c_contiguous(weight)
    job = job.replace(target=target, weight=weight)
    queue, n, n_classes = target.queue, target.shape[0], job.x.shape[1]
    if n == 0:
        return job, 0.0
    dtype = np.dtype(np.float32) if weight is None else np.dtype(weight.dtype)
    group = rt.kernel(queue, dtype, "xentc_targets")[1]
    chunk = -(-n // min(group, -(-n // group)))
    n_groups = -(-n // chunk)
    part_sum = rt.empty(target, (n_groups,), rt.acc_dtype(dtype))
    part_bad = rt.empty(target, (n_groups,), np.int64)
    rt.launch(queue, dtype, "xentc_targets", n_groups,
              (np.int64(n), np.int64(chunk), np.int64(n_classes), np.int64(job.ignore_index),
               *rt.buf(target), *rt.buf(weight), np.int32(weight is not None), part_sum.base_data,
               part_bad.base_data), [target, weight], [part_sum, part_bad])
    first_bad = int(part_bad.get().min())
    if first_bad < n:
        value = int(target[first_bad].get())
        raise IndexError(f"`target` value {value} out of range for {n_classes} classes")
    # The partial sums come to the host with the answer; added there in float64.
    return job, float(np.sum(part_sum.get(), dtype=np.float64))


# ---------------------------------------------------------------------------
# proba_rows (log_loss)
# ---------------------------------------------------------------------------


def _device_proba(p, target):
    """`proba_rows` for pyopencl arrays, on p's queue."""
    queue, dtype = p.queue, np.dtype(p.dtype)
    if dtype.kind != "f":
        raise TypeError(f"`p` must be a floating-point array, got dtype {dtype}")
    rt.check_dtype(queue.device, dtype)
    n_rows, n_classes = p.shape
    p, p_stride = _rows_layout(p)
    if target is not None:
        target = ca.as_type(target, np.dtype(np.int64))
    total = rt.empty(p, (n_rows,))
    picked = None if target is None else rt.empty(p, (n_rows,))
    prog = rt.program(queue.context, queue.device, dtype)
    group = prog.kernels["xentc_proba"][1]
    lanes = _lanes_per_row(queue.device, n_classes, group, prog.vec)
    n_groups = -(-n_rows // (group // lanes))
    part = rt.empty(p, (2, n_groups), rt.acc_dtype(dtype))
    rt.launch(queue, dtype, "xentc_proba", n_groups, (
        np.int64(n_rows), np.int64(n_classes), np.uint32(lanes), *rt.buf(p), np.int64(p_stride),
        *rt.buf(target), *rt.buf(total), *rt.buf(picked), part.base_data, np.int64(n_groups)),
        [p, target], [total, picked, part])
    # The groups' extremes, finished by one more launch: two numbers come back.
    neg_lo, hi = ca.reduce(part, ca.RED_MAX, axis=1).get()
    return -float(neg_lo), float(hi), total, picked


def proba_rows(xp, p, target=None, *, n_threads=None):
    """Extremes, row sums and target entries of probabilities in one device pass;
    see ``xentc._engines``.

    Parameters
    ----------
    xp : namespace
        The namespace of `p`: the OpenCL namespace for pyopencl arrays, or
        that of CPU arrays (``backend="opencl"``), which are copied to the
        default queue and the results copied back.
    p : array
        (M, C) probabilities, M, C >= 1: float16 (read as stored, summed in
        float32), float32, or float64 where the device has it.
    target : array, optional
        (M,) int64 class indices in ``[0, C)``.
    n_threads : int, optional
        Accepted for the shared signature; the device sets its own parallelism.

    Returns
    -------
    tuple
        ``(lo, hi, total, picked)``: the smallest and largest entry of `p`
        (Python floats, NaN when `p` holds a NaN), the (M,) row sums and the
        (M,) ``p[i, target[i]]`` (None without `target`), in p's dtype and
        namespace (on p's queue for pyopencl arrays).

    Raises
    ------
    TypeError
        A dtype the device cannot hold (float64 without cl_khr_fp64).
    """
    rt.require()
    if rt.is_cl(p):
        return _device_proba(p, target)
    wide = _widened(xp, p.dtype)
    queue = rt.default_queue()
    lo, hi, total, picked = _device_proba(_host_to_device(queue, xp, p, wide),
                                          _host_to_device(queue, xp, target, False))
    total, picked = (_device_to_host(xp, a) for a in (total, picked))
    if wide:  # back to p's dtype, which the contract gives them
        total = xp.astype(total, p.dtype)
        picked = None if picked is None else xp.astype(picked, p.dtype)
    return lo, hi, total, picked
