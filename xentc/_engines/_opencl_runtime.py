"""Devices, programs and launches of the OpenCL engine.

One OpenCL C source (``_opencl_source.SOURCE``) holds every kernel; it is
built per (context, device, dtype) with the element types and the row
kernel's vector width ``VEC`` as ``-D`` options, and the built programs are
memoized (`clear_cache` drops them, and with them their contexts).

Building is where a driver can hurt its caller. A device may report a
preferred vector width its compiler cannot honour: PoCL 3.0 on AVX-512 CPUs
reports 16 floats and 8 doubles, then compiles for a target without 512-bit
vectors and yields programs with no kernels, or LLVM aborts the process (at
that build, a later one, or at exit). So the width of a floating program is
never taken on trust: `_opencl_probe` builds and runs it in a child process
first (a verdict cached on disk per device, driver and options), widths go
down from the device's preferred one (or ``XENTC_OPENCL_VEC``) to the first
that passed there, and every program built here is checked for all its
kernels. What was chosen, and why, is `Program.notes`.
"""
import dataclasses
import functools
import os
import threading

import numpy as np

try:
    import pyopencl as cl
    import pyopencl.array as cla
except ImportError:  # optional dependency: `import xentc` works without it
    cl = cla = None

from . import _opencl_probe
from ._opencl_source import SOURCE

INSTALL = ('the OpenCL engine needs pyopencl and an OpenCL driver: '
           'pip install "xentc[opencl]" (pyopencl and pocl-binary-distribution, '
           'which gives a CPU device)')

WIDTHS = (16, 8, 4, 2, 1)
# The environment variable that sets the widest VEC tried (any of WIDTHS).
VEC_ENV = "XENTC_OPENCL_VEC"

# Enough lanes to hide memory latency on GPUs; more would only deepen the trees.
MAX_GROUP = 256
# CPU devices take a row per work-item (their SIMD is in VEC, and trees across
# work-items only cost there); 64 rows per group leaves groups for many cores.
CPU_ROWS_GROUP = 64
ROW_KERNELS = ("xentc_rows", "xentc_proba")
# Groups of the grid-stride kernels (copies, gathers), at most.
MAX_GROUPS = 256

# The kernels each kind of program must hold, and the local memory per lane
# of those that take it (ACC_T or a 64-bit IACC_T each, see the source).
FLOAT_KERNELS = ("xentc_rows", "xentc_proba", "xentc_reduce", "xentc_reduce_final",
                 "xentc_targets")
INT_KERNELS = ("xentc_reduce", "xentc_reduce_final", "xentc_copy", "xentc_take")
_LOCAL_ACCS = {"xentc_rows": 4, "xentc_proba": 3, "xentc_reduce": 1, "xentc_reduce_final": 1}

CTYPES = {"f2": "half", "f4": "float", "f8": "double", "i1": "char", "i2": "short",
          "i4": "int", "i8": "long", "u1": "uchar", "u2": "ushort", "u4": "uint",
          "u8": "ulong"}

# A pyopencl.Kernel holds its arguments from set to enqueue: one launch at a time.
_launch_lock = threading.Lock()
# Builds and probes of one program happen once, whichever thread asks first.
_build_lock = threading.RLock()


def require():
    """ImportError naming the extra to install unless pyopencl is importable."""
    if cl is None:
        raise ImportError(INSTALL)


def is_cl(a):
    """Whether `a` is a ``pyopencl.array.Array``."""
    return cla is not None and isinstance(a, cla.Array)


def acc_dtype(dtype):
    """What the kernels compute in: float32 for half storage, else the dtype itself."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def has_fp64(device):
    """Whether `device` has double precision (cl_khr_fp64)."""
    return "cl_khr_fp64" in device.extensions.split()


def has_fp16(device):
    """Whether `device` has half-precision arithmetic (cl_khr_fp16)."""
    return "cl_khr_fp16" in device.extensions.split()


def is_cpu(device):
    """Whether `device` is a CPU."""
    return bool(device.type & cl.device_type.CPU)


def check_dtype(device, dtype):
    """TypeError unless `device` can hold `dtype` in the kernels."""
    if np.dtype(dtype) == np.float64 and not has_fp64(device):
        raise TypeError(f"float64 needs an OpenCL device with double precision "
                        f"(cl_khr_fp64); {device.name!r} has none: use float32")


def describe(device):
    """`device` as people name it: device, platform and driver version."""
    return (f"{device.name.strip()!r} ({device.platform.name.strip()}, "
            f"driver {device.driver_version.strip()})")


# ---------------------------------------------------------------------------
# vector widths and options
# ---------------------------------------------------------------------------


def forced_width():
    """The widest VEC that ``XENTC_OPENCL_VEC`` allows, or None when it is unset."""
    value = os.environ.get(VEC_ENV, "").strip()
    if not value:
        return None
    if value not in {str(w) for w in WIDTHS}:
        raise ValueError(f"the environment variable {VEC_ENV}={value!r} must be one of "
                         f"{sorted(WIDTHS)} (the OpenCL row kernel's vector width)")
    return int(value)


def preferred_width(device, dtype):
    """The device's preferred width for the arithmetic type, as one of `WIDTHS`.

    The driver's number is only a hint: 0, negative or odd values are
    rounded down to a power of two in [1, 16].
    """
    try:
        width = int(device.preferred_vector_width_double if dtype == np.float64
                    else device.preferred_vector_width_float)
    except (cl.Error, TypeError, ValueError):
        width = 1
    return 1 << (min(max(width, 1), 16).bit_length() - 1)


def candidate_widths(device, dtype):
    """The widths to try, widest first: from ``XENTC_OPENCL_VEC`` (which may
    exceed the device's preference: every width can be exercised anywhere)
    or the preferred width, down to 1."""
    top = forced_width() or preferred_width(device, dtype)
    return [w for w in WIDTHS if w <= top]


def options(dtype, vec=None):
    """The -D options of the program for `dtype` (see the kernel source)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        opts = [f"-DREAL_T={CTYPES[dtype.str[1:]]}",
                f"-DACC_T={CTYPES[acc_dtype(dtype).str[1:]]}", f"-DVEC={vec}"]
        if dtype == np.float16:
            opts.append("-DXENTC_HALF")
        if dtype == np.float64:
            opts.append("-DXENTC_FP64")
        return opts
    if dtype.kind in "iub":
        unsigned = CTYPES[f"u{dtype.itemsize}"]
        return [f"-DINT_T={unsigned if dtype.kind == 'b' else CTYPES[dtype.str[1:]]}",
                f"-DIACC_T={'long' if dtype.kind == 'i' else 'ulong'}",
                f"-DELEM_T={unsigned}"]
    raise TypeError(f"dtype {dtype} is not supported by the OpenCL engine")


# ---------------------------------------------------------------------------
# programs
# ---------------------------------------------------------------------------


class BuildError(RuntimeError):
    """A program that built without error but lacks kernels the engine needs."""


@dataclasses.dataclass(frozen=True)
class Program:
    """One built program: its kernels, the VEC it was built with and the
    fallbacks taken on the way (one line each, empty when none)."""

    kernels: dict
    vec: int
    notes: tuple


def build(context, device, dtype, vec=None):
    """Build the program for `dtype` on `device` in this process, as it is.

    Returns
    -------
    dict
        {name: (kernel, group size, local bytes per lane)}.

    Raises
    ------
    BuildError
        The program lacks a kernel the engine needs (a compiler that
        failed quietly).
    pyopencl.Error
        The build failed.
    """
    dtype = np.dtype(dtype)
    program = cl.Program(context, SOURCE).build(options=options(dtype, vec), devices=[device])
    found = {k.function_name: k for k in program.all_kernels()}
    need = FLOAT_KERNELS if dtype.kind == "f" else INT_KERNELS
    missing = [k for k in need if k not in found]
    if missing:
        raise BuildError(f"the program built with {' '.join(options(dtype, vec))} has no "
                         f"kernel {', '.join(missing)}")
    acc_bytes = 4 if dtype in (np.float16, np.float32) else 8  # ACC_T, or a 64-bit IACC_T
    cpu = is_cpu(device)
    out = {}
    for name, kernel in found.items():
        per_lane = (acc_bytes + 8 if name == "xentc_targets"  # a sum and a 64-bit index
                    else _LOCAL_ACCS.get(name, 0) * acc_bytes)
        cap = CPU_ROWS_GROUP if cpu and name in ROW_KERNELS else MAX_GROUP
        limit = min(cap, device.max_work_group_size,
                    kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, device))
        if per_lane:
            limit = min(limit, device.local_mem_size // per_lane)
        if limit < 1:
            raise BuildError(f"kernel {name} allows no work-group on {describe(device)}")
        # A power of two: the trees halve it.
        out[name] = (kernel, 1 << (limit.bit_length() - 1), per_lane)
    return out


@functools.cache
def select_width(device, dtype, top):
    """(VEC, notes): the widest of ``WIDTHS <= top`` whose probe build of
    `dtype`'s program on `device` passed (see `_opencl_probe`), and one note
    per width that failed. None as VEC when every width failed."""
    notes = []
    for vec in (w for w in WIDTHS if w <= top):
        ok, reason = _opencl_probe.verdict(device, dtype, vec)
        if ok:
            return vec, tuple(notes)
        notes.append(f"VEC={vec}: {reason}")
    return None, tuple(notes)


@functools.cache
def _program(context, device, dtype, top):
    if np.dtype(dtype).kind != "f":  # no vector types: nothing a probe would add
        return Program(build(context, device, dtype), 0, ())
    notes = []
    while top:
        vec, probe_notes = select_width(device, dtype, top)
        notes += probe_notes
        if vec is None:
            break
        try:
            return Program(build(context, device, dtype, vec), vec, tuple(notes))
        except (BuildError, cl.Error) as exc:  # passed in the child, failed here
            notes.append(f"VEC={vec}: {exc}".strip())
            top = vec // 2
    raise RuntimeError(
        f"xentc's OpenCL kernels for {np.dtype(dtype)} cannot be built on {describe(device)}; "
        f"tried {', '.join(notes)}. Another device can be chosen with PYOPENCL_CTX, or "
        f"use backend='cpu' / 'generic' ({_opencl_probe.PROBE_ENV}=0 builds without the "
        f"check in a child process, at the risk of a driver that aborts)")


def program(context, device, dtype):
    """The `Program` for `dtype` on `device` in `context`, built once.

    Raises
    ------
    RuntimeError
        No width builds and runs correctly: names the device, its driver
        version and every option tried with why it failed.
    """
    top = forced_width() or preferred_width(device, dtype)
    with _build_lock:
        return _program(context, device, np.dtype(dtype), top)


def clear_cache():
    """Drop the built programs, the width choices and the default queue (and
    with them their contexts); verdicts on disk stay (see `_opencl_probe`)."""
    _program.cache_clear()
    select_width.cache_clear()
    _opencl_probe.clear_memory()
    _default_context_and_queue.cache_clear()


def default_queue():
    """The queue for host arrays: ``PYOPENCL_CTX`` names its device, else the first one."""
    return _default_context_and_queue()[1]


@functools.cache
def _default_context_and_queue():
    # The context is held beside its queue: some runtimes (Intel's CPU one)
    # destroy a context whose last handle the caller released, queue or not,
    # and then refuse `queue.context` with INVALID_CONTEXT.
    try:
        ctx = cl.create_some_context(interactive=False)
    except (cl.Error, RuntimeError) as exc:
        raise RuntimeError(f"cannot open a default OpenCL device ({exc}): PYOPENCL_CTX "
                           f"chooses one; with none installed, {INSTALL}") from exc
    return ctx, cl.CommandQueue(ctx)


# ---------------------------------------------------------------------------
# launches
# ---------------------------------------------------------------------------


def kernel(queue, dtype, kernel_name):
    """(kernel, group size, local bytes per lane) of `kernel_name` for `dtype` on `queue`."""
    return program(queue.context, queue.device, dtype).kernels[kernel_name]


def launch(queue, dtype, kernel_name, n_groups, args, inputs, outputs):
    """Run `n_groups` groups of a kernel on `queue` after the events of `inputs`.

    `outputs` get the launch's event, so that whatever uses them next,
    on any queue, waits for it.
    """
    knl, size, per_lane = kernel(queue, dtype, kernel_name)
    if per_lane:
        args = (*args, cl.LocalMemory(size * per_lane))
    wait_for = [ev for a in inputs if a is not None for ev in a.events]
    with _launch_lock:
        event = knl(queue, (n_groups * size,), (size,), *args, wait_for=wait_for or None)
    for a in outputs:
        if a is not None:
            a.add_event(event)


def buf(a):
    """(buffer, offset in elements) of a pyopencl array; (None, 0) for None."""
    if a is None:
        return None, np.int64(0)
    if a.offset % a.dtype.itemsize:
        raise ValueError("pyopencl array offset is not a multiple of its item size")
    return a.base_data, np.int64(a.offset // a.dtype.itemsize)


def empty(like, shape, dtype=None):
    """An uninitialized C-contiguous array on `like`'s queue, from its allocator."""
    return cla.empty(like.queue, tuple(shape), np.dtype(dtype or like.dtype),
                     allocator=like.allocator)


def stride_groups(queue, dtype, kernel_name, n):
    """Groups for a grid-stride kernel over `n` items."""
    return max(1, min(MAX_GROUPS, -(-n // kernel(queue, dtype, kernel_name)[1])))
