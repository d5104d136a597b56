"""Threads, ISA selection, configuration, fork safety and huge inputs."""

from __future__ import annotations

import importlib.metadata
import json
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

import xentc
import xentc._core  # noqa: F401  (private test hooks)
from reference import REDUCTIONS, assert_within, ce_expected, make_logits, make_soft_targets, make_targets, make_weight

ISA_ORDER = ["baseline", "avx2", "avx512"]


# ---------------------------------------------------------------------------
# threads: bit-identical results for 1 and 2 threads
# ---------------------------------------------------------------------------


def _all_outputs(x, t, q, w, n_threads):
    out = {}
    for red in REDUCTIONS:
        kw = dict(reduction=red, n_threads=n_threads, backend="cpu")
        out[f"ce_{red}"] = xentc.cross_entropy(x, t, **kw)
        out[f"ce_w_s_{red}"] = xentc.cross_entropy(x, t, w, label_smoothing=0.1, **kw)
        out[f"soft_{red}"] = xentc.cross_entropy(x, q, w, label_smoothing=0.1, **kw)
        out[f"nll_{red}"] = xentc.nll_loss(x, t, w, **kw)
    for fn in ("log_softmax", "softmax", "logsumexp"):
        out[fn] = getattr(xentc, fn)(x, axis=1, n_threads=n_threads, backend="cpu")
    return out


def test_threads_bit_identical(dtype, isa, rng):
    x = make_logits(rng, (512, 1000), dtype)
    t = make_targets(rng, (512,), 1000, ignore_index=-100)
    q = make_soft_targets(rng, x.shape, dtype)
    w = make_weight(rng, 1000, dtype)
    one = _all_outputs(x, t, q, w, 1)
    two = _all_outputs(x, t, q, w, 2)
    for key in one:
        assert np.asarray(one[key]).dtype == dtype
        assert np.asarray(one[key]).tobytes() == np.asarray(two[key]).tobytes(), key
    # None (all cores) and odd counts agree to rounding, and are correct
    for n_threads in (None, 3, 64):
        got = xentc.cross_entropy(x, t, w, reduction="mean", label_smoothing=0.1, n_threads=n_threads, backend="cpu")
        want, tol = ce_expected(x, t, dtype, reduction="mean", weight=w, label_smoothing=0.1)
        assert_within(got, want, tol, f"n_threads={n_threads}")


def test_threads_bit_identical_kdim(dtype, rng):
    x = make_logits(rng, (8, 100, 64, 3), dtype)  # many short rows with a strided class axis
    t = make_targets(rng, (8, 64, 3), 100, ignore_index=-100)
    for red in REDUCTIONS:
        a = xentc.cross_entropy(x, t, reduction=red, n_threads=1, backend="cpu")
        b = xentc.cross_entropy(x, t, reduction=red, n_threads=2, backend="cpu")
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), red


# ---------------------------------------------------------------------------
# ISA selection and configuration
# ---------------------------------------------------------------------------


def test_show_config(capsys):
    cfg = xentc.show_config()
    printed = capsys.readouterr().out
    assert isinstance(cfg, dict)
    assert {"version", "openmp", "compiled_isas", "isa", "threads"} <= set(cfg)
    assert isinstance(cfg["version"], str) and cfg["version"]
    assert cfg["version"] == xentc.__version__
    assert isinstance(cfg["openmp"], bool)
    assert cfg["openmp"] == bool(xentc._core.openmp_enabled())
    assert isinstance(cfg["compiled_isas"], list) and all(isinstance(s, str) for s in cfg["compiled_isas"])
    assert "baseline" in cfg["compiled_isas"]
    assert cfg["compiled_isas"] == list(xentc._core.compiled_isas())
    assert cfg["isa"] in cfg["compiled_isas"]
    assert cfg["isa"] == xentc._core.get_isa()
    assert isinstance(cfg["threads"], int) and cfg["threads"] >= 1
    assert printed.strip(), "show_config() should print the configuration"
    for value in (cfg["version"], cfg["isa"]):
        assert value in printed


def test_version_is_the_projects():
    """`xentc.__version__` is the installed distribution's, which is the one that
    pyproject.toml and meson.build declare (those two must agree)."""
    assert xentc.__version__ == importlib.metadata.version("xentc")
    root = Path(__file__).resolve().parents[1]
    declared = {}
    if (root / "pyproject.toml").exists():  # the wheel's test run copies it; not meson.build
        declared["pyproject.toml"] = tomllib.loads(
            (root / "pyproject.toml").read_text())["project"]["version"]
    if (root / "meson.build").exists():
        declared["meson.build"] = re.search(r"project\([^)]*?version:\s*'([^']+)'",
                                            (root / "meson.build").read_text()).group(1)
    if not declared:
        pytest.skip("no pyproject.toml or meson.build beside the tests")
    assert set(declared.values()) == {xentc.__version__}, declared


@pytest.mark.skipif(sys.platform != "linux", reason="OpenMP is required on the Linux builds")
def test_openmp_enabled_on_linux():
    assert xentc._core.openmp_enabled()


@pytest.mark.skipif(sys.platform != "linux", reason="OpenMP is required on the Linux builds")
def test_openmp_runtime_is_loaded(rng):
    x = make_logits(rng, (512, 1000), np.float32)
    xentc.cross_entropy(x, np.zeros(512, np.int64), n_threads=2, backend="cpu")
    apis = {info["user_api"] for info in threadpoolctl.threadpool_info()}
    assert "openmp" in apis, apis


def test_show_config_follows_set_isa(isa, capsys):
    assert xentc.show_config()["isa"] == isa


def test_set_isa_none_restores_the_start_up_choice(supported_isa_names):
    # The best ISA, unless XENTC_ISA lowers it (to a compiled one at or below the best).
    best = max(supported_isa_names, key=lambda n: ISA_ORDER.index(n) if n in ISA_ORDER else -1)
    names = list(xentc._core.compiled_isas())
    env = os.environ.get("XENTC_ISA", "")
    want = env if env in names[:names.index(best) + 1] else best
    xentc._core.set_isa("baseline")
    assert xentc._core.get_isa() == "baseline"
    xentc._core.set_isa(None)
    assert xentc._core.get_isa() == want


@pytest.mark.parametrize("name", ["sse9", "AVX2 ", "neon-but-not-compiled"])
def test_set_isa_rejects_unknown_names(name):
    before = xentc._core.get_isa()
    with pytest.raises(ValueError):
        xentc._core.set_isa(name)
    assert xentc._core.get_isa() == before


def test_compiled_isas_are_known_and_lowest_first():
    names = list(xentc._core.compiled_isas())
    assert names[0] == "baseline"
    assert len(set(names)) == len(names)
    known = [n for n in names if n in ISA_ORDER]
    assert known == sorted(known, key=ISA_ORDER.index)


def _run_python(code, env_update, cwd):
    """Run ``code`` in a fresh interpreter; ``None`` values unset a variable."""
    env = dict(os.environ)
    for key, value in env_update.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


_ENV_PROBE = """
    import io, json, contextlib
    import numpy as np
    import xentc
    with contextlib.redirect_stdout(io.StringIO()):
        cfg = xentc.show_config()
    x = np.array([[0.2, 0.3, 0.5], [0.5, 0.2, 0.3]], np.float32)
    loss = xentc.cross_entropy(x, np.array([2, 1]), np.array([2.0, 4.0, 6.0], np.float32), backend="cpu")
    print(json.dumps({"isa": cfg["isa"], "core_isa": xentc._core.get_isa(), "loss": float(loss),
                      "file": xentc.__file__}))
"""


def test_env_forces_baseline_isa(tmp_path):
    out = _run_python(_ENV_PROBE, {"XENTC_ISA": "baseline"}, tmp_path)
    info = json.loads(out.strip().splitlines()[-1])
    assert info["isa"] == "baseline"
    assert info["core_isa"] == "baseline"
    assert info["file"] == xentc.__file__
    np.testing.assert_allclose(info["loss"], 1.0598310, rtol=1e-6)


_SET_ISA_NONE_PROBE = """
    import io, json, contextlib
    import xentc
    import xentc._core as core
    for name in core.compiled_isas():  # end on the best this CPU runs
        try:
            core.set_isa(name)
        except ValueError:
            pass
    core.set_isa(None)
    with contextlib.redirect_stdout(io.StringIO()):
        cfg = xentc.show_config()
    print(json.dumps({"isa": cfg["isa"], "core_isa": core.get_isa()}))
"""


def test_set_isa_none_keeps_env_choice(tmp_path):
    # set_isa(None), which the suite's _restore_isa calls after every test, goes
    # back to XENTC_ISA's choice: a run with XENTC_ISA set stays on that ISA.
    out = _run_python(_SET_ISA_NONE_PROBE, {"XENTC_ISA": "baseline"}, tmp_path)
    assert json.loads(out.strip().splitlines()[-1]) == {"isa": "baseline", "core_isa": "baseline"}


def test_env_unset_gives_best(supported_isa_names, tmp_path):
    out = _run_python(_ENV_PROBE, {"XENTC_ISA": None}, tmp_path)
    info = json.loads(out.strip().splitlines()[-1])
    best = max(supported_isa_names, key=lambda n: ISA_ORDER.index(n) if n in ISA_ORDER else -1)
    assert info["isa"] == best


# ---------------------------------------------------------------------------
# fork safety: OpenMP used in the parent must not hang a forked child
# ---------------------------------------------------------------------------


def _child_work(x, t, want):
    for n_threads in (2, None, 1):
        got = xentc.cross_entropy(x, t, reduction="none", n_threads=n_threads, backend="cpu")
        if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
            os._exit(3)
    os._exit(0)


@pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")
# JAX, loaded by the session's cross-library tests, warns about any fork; the
# child here touches only xentc and NumPy.
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_fork_after_threaded_call(rng):
    x = make_logits(rng, (2048, 1000), np.float32)
    t = make_targets(rng, (2048,), 1000)
    want = xentc.cross_entropy(x, t, reduction="none", n_threads=2, backend="cpu")
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_child_work, args=(x, t, want))
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        pytest.fail("xentc hung in a forked child after a threaded call in the parent")
    assert proc.exitcode == 0, f"child exited with {proc.exitcode}"
    # the parent still works afterwards
    again = xentc.cross_entropy(x, t, reduction="none", n_threads=2, backend="cpu")
    np.testing.assert_array_equal(again, want)


# ---------------------------------------------------------------------------
# more than 2**31 elements
# ---------------------------------------------------------------------------


def test_more_than_2_31_elements():
    n, c = 65536, 32769  # n * c > 2**31; untouched zero pages cost no memory
    try:
        x = np.zeros((n, c), np.float32)
    except MemoryError:
        pytest.skip("cannot reserve 8.6 GB of address space")
    t = np.zeros(n, np.int64)
    # make the very last row different, at the far end of the buffer
    x[-1, c - 1] = 3.0
    t[-1] = c - 1
    t[-2] = c - 2
    uniform = np.log(np.float64(c))
    last = np.log(np.float64(c - 1) + np.exp(3.0)) - 3.0

    got = xentc.cross_entropy(x, t, reduction="none", backend="cpu")
    assert got.shape == (n,) and got.dtype == np.float32
    rows = [0, 1, 2, 12345, 40000, n // 2, n - 3, n - 2]
    np.testing.assert_allclose(got[rows], uniform, rtol=2e-6)
    np.testing.assert_allclose(got[-1], last, rtol=2e-6)

    tail = xentc.cross_entropy(x[-2:], t[-2:], reduction="none", backend="cpu")
    np.testing.assert_allclose(tail, [uniform, last], rtol=2e-6)
    lse_tail = xentc.logsumexp(x[-2:], axis=1, backend="cpu")
    np.testing.assert_allclose(lse_tail, [uniform, np.log(c - 1 + np.exp(3.0))], rtol=2e-6)


def test_default_threads_follow_threadpoolctl_limits():
    """n_threads=None uses OpenMP's limit, which threadpoolctl lowers."""
    import xentc._core
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert xentc._core.default_threads() == 1
        assert xentc.show_config()["threads"] == 1
