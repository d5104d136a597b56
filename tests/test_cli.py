"""The command line (``python -m xentc info`` / ``bench``) and the benchmark machinery."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import mmap
import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xentc
from xentc import _bench, _cli, _config

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
# One tiny shape: imports, JAX's compilations and the bandwidth measurement
# (once per process) take most of the time.
TINY = ["--shapes", "8x16384", "--repeat", "2", "--no-progress"]


# ---------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["info"]])
def test_info_prints_the_fields(capsys, argv):
    assert _cli.main(argv) == 0
    out = capsys.readouterr().out
    cfg = _config.config()
    for key in ("version", "openmp", "compiled_isas", "isa", "threads", "array_libraries",
                "opencl_devices"):
        assert f"\n{key}:" in "\n" + out, key
    assert cfg["isa"] in out and cfg["version"] in out
    assert f"numpy {np.__version__}" in out


def test_info_json(tmp_path):
    # A fresh interpreter: `python -m xentc` itself, as a user runs it.
    proc = subprocess.run([sys.executable, "-m", "xentc", "info", "--json"], capture_output=True,
                          text=True, check=True, cwd=tmp_path)
    info = json.loads(proc.stdout)
    assert {"version", "openmp", "compiled_isas", "isa", "threads"} <= set(info)
    assert info["isa"] in info["compiled_isas"]
    assert info["array_libraries"]["numpy"] == np.__version__
    assert isinstance(info["opencl_devices"], (list, str))


@pytest.mark.parametrize("command", [["-m", "xentc", "info"], ["-m", "xentc", "bench"],
                                     ["-c", "import xentc"]], ids=["info", "bench", "import"])
def test_source_tree_says_what_to_do(tmp_path, command):
    """From the repository's root after `pip install .`, the source folder (no
    compiled core in it) shadows the installed package: the ImportError says so
    and what to do, instead of "cannot import name '_core'". Here: a copy of the
    source folder, and an interpreter that does not run site's .pth files (an
    editable install's import hook would find the built package first)."""
    source = Path(__file__).resolve().parents[1] / "xentc"
    if not (source / "_core.pyx").exists():
        pytest.skip("no source tree beside the tests (a wheel's test run)")
    shutil.copytree(source, tmp_path / "xentc",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *site.getsitepackages()]))
    proc = subprocess.run([sys.executable, "-S", *command], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: you are importing xentc from its source tree"), last
    assert "run Python from another folder" in last and "editable" in last, last


@pytest.mark.parametrize("breakage", ["raises", "missing"])
def test_info_survives_a_broken_opencl_engine(monkeypatch, capsys, breakage):
    from xentc._engines import opencl
    if breakage == "raises":
        def devices():
            raise RuntimeError("no driver")
        monkeypatch.setattr(opencl, "devices", devices, raising=False)
    else:
        monkeypatch.delattr(opencl, "devices", raising=False)
    real = _config.module_version  # the engine is asked only where pyopencl is installed
    monkeypatch.setattr(_config, "module_version", lambda m: "1" if m == "pyopencl" else real(m))
    assert _cli.main(["info"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("opencl_devices")]
    assert line and "none found" in line[0]
    assert ("no driver" in line[0]) == (breakage == "raises")


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------


def test_bench_json_times_every_installed_peer(capsys):
    assert _cli.main(["bench", *TINY, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    header, rows = report["header"], report["results"]
    assert header["repeat"] == 2 and header["dtype"] == "float32"
    assert header["read_bandwidth_gbps"] > 0
    installed = [p for p in _bench.PEERS if p.missing() is None]
    expected = {p.key for p in installed if f"{p.task}/xentc" in {q.key for q in installed}
                or p.task == "read"}
    assert set(header["peers"]) == expected
    assert {"forward/xentc", "forward/torch", "forward/numpy", "read"} <= expected
    (row,) = rows
    assert row["shape"] == [8, 16384] and row["bytes"] == 8 * 16384 * 4
    assert set(row["median_ms"]) == expected
    assert all(ms > 0 for ms in row["median_ms"].values())
    assert all(len(s["times"]) == 2 for s in row["samples"].values())
    # every peer computed the same loss (and gradient) as xentc
    assert row["agree"] and all(row["agree"].values()), row["agree"]
    if "fwd+bwd/xentc" in expected:
        # the gradient overwrites the logits: only O(rows) extra memory
        assert row["extra_memory"]["tracemalloc"] < 0.05 * row["bytes"]
    else:
        assert row["extra_memory"] is None


def test_bench_lists_a_missing_peer(monkeypatch, capsys):
    real = _bench.peers.module_version
    monkeypatch.setattr(_bench.peers, "module_version", lambda m: None if m == "scipy" else real(m))
    assert _cli.main(["bench", *TINY, "--tasks", "forward", "--peers", "torch,scipy"]) == 0
    out = capsys.readouterr().out
    assert "forward/scipy (scipy not available)" in out
    table = out[out.index("forward ("):out.index("timed:")]
    assert "vs torch" in table and "scipy" not in table


def test_bench_flags_a_peer_that_disagrees(monkeypatch, capsys):
    wrong = [dataclasses.replace(p, prepare=lambda d: (lambda: 0.0, lambda out: (out,)))
             if p.key == "forward/numpy" else p for p in _bench.PEERS]
    monkeypatch.setattr(_bench.peers, "PEERS", tuple(wrong))
    assert _cli.main(["bench", *TINY, "--tasks", "forward", "--peers", "torch,numpy"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: 8x16384: forward/numpy disagrees with xentc (loss 0.0)" in out
    assert "forward/torch disagrees" not in out


def test_bench_peers_option_and_progress(capsys):
    assert _cli.main(["bench", "--quick", "--shapes", "32x100", "--repeat", "1",
                      "--peers", "torch", "--tasks", "forward"]) == 0
    captured = capsys.readouterr()
    assert "vs torch" in captured.out and "vs numpy" not in captured.out
    assert "shape 32x100" in captured.err  # the progress reports on stderr


@pytest.mark.parametrize("argv, message", [
    (["bench", "--shapes", "12"], "expected NxC"),
    (["bench", "--peers", "tensorflow"], "unknown peer"),
    (["bench", "--tasks", "backward"], "unknown task"),
    (["bench", "--repeat", "0"], "must be >= 1"),
])
def test_bench_rejects_bad_options(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        _cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_plot_needs_matplotlib(monkeypatch, capsys):
    real = _config.module_version
    monkeypatch.setattr(_config, "module_version", lambda m: None if m == "matplotlib" else real(m))
    with pytest.raises(SystemExit):  # before any timing
        _cli.main(["bench", *TINY, "--plot", "never.png"])
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_bench_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    assert _cli.main(["bench", *TINY, "--tasks", "forward", "--peers", "torch",
                      "--plot", str(path)]) == 0
    assert f"plot written to {path}" in capsys.readouterr().out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_shapes_have_constant_bytes():
    shapes = _bench.constant_byte_shapes(_cli.DEFAULT_CLASSES, _cli.DEFAULT_MIB * 2**20, 4)
    assert [c for _, c in shapes] == list(_cli.DEFAULT_CLASSES)
    for n, c in shapes:
        assert abs(n * c * 4 / (_cli.DEFAULT_MIB * 2**20) - 1) < 0.01


@pytest.mark.parametrize("script, task", [("bench_forward.py", "forward"),
                                          ("bench_backward.py", "fwd+bwd")])
def test_benchmark_scripts(tmp_path, capsys, script, task):
    if task == "fwd+bwd" and not hasattr(xentc, "cross_entropy_with_grad"):
        pytest.skip("xentc built without cross_entropy_with_grad")
    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(BENCHMARKS, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "r.json"
    assert module.main(["--shapes", "16x1000", "--repeat", "1", "--peers", "torch",
                        "--no-progress", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{task} (" in text and "bar" in text
    assert json.loads(out.read_text())["header"]["tasks"] == [task]


# ---------------------------------------------------------------------------
# machinery
# ---------------------------------------------------------------------------


def test_timing_shim_reexports():
    spec = importlib.util.spec_from_file_location("_timing", os.path.join(BENCHMARKS, "_timing.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.__all__:
        assert getattr(module, name) is getattr(_bench, name)


def test_time_interleaved_measures_and_rotates():
    order = []

    def sleeper(name, seconds):
        def run():
            order.append(name)
            time.sleep(seconds)
        return run

    samples = _bench.time_interleaved([("a", sleeper("a", 0.002)), ("b", sleeper("b", 0.02))],
                                      repeat=3, warmup=1)
    assert all(len(s["times"]) == 3 and s["number"] == 1 for s in samples.values())
    a, b = (_bench.median_ms(samples[k]["times"]) for k in "ab")
    assert 2 <= a < b and 20 <= b
    # warm-up a, b; then each sample after an untimed call: a a b b | b b a a | a a b b
    assert order == list("ab") + list("aabb") + list("bbaa") + list("aabb")
    # durations known beforehand replace the warm-up; a case longer than
    # SETTLE_MAX gets no untimed call (a wait instead)
    order.clear()
    samples = _bench.time_interleaved([("a", sleeper("a", 0)), ("b", sleeper("b", 0))],
                                      repeat=2, warmup=0, durations=[1e-4, 1.0])
    assert samples["a"]["number"] == 10 and samples["b"]["number"] == 1
    assert order == ["a"] * 11 + ["b"] + ["b"] + ["a"] * 11
    with pytest.raises(ValueError, match="unique"):
        _bench.time_interleaved([("a", sleeper("a", 0)), ("a", sleeper("a", 0))])


def test_peak_extra_memory():
    size = 8 << 20
    grew = _bench.peak_extra_memory(lambda: np.ones(size, np.uint8).sum())
    assert size <= grew["tracemalloc"] < 2 * size
    x = np.zeros(size, np.uint8)
    assert _bench.peak_extra_memory(lambda: np.negative(x, out=x))["tracemalloc"] < size // 100

    def c_allocation():  # memory tracemalloc cannot see, as a C library's malloc
        with mmap.mmap(-1, size) as m:
            for i in range(0, size, mmap.PAGESIZE):
                m[i] = 1
    grew = _bench.peak_extra_memory(c_allocation)
    assert grew["tracemalloc"] < size // 100
    if sys.platform == "linux":
        assert grew["rss"] >= 0.9 * size


def test_parse_shapes():
    assert _bench.parse_shapes("2048x32000, 8X10,") == [(2048, 32000), (8, 10)]
    for bad in ("", "12", "0x5", "axb"):
        with pytest.raises(ValueError):
            _bench.parse_shapes(bad)


def test_progress_without_a_terminal():
    stream = io.StringIO()
    bar = _bench.Progress(4, stream)
    bar.set_label("shape 8x10")
    bar.advance(3)
    bar.close()
    assert stream.getvalue() == "[0/4] shape 8x10\n"
