"""Every public function through every installed array library.

The detailed numerics are tested on NumPy arrays elsewhere; this is the
cross-library layer: the same cases through each `library` (see conftest's
``Library``: NumPy, array-api-strict on its CPU and on its "device1", torch
CPU, and JAX, CuPy and torch CUDA where installed), on each engine, against
the float64 references with the NumPy tests' tolerances. Every result must
come back in the caller's namespace, on the caller's device, in the caller's
dtype. Then: the C core reads CPU arrays of any library in place, half
precision is as accurate as torch's own, and torch autograd goes through the
front end.
"""

from __future__ import annotations

import sys
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xentc
import xentc._core
from xentc import _dispatch
from reference import (
    REDUCTIONS,
    assert_within,
    ce_expected,
    class_axis,
    cross_entropy_ref,
    grad_tolerance,
    lead_shape,
    log_softmax_ref,
    logsumexp_ref,
    make_case,
    make_logits,
    make_targets,
    make_weight,
    nll_expected,
    options_reference,
    options_tolerance,
    softmax_family_tolerance,
    softmax_ref,
    torch_reference,
    torch_serial,
)

# name -> (shape, axis): 1-D, (N, C), K-dim (N, C, d1, d2), language model (B, T, V)
CASES = {
    "C": ((9,), None),
    "NC": ((6, 9), None),
    "NCd1d2": ((3, 9, 2, 2), None),
    "BTV": ((2, 3, 1025), -1),
}


# JAX compiles each eager operation anew for every shape and dtype it meets
# (seconds per test here), so it runs one case per function, all of one shape.
FEW_CASES = ("NCd1d2",)

CPU_LIBRARIES = ["numpy", "array_api_strict", "torch", "jax"]
DEVICE_LIBRARIES = ["array_api_strict-device1", "cupy", "torch-cuda"]


def few_cases_only(library, included):
    """Skip this case for JAX unless it is one of the few it runs."""
    if library.library.name == "JAX" and not included:
        pytest.skip(f"{library} runs the {FEW_CASES[0]} case only (each new shape compiles)")


@pytest.fixture(params=["auto", "generic"])
def engine(request):
    """The `backend=` argument: the default dispatch, and the engine that serves everything."""
    return request.param


def on(library, kw):
    """`kw` with its NumPy arrays moved to `library`."""
    return {k: library.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}


# ---------------------------------------------------------------------------
# conformance: each function, each library, each engine
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("case", list(CASES))
def test_cross_entropy(case, soft, library, engine, dtype, rng):
    few_cases_only(library, case in FEW_CASES)
    shape, axis = CASES[case]
    x, w, t, kw = make_case(rng, shape, axis, dtype, soft)
    xl, tl, wl = library.asarray(x), library.asarray(t), library.asarray(w)
    for weight, weight_l, smoothing in ((None, None, 0.0), (w, wl, 0.1)):
        for reduction in REDUCTIONS:
            got = xentc.cross_entropy(xl, tl, weight_l, reduction=reduction,
                                      label_smoothing=smoothing, axis=axis, backend=engine, **kw)
            want, tol = ce_expected(x, t, dtype, reduction=reduction, weight=weight,
                                    label_smoothing=smoothing, axis=axis, **kw)
            what = f"{reduction}, smoothing {smoothing}"
            assert_within(library.check(got, dtype, np.shape(want), what), want, tol, what)


@pytest.mark.parametrize("case", ["NCd1d2", "BTV"])
def test_nll_loss(case, library, engine, dtype, rng):
    few_cases_only(library, case in FEW_CASES)
    shape, axis = CASES[case]
    ax = class_axis(len(shape), axis)
    x = log_softmax_ref(make_logits(rng, shape, np.float64), axis=ax).astype(dtype)
    t = make_targets(rng, lead_shape(shape, axis), shape[ax], ignore_index=-100)
    w = make_weight(rng, shape[ax], dtype)
    for reduction in REDUCTIONS:
        got = xentc.nll_loss(library.asarray(x), library.asarray(t), library.asarray(w),
                             reduction=reduction, axis=axis, backend=engine)
        want, tol = nll_expected(x, t, dtype, reduction=reduction, weight=w, axis=axis)
        assert_within(library.check(got, dtype, np.shape(want), reduction), want, tol, reduction)


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("case", list(CASES))
def test_cross_entropy_with_grad(case, soft, library, engine, dtype, rng):
    """Loss and gradient against torch autograd in float64, with a grad_output of the
    caller's library; out= (the logits themselves) written in place where writable."""
    few_cases_only(library, case in FEW_CASES)
    shape, axis = CASES[case]
    x, w, t, kw = make_case(rng, shape, axis, dtype, soft)
    kw.update(weight=w, label_smoothing=0.1, axis=axis)
    for reduction in REDUCTIONS:
        if reduction == "none":
            go = rng.uniform(-2.0, 2.0, lead_shape(shape, axis)).astype(dtype)
            go_l = library.asarray(go)
        else:
            go = go_l = float(rng.uniform(0.5, 2.0))
        xl = library.asarray(x)
        loss, grad = xentc.cross_entropy_with_grad(xl, library.asarray(t), reduction=reduction,
                                                   grad_output=go_l, backend=engine,
                                                   **on(library, kw))
        want_loss, loss_tol = ce_expected(x, t, dtype, reduction=reduction, **kw)
        assert_within(library.check(loss, dtype, np.shape(want_loss), "loss"), want_loss,
                      loss_tol, f"loss, {reduction}")
        _, want = torch_reference(x, t, reduction=reduction, grad_output=go, **kw)
        tol = grad_tolerance(x, dtype, t, reduction=reduction, grad_output=go, **kw)
        got = library.check(grad, dtype, shape, "grad")
        assert_within(got, want, tol, f"grad, {reduction}")
        if not library.writable:
            continue
        loss2, grad2 = xentc.cross_entropy_with_grad(xl, library.asarray(t), reduction=reduction,
                                                     grad_output=go_l, out=xl, backend=engine,
                                                     **on(library, kw))
        assert grad2 is xl, f"out=input, {reduction}: the gradient is not `out`"
        np.testing.assert_array_equal(library.check(grad2, dtype, shape, "out"), got)
        np.testing.assert_array_equal(library.check(loss2, dtype, np.shape(want_loss)),
                                      library.to_numpy(loss))


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_llm_options(soft, library, engine, dtype, rng):
    """softcap, logit_scale, the z-loss, sample_weight and the returned lse from every
    library, on its device, against torch autograd in float64."""
    shape, axis = CASES[FEW_CASES[0]]
    x, w, t, kw = make_case(rng, shape, axis, dtype, soft)
    sw = rng.uniform(0.0, 2.0, lead_shape(shape, axis)).astype(dtype)
    opts = dict(weight=w, label_smoothing=0.1, logit_scale=1.7, softcap=4.0,
                lse_square_scale=1e-2, axis=axis, **kw)
    for reduction in REDUCTIONS:
        want = options_reference(x, t, reduction=reduction, sample_weight=sw, **opts)
        tols = options_tolerance(x, t, dtype, reduction=reduction, sample_weight=sw, **opts)
        got = xentc.cross_entropy_with_grad(
            library.asarray(x), library.asarray(t), reduction=reduction, backend=engine,
            return_z_loss=True, return_lse=True, **on(library, dict(opts, sample_weight=sw)))
        for name, g, wv, tol in zip(("loss", "z_loss", "lse", "grad"), got, want,
                                    (tols[0], tols[0], tols[1], tols[2])):
            g = library.check(g, dtype, np.shape(wv), name)
            assert_within(g, wv, tol + 8 * np.finfo(dtype).eps * np.abs(wv),
                          f"{reduction}: {name}")


@pytest.mark.parametrize("library", ["jax"], indirect=True)
def test_out_refused_where_arrays_are_immutable(library, engine, rng):
    """An `out=` that cannot be written (JAX's) is a ValueError naming `out`, whichever
    engine; the arrays are those of the conformance cases (no new compilations)."""
    shape, axis = CASES[FEW_CASES[0]]
    x, _, t, kw = make_case(rng, shape, axis, np.float32, soft=False)
    xl = library.asarray(x)
    with pytest.raises(ValueError, match="`out`"):
        xentc.cross_entropy_with_grad(xl, library.asarray(t), out=xl, axis=axis, backend=engine,
                                      **kw)


@pytest.mark.parametrize("library", ["jax"], indirect=True)
def test_jax_default_config_without_warnings(library, engine, rng):
    """JAX's default configuration has no int64: the class targets are int32, and
    nothing may warn about it on every call."""
    shape, axis = CASES[FEW_CASES[0]]
    x, w, t, kw = make_case(rng, shape, axis, np.float32, soft=False)
    xl, tl, wl = library.asarray(x), library.asarray(t), library.asarray(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xentc.cross_entropy(xl, tl, wl, backend=engine, **kw)
        xentc.nll_loss(xl, tl, wl, backend=engine, **kw)
        xentc.cross_entropy_with_grad(xl, tl, wl, backend=engine, **kw)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_family(axis, library, engine, dtype, rng):
    few_cases_only(library, axis == 1)
    x = make_logits(rng, CASES[FEW_CASES[0]][0], dtype)
    xl = library.asarray(x)
    for name, ref in (("log_softmax", log_softmax_ref), ("softmax", softmax_ref)):
        got = getattr(xentc, name)(xl, axis=axis, backend=engine)
        tol = softmax_family_tolerance(name, x, axis, dtype)
        assert_within(library.check(got, dtype, x.shape, name), ref(x, axis=axis), tol, name)
    for keepdims in (False, True):
        got = xentc.logsumexp(xl, axis=axis, keepdims=keepdims, backend=engine)
        want = logsumexp_ref(x, axis, keepdims)
        tol = softmax_family_tolerance("logsumexp", x, axis, dtype, keepdims=keepdims)
        assert_within(library.check(got, dtype, want.shape, "logsumexp"), want, tol, "logsumexp")


def test_errors(library, engine, rng):
    """Invalid arguments raise what they raise for NumPy, from any library."""
    shape, _ = CASES[FEW_CASES[0]]  # (N, C, d1, d2)
    x = library.asarray(make_logits(rng, shape, np.float32))
    t = make_targets(rng, lead_shape(shape, None), shape[1])
    bad = t.copy()
    bad[1, 0, 1] = 17
    with pytest.raises(IndexError, match="17"):
        xentc.cross_entropy(x, library.asarray(bad), backend=engine)
    with pytest.raises(ValueError, match="target"):
        xentc.cross_entropy(x, library.asarray(t[:, 0]), backend=engine)
    with pytest.raises(ValueError, match="weight"):
        xentc.cross_entropy(x, library.asarray(t), library.asarray(np.ones(4, np.float32)),
                            backend=engine)
    with pytest.raises(TypeError, match="input"):
        xentc.cross_entropy(library.asarray(np.zeros(shape, np.int32)), library.asarray(t),
                            backend=engine)


# ---------------------------------------------------------------------------
# dispatch: the C core for CPU arrays of any library, never for device arrays
# ---------------------------------------------------------------------------


def test_default_engine(library, rng):
    x = library.asarray(make_logits(rng, (3, 4), np.float32))
    xp = _dispatch.namespace(x)
    assert xp is library.xp
    assert _dispatch.engine_for(xp, x, "auto").name == library.library.auto_engine
    assert _dispatch.engine_for(xp, x, "generic").name == "generic"


@pytest.mark.parametrize("library", DEVICE_LIBRARIES, indirect=True)
def test_cpu_backend_refuses_device_arrays(library, rng):
    """backend="cpu" on a device array raises ValueError naming `backend` (no silent
    copy to the host), from every function; backend="generic" serves it on its device."""
    x = library.asarray(make_logits(rng, (3, 4), np.float32))
    t = library.asarray(np.array([0, 1, 2]))
    calls = {
        "cross_entropy": lambda **kw: xentc.cross_entropy(x, t, **kw),
        "cross_entropy_with_grad": lambda **kw: xentc.cross_entropy_with_grad(x, t, **kw)[1],
        "nll_loss": lambda **kw: xentc.nll_loss(x, t, **kw),
        "log_softmax": lambda **kw: xentc.log_softmax(x, **kw),
        "softmax": lambda **kw: xentc.softmax(x, **kw),
        "logsumexp": lambda **kw: xentc.logsumexp(x, **kw),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="backend"):
            call(backend="cpu")
        got = call(backend="generic")
        library.check(got, np.float32, got.shape, name)


# ---------------------------------------------------------------------------
# zero copy: the C core reads CPU arrays of any library where they are
# ---------------------------------------------------------------------------

ZC_SHAPE = (2048, 4096)  # 32 MiB of float32: a copy could not hide in the noise
ZC_ROWS = 64  # rows whose values are checked: enough to see they are right, cheaply


def _address(library, a):
    """Where the CPU array `a`'s data starts, by the library's own account where it has one."""
    if library.library.name == "TORCH":
        return a.data_ptr()
    if library.library.name == "JAX":
        return a.unsafe_buffer_pointer()
    return np.from_dlpack(a).ctypes.data


@pytest.fixture
def core_calls(monkeypatch):
    """Records the data address of the logits and of `out` of every C core call."""
    calls = []
    rows = xentc._core.rows

    def spy(job, half=None):
        calls.append((job.x.ctypes.data, None if job.out is None else job.out.ctypes.data))
        return rows(job, half)

    monkeypatch.setattr(xentc._core, "rows", spy)
    return calls


@pytest.fixture(scope="module")
def big_case():
    """Large logits and targets (made once), and the reference loss of their first rows."""
    rng = np.random.default_rng(2048)
    x = make_logits(rng, ZC_SHAPE, np.float32)
    t = make_targets(rng, ZC_SHAPE[:1], ZC_SHAPE[1])
    return x, t, ce_expected(x[:ZC_ROWS], t[:ZC_ROWS], np.float32, reduction="none")



def _traced_peak(fn):
    """Peak bytes allocated through Python's allocators (NumPy's included) during fn()."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("library", CPU_LIBRARIES, indirect=True)
def test_zero_copy_forward(library, big_case, core_calls):
    """cross_entropy hands the C core the caller's own buffer, and allocates nothing
    of the logits' size on the way."""
    x, t, (want, tol) = big_case
    xl, tl = library.asarray(x), library.asarray(t)
    got, peak = _traced_peak(lambda: xentc.cross_entropy(xl, tl, reduction="none"))
    assert core_calls == [(_address(library, xl), None)], "the C core did not read x in place"
    assert peak < x.nbytes // 16, f"{peak} bytes allocated for a {x.nbytes}-byte input"
    got = library.check(got, np.float32, ZC_SHAPE[:1])
    assert_within(got[:ZC_ROWS], want, tol)


@pytest.mark.parametrize("library", [n for n in CPU_LIBRARIES if n != "jax"], indirect=True)
def test_zero_copy_grad_in_place(library, big_case, core_calls):
    """cross_entropy_with_grad(x, t, out=x): the C core reads and writes x's own memory;
    the gradient is x, at its old address; no (N, C)-sized allocation."""
    x, t, (want, tol) = big_case
    xl, tl = library.asarray(x), library.asarray(t)
    address = _address(library, xl)
    if library.library.name == "TORCH":  # the DLPack view the core gets is the tensor itself
        assert np.from_dlpack(xl).ctypes.data == xl.data_ptr()
    (loss, grad), peak = _traced_peak(
        lambda: xentc.cross_entropy_with_grad(xl, tl, reduction="none", out=xl))
    assert grad is xl and _address(library, grad) == address
    assert core_calls == [(address, address)], "the C core did not work in x's memory"
    assert peak < x.nbytes // 16, f"{peak} bytes allocated for a {x.nbytes}-byte input"
    assert_within(library.check(loss, np.float32, ZC_SHAPE[:1])[:ZC_ROWS], want, tol)
    rows, t_rows = x[:ZC_ROWS], t[:ZC_ROWS]
    _, want_grad = torch_reference(rows, t_rows, reduction="none")
    tol = grad_tolerance(rows, np.float32, t_rows, reduction="none")
    assert_within(library.check(grad, np.float32, ZC_SHAPE)[:ZC_ROWS], want_grad, tol, "grad")


# ---------------------------------------------------------------------------
# half precision: as accurate as torch's own half-precision results
# ---------------------------------------------------------------------------

# NumPy's bfloat16 is ml_dtypes' (a JAX dependency); every case reaches the C
# core's 16-bit rows without a copy.
HALF_CASES = [("numpy", "float16"), ("numpy", "bfloat16"), ("torch", "float16"),
              ("torch", "bfloat16"), ("jax", "float16"), ("jax", "bfloat16")]
half_cases = pytest.mark.parametrize("lib, half", HALF_CASES, ids=["-".join(c) for c in HALF_CASES])
HALF_CE_KW = dict(ignore_index=-100, label_smoothing=0.1)  # the half cross-entropy tests' options
HALF_SHAPE = (200, 700)  # 1.4e5 elements: two of the C engine's float32 blocks


def _half_ulp(value, tdtype):
    """One ulp of `value` (float64 array) in the torch half dtype `tdtype`."""
    fi = torch.finfo(tdtype)
    _, exponent = np.frexp(np.maximum(np.abs(value), fi.smallest_normal))  # m * 2**e, m in [0.5, 1)
    return np.ldexp(fi.eps, exponent - 1)


class Half:
    """One half-precision case: the input in its library and in torch, and the float64
    values it holds (what the reference must be computed from)."""

    def __init__(self, lib, dtype_name, rng, shape=HALF_SHAPE):
        self.tdtype = getattr(torch, dtype_name)
        x32 = make_logits(rng, shape, np.float32)
        w32 = make_weight(rng, shape[1], np.float32)
        self.torch_x = torch.from_numpy(x32).to(self.tdtype)
        self.torch_w = torch.from_numpy(w32).to(self.tdtype)
        self.x = self.torch_x.double().numpy()  # the half-rounded values, exactly
        self.w = self.torch_w.double().numpy()
        self.lib = lib
        if lib == "numpy":
            import ml_dtypes
            self.ndtype = np.float16 if dtype_name == "float16" else ml_dtypes.bfloat16
            self.xl, self.wl = self.x.astype(self.ndtype), self.w.astype(self.ndtype)
        elif lib == "jax":
            import jax.numpy as jnp
            self.xl, self.wl = (jnp.asarray(a, getattr(jnp, dtype_name)) for a in (self.x, self.w))
        else:
            self.xl, self.wl = self.torch_x.clone(), self.torch_w.clone()
        self.t = make_targets(rng, shape[:1], shape[1], ignore_index=-100)
        self.tl = torch.from_numpy(self.t) if lib == "torch" else self.t
        if lib == "jax":
            import jax.numpy as jnp
            self.tl = jnp.asarray(self.t)
        self.tt = torch.from_numpy(self.t)  # the targets for torch's own result

    def check_dtype(self, got):
        if self.lib == "numpy":
            assert isinstance(got, (np.ndarray, np.generic)) and got.dtype == self.ndtype
            return np.asarray(got, np.float64)
        if self.lib == "jax":
            import jax
            assert isinstance(got, jax.Array) and str(got.dtype) == str(self.tdtype)[6:]
            return np.asarray(got.astype("float64") if jax.config.jax_enable_x64
                              else got.astype("float32"), np.float64)
        assert isinstance(got, torch.Tensor) and got.dtype == self.tdtype
        return got.double().numpy()

    def check(self, got, want, torch_result, what):
        """|got - want| <= |torch - want| + one half ulp, elementwise; the dtype is the input's."""
        got = self.check_dtype(got)
        torch_err = np.abs(torch_result.double().numpy() - want)
        tol = torch_err + _half_ulp(want, self.tdtype)
        assert_within(got, want, tol, f"{what} (torch's error {np.max(torch_err):.3g})")


@half_cases
def test_half_cross_entropy(lib, half, engine, rng):
    h, kw = Half(lib, half, rng), HALF_CE_KW
    for reduction in REDUCTIONS:
        got = xentc.cross_entropy(h.xl, h.tl, h.wl, reduction=reduction, backend=engine, **kw)
        want = cross_entropy_ref(h.x, h.t, h.w, reduction=reduction, **kw)
        with torch_serial():
            theirs = F.cross_entropy(h.torch_x, h.tt, h.torch_w, reduction=reduction, **kw)
        h.check(got, want, theirs, f"loss, {reduction}")


@half_cases
def test_half_cross_entropy_with_grad(lib, half, engine, rng):
    h, kw = Half(lib, half, rng), HALF_CE_KW
    for reduction in REDUCTIONS:
        loss, grad = xentc.cross_entropy_with_grad(h.xl, h.tl, h.wl, reduction=reduction,
                                                   backend=engine, **kw)
        xt = h.torch_x.clone().requires_grad_()
        with torch_serial():
            theirs = F.cross_entropy(xt, h.tt, h.torch_w, reduction=reduction, **kw)
            theirs.backward(torch.ones_like(theirs))
        h.check(loss, cross_entropy_ref(h.x, h.t, h.w, reduction=reduction, **kw), theirs.detach(),
                f"loss, {reduction}")
        _, want = torch_reference(h.x, h.t, h.w, reduction=reduction, **kw)
        h.check(grad, want, xt.grad, f"grad, {reduction}")
        if isinstance(h.xl, torch.Tensor):  # in place, in half precision too
            buf = h.xl.clone()
            _, grad2 = xentc.cross_entropy_with_grad(buf, h.tl, h.wl, reduction=reduction,
                                                     out=buf, backend=engine, **kw)
            assert grad2 is buf
            torch.testing.assert_close(grad2, grad, rtol=0, atol=0)


@half_cases
def test_half_softmax_family(lib, half, engine, rng):
    h = Half(lib, half, rng)
    with torch_serial():
        theirs = torch.log_softmax(h.torch_x, 1), torch.logsumexp(h.torch_x, 1)
    h.check(xentc.log_softmax(h.xl, axis=1, backend=engine), log_softmax_ref(h.x, axis=1),
            theirs[0], "log_softmax")
    h.check(xentc.logsumexp(h.xl, axis=1, backend=engine), logsumexp_ref(h.x, axis=1),
            theirs[1], "logsumexp")


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_soft_targets_row_options_unaligned(half, rng):
    # Probabilities in the logits' dtype, the row options, and a float16 array
    # at an odd address: the C core's 16-bit rows widen and narrow them all.
    tdtype = getattr(torch, half)
    tx = torch.from_numpy(make_logits(rng, (40, 300), np.float32)).to(tdtype)
    tq = torch.from_numpy(rng.dirichlet(np.ones(300), 40)).to(tdtype)
    x, q = tx.double().numpy(), tq.double().numpy()  # the values the tensors hold
    opts = dict(softcap=20.0, lse_square_scale=1e-3, label_smoothing=0.05, reduction="none")
    want = options_reference(x, q, **opts)
    loss, lse, grad = xentc.cross_entropy_with_grad(tx, tq, return_lse=True, **opts)
    # float32's error on the way (the option bounds), then one rounding to half
    tols = options_tolerance(x, q, np.float32, **opts)
    for name, got, w, tol in (("loss", loss, want[0], tols[0]), ("lse", lse, want[2], tols[1]),
                              ("grad", grad, want[3], tols[2])):
        assert got.dtype == tdtype
        assert_within(got.double().numpy(), w, tol + _half_ulp(w, tdtype) / 2, name)
    if half == "float16":
        buf = np.frombuffer(bytearray(2 * x.size + 1), np.float16, x.size, offset=1)
        buf = buf.reshape(x.shape)
        buf[...] = x
        assert buf.ctypes.data % 2 == 1
        loss_u, grad_u = xentc.cross_entropy_with_grad(buf, q.astype(np.float16), out=buf,
                                                       **opts)
        np.testing.assert_array_equal(loss_u, loss.numpy())
        np.testing.assert_array_equal(grad_u, grad.numpy())


@pytest.mark.parametrize("lib", ["torch", "jax", "numpy"])
def test_half_reaches_the_core_without_a_copy(lib, core_calls, rng):
    # bfloat16 logits are read in place (a uint16 view of their memory), and
    # torch's in-place gradient is written there too.
    import jax.numpy as jnp
    import ml_dtypes

    x32 = make_logits(rng, (64, 500), np.float32)
    t = make_targets(rng, (64,), 500)
    if lib == "torch":
        x, tl = torch.from_numpy(x32).bfloat16(), torch.from_numpy(t)
        address = x.data_ptr()
    elif lib == "jax":
        x, tl = jnp.asarray(x32, jnp.bfloat16), jnp.asarray(t)
        address = x.unsafe_buffer_pointer()
    else:
        x, tl = x32.astype(ml_dtypes.bfloat16), t
        address = x.ctypes.data
    xentc.cross_entropy(x, tl)
    assert core_calls[-1][0] == address
    if lib == "torch":
        _, grad = xentc.cross_entropy_with_grad(x, tl, out=x)
        assert grad is x and core_calls[-1] == (address, address)


def test_half_of_a_library_without_a_bit_view(monkeypatch, rng):
    # 16-bit floats that no bit view reaches (the CPU engine knows NumPy's,
    # torch's and JAX's) are widened block by block in their own namespace:
    # the same numbers.
    from xentc._engines import cpu

    x = torch.from_numpy(make_logits(rng, (300, 700), np.float32)).bfloat16()
    t = torch.from_numpy(make_targets(rng, (300,), 700, ignore_index=-100))
    want = xentc.cross_entropy_with_grad(x, t, label_smoothing=0.1, reduction="none")
    monkeypatch.setattr(cpu, "_bits", lambda a: None)  # _widened_rows then
    got = xentc.cross_entropy_with_grad(x, t, label_smoothing=0.1, reduction="none")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# torch autograd through the front end (the exhaustive tests are torch-specific)
# ---------------------------------------------------------------------------

AUTOGRAD_CASES = {
    "class_weighted_smoothed_mean": (((6, 9), None), False, "mean"),
    "soft_sum": (((6, 9), None), True, "sum"),
    "Kdim_none": (((3, 9, 2, 2), None), False, "none"),
    "BTV_mean": (((2, 3, 1025), -1), False, "mean"),
}


@pytest.mark.parametrize("case", list(AUTOGRAD_CASES))
def test_torch_autograd(case, engine, dtype, rng):
    """xentc.cross_entropy(x.requires_grad_(), t).backward() gives torch's gradient."""
    (shape, axis), soft, reduction = AUTOGRAD_CASES[case]
    x, w, t, kw = make_case(rng, shape, axis, dtype, soft)
    kw.update(weight=w, label_smoothing=0.1, axis=axis, reduction=reduction)
    go = rng.uniform(-2.0, 2.0, lead_shape(shape, axis)) if reduction == "none" else 1.0
    xt = torch.from_numpy(x.copy()).requires_grad_()
    loss = xentc.cross_entropy(xt, torch.from_numpy(t), backend=engine,
                               **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                                  for k, v in kw.items()})
    assert isinstance(loss, torch.Tensor) and loss.dtype == xt.dtype
    assert loss.requires_grad and loss.grad_fn is not None
    loss.backward(torch.tensor(go, dtype=xt.dtype))
    assert xt.grad is not None and xt.grad.dtype == xt.dtype and xt.grad.shape == xt.shape
    want, tol = ce_expected(x, t, dtype, **kw)
    assert_within(loss.detach().numpy(), want, tol, "loss")
    _, want = torch_reference(x, t, grad_output=None if reduction != "none" else go, **kw)
    tol = grad_tolerance(x, dtype, t, grad_output=None if reduction != "none" else go, **kw)
    assert_within(xt.grad.numpy(), want, tol, "grad")


# ---------------------------------------------------------------------------
# the fixture's own policy
# ---------------------------------------------------------------------------


def test_required_libraries_fail_when_missing(library_enum, monkeypatch):
    """A required library that cannot be imported fails the test; an optional one skips."""
    for name in ("array_api_strict", "torch", "array_api_compat.numpy", "jax", "cupy"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises
    for lib in library_enum:
        want = pytest.fail.Exception if lib.required else pytest.skip.Exception
        with pytest.raises(want):
            lib.load()


def _special_long_rows(rng, n_classes):
    """Rows longer than the kernel's 4 KiB blocks whose special values sit in
    later blocks: a +inf, a NaN, a leading run of -inf, all -inf, and a max
    that rises block by block (the kept exps' segments, folded past 32)."""
    x = make_logits(rng, (8, n_classes), np.float32)
    x[1, n_classes - 5] = np.inf
    x[2, n_classes // 2] = np.nan
    x[3, : n_classes - 700] = -np.inf
    x[4] = -np.inf
    x[5] = np.linspace(-30.0, 30.0, n_classes)
    return x


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("n_classes", [100, 3000, 40_000])
@pytest.mark.parametrize("opts", [{}, dict(label_smoothing=0.1), dict(logit_scale=0.7),
                                  dict(softcap=15.0, lse_square_scale=1e-3)],
                         ids=["plain", "smoothing", "scale", "softcap"])
def test_half_long_rows_match_widened_rows(monkeypatch, half, n_classes, opts, isa, rng):
    # The C core widens long 16-bit rows a block at a time as they stream in;
    # the CPU engine's Python path widens whole rows first. Both run the same
    # float32 kernel of each ISA in turn, so every loss, lse and gradient must
    # match bit for bit.
    from xentc._engines import cpu

    x = torch.from_numpy(_special_long_rows(rng, n_classes)).to(getattr(torch, half))
    t = torch.from_numpy(make_targets(rng, (8,), n_classes))
    t[6] = -100
    q = torch.softmax(torch.from_numpy(make_logits(rng, (8, n_classes), np.float32)), 1)
    q = q.to(x.dtype)

    def calls():
        yield xentc.cross_entropy_with_grad(x, t, reduction="none", return_lse=True, **opts)
        yield xentc.cross_entropy_with_grad(x, q, reduction="none", **opts)
        buf = x.clone()
        yield xentc.cross_entropy_with_grad(buf, t, out=buf, reduction="sum", **opts)
        yield xentc.cross_entropy(x, t, reduction="none", **opts), xentc.softmax(x, axis=1)
        yield xentc.log_softmax(x, axis=1), xentc.logsumexp(x, axis=1)

    fused = [r for r in calls()]
    monkeypatch.setattr(cpu, "_bits", lambda a: None)
    for got, want in zip(fused, calls()):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("n_classes", [3, 10, 64])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_half_short_rows_match_widened_rows(monkeypatch, half, n_classes, strided, isa, rng):
    # Short 16-bit rows are widened a chunk at a time, as one run when they
    # are contiguous and row by row when not; logits, soft targets and `out`
    # are strided views of wider arrays in the second case. The CPU engine's
    # Python path widens first: both must match bit for bit.
    from xentc._engines import cpu

    def rows(a):  # a view whose rows are 5 values longer than its classes
        if not strided:
            return a
        wide = torch.full((a.shape[0], n_classes + 5), 7.0, dtype=a.dtype)
        wide[:, :n_classes] = a
        return wide[:, :n_classes]

    n = 2000  # several of the C core's chunks, so rows at chunk ends too
    x32 = make_logits(rng, (n, n_classes), np.float32)
    x32[1, n_classes - 1] = np.inf
    x32[2, 0] = np.nan
    x32[3] = -np.inf
    x = rows(torch.from_numpy(x32).to(getattr(torch, half)))
    t = torch.from_numpy(make_targets(rng, (n,), n_classes))
    t[4] = -100
    q = rows(torch.softmax(torch.from_numpy(make_logits(rng, (n, n_classes), np.float32)), 1)
             .to(x.dtype))

    def calls():
        yield xentc.cross_entropy_with_grad(x, t, reduction="none", return_lse=True,
                                            label_smoothing=0.1)
        yield xentc.cross_entropy_with_grad(x, q, reduction="none")
        out = rows(torch.zeros(x.shape, dtype=x.dtype))
        yield xentc.cross_entropy_with_grad(x, t, out=out, reduction="sum", logit_scale=0.7)
        assert not strided or not out.is_contiguous()

    fused = [r for r in calls()]
    monkeypatch.setattr(cpu, "_bits", lambda a: None)
    for got, want in zip(fused, calls()):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)
