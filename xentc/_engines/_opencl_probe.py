"""Probe builds: an OpenCL program is first built and run in a child process.

A compiler that aborts (LLVM's ``report_fatal_error`` calls ``abort()``) or
a miscompiled kernel that never returns cannot be caught in the process that
suffers it. So before the engine builds a floating program with some vector
width in the caller's process, `verdict` runs this module as a child
(``python -P -m xentc._engines._opencl_probe``): it builds that program twice
(PoCL has been seen to fail only the second build of a process), runs every
kernel of it on small rows through the engine itself and compares the
results with float64 NumPy. A child that dies, hangs past `TIMEOUT_S`,
reports wrong numbers or lacks kernels fails the width, and the engine tries
a narrower one.

Verdicts are kept in memory and on disk, one small JSON file per (kernel
source, probe code, platform, device, driver, options) under
``XENTC_CACHE_DIR`` (default ``$XDG_CACHE_HOME/xentc`` or ``~/.cache/xentc``),
as PoCL keeps its compiled kernels: a device and driver pay for the probe once
per width, not once per process. An unwritable folder only loses that saving.
``XENTC_OPENCL_PROBE=0`` trusts every build without a child (for a host
that cannot start processes; a bad driver can then abort the caller).
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from ._opencl_source import SOURCE

PROBE_ENV = "XENTC_OPENCL_PROBE"
CACHE_ENV = "XENTC_CACHE_DIR"
# A first build of the program by PoCL's LLVM takes seconds; minutes mean a hang.
TIMEOUT_S = 180
# The child's command; tests replace it with children that abort or hang.
CHILD = (sys.executable, "-P", "-m", __name__)

_memory = {}


def clear_memory():
    """Forget the verdicts read in this process (the files on disk stay)."""
    _memory.clear()


def cache_dir():
    """The folder of the verdict files."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        root = os.path.join(base, "xentc")
    return os.path.join(root, "opencl-verdicts")


def _enabled():
    value = os.environ.get(PROBE_ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"the environment variable {PROBE_ENV}={value!r} must be 0 (build "
                         f"without a probe in a child process) or 1 (the default)")
    return value == "1"


def _locate(device):
    """(platform index, device index) of `device` in pyopencl's enumeration,
    which a child with the same environment repeats."""
    import pyopencl as cl
    for p, platform in enumerate(cl.get_platforms()):
        for d, dev in enumerate(platform.get_devices()):
            if dev == device:
                return p, d
    raise RuntimeError(f"OpenCL device {device.name!r} is not among the platforms' devices")


def _identity(device, dtype, vec):
    from ._opencl_runtime import options
    # The kernel text and this probe's own code: either changing voids a verdict.
    with open(__file__, "rb") as f:
        probe = hashlib.sha256(f.read()).hexdigest()
    parts = [hashlib.sha256(SOURCE.encode()).hexdigest(), probe,
             device.platform.name, device.platform.version, device.name, device.version,
             device.driver_version, *options(dtype, vec)]
    return [p.strip() for p in parts]


def verdict(device, dtype, vec):
    """Whether `dtype`'s program with VEC=`vec` builds and runs right on `device`.

    Parameters
    ----------
    device : pyopencl.Device
    dtype : numpy.dtype
        A floating dtype.
    vec : int
        The row kernel's vector width.

    Returns
    -------
    tuple
        ``(ok, reason)``: `reason` says why a width failed ("" when it passed).
    """
    if not _enabled():
        return True, ""
    ident = _identity(device, np.dtype(dtype), vec)
    key = hashlib.sha256("\0".join(ident).encode()).hexdigest()[:32]
    if key in _memory:
        return _memory[key]
    path = os.path.join(cache_dir(), key + ".json")
    try:
        with open(path) as f:
            found = json.load(f)
        result = bool(found["ok"]), str(found["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        result = _run_child(device, np.dtype(dtype), vec)
        _store(path, ident, result)
    _memory[key] = result
    return result


def _store(path, ident, result):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"ok": result[0], "reason": result[1], "identity": ident}, f)
        os.replace(tmp, path)  # atomic: a concurrent reader sees all of it or nothing
    except OSError:
        pass


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:  # a number this platform has no name for
        return str(number)


def _run_child(device, dtype, vec):
    platform_index, device_index = _locate(device)
    env = dict(os.environ, **{PROBE_ENV: "0"})
    # The child imports the xentc this process runs, whatever put it on sys.path.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    args = [*CHILD, str(platform_index), str(device_index), dtype.str, str(vec)]
    start = time.perf_counter()
    try:
        # A session of its own: on a timeout the whole group goes, compiler too.
        child = subprocess.run(args, env=env, capture_output=True, text=True,
                               timeout=TIMEOUT_S, start_new_session=True)
    except subprocess.TimeoutExpired:
        return False, (f"a probe build and run did not finish in {TIMEOUT_S} s "
                       f"(a kernel that never returns)")
    except OSError as exc:
        return False, f"the probe process could not start ({exc}); {PROBE_ENV}=0 skips it"
    seconds = time.perf_counter() - start
    lines = child.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1])
        said = str(found.get("reason", "")) if not found["ok"] else ""
    except (IndexError, ValueError, KeyError, TypeError, AttributeError):
        found, said = None, f"no verdict ({child.stdout[-200:]!r})"
    if child.returncode != 0:  # a verdict of "ok" does not count from a process that died
        died = (f"signal {_signal_name(-child.returncode)}" if child.returncode < 0
                else f"exit status {child.returncode}")
        last = [ln for ln in child.stderr.strip().splitlines() if ln.strip()][-1:]
        return False, (f"the probe process died ({died}{': ' + last[0] if last else ''})"
                       + (f" after {said}" if said and found else
                          " after passing its checks" if found else ""))
    if found is None:
        return False, f"the probe process gave {said}"
    return bool(found["ok"]), said or f"passed in {seconds:.1f} s"

# ---------------------------------------------------------------------------
# the child
# ---------------------------------------------------------------------------


def _reference(x, t, q, w, e):
    """float64 loss, lse and gradient of rows x (class targets t, or soft q)."""
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    p = np.exp(x - lse[:, None])
    n, c = x.shape
    if q is None:
        onehot = np.zeros_like(x)
        live = t >= 0
        onehot[np.nonzero(live)[0], t[live]] = 1
        coef = (1 - e) * onehot * w[np.where(live, t, 0)][:, None] + (e / c) * w
        coef[~live] = 0
    else:
        coef = w * ((1 - e) * q + e / c)
    loss = (coef * (lse[:, None] - x)).sum(axis=1)
    grad = coef.sum(axis=1, keepdims=True) * p - coef
    return loss, lse, grad


def _smoke(queue, dtype):
    """Run every kernel of `dtype`'s program on small rows; AssertionError naming the
    first result that differs from float64 NumPy's."""
    import pyopencl.array as cla

    from . import opencl
    from ._job import RowJob
    from ._opencl_array import RED_MAX, reduce

    acc = np.float32 if dtype == np.float16 else dtype
    tol = {2: 2e-2, 4: 1e-4, 8: 1e-10}[dtype.itemsize]
    rng = np.random.default_rng(0)

    def dev(a, t=None):
        return cla.to_device(queue, np.ascontiguousarray(a, dtype=t))

    def close(what, got, want):
        got = np.asarray(got, np.float64)
        if not np.allclose(got, want, rtol=tol, atol=tol):
            raise AssertionError(f"{what}: max error {np.max(np.abs(got - want)):.3g}")

    for c in (1, 2, 3, 5, 8, 9, 15, 16, 17, 33, 67, 1000):
        for n in (1, 7):
            x = (rng.standard_normal((n, c)) * 3).astype(dtype).astype(np.float64)
            t = rng.integers(0, c, n)
            t[n // 2] = -1 if n > 1 else t[0]  # an ignored row
            w = rng.uniform(0.5, 2.0, c).astype(acc).astype(np.float64)
            q = rng.dirichlet(np.ones(c), n).astype(dtype).astype(np.float64)
            cx, cw = dev(x, dtype), dev(w, acc)
            xp = None  # pyopencl arrays: the engine takes their queue, not a namespace
            for soft in (False, True):
                e = 0.1
                loss, lse, grad = opencl.rows(xp, RowJob(
                    cx, target=None if soft else dev(t), soft=dev(q, dtype) if soft else None,
                    weight=cw, ignore_index=-1, label_smoothing=e, want_lse=True,
                    out_kind="grad"))
                want = _reference(x, None if soft else t, q if soft else None, w, e)
                close(f"loss of {n}x{c} rows", loss.get(), want[0])
                live = np.ones(n, bool) if soft else t >= 0
                close(f"lse of {n}x{c} rows", lse.get()[live], want[1][live])
                close(f"gradient of {n}x{c} rows", grad.get(), want[2])
            _, total = opencl.targets(xp, RowJob(cx, target=dev(t), weight=cw, ignore_index=-1))
            close(f"target weights of {n} rows", total, w[t[t >= 0]].sum())
            p = (np.abs(x) / np.abs(x).sum(axis=1, keepdims=True)).astype(dtype)
            pick = np.maximum(t, 0)
            lo, hi, row_sum, picked = opencl.proba_rows(xp, dev(p), dev(pick))
            close(f"probabilities of {n}x{c} rows", [lo, hi, *row_sum.get(), *picked.get()],
                  [p.min(), p.max(), *p.astype(np.float64).sum(axis=1),
                   *p[np.arange(n), pick]])
            close(f"max of {n}x{c}", reduce(cx, RED_MAX).get(), x.max())


def _child(platform_index, device_index, dtype, vec):
    import pyopencl as cl

    from . import _opencl_runtime as rt

    device = cl.get_platforms()[platform_index].get_devices()[device_index]
    context = cl.Context([device])  # held here for as long as its queue and programs live
    queue = cl.CommandQueue(context)
    os.environ[rt.VEC_ENV] = str(vec)
    try:
        for _ in range(2):
            rt.build(context, device, dtype, vec)
        if rt.program(context, device, dtype).vec != vec:
            raise rt.BuildError(f"VEC={vec} was not built")
        _smoke(queue, dtype)
    except Exception as exc:  # noqa: BLE001  (any failure is the verdict)
        return {"ok": False, "reason": f"{type(exc).__name__}: {exc}".strip()[:500]}
    return {"ok": True}


if __name__ == "__main__":
    _p, _d, _t, _v = sys.argv[1:5]
    print(json.dumps(_child(int(_p), int(_d), np.dtype(_t), int(_v))), flush=True)
