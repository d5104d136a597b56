"""Check xentc on an NVIDIA GPU: the CUDA-array tests, OpenCL on the GPU's own driver, speed.

Run from the repository root (the tests are run from ``tests/``) once xentc
is installed, on a machine with an NVIDIA GPU, torch with CUDA and, where
available, CuPy, JAX with CUDA and pyopencl::

    python benchmarks/gpu_check.py                    # everything: a few minutes
    python benchmarks/gpu_check.py --quick            # one shape, 5 repeats, no OpenCL timing
    python benchmarks/gpu_check.py --json gpu.json    # also write every result to a file
    python benchmarks/gpu_check.py --skip suite,opencl --shapes 8192x32000

It builds nothing. Each part runs in turn, prints as it goes, and is
summarized at the end; a part whose prerequisite is missing (no CUDA device,
no NVIDIA OpenCL driver, no JAX) says so and is skipped, which is a result,
not an error. The exit status is 1 when a test or check failed, else 0.

Parts
-----
environment
    GPU, driver, library versions and ``xentc.show_config()``.
suite
    The tests of the suite whose arrays live on a CUDA device: those of
    ``tests/test_libraries.py`` that the ``library`` fixture
    (``tests/conftest.py``) runs with the ids ``torch-cuda`` and ``cupy``,
    selected with ``-k``, in a pytest subprocess; counts per library.
jax-gpu
    The fixture's ``jax`` member puts its arrays on JAX's CPU device, so
    the suite has no JAX-on-GPU test: a small check in a subprocess
    that losses and gradients of JAX arrays on the GPU come back on that
    device, in their dtype (float32, bfloat16), with float64 reference
    values; and whether ``jax.jit`` can trace through xentc (reported,
    not checked).
bench
    torch CUDA tensors of each shape and dtype (float32, bfloat16): the
    loss and gradient are first checked against float64, then these run
    interleaved (``time_interleaved``, each call followed by
    ``torch.cuda.synchronize()``, so that the host clock sees the device
    work finished, which adds the same few microseconds to every call;
    medians over the repeats):

    ``copy``               ``dst.copy_(x)``: a device-to-device copy of the logits
    ``torch``              ``F.cross_entropy(x, t)``
    ``xentc``              ``xentc.cross_entropy(x, t)``
    ``torch fwd+bwd``      ``F.cross_entropy(xr, t).backward()``, ``xr.grad = None`` first
    ``xentc with_grad``    ``xentc.cross_entropy_with_grad(x, t)``
    ``xentc autograd``     ``xentc.cross_entropy(xr, t).backward()``, as a torch user calls it

    Columns: ``ms`` the median; ``vs torch`` torch's time for the same task
    over this one (above 1: faster than torch); ``GB/s`` the least traffic
    the task needs (the logits read, plus the gradient written for
    fwd+bwd) over the time; ``of copy`` that bandwidth as a fraction of the
    copy's (read + written bytes over its time), so 1.0 means as fast as
    the memory allows; ``peak MiB`` the most device memory one call holds
    beyond what existed before it, its results included
    (``torch.cuda.max_memory_allocated``).
opencl
    OpenCL on the GPU's own driver: an ICD file naming NVIDIA in the
    vendors folder, or else ``libnvidia-opencl.so.1`` (``ldconfig -p``, the
    driver folders; containers often have the library but not the ICD
    file, which is then written to a temporary folder named by
    ``OCL_ICD_VENDORS`` for the subprocesses). ``tests/test_opencl.py``
    then runs on that device (``PYOPENCL_CTX``; last, as the longest part:
    if it runs out of time, the tests that ran are reported), and
    ``bench_opencl.py`` times the OpenCL engine there against the C core.

``--device cpu`` runs the JAX check and the benchmark on the CPU (the
benchmark through the generic engine, the one CUDA tensors get): a dry run
of this script's code, whose numbers say nothing about a GPU.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter

import xentc
from xentc import _dispatch
from xentc._bench import available_cores, cpu_model, parse_shapes
from xentc._config import module_version

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _timing import median_ms, time_interleaved  # noqa: E402

PARTS = ("suite", "jax-gpu", "bench", "opencl")
SHAPES = [(8192, 32000), (4096, 128256)]  # a 32k and a Llama-3 vocabulary, ~1-2 GB of float32
QUICK_SHAPES = SHAPES[:1]
DTYPES = ("float32", "bfloat16")
REPEAT, QUICK_REPEAT = 20, 5
#: The tests over the ``library`` fixture, and its ids of CUDA arrays (see
#: tests/conftest.py), for ``-k``. Only those modules are collected: an
#: import error elsewhere in the suite is not a CUDA result.
CUDA_TESTS = ("tests/test_libraries.py", "tests/test_linear.py", "tests/test_vocab_parallel.py")
CUDA_LIBRARIES = ("torch-cuda", "cupy")
#: Seconds each subprocess may take. The OpenCL tests (some 3600) come last
#: and may run out of time on a slow driver: what ran is reported.
TIMEOUTS = {"suite": 150, "jax-gpu": 60, "opencl-list": 30, "opencl-tests": 150,
            "opencl-bench": 45}
#: Per-test limit where pytest-timeout is installed: a hung kernel fails one test.
TEST_TIMEOUT = 60
#: Seconds between interrupting a child that ran out of time and killing it.
GRACE = 15
#: Agreement with float64 accepted in the benchmark's check: the larger of
#: this and 4x torch's own error (the suite holds the exact accuracy bars).
AGREE_FLOOR = {"float32": 1e-5, "bfloat16": 2.0**-7}
#: The driver folders where containers mount NVIDIA's user-space libraries.
DRIVER_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/nvidia/lib64",
               "/usr/local/nvidia/lib", "/usr/lib/wsl/lib")
NVIDIA_OPENCL = "libnvidia-opencl.so.1"
#: What the OpenCL part looks for: a platform whose name or vendor holds the
#: first, with a device whose type holds the second.
OPENCL_PLATFORM, OPENCL_DEVICE_TYPE = "nvidia", "GPU"


def say(*lines):
    """Print lines at once (the log is read while the script runs)."""
    print(*lines, sep="\n", flush=True)


def heading(text):
    """A part's title line."""
    say("", f"== {text} " + "=" * max(0, 74 - len(text)))


# ---------------------------------------------------------------------------
# subprocesses
# ---------------------------------------------------------------------------


def child_env(**extra):
    """The environment for a child: this one, unbuffered, and JAX not grabbing the GPU.

    JAX preallocates 75% of the GPU's memory when it starts unless told
    not to, which would starve torch and CuPy in the same process.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    env.update(extra)
    return env


def run_child(argv, *, env, timeout):
    """Run `argv` in the repository root, echoing its output as it comes.

    Parameters
    ----------
    argv : list of str
        The command.
    env : dict
        Its environment.
    timeout : float
        Seconds after which the child is interrupted (SIGINT: pytest then
        stops, reports what ran and writes its XML report), and `GRACE`
        seconds later its whole process group killed.

    Returns
    -------
    dict
        ``{"rc", "timed_out", "seconds", "output"}``; ``output`` is the
        combined stdout and stderr.
    """
    start = time.monotonic()
    # A session of its own: on a timeout the whole group goes, including
    # subprocesses of the tests that would otherwise hold the pipe open.
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    timed_out = threading.Event()

    def interrupt():
        timed_out.set()
        signal_child(proc.pid, signal.SIGINT)

    timers = [threading.Timer(timeout, interrupt),
              threading.Timer(timeout + GRACE, signal_child, (proc.pid, signal.SIGKILL, True))]
    for timer in timers:
        timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write("  | " + line)
            sys.stdout.flush()
        rc = proc.wait()
    finally:
        for timer in timers:
            timer.cancel()
    if timed_out.is_set():
        say(f"  (interrupted after {timeout} s)")
    return {"rc": rc, "timed_out": timed_out.is_set(),
            "seconds": round(time.monotonic() - start, 1), "output": "".join(lines)}


def signal_child(pid, sig, group=False):
    """Send `sig` to the child `pid` (or its whole process group) if it is still there."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def last_json(output):
    """The JSON object on the last line of `output` that holds one, or None."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def pytest_argv(paths, selection, junit):
    """A pytest command over `paths` that writes a JUnit XML report to `junit`.

    ``-P`` keeps the working directory off ``sys.path``, so the tests import
    the installed xentc and not the source folder (which has no compiled core).
    """
    argv = [sys.executable, "-P", "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider",
            "--tb=short", "--junitxml", junit, "--continue-on-collection-errors"]
    if selection:
        argv += ["-k", selection]
    if module_version("pytest_timeout"):
        argv += ["--timeout", str(TEST_TIMEOUT)]
    return argv


def junit_outcomes(path):
    """(test name, outcome, message) for each test case of a JUnit XML report.

    Outcomes are "passed", "failed", "error" and "skipped" (xfail included).
    """
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (found.get("message") or found.text or "").strip()
                break
        cases.append((name, outcome, message))
    return cases


def summarize_tests(run, junit, groups=None):
    """Counts per outcome (and per group of test ids) of a pytest run.

    Parameters
    ----------
    run : dict
        `run_child`'s result.
    junit : str
        The run's JUnit XML report (may be missing if pytest died).
    groups : sequence of str, optional
        Substrings of the test ids to count apart (the first that matches).

    Returns
    -------
    dict
        ``status`` ("ok", "failed", or "partial": out of time, nothing
        failed), ``counts``, ``groups``, ``failures``
        (name and first line of the message, at most 30), ``skip_reasons``
        (the most common ones), ``rc``, ``seconds``, ``timed_out``.
    """
    result = {"rc": run["rc"], "seconds": run["seconds"], "timed_out": run["timed_out"]}
    if not os.path.exists(junit):
        result.update(status="failed", counts={}, groups={}, failures=[],
                      skip_reasons=[], reason="pytest wrote no report (crashed or killed)")
        return result
    cases = junit_outcomes(junit)
    counts = Counter(outcome for _, outcome, _ in cases)
    by_group = {}
    for name, outcome, _ in cases if groups else ():
        group = next((g for g in groups if g in name), "other")
        by_group.setdefault(group, Counter())[outcome] += 1
    failures = [(name, message.splitlines()[0] if message else "")
                for name, outcome, message in cases if outcome in ("failed", "error")]
    skips = Counter(message.splitlines()[0] if message else "" for _, outcome, message in cases
                    if outcome == "skipped")
    bad = counts["failed"] or counts["error"] or (run["rc"] not in (0, 5) and not run["timed_out"])
    # Out of time with nothing failed: what ran is a result, the rest unknown.
    status = "failed" if bad else "partial" if run["timed_out"] else "ok"
    result.update(status=status, counts=dict(counts),
                  groups={g: dict(c) for g, c in by_group.items()}, failures=failures[:30],
                  skip_reasons=skips.most_common(6))
    return result


def format_counts(counts):
    """``"88 passed, 2 failed"`` from a dict of outcome counts."""
    order = ("passed", "failed", "error", "skipped")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "no tests"


def report_tests(result):
    """Print `summarize_tests`'s result."""
    say(f"  result: {format_counts(result.get('counts', {}))} in {result['seconds']} s"
        + (" (timed out)" if result["timed_out"] else ""))
    for group, counts in result.get("groups", {}).items():
        say(f"    {group:12} {format_counts(counts)}")
    for reason, n in result.get("skip_reasons", []):
        say(f"    skipped x{n}: {reason[:150]}")
    for name, message in result.get("failures", []):
        say(f"    FAILED {name}: {message[:200]}")
    if result.get("reason"):
        say(f"  {result['reason']}")


# ---------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------


def nvidia_smi():
    """One dict per GPU from ``nvidia-smi``, or a string saying why there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    fields = ("name", "driver_version", "memory.total", "clocks.max.sm", "clocks.max.memory",
              "power.limit", "pci.bus_id")
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    if out.returncode:
        return f"nvidia-smi failed: {out.stderr.strip() or out.stdout.strip()}"
    return [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in out.stdout.splitlines() if line.strip()]


def torch_cuda():
    """torch's view of the CUDA device: a dict, with ``available`` False when none."""
    try:
        import torch
    except ImportError as exc:
        return {"available": False, "reason": f"torch cannot be imported ({exc})"}
    info = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "available": torch.cuda.is_available()}
    if not info["available"]:
        info["reason"] = "torch.cuda.is_available() is False"
        return info
    p = torch.cuda.get_device_properties(0)
    info.update(devices=torch.cuda.device_count(), name=p.name,
                capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                multiprocessors=p.multi_processor_count,
                l2_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1))
    return info


def environment():
    """Print and return the machine, the GPU and the versions."""
    versions = {m: module_version(m) for m in ("xentc", "numpy", "torch", "cupy", "jax", "jaxlib",
                                               "pyopencl", "scipy", "pytest", "pytest_timeout",
                                               "array_api_compat", "array_api_strict")}
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpu": cpu_model(), "cores": available_cores(), "versions": versions,
            "nvidia_smi": nvidia_smi(), "torch_cuda": torch_cuda()}
    say(f"python {info['python']} on {info['platform']}; {info['cpu']}, {info['cores']} cores")
    smi = info["nvidia_smi"]
    for gpu in smi if isinstance(smi, list) else []:
        say("gpu: " + ", ".join(f"{k} {v}" for k, v in gpu.items()))
    if isinstance(smi, str):
        say(f"gpu: {smi}")
    tc = info["torch_cuda"]
    say("torch cuda: " + ", ".join(f"{k} {v}" for k, v in tc.items()))
    say("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        + "; not installed: " + (", ".join(k for k, v in versions.items() if not v) or "none"))
    say("xentc.show_config():")
    info["xentc"] = xentc.show_config()
    return info


def has_cuda(env_info):
    """Whether torch sees a CUDA device (the benchmark's condition)."""
    return bool(env_info.get("torch_cuda", {}).get("available"))


# ---------------------------------------------------------------------------
# the suite's CUDA tests
# ---------------------------------------------------------------------------


def suite(tmp):
    """The suite's tests on CUDA arrays, in a subprocess."""
    selection = " or ".join(CUDA_LIBRARIES)
    junit = os.path.join(tmp, "suite.xml")
    argv = pytest_argv(list(CUDA_TESTS), selection, junit)
    say(f"  pytest {' '.join(CUDA_TESTS)} -k {selection!r}")
    run = run_child(argv, env=child_env(), timeout=TIMEOUTS["suite"])
    result = summarize_tests(run, junit, CUDA_LIBRARIES)
    result["selection"] = selection
    report_tests(result)
    if result["status"] == "ok" and not any(c.get("passed") for c in result["groups"].values()):
        # Every CUDA test skipped: nothing was checked on a GPU.
        result["status"] = "skipped"
        result["reason"] = "no CUDA test ran (see the skip reasons)"
    return result


# ---------------------------------------------------------------------------
# JAX arrays on the GPU
# ---------------------------------------------------------------------------

# Run as ``python -c JAX_CHECK PLATFORM``; prints one JSON line at the end.
JAX_CHECK = r'''
import json, sys
import numpy as np
import jax
import jax.numpy as jnp
import xentc


def check(call, dev, dtype, shape, want, tol):
    """call()'s result: type, device, dtype, shape, then |got - want| <= tol elementwise."""
    try:
        got = call()
    except Exception as exc:
        return {"ok": False, "problem": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if not isinstance(got, jax.Array):
        return {"ok": False, "problem": f"a {type(got).__name__}, not a jax.Array"}
    for what, have, need in (("devices", got.devices(), {dev}), ("dtype", got.dtype, dtype),
                             ("shape", got.shape, shape)):
        if have != need:
            return {"ok": False, "problem": f"{what} {have}, want {need}"}
    ratio = float(np.max(np.abs(np.asarray(got, np.float64) - want) / tol))
    return {"ok": bool(ratio <= 1), "error_over_tolerance": round(ratio, 4)}


def main(platform):
    try:
        dev = jax.devices(platform)[0]
    except RuntimeError as exc:
        return {"status": "skipped", "reason": f"JAX has no {platform} device ({exc})"}
    rng = np.random.default_rng(0)
    n, c = 64, 1000
    x = (3 * rng.standard_normal((n, c))).astype(np.float32)
    t = rng.integers(0, c, n)
    rows = np.arange(n)
    td = jax.device_put(t.astype(np.int32), dev)  # JAX's default index type
    checks = {}
    for name in ("float32", "bfloat16"):
        dtype = jnp.dtype(getattr(jnp, name))
        xd = jax.device_put(x, dev).astype(dtype)
        x64 = np.asarray(xd, np.float64)  # the values as stored
        m = x64.max(1, keepdims=True)
        lse = (m + np.log(np.exp(x64 - m).sum(1, keepdims=True)))[:, 0]
        want = lse - x64[rows, t]
        grad = np.exp(x64 - lse[:, None])
        grad[rows, t] -= 1
        grad /= n
        eps = float(jnp.finfo(dtype).eps)
        scale = np.maximum(np.abs(lse), np.abs(x64[rows, t]))
        # Lenient bounds (8 eps of the row's scale): a smoke check; the suite
        # holds the exact ones.
        checks[f"{name} loss"] = check(
            lambda: xentc.cross_entropy(xd, td, reduction="none"), dev, dtype, (n,), want,
            8 * eps * scale)
        checks[f"{name} mean"] = check(
            lambda: xentc.cross_entropy_with_grad(xd, td)[0], dev, dtype, (), want.mean(),
            8 * eps * scale.max())
        checks[f"{name} grad"] = check(
            lambda: xentc.cross_entropy_with_grad(xd, td)[1], dev, dtype, (n, c), grad,
            8 * eps * (1 + scale[:, None]) * np.abs(grad) + 1e-30)
    try:
        traced = jax.jit(lambda a, b: xentc.cross_entropy(a, b))
        jit = f"works ({float(traced(jax.device_put(x, dev), td)):.6f})"
    except Exception as exc:  # a finding, not a failure: tracing is not promised
        jit = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    ok = all(v["ok"] for v in checks.values())
    return {"status": "ok" if ok else "failed", "device": str(dev), "checks": checks, "jit": jit}


print(json.dumps(main(sys.argv[1])))
'''


def jax_gpu(platform_name):
    """`JAX_CHECK` in a subprocess, on JAX's `platform_name` ("gpu", or "cpu" for a dry run)."""
    if not module_version("jax"):
        say("  JAX is not installed")
        return {"status": "skipped", "reason": "JAX is not installed"}
    run = run_child([sys.executable, "-P", "-c", JAX_CHECK, platform_name], env=child_env(),
                    timeout=TIMEOUTS["jax-gpu"])
    result = last_json(run["output"]) or {
        "status": "failed", "reason": f"no result (exit status {run['rc']}"
        + (", timed out)" if run["timed_out"] else ")")}
    result["seconds"] = run["seconds"]
    if "reason" in result:
        say(f"  {result['reason']}")
    for name, check in result.get("checks", {}).items():
        say(f"  {name:15} " + ("ok" if check["ok"] else "FAILED") + "  "
            + ", ".join(f"{k} {v}" for k, v in check.items() if k != "ok"))
    if "jit" in result:
        say(f"  jax.jit through xentc.cross_entropy: {result['jit']}")
    return result


# ---------------------------------------------------------------------------
# OpenCL on the GPU's driver
# ---------------------------------------------------------------------------


def _ldconfig_path(soname):
    """Where the dynamic loader's cache puts `soname`, or None."""
    exe = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.split(" ")[0] == soname and os.path.exists(path.strip()):
            return path.strip()
    return None


def find_nvidia_opencl():
    """Where NVIDIA's OpenCL driver is, if anywhere.

    Returns
    -------
    dict
        ``vendors_dir`` (the folder the ICD loader reads), ``icd_files`` (the
        ``*.icd`` files there that name NVIDIA's library) and ``library``
        (the path of ``libnvidia-opencl.so.1``, or None).
    """
    env_dir = os.environ.get("OCL_ICD_VENDORS", "")
    vendors = env_dir if os.path.isdir(env_dir) else "/etc/OpenCL/vendors"
    icds = []
    for path in sorted(glob.glob(os.path.join(vendors, "*.icd"))):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        if "nvidia" in text.lower():
            icds.append(path)
    library = _ldconfig_path(NVIDIA_OPENCL)
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for d in dirs + list(DRIVER_DIRS) if library is None else ():
        # The versioned file alone (libnvidia-opencl.so.<driver>, no .so.1
        # link) is enough for an ICD file.
        found = sorted(glob.glob(os.path.join(d, NVIDIA_OPENCL + "*")), key=len)
        if found:
            library = found[0]
            break
    return {"vendors_dir": vendors, "icd_files": icds, "library": library}


# Run as ``python -c LIST_OPENCL``: the platforms and devices as one JSON line.
LIST_OPENCL = r'''
import json
import pyopencl as cl


def fp64(d):
    try:
        return bool(d.double_fp_config)
    except cl.Error:  # some drivers raise instead of answering 0
        return False


try:
    platforms = cl.get_platforms()
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
else:
    print(json.dumps({"platforms": [
        {"name": p.name, "vendor": p.vendor, "version": p.version,
         "devices": [{"name": d.name, "type": cl.device_type.to_string(d.type),
                      "version": d.version, "driver": d.driver_version, "fp64": fp64(d),
                      "memory_gib": round(d.global_mem_size / 2**30, 1)}
                     for d in p.get_devices()]}
        for p in platforms]}))
'''


def opencl(quick, tmp):
    """The OpenCL tests (and unless `quick`, bench_opencl.py) on NVIDIA's OpenCL driver."""
    found = find_nvidia_opencl()
    result = {"driver": found}
    env = child_env()
    if found["icd_files"]:
        say(f"  ICD file(s) naming NVIDIA: {', '.join(found['icd_files'])}")
    elif found["library"]:
        # The library without its ICD file: give the loader one of our own.
        vendors = os.path.join(tmp, "vendors")
        os.makedirs(vendors, exist_ok=True)
        with open(os.path.join(vendors, "nvidia.icd"), "w") as f:
            f.write(found["library"] + "\n")
        env["OCL_ICD_VENDORS"] = vendors
        result["icd_written"] = os.path.join(vendors, "nvidia.icd")
        say(f"  no ICD file in {found['vendors_dir']}, but {found['library']}: "
            f"OCL_ICD_VENDORS={vendors} (an ICD file naming it)")
    else:
        result.update(status="skipped", reason=(
            f"no NVIDIA OpenCL driver: no *.icd naming NVIDIA in {found['vendors_dir']}, "
            f"no {NVIDIA_OPENCL} (ldconfig -p, LD_LIBRARY_PATH, {', '.join(DRIVER_DIRS)}); "
            f"OpenCL on this GPU was not checked"))
        say(f"  {result['reason']}")
        return result
    if not module_version("pyopencl"):
        result.update(status="skipped", reason="pyopencl is not installed")
        say(f"  {result['reason']}")
        return result
    listing = last_json(run_child([sys.executable, "-P", "-c", LIST_OPENCL], env=env,
                                  timeout=TIMEOUTS["opencl-list"])["output"]) or {
        "error": "no answer"}
    result["platforms"] = listing.get("platforms", listing.get("error"))
    choice = next(((i, j) for i, p in enumerate(listing.get("platforms", []))
                   if OPENCL_PLATFORM in (p["name"] + p["vendor"]).lower()
                   for j, d in enumerate(p["devices"]) if OPENCL_DEVICE_TYPE in d["type"]), None)
    if choice is None:
        # The library is there but the loader gets no NVIDIA GPU from it: a
        # finding about the machine, not about xentc.
        result.update(status="skipped", reason=f"the NVIDIA OpenCL library gives no GPU "
                      f"platform: {result['platforms']}")
        say(f"  {result['reason']}")
        return result
    platform_info = listing["platforms"][choice[0]]
    device = platform_info["devices"][choice[1]]
    env["PYOPENCL_CTX"] = f"{choice[0]}:{choice[1]}"
    say(f"  PYOPENCL_CTX={env['PYOPENCL_CTX']}: {device['name']} ({platform_info['name']} "
        f"{platform_info['version']}, driver {device['driver']}, fp64 {device['fp64']})")
    junit = os.path.join(tmp, "opencl.xml")
    run = run_child(pytest_argv(["tests/test_opencl.py"], None, junit), env=env,
                    timeout=TIMEOUTS["opencl-tests"])
    result.update(summarize_tests(run, junit), device=device, pyopencl_ctx=env["PYOPENCL_CTX"])
    report_tests(result)
    if not quick:
        say("  benchmarks/bench_opencl.py --repeat 10")
        bench_run = run_child([sys.executable, "-P", os.path.join(HERE, "bench_opencl.py"),
                               "--repeat", "10"], env=env, timeout=TIMEOUTS["opencl-bench"])
        result["bench_opencl"] = {"rc": bench_run["rc"], "output": bench_run["output"][-4000:]}
    return result


# ---------------------------------------------------------------------------
# speed on torch CUDA tensors
# ---------------------------------------------------------------------------


def _errors(x, t, grads, losses):
    """Errors against float64: |mean - ref| / |ref| per loss, max |g - ref| / max |ref| per grad.

    Computed a block of rows at a time, so that the float64 copies stay small.
    """
    import torch

    n, c = x.shape
    step = max(1, (1 << 25) // c)
    total, gmax = 0.0, 0.0
    gerr = dict.fromkeys(grads, 0.0)
    for i in range(0, n, step):
        xb, tb = x[i:i + step].double(), t[i:i + step]
        lse = torch.logsumexp(xb, 1)
        total += float((lse - xb.gather(1, tb[:, None])[:, 0]).sum())
        ref = torch.exp(xb - lse[:, None])
        ref[torch.arange(len(tb), device=x.device), tb] -= 1
        ref /= n
        gmax = max(gmax, float(ref.abs().max()))
        for k, g in grads.items():
            gerr[k] = max(gerr[k], float((g[i:i + step].double() - ref).abs().max()))
    ref_loss = total / n
    return ({k: abs(float(v) - ref_loss) / abs(ref_loss) for k, v in losses.items()},
            {k: e / gmax for k, e in gerr.items()})


def bench_case(shape, dtype_name, repeat, device, seed):
    """Check, then time, every implementation on one shape and dtype.

    Parameters
    ----------
    shape : tuple of int
        ``(N, C)``.
    dtype_name : str
        ``"float32"`` or ``"bfloat16"``.
    repeat : int
        Timed repetitions.
    device : str
        ``"cuda"`` (or ``"cpu"`` for a dry run).
    seed : int
        Seed of the logits and targets.

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``engine``, ``check`` (errors against float64
        and whether xentc's agree), ``xentc_error`` (why xentc was not
        timed, if it raised), ``copy_gbs`` and ``rows``: per implementation
        ``task``, ``ms``, ``vs_torch``, ``gbs``, ``of_copy``, ``peak_mib``
        and the raw ``times`` in seconds.
    """
    import torch
    import torch.nn.functional as F

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # On the CPU the C core would serve torch tensors; the dry run takes the
    # engine that CUDA tensors get.
    backend = "auto" if cuda else "generic"
    n, c = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    x = (3 * torch.randn(n, c, device=device, generator=gen)).to(getattr(torch, dtype_name))
    t = torch.randint(0, c, (n,), device=device, generator=gen)
    xr = x.detach().requires_grad_()  # a leaf on the same memory, for the autograd calls
    dst = torch.empty_like(x)
    out = {"shape": list(shape), "dtype": dtype_name,
           "engine": _dispatch.engine_for(_dispatch.namespace(x), x, backend).name}

    impls = {
        "copy": ("copy", lambda: dst.copy_(x)),
        "torch": ("fwd", lambda: F.cross_entropy(x, t)),
        "xentc": ("fwd", lambda: xentc.cross_entropy(x, t, backend=backend)),
        "torch fwd+bwd": ("fwd+bwd", lambda: F.cross_entropy(xr, t).backward()),
        "xentc with_grad": ("fwd+bwd", lambda: xentc.cross_entropy_with_grad(x, t,
                                                                             backend=backend)),
        "xentc autograd": ("fwd+bwd",
                           lambda: xentc.cross_entropy(xr, t, backend=backend).backward()),
    }

    # The check, which also warms every implementation up.
    try:
        loss_x = xentc.cross_entropy(x, t, backend=backend)
        loss_g, grad_x = xentc.cross_entropy_with_grad(x, t, backend=backend)
        xentc.cross_entropy(xr, t, backend=backend).backward()
        grad_a, xr.grad = xr.grad, None
    except Exception as exc:  # e.g. a dtype the engine refuses: a finding, then time the rest
        out["xentc_error"] = f"{type(exc).__name__}: {exc}"
        impls = {k: v for k, v in impls.items() if not k.startswith("xentc")}
        loss_x = loss_g = grad_x = grad_a = xr.grad = None
    loss_t = F.cross_entropy(x, t)
    F.cross_entropy(xr, t).backward()
    grad_t, xr.grad = xr.grad, None
    losses, grads = {"torch": loss_t}, {"torch": grad_t}
    if grad_x is not None:
        losses.update({"xentc": loss_x, "xentc with_grad": loss_g})
        grads.update({"xentc with_grad": grad_x, "xentc autograd": grad_a})
    loss_err, grad_err = _errors(x, t, grads, losses)
    floor = AGREE_FLOOR.get(dtype_name, 1e-5)
    agree = all(loss_err[k] <= max(4 * loss_err["torch"], floor) for k in loss_err) and all(
        grad_err[k] <= max(4 * grad_err["torch"], floor) for k in grad_err)
    out["check"] = {"loss_rel_error": loss_err, "grad_rel_error": grad_err, "agree": agree,
                    "autograd_equals_with_grad": None if grad_a is None
                    else bool(torch.equal(grad_a, grad_x))}
    del loss_x, loss_g, grad_x, grad_a, loss_t, grad_t, losses, grads

    def synced(fn):
        def call():
            xr.grad = None  # as zero_grad() leaves it: each backward allocates its gradient
            fn()
            sync()
        return call

    samples = time_interleaved([(k, synced(fn)) for k, (_, fn) in impls.items()],
                               repeat=repeat, min_time=1e-3)
    ms = {k: median_ms(s["times"]) for k, s in samples.items()}
    peak = {}
    for k, (_, fn) in impls.items():
        if not cuda:
            peak[k] = None
            continue
        xr.grad = None
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync()
        peak[k] = (torch.cuda.max_memory_allocated() - base) / 2**20
        xr.grad = None
    least_bytes = {"copy": 2 * x.nbytes, "fwd": x.nbytes + t.nbytes,
                   "fwd+bwd": 2 * x.nbytes + t.nbytes}
    copy_gbs = least_bytes["copy"] / ms["copy"] / 1e6
    torch_ms = {"fwd": ms["torch"], "fwd+bwd": ms["torch fwd+bwd"], "copy": None}
    rows = {}
    for k, (task, _) in impls.items():
        gbs = least_bytes[task] / ms[k] / 1e6
        rows[k] = {"task": task, "ms": ms[k],
                   "vs_torch": torch_ms[task] / ms[k] if torch_ms[task] else None,
                   "gbs": gbs, "of_copy": gbs / copy_gbs, "peak_mib": peak[k],
                   "times": samples[k]["times"]}
    out.update(copy_gbs=copy_gbs, rows=rows)
    return out


TABLE_HEADER = (f"{'shape':<13} {'dtype':<9} {'impl':<16} {'task':<8} {'ms':>9} {'vs torch':>9} "
                f"{'GB/s':>8} {'of copy':>8} {'peak MiB':>9}")


def format_case(case):
    """The table lines of one `bench_case` result (its check and error lines included)."""
    shape = "x".join(map(str, case["shape"]))
    if "error" in case:
        return [f"{shape:<13} {case['dtype']:<9} ERROR {case['error']}"]
    lines = []
    for k, r in case["rows"].items():
        vs = "" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}x"
        peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"{shape:<13} {case['dtype']:<9} {k:<16} {r['task']:<8} {r['ms']:9.3f} "
                     f"{vs:>9} {r['gbs']:8.0f} {r['of_copy']:8.2f} {peak:>9}")
    chk = case["check"]
    errs = ", ".join(f"{k} {v:.1e}" for k, v in chk["loss_rel_error"].items())
    gerrs = ", ".join(f"{k} {v:.1e}" for k, v in chk["grad_rel_error"].items())
    lines.append(f"  {case['engine']} engine; vs float64: loss {errs}; grad {gerrs}; "
                 f"xentc agrees: {chk['agree']}; autograd == with_grad: "
                 f"{chk['autograd_equals_with_grad']}")
    if "xentc_error" in case:
        lines.append(f"  xentc refused {case['dtype']}: {case['xentc_error']}")
    return lines


def bench(shapes, dtypes, repeat, device, seed):
    """Every `bench_case`, printed as it finishes; a failing case is recorded, not fatal."""
    import torch

    say(f"  median ms of {repeat} interleaved repetitions, each call synchronized; "
        f"on {torch.cuda.get_device_name(0) if device == 'cuda' else 'the CPU (dry run)'}",
        TABLE_HEADER)
    cases = []
    for shape in shapes:
        for dtype_name in dtypes:
            try:
                case = bench_case(shape, dtype_name, repeat, device, seed)
            except Exception as exc:
                case = {"shape": list(shape), "dtype": dtype_name,
                        "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if device == "cuda":  # the next shape gets the memory back from torch's cache
                torch.cuda.empty_cache()
            cases.append(case)
            say(*format_case(case))
    bad = [c for c in cases if "error" in c or "xentc_error" in c or not c["check"]["agree"]]
    return {"status": "failed" if bad else "ok", "repeat": repeat, "device": device,
            "cases": cases}


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def one_line(name, result):
    """A summary line for a part's result."""
    status = result.get("status", "?")
    if status == "error":
        detail = result.get("reason", "")
    elif name == "environment":
        tc = result["torch_cuda"]
        smi = result["nvidia_smi"]
        driver = smi[0]["driver_version"] if isinstance(smi, list) and smi else "?"
        detail = (f"{tc['name']}, driver {driver}, CUDA {tc['cuda_runtime']}"
                  if tc.get("available") else tc.get("reason", ""))
    elif name in ("suite", "opencl") and "counts" in result:
        groups = result.get("groups") or {}
        detail = ("; ".join(f"{g} {format_counts(c)}" for g, c in groups.items())
                  if len(groups) > 1 else format_counts(result["counts"]))
        if result.get("failures"):
            detail += f"; first failure {result['failures'][0][0]}"
        if result.get("timed_out"):
            detail += f"; out of time after {result['seconds']} s, the rest did not run"
    elif name == "jax-gpu" and "checks" in result:
        n_ok = sum(c["ok"] for c in result["checks"].values())
        detail = (f"{n_ok}/{len(result['checks'])} checks on {result['device']}; "
                  f"jit: {result['jit']}")
    elif name == "bench" and "cases" in result:
        bits = []
        for c in result["cases"]:
            label = f"{'x'.join(map(str, c['shape']))} {c['dtype']}"
            if "error" in c:
                bits.append(f"{label} error")
            elif "xentc" in c["rows"]:
                r = c["rows"]
                bits.append(f"{label} fwd {r['xentc']['vs_torch']:.2f}x "
                            f"bwd {r['xentc autograd']['vs_torch']:.2f}x")
            else:
                bits.append(f"{label} xentc refused")
        detail = "vs torch: " + "; ".join(bits)
    else:
        detail = result.get("reason", "")
    return f"  {name:12} {status:8} {detail}"


def main(argv=None):
    """Run the check from the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments; default ``sys.argv[1:]``.

    Returns
    -------
    int
        1 if a test or check failed or a part crashed, else 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"one benchmark shape, {QUICK_REPEAT} repeats, no OpenCL timing")
    parser.add_argument("--json", metavar="PATH", help="also write every result there")
    parser.add_argument("--shapes", type=parse_shapes,
                        help="benchmark shapes NxC,... (default: "
                             + ",".join(f"{n}x{c}" for n, c in SHAPES) + ")")
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help="benchmark dtypes (default: %(default)s)")
    parser.add_argument("--repeat", type=int,
                        help=f"timed repetitions (default {REPEAT}, --quick {QUICK_REPEAT})")
    parser.add_argument("--skip", default="", help=f"parts to leave out: {','.join(PARTS)}")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a dry run of the JAX check and the benchmark on the CPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(PARTS):
        parser.error(f"unknown part(s) {sorted(skip - set(PARTS))}; parts: {', '.join(PARTS)}")
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else REPEAT)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]

    report = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "argv": sys.argv if argv is None else argv, "parts": {}}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1, default=str)

    def part(name, fn):
        heading(name)
        start = time.monotonic()
        try:
            result = fn()
        except Exception:
            say(traceback.format_exc())
            result = {"status": "error", "reason": traceback.format_exc().strip().splitlines()[-1]}
        result["part_seconds"] = round(time.monotonic() - start, 1)
        report["parts"][name] = result
        save()  # after each part: a run cut short still leaves what it measured
        return result

    with tempfile.TemporaryDirectory(prefix="xentc-gpu-check-") as tmp:
        env_info = part("environment", lambda: dict(environment(), status="ok"))
        cuda = has_cuda(env_info) or args.device == "cpu"
        if not has_cuda(env_info):
            say("", "no CUDA device: torch sees none"
                + ("" if args.device == "cpu" else "; the GPU parts are skipped"))
        for name, fn in (("suite", lambda: suite(tmp)),
                         ("jax-gpu", lambda: jax_gpu("gpu" if args.device == "cuda" else "cpu")),
                         ("bench", lambda: bench(shapes, dtypes, repeat, args.device, args.seed)),
                         ("opencl", lambda: opencl(args.quick, tmp))):
            if name in skip:
                report["parts"][name] = {"status": "skipped", "reason": "--skip"}
            elif name in ("jax-gpu", "bench") and not cuda:
                report["parts"][name] = {"status": "skipped", "reason": "no CUDA device"}
            else:
                part(name, fn)

    heading("summary")
    for name, result in report["parts"].items():
        say(one_line(name, result))
    report["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    save()
    if args.json:
        say(f"  results written to {args.json}")
    return int(any(r.get("status") in ("failed", "error") for r in report["parts"].values()))


if __name__ == "__main__":
    sys.exit(main())
