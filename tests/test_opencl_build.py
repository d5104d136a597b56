"""The OpenCL engine's builds cannot take the caller down.

A probe child that aborts, hangs, lies or finds wrong numbers fails its
vector width, and the engine falls back to a narrower one or raises a
RuntimeError naming the device, the driver and what was tried: never a dead
process, a hang or a KeyError. Every width is forced in turn and either
computes torch's values or is refused with a reason. Fake children write
their verdicts to a folder of the test's own, never the user's cache.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

if not (sys.platform == "linux" and platform.machine() == "x86_64"):
    pytest.importorskip("pyopencl", reason="the test extras bring PoCL on Linux x86_64 only")
import pyopencl as cl  # noqa: E402
import torch  # noqa: E402

import xentc  # noqa: E402
from xentc._engines import _opencl_probe, _opencl_runtime, opencl  # noqa: E402

WIDTHS = (1, 2, 4, 8, 16)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No verdicts or programs in memory, verdicts on disk in `tmp_path`."""
    monkeypatch.setenv("XENTC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("XENTC_OPENCL_VEC", raising=False)
    monkeypatch.delenv("XENTC_OPENCL_PROBE", raising=False)
    opencl.clear_cache()
    yield tmp_path
    opencl.clear_cache()


@pytest.fixture(scope="module")
def device():
    context = cl.create_some_context(interactive=False)
    yield context.devices[0]


def fake_child(monkeypatch, code):
    """Replace the probe child with a Python program `code`."""
    monkeypatch.setattr(_opencl_probe, "CHILD", (sys.executable, "-c", textwrap.dedent(code)))


def documented_case(dtype=np.float32):
    x = np.array([[0.2, 0.3, 0.5], [0.5, 0.2, 0.3]], dtype)
    return x, np.array([2, 1]), np.array([2.0, 4.0, 6.0], dtype)


@pytest.mark.parametrize("child, reason", [
    ("import os; os.abort()", "died (signal SIGABRT"),
    ("import sys; sys.exit(3)", "died (exit status 3"),
    ("import json; print(json.dumps({'ok': True})); import os; os.abort()", "died"),
    ("print('no json')", "gave no verdict"),
    ("import json; print(json.dumps({'ok': False, 'reason': 'wrong gradient'}))",
     "wrong gradient"),
])
def test_a_failing_probe_fails_its_width(fresh, monkeypatch, device, child, reason):
    fake_child(monkeypatch, child)
    ok, why = _opencl_probe.verdict(device, np.dtype(np.float32), 4)
    assert not ok
    assert reason in why


def test_a_hanging_probe_is_killed(fresh, monkeypatch, device):
    fake_child(monkeypatch, "import time; time.sleep(600)")
    monkeypatch.setattr(_opencl_probe, "TIMEOUT_S", 2)
    ok, why = _opencl_probe.verdict(device, np.dtype(np.float32), 4)
    assert not ok and "did not finish in 2 s" in why


def test_no_width_left_is_a_runtime_error_naming_device_driver_and_options(fresh, monkeypatch,
                                                                           device):
    fake_child(monkeypatch, "import os; os.abort()")
    x, y, w = documented_case()
    with pytest.raises(RuntimeError) as info:
        xentc.cross_entropy(x, y, weight=w, backend="opencl")
    text = str(info.value)
    assert device.name.strip() in text and device.driver_version.strip() in text
    for vec in _opencl_runtime.candidate_widths(device, np.dtype(np.float32)):
        assert f"VEC={vec}: the probe process died" in text


def test_fallback_to_the_first_width_that_passed(fresh, monkeypatch, device):
    """Widths above 2 "abort": the program is built with VEC=2 and says why."""
    fake_child(monkeypatch, """
        import json, os, sys
        if int(sys.argv[-1]) > 2:
            os.abort()
        print(json.dumps({"ok": True}))""")
    monkeypatch.setenv("XENTC_OPENCL_VEC", "16")
    x, y, w = documented_case()
    got = xentc.cross_entropy(x, y, weight=w, reduction="none", backend="opencl")
    want = torch.nn.functional.cross_entropy(torch.from_numpy(x).double(), torch.from_numpy(y),
                                             torch.from_numpy(w).double(), reduction="none")
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    queue = _opencl_runtime.default_queue()
    prog = _opencl_runtime.program(queue.context, queue.device, np.float32)
    assert prog.vec == 2
    assert [n.split(":")[0] for n in prog.notes] == ["VEC=16", "VEC=8", "VEC=4"]
    assert "VEC 2 [VEC=16: the probe process died" in " ".join(opencl.devices())


def test_verdicts_are_kept_on_disk(fresh, monkeypatch, device):
    """A second process (here: memory cleared) reads the verdict instead of probing."""
    fake_child(monkeypatch, "import json; print(json.dumps({'ok': True}))")
    assert _opencl_probe.verdict(device, np.dtype(np.float64), 2)[0]
    files = list((fresh / "opencl-verdicts").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["ok"] is True
    fake_child(monkeypatch, "import os; os.abort()")  # would fail, if it ran
    _opencl_probe.clear_memory()
    assert _opencl_probe.verdict(device, np.dtype(np.float64), 2)[0]


def test_a_program_without_its_kernels_is_refused(fresh, monkeypatch, device):
    """What PoCL did with 512-bit vectors: a build that 'succeeds' with no kernels."""
    class Empty:
        def __init__(self, program):
            self.program = program

        def build(self, *args, **kwargs):
            self.program.build(*args, **kwargs)
            return self

        def all_kernels(self):
            return []

    real = cl.Program
    monkeypatch.setattr(_opencl_runtime.cl, "Program", lambda *a: Empty(real(*a)))
    monkeypatch.setenv("XENTC_OPENCL_PROBE", "0")
    monkeypatch.setenv("XENTC_OPENCL_VEC", "1")  # unprobed builds here: scalar ones only
    context = cl.Context([device])
    with pytest.raises(_opencl_runtime.BuildError, match="has no kernel xentc_rows"):
        _opencl_runtime.build(context, device, np.dtype(np.float32), 1)
    with pytest.raises(RuntimeError, match="cannot be built on") as info:
        _opencl_runtime.program(context, device, np.float32)
    assert "VEC=1: the program built with" in str(info.value)
    monkeypatch.undo()  # the real cl.Program again before the fixture clears


@pytest.mark.parametrize("value", ["3", "32", "wide"])
def test_a_bad_forced_width_is_named(fresh, monkeypatch, value):
    monkeypatch.setenv("XENTC_OPENCL_VEC", value)
    with pytest.raises(ValueError, match=f"XENTC_OPENCL_VEC={value!r} must be one of"):
        _opencl_runtime.forced_width()


def test_a_bad_probe_switch_is_named(fresh, monkeypatch, device):
    monkeypatch.setenv("XENTC_OPENCL_PROBE", "off")
    with pytest.raises(ValueError, match="XENTC_OPENCL_PROBE='off' must be 0"):
        _opencl_probe.verdict(device, np.dtype(np.float32), 1)


def test_preferred_width_tolerates_driver_nonsense():
    class Device:
        preferred_vector_width_float = 0
        preferred_vector_width_double = 12

    assert _opencl_runtime.preferred_width(Device(), np.dtype(np.float32)) == 1
    assert _opencl_runtime.preferred_width(Device(), np.dtype(np.float64)) == 8


@pytest.mark.parametrize("vec", WIDTHS)
def test_every_forced_width_computes_torchs_values_or_falls_back(vec, tmp_path):
    """In a child process, with the user's verdict cache: the real probe of each
    width, the documented case that once hung, and the widths taken."""
    script = textwrap.dedent(f"""
        import numpy as np, torch, xentc
        from xentc._engines import _opencl_runtime as rt
        x = np.array([[0.2, 0.3, 0.5], [0.5, 0.2, 0.3]])
        y, w = np.array([2, 1]), np.array([2.0, 4.0, 6.0])
        q = rt.default_queue()
        for dtype in (np.float32, np.float64):
            if dtype == np.float64 and not rt.has_fp64(q.device):
                continue
            got = xentc.cross_entropy(x.astype(dtype), y, weight=w.astype(dtype),
                                      reduction="none", backend="opencl")
            want = torch.nn.functional.cross_entropy(
                torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w),
                reduction="none").numpy()
            np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-12)
            prog = rt.program(q.context, q.device, dtype)
            print(np.dtype(dtype).name, prog.vec, prog.notes)
            assert prog.vec == {vec} or prog.notes[0].startswith("VEC={vec}:"), prog.notes
        """)
    env = dict(os.environ, XENTC_OPENCL_VEC=str(vec))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "float32" in run.stdout


def test_devices_report_the_width_the_engine_builds():
    """`python -m xentc info` / show_config list, per device and dtype, the width
    the programs are built with (and the refused ones with their reasons)."""
    queue = _opencl_runtime.default_queue()
    prog = _opencl_runtime.program(queue.context, queue.device, np.float32)
    lines = [ln for ln in opencl.devices() if queue.device.name.strip() in ln]
    assert lines and f"float32 VEC {prog.vec}" in lines[0]
    for note in prog.notes:
        assert note.split(":")[0] in lines[0]
