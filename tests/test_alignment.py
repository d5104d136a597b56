"""Arrays whose data address is not a multiple of their item size.

``np.frombuffer(buffer, np.float32, offset=1)`` and torch tensors viewing such
memory (``torch.from_numpy``) are valid arrays. The C core reads and writes
float, double and int64_t through typed pointers, and dereferencing a
misaligned one is undefined behaviour (UBSan reports it; strict-alignment CPUs
fault). So the CPU engine hands the core aligned copies of such arrays and
writes a misaligned ``out=`` through an aligned temporary; 16-bit rows go in
as they are (``src/half_rows.c`` moves them with memcpy and unaligned loads),
their float32 companions (weight, sample weights, grad_output) do not.

Each argument is misaligned in turn, then all at once. The results must be
the aligned call's bit for bit, a gradient must land in ``out``, and every
array that reaches ``xentc._core`` must be aligned (a spy checks it here, on
any build; ``.ci/sanitize`` runs this file under UBSan, which checks the
dereferences themselves).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import xentc
import xentc._core
from reference import (make_logits, make_soft_targets, make_targets, make_weight, softmax_ref,
                       unaligned_copy)

LIBS = ("numpy", "torch")
# short rows (one vector's worth, src/row_kernel_template.h's short-row path)
# and rows longer than a 1024-float block
CLASSES = (37, 1500)


def misaligned(a, offset=1):
    """A copy of NumPy `a` whose data lies `offset` bytes past a 64-byte boundary."""
    b = unaligned_copy(a, offset)
    assert b.ctypes.data % b.itemsize and not b.flags.aligned
    return b


def as_lib(lib, a):
    """NumPy `a` as `lib`'s array sharing its memory (torch: ``from_numpy``)."""
    if lib == "numpy" or a is None:
        return a
    if a.dtype == ml_dtypes.bfloat16:  # torch.from_numpy knows no bfloat16: via its bits
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def as_numpy(r):
    """A result as NumPy (bfloat16 tensors as ml_dtypes' bfloat16)."""
    if isinstance(r, torch.Tensor):
        if r.dtype == torch.bfloat16:
            return r.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return r.detach().numpy()
    return np.asarray(r)


def assert_same(got, want):
    """Results of the same dtype and shape, bit for bit (NaN payloads and -0.0 too)."""
    got, want = as_numpy(got), as_numpy(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape,
                                                                want.dtype, want.shape)
    assert got.tobytes() == want.tobytes(), (got, want)


@pytest.fixture
def core_spy(monkeypatch):
    """Checks that every array reaching ``xentc._core`` (but 16-bit rows) is aligned;
    records (function, x address) of each call."""
    calls = []

    def check(name, a, half_rows=False):
        if isinstance(a, np.ndarray) and not half_rows:
            assert a.flags.aligned and a.ctypes.data % a.itemsize == 0, \
                f"misaligned `{name}` ({a.dtype} at {a.ctypes.data:#x}) handed to the C core"

    def wrap(fn_name, arrays):
        fn = getattr(xentc._core, fn_name)

        def spy(*args, **kwargs):
            arrays(*args, **kwargs)
            return fn(*args, **kwargs)
        monkeypatch.setattr(xentc._core, fn_name, spy)

    def rows(job, half=None):
        for name in ("x", "target", "soft", "weight", "grad_row_scale", "out"):
            check(name, getattr(job, name), half is not None and name in ("x", "soft", "out"))
        calls.append(("rows", job.x.ctypes.data))

    def targets(target, n_classes, ignore_index=-100, weight=None):
        check("target", target)
        check("weight", weight)
        calls.append(("targets", None))

    def proba(p, target, row_sum, picked, n_threads=0):
        for name, a in (("p", p), ("target", target), ("row_sum", row_sum), ("picked", picked)):
            check(name, a)
        calls.append(("proba", p.ctypes.data))

    wrap("rows", rows)
    wrap("targets", targets)
    wrap("proba", proba)
    return calls


def _case(rng, dtype, n_classes, soft):
    """Logits, targets, class weights and sample weights of 7 rows (NumPy, aligned)."""
    x = make_logits(rng, (7, n_classes), dtype)
    t = (make_soft_targets(rng, x.shape, dtype) if soft
         else make_targets(rng, (7,), n_classes, ignore_index=-100))
    return dict(input=x, target=t, weight=make_weight(rng, n_classes, dtype),
                sample_weight=rng.uniform(0.5, 2.0, 7).astype(dtype))


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("which", ["input", "target", "weight", "sample_weight", "all"])
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("n_classes", CLASSES)
def test_cross_entropy(lib, which, soft, n_classes, dtype, rng, core_spy):
    args = _case(rng, dtype, n_classes, soft)
    moved = {k: misaligned(a) if which in (k, "all") else a for k, a in args.items()}
    opts = dict(label_smoothing=0.1, lse_square_scale=1e-3, return_lse=True)
    for reduction in ("none", "mean"):
        want = xentc.cross_entropy(**{k: as_lib(lib, a) for k, a in args.items()},
                                   reduction=reduction, **opts)
        core_spy.clear()
        got = xentc.cross_entropy(**{k: as_lib(lib, a) for k, a in moved.items()},
                                  reduction=reduction, **opts)
        assert [c[0] for c in core_spy] == ([] if soft else ["targets"]) + ["rows"]
        for g, w in zip(got, want):
            assert_same(g, w)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("which", ["out", "in_place", "grad_output", "sample_weight", "all"])
@pytest.mark.parametrize("n_classes", CLASSES)
def test_cross_entropy_with_grad(lib, which, n_classes, dtype, rng, core_spy):
    """A misaligned `out` (a buffer of its own, or the logits themselves) receives
    the gradient; misaligned grad_output or sample weights (the kernel's per-row
    gradient scales when they come alone) scale it as aligned ones do."""
    args = _case(rng, dtype, n_classes, soft=False)
    go = rng.uniform(-1.0, 1.0, 7).astype(dtype)
    opts = dict(reduction="none", label_smoothing=0.1, softcap=20.0)
    if which == "grad_output":
        del args["sample_weight"]
    if which == "sample_weight":
        go, opts["reduction"] = None, "mean"
    loss, grad = xentc.cross_entropy_with_grad(
        **{k: as_lib(lib, a) for k, a in args.items()}, grad_output=as_lib(lib, go), **opts)
    if which in ("sample_weight", "all"):
        args["sample_weight"] = misaligned(args["sample_weight"])
    if which == "all":
        args = {k: misaligned(a) for k, a in args.items()}
    if which in ("grad_output", "all"):
        go = misaligned(go, 3)
    out = None
    if which in ("out", "all"):
        out = as_lib(lib, misaligned(np.zeros_like(as_numpy(grad)), 2))
    lib_args = {k: as_lib(lib, a) for k, a in args.items()}
    if which == "in_place":
        out = lib_args["input"] = as_lib(lib, misaligned(args["input"]))
    core_spy.clear()
    loss_m, grad_m = xentc.cross_entropy_with_grad(**lib_args, grad_output=as_lib(lib, go),
                                                   out=out, **opts)
    assert [c[0] for c in core_spy] == ["targets", "rows"]
    assert_same(loss_m, loss)
    assert_same(grad_m, grad)
    if out is not None:
        assert grad_m is out
        assert_same(out, grad)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("n_classes", CLASSES)
def test_softmax_family(lib, axis, n_classes, dtype, rng, core_spy):
    x = make_logits(rng, (7, n_classes), dtype)
    xm = as_lib(lib, misaligned(x))
    for fn in (xentc.log_softmax, xentc.softmax, xentc.logsumexp):
        assert_same(fn(xm, axis=axis), fn(as_lib(lib, x), axis=axis))
    assert {c[0] for c in core_spy} == {"rows"}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("which", ["input", "target", "weight", "all"])
def test_nll_loss(lib, which, dtype, rng, core_spy):
    """The target check (``_core.targets``) reads target and weight."""
    args = _case(rng, dtype, 37, soft=False)
    del args["sample_weight"]
    moved = {k: misaligned(a) if which in (k, "all") else a for k, a in args.items()}
    want = xentc.nll_loss(**{k: as_lib(lib, a) for k, a in args.items()})
    assert_same(xentc.nll_loss(**{k: as_lib(lib, a) for k, a in moved.items()}), want)
    assert "targets" in {c[0] for c in core_spy}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("which", ["proba", "labels", "sample_weight", "all"])
@pytest.mark.parametrize("from_logits", [False, True], ids=["proba", "logits"])
def test_log_loss(lib, which, from_logits, dtype, rng, core_spy):
    """Probabilities reach ``_core.proba`` (logits ``_core.rows``) aligned."""
    n, c = 50, 9
    p = make_logits(rng, (n, c), dtype)
    if not from_logits:
        p = softmax_ref(p).astype(dtype)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)  # every label present
    sw = rng.uniform(0.5, 2.0, n)
    args = dict(y_true=y, y_proba=p, sample_weight=sw)
    key = {"proba": "y_proba", "labels": "y_true"}.get(which, which)
    moved = {k: misaligned(a) if key in (k, "all") else a for k, a in args.items()}
    want = xentc.log_loss(**{k: as_lib(lib, a) for k, a in args.items()}, from_logits=from_logits)
    got = xentc.log_loss(**{k: as_lib(lib, a) for k, a in moved.items()}, from_logits=from_logits)
    assert got == want or (np.isnan(got) and np.isnan(want))
    assert ("rows" if from_logits else "proba") in {c[0] for c in core_spy}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_half_rows_in_place(lib, half, soft, rng, core_spy):
    """16-bit logits, targets and `out` at odd addresses reach the core as they are;
    the float32 weights, sample weights and grad_output beside them are realigned."""
    hdtype = np.float16 if half == "float16" else ml_dtypes.bfloat16
    args = _case(rng, np.float32, 300, soft)
    args["input"] = args["input"].astype(hdtype)
    if soft:
        args["target"] = args["target"].astype(hdtype)
    go = rng.uniform(-1.0, 1.0, 7).astype(np.float32)
    opts = dict(reduction="none", label_smoothing=0.1, lse_square_scale=1e-3)
    loss, grad = xentc.cross_entropy_with_grad(
        **{k: as_lib(lib, a) for k, a in args.items()}, grad_output=as_lib(lib, go), **opts)
    moved = {k: misaligned(a) for k, a in args.items()}
    x_address = moved["input"].ctypes.data
    out = as_lib(lib, misaligned(np.zeros(args["input"].shape, hdtype), 3))
    core_spy.clear()
    loss_m, grad_m = xentc.cross_entropy_with_grad(
        **{k: as_lib(lib, a) for k, a in moved.items()}, grad_output=as_lib(lib, misaligned(go)),
        out=out, **opts)
    assert ("rows", x_address) in core_spy, "the 16-bit rows were copied"
    assert_same(loss_m, loss)
    assert grad_m is out
    assert_same(out, grad)


def test_aligned_arrays_are_not_copied(core_spy):
    """The realignment copies only what needs it: aligned logits are read in place."""
    rng = np.random.default_rng(0)
    x = make_logits(rng, (7, 40), np.float32)
    xentc.cross_entropy(x, make_targets(rng, (7,), 40))
    assert ("rows", x.ctypes.data) in core_spy
