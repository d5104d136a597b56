"""Fuzzing the public calls against float64 references, with hypothesis.

Each example draws a shape (empty axes, one class, class counts either side
of every vector width, of the 1024-float block and of the 64-class short-row
limit, and one count above 2**16 in few rows), a memory layout (transposed,
reversed, every other element, unaligned buffers), a dtype (float16, float32,
float64, bfloat16; NumPy or torch arrays), values (normal at several scales,
with +-inf, NaN, +-1e38, subnormals) and the options (ignore_index, weights,
label smoothing, soft targets, reductions, axis, n_threads, the row options,
``out=`` aliasing), then calls ``xentc.cross_entropy``,
``cross_entropy_with_grad``, ``log_softmax``, ``softmax`` or ``logsumexp``.
Every result is checked against a float64 reference (``reference.py``; long
double for the softmax family) within the suite's tolerances, every thread
count must give the same bits, and a drawn mistake must raise a ValueError,
TypeError or IndexError naming it.

Hypothesis rather than atheris: it runs under plain pytest with the rest of
the suite (and under the sanitizers of ``.ci/sanitize``, where an out-of-bounds
access or undefined behaviour ends the run), it shrinks a failing input to a
small one, and it needs no extra build (atheris wants libFuzzer from clang and
an instrumented extension). Its strategies aim at the inputs that select
different C paths, which coverage guidance would find only slowly.

Settings: ``XENTC_FUZZ_EXAMPLES`` examples per test (default 200, a few
seconds; ``.ci/sanitize`` raises it), no deadline (sanitized runs are slow).
Derandomized, as the rest of the suite seeds its generators from the test's
id: every run draws the same examples, so a failure reproduces anywhere and CI
is never red by chance. ``XENTC_FUZZ_SEED=N`` draws another set (exploration,
reproducible by N; failures are then also kept in hypothesis' database).
Inputs that once failed stay as explicit ``@example`` regressions.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

import xentc
from reference import (class_axis, log_softmax_ref, logsumexp_ref, options_reference,
                       options_tolerance, softmax_family_tolerance, softmax_ref, unaligned_copy)

_SEED = os.environ.get("XENTC_FUZZ_SEED")

# inf / NaN / 1e38 inputs make NumPy warn in xentc's own NumPy arithmetic (the
# z-loss 0 * inf, float32 sums cast past float16's range) as in any NumPy code;
# the values are what the tests check.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def fuzz(test):
    """The fuzz settings (see the module docstring) on a @given test."""
    test = settings(max_examples=int(os.environ.get("XENTC_FUZZ_EXAMPLES", "200")),
                    deadline=None, derandomize=_SEED is None,
                    suppress_health_check=[HealthCheck.too_slow])(test)
    return test if _SEED is None else seed(int(_SEED))(test)


# Either side of each vector width (4, 8, 16 floats; 2, 4, 8 doubles), of the
# 64-class short-row limit, of the 4 KiB block (1024 floats, 512 doubles), and
# one count above 2**16 (drawn with few rows).
CLASS_COUNTS = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129,
                511, 512, 513, 1023, 1024, 1025, 2047, 2049, 4097)
BIG_CLASSES = 2**16 + 3
DTYPES = ("float32", "float64", "float16", "bfloat16")
LAYOUTS = ("contiguous", "transposed", "reversed", "every_other", "unaligned")
SPECIALS = ("inf", "-inf", "nan", "1e38", "-1e38", "subnormal", "-subnormal")


def _np_dtype(name):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def _special(name, dtype):
    if name.endswith("subnormal"):  # the smallest positive subnormal, times 3
        tiny = {"float16": 2.0**-24, "bfloat16": 2.0**-133, "float32": 2.0**-149,
                "float64": 2.0**-1074}[dtype] * 3
        return -tiny if name[0] == "-" else tiny
    return float(name)


# ---------------------------------------------------------------------------
# arrays: layouts, libraries
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """How an array lies in memory: `kind` (one of LAYOUTS), the axis that
    "reversed" and "every_other" apply to, the byte offset of "unaligned"."""

    kind: str = "contiguous"
    axis: int = 0
    offset: int = 1

    def apply(self, a):
        """A NumPy array equal to `a`, in this layout."""
        if a.ndim == 0 or self.kind == "contiguous":  # (np.ascontiguousarray makes 0-d 1-d)
            return np.array(a, order="C")
        if self.kind == "transposed":
            return np.asfortranarray(a)
        ax = self.axis % a.ndim
        if self.kind == "reversed":
            return np.flip(np.ascontiguousarray(np.flip(a, ax)), ax)
        if self.kind == "every_other":
            shape = list(a.shape)
            shape[ax] *= 2
            buf = np.zeros(shape, a.dtype)
            view = buf[(slice(None),) * ax + (slice(None, None, 2),)]
            view[...] = a
            return view
        return unaligned_copy(a, self.offset)


CONTIGUOUS = Layout()


@st.composite
def layouts(draw, lib):
    # torch tensors cannot have negative strides
    kinds = [k for k in LAYOUTS if not (lib == "torch" and k == "reversed")]
    return Layout(draw(st.sampled_from(kinds)), draw(st.integers(0, 3)), draw(st.integers(1, 3)))


def to_lib(lib, a):
    """NumPy `a` as `lib`'s array sharing its memory (None and Python floats pass)."""
    if not isinstance(a, np.ndarray) or lib == "numpy":
        return a
    if a.dtype == ml_dtypes.bfloat16:  # torch.from_numpy knows no bfloat16: its bits
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def to_f64(r):
    """A result (NumPy or torch, any float dtype) as float64 NumPy."""
    if isinstance(r, torch.Tensor):
        r = r.detach()
        return (r.float() if r.dtype == torch.bfloat16 else r).numpy().astype(np.float64)
    return np.asarray(r).astype(np.float64)


# ---------------------------------------------------------------------------
# what is drawn: a Spec of plain values, which hypothesis prints and an
# @example repeats; `Call` makes its arrays
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
    """One call, drawn; its arrays are made from `seed` by `Call`."""

    fn: str                      # the xentc function
    lib: str                     # "numpy" or "torch"
    dtype: str                   # of the logits
    shape: tuple
    ax: int                      # the class axis
    seed: int = 0
    scale: float = 1.0           # of the normal logits
    specials: tuple = ()         # (flat index mod size, one of SPECIALS) put into the logits
    layout: Layout = CONTIGUOUS  # of the logits
    kwargs: tuple = ()           # (name, value) of the scalar keyword arguments
    target: str = "class"        # or "soft" (class probabilities)
    ignored: float = 0.0         # fraction of class targets set to ignore_index
    target_dtype: str = "int64"
    target_layout: Layout = CONTIGUOUS
    weight: str | None = None    # None, "positive", or "zeros" (some weights 0)
    weight_layout: Layout = CONTIGUOUS
    sample_weight: Layout | None = None  # its layout where given
    grad_output: object = None   # None, a float, or the layout of a per-row array
    out: str | None = None       # None, "new" or "input"
    out_layout: Layout = CONTIGUOUS
    mistake: str | None = None   # one of MISTAKES


class Call:
    """The arrays of a `Spec`, as NumPy (the caller's values, in their layouts),
    and its keyword arguments."""

    def __init__(self, spec):
        self.spec = s = spec
        self.kw = dict(s.kwargs)
        n_classes = s.shape[s.ax]
        self.lead = lead = s.shape[:s.ax] + s.shape[s.ax + 1:]
        self.half = s.dtype in ("float16", "bfloat16")
        self.acc = acc = np.dtype(np.float32 if self.half else s.dtype)  # the sums' dtype
        rng = np.random.default_rng(s.seed)
        x = rng.standard_normal(s.shape) * s.scale
        flat = x.reshape(-1)
        for index, name in s.specials:
            if flat.size:
                flat[index % flat.size] = _special(name, s.dtype)
        with np.errstate(over="ignore"):
            self.x = s.layout.apply(x.astype(_np_dtype(s.dtype)))
        self.target = self.weight = self.sample_weight = self.grad_output = None
        if s.fn not in ("cross_entropy", "cross_entropy_with_grad"):
            return
        if s.target == "soft":
            q = softmax_ref(rng.standard_normal(s.shape) * 2.0, axis=s.ax)
            self.target = s.target_layout.apply(q.astype(_np_dtype(s.dtype)))
        else:
            t = np.asarray(rng.integers(0, n_classes, lead))
            t[np.asarray(rng.random(lead) < s.ignored)] = self.kw.get("ignore_index", -100)
            self.target = s.target_layout.apply(t.astype(s.target_dtype))
        if s.weight is not None:
            w = rng.uniform(0.25, 2.0, n_classes)
            if s.weight == "zeros":
                w[rng.random(n_classes) < 0.3] = 0.0
            self.weight = s.weight_layout.apply(w.astype(acc))
        if s.sample_weight is not None:
            self.sample_weight = s.sample_weight.apply(np.asarray(rng.uniform(0.5, 2.0, lead), acc))
        if isinstance(s.grad_output, Layout):
            self.grad_output = s.grad_output.apply(np.asarray(rng.uniform(-2.0, 2.0, lead), acc))
        else:
            self.grad_output = s.grad_output

    @property
    def x64(self):
        return self.x.astype(np.float64)

    @property
    def target_ref(self):
        """The targets as the references take them (probabilities in float64)."""
        return self.target.astype(np.float64) if self.spec.target == "soft" else self.target


@st.composite
def shapes(draw, allow_zero_classes=False):
    """(shape, class axis, the `axis` argument or None for torch's default)."""
    counts = CLASS_COUNTS + ((0,) if allow_zero_classes else ())
    big = draw(st.integers(0, 30)) == 30  # (shrinks away from it)
    n_classes = BIG_CLASSES if big else draw(
        st.one_of(st.sampled_from(counts), st.integers(1, 300)))
    lead = draw(st.lists(st.integers(0, 2 if big else 4), max_size=1 if big else 2))
    pos = draw(st.integers(0, len(lead)))
    shape = tuple(lead[:pos]) + (n_classes,) + tuple(lead[pos:])
    if pos == class_axis(len(shape)) and draw(st.booleans()):
        return shape, pos, None
    return shape, pos, draw(st.sampled_from([pos, pos - len(shape)]))


@st.composite
def base_specs(draw, fn, allow_zero_classes=False):
    """What every call has: library, dtype, shape, values, layout, n_threads."""
    lib = draw(st.sampled_from(["numpy", "torch"]))
    shape, ax, axis = draw(shapes(allow_zero_classes))
    kwargs = {"n_threads": draw(st.sampled_from([None, 1, 2, 3]))}
    if axis is not None:
        kwargs["axis"] = axis
    specials = draw(st.lists(st.tuples(st.integers(0, 2**31), st.sampled_from(SPECIALS)),
                             max_size=3))
    return Spec(fn=fn, lib=lib, dtype=draw(st.sampled_from(DTYPES)), shape=shape, ax=ax,
                seed=draw(st.integers(0, 2**32 - 1)),
                scale=draw(st.sampled_from([1.0, 3.0, 30.0, 1e4])), specials=tuple(specials),
                layout=draw(layouts(lib)), kwargs=tuple(kwargs.items()))


MISTAKES = ("target_out_of_range", "label_smoothing", "n_threads", "weight_shape",
            "weight_dtype", "axis", "ignore_index_with_soft", "out_shape")


@st.composite
def loss_specs(draw, fn):
    """A cross_entropy or cross_entropy_with_grad call."""
    spec = draw(base_specs(fn))
    lib, n_classes = spec.lib, spec.shape[spec.ax]
    kw = dict(spec.kwargs)
    kw.update(reduction=draw(st.sampled_from(["none", "sum", "mean"])),
              label_smoothing=draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]),
                                             st.floats(0.0, 1.0))),
              logit_scale=draw(st.sampled_from([1.0, 1.0, 0.5, 2.5])),
              softcap=draw(st.sampled_from([None, None, 30.0, 3.0])),
              lse_square_scale=draw(st.sampled_from([0.0, 0.0, 1e-3])),
              return_z_loss=draw(st.booleans()), return_lse=draw(st.booleans()))
    fields = {}
    if draw(st.integers(0, 3)) == 0:
        fields.update(target="soft", target_layout=draw(layouts(lib)))
    else:
        kw["ignore_index"] = draw(st.sampled_from([-100, -1, 0, n_classes - 1]))
        fields.update(ignored=draw(st.sampled_from([0.0, 0.3, 1.0])),
                      target_dtype=draw(st.sampled_from(["int64", "int64", "int32"])),
                      target_layout=draw(layouts(lib)))
    if draw(st.booleans()):
        fields.update(weight=draw(st.sampled_from(["positive", "zeros"])),
                      weight_layout=draw(layouts(lib)))
    if draw(st.integers(0, 3)) == 0:
        fields["sample_weight"] = draw(layouts(lib))
    if fn == "cross_entropy_with_grad":
        if kw["reduction"] == "none":
            fields["grad_output"] = draw(st.one_of(st.none(), layouts(lib)))
        else:
            fields["grad_output"] = draw(st.sampled_from([None, 0.5, -1.0, 3.0]))
        fields.update(out=draw(st.sampled_from([None, "new", "input"])),
                      out_layout=draw(layouts(lib)))
    if draw(st.integers(0, 7)) == 0:
        fields["mistake"] = draw(st.sampled_from(
            MISTAKES if fn == "cross_entropy_with_grad" else MISTAKES[:-1]))
    return dataclasses.replace(spec, kwargs=tuple(kw.items()), **fields)


@st.composite
def normalize_specs(draw):
    """A log_softmax, softmax or logsumexp call."""
    fn = draw(st.sampled_from(["log_softmax", "softmax", "logsumexp"]))
    spec = draw(base_specs(fn, allow_zero_classes=True))
    kw = dict(spec.kwargs)
    kw["axis"] = draw(st.sampled_from([spec.ax, spec.ax - len(spec.shape)]))
    if fn == "logsumexp":
        kw["keepdims"] = draw(st.booleans())
    return dataclasses.replace(spec, kwargs=tuple(kw.items()))


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def _ulp(value, dtype):
    """One ulp of |value| (float64) in the 16-bit `dtype`."""
    mant, emin = {"float16": (10, -14), "bfloat16": (7, -126)}[dtype]
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.abs(value)))
    return np.ldexp(1.0, (np.maximum(np.nan_to_num(e, neginf=emin), emin) - mant).astype(int))


def check(got, want, tol, dtype, what, overflow=False, floor=1.0):
    """`got` (any library) against the float64 `want` within `tol`, for a result
    stored in `dtype`: NaN where want is NaN, the same infinity where it is
    infinite, infinity where want (give or take tol) is past the dtype's range.
    Where `overflow` says that a term on the way may pass the range, inf or NaN
    (inf times a zero weight, as torch's own float32 gives) are right too. A
    non-finite tolerance (inf / NaN inputs) leaves only the NaN / inf checks.
    Relative bounds end at the subnormals: `floor` of their spacings are allowed
    everywhere (z = s * x or c * tanh(s * x / c) rounds to them, or under them)."""
    g = to_f64(got)
    want = np.asarray(want, np.float64)
    assert g.shape == want.shape, f"{what}: shape {g.shape} != {want.shape}"
    tol = np.broadcast_to(np.nan_to_num(np.asarray(tol, np.float64), nan=np.inf), want.shape)
    tiny = np.finfo(np.float64 if dtype == "float64" else np.float32).smallest_subnormal
    tol = tol + 2 * floor * float(tiny)
    top = float(ml_dtypes.finfo(_np_dtype(dtype)).max)
    if dtype in ("float16", "bfloat16"):  # computed in float32, then rounded once
        with np.errstate(invalid="ignore", over="ignore"):
            tol = tol + _ulp(np.abs(want) + tol, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        over = np.isfinite(want) & ((np.abs(want) + tol > top) | overflow)
        ok = ((np.isnan(want) & np.isnan(g))
              | (np.isinf(want) & (g == want))
              | (np.isfinite(want) & (np.abs(g - want) <= tol))
              | (over & (g == np.copysign(np.inf, want)))
              | (np.isfinite(want) & overflow & ~np.isfinite(g)))
    if not np.all(ok):
        i = np.flatnonzero(~ok.ravel())[0]
        raise AssertionError(
            f"{what}: {np.count_nonzero(~ok)} of {ok.size} wrong; first at {i}: got "
            f"{g.ravel()[i]!r}, want {want.ravel()[i]!r}, tol {tol.ravel()[i]!r}")


def check_type(got, spec, shape, what):
    """Namespace, dtype and shape of a result."""
    types = (np.ndarray, np.generic) if spec.lib == "numpy" else torch.Tensor
    assert isinstance(got, types), f"{what}: {type(got)}"
    dtype = str(got.dtype).replace("torch.", "")
    assert dtype == spec.dtype, f"{what}: dtype {dtype} != {spec.dtype}"
    assert tuple(got.shape) == tuple(shape), f"{what}: shape {tuple(got.shape)} != {shape}"


def same_bits(a, b, what):
    a, b = to_f64(a), to_f64(b)
    assert a.shape == b.shape and a.tobytes() == b.tobytes(), f"{what}: {a} != {b}"


def make_mistake(call):
    """Make `call.spec.mistake` in `call`: (exception type, pattern of its message),
    or None where this call cannot have it (it then runs as drawn)."""
    spec, kw = call.spec, call.kw
    n_classes = spec.shape[spec.ax]
    m = spec.mistake
    if m == "target_out_of_range":
        if spec.target == "soft" or call.target.size == 0:
            return None
        bad = n_classes + 2 if kw.get("ignore_index") != n_classes + 2 else -7
        t = np.array(call.target, order="C")  # (reshape(-1) of another order copies)
        t.reshape(-1)[-1] = bad
        call.target = t
        return IndexError, rf"`target` value {bad} out of range for {n_classes} classes"
    if m == "label_smoothing":
        kw["label_smoothing"] = 1.5
        return ValueError, "label_smoothing"
    if m == "n_threads":
        kw["n_threads"] = 0
        return ValueError, "n_threads"
    if m == "weight_shape":
        call.weight = np.ones(n_classes + 1, call.acc)
        return ValueError, "weight"
    if m == "weight_dtype":
        call.weight = np.ones(n_classes, np.int64)
        return TypeError, "weight"
    if m == "axis":
        kw["axis"] = len(spec.shape)
        return ValueError, "axis"
    if m == "ignore_index_with_soft":
        if spec.target != "soft":
            return None
        kw["ignore_index"] = 0
        return ValueError, "ignore_index"
    if m == "out_shape":
        call.out = np.zeros(spec.shape + (2,), call.x.dtype)
        return ValueError, "out"
    return None


def _divisor(call, ref):
    """What reduction="mean" divides by: the kept rows' summed weight."""
    sw = 1.0 if call.sample_weight is None else call.sample_weight.astype(np.float64)
    if call.spec.target == "soft":
        return float(np.sum(np.broadcast_to(sw, call.lead)))
    t = np.asarray(call.target)
    keep = t != ref["ignore_index"]
    w = 1.0 if call.weight is None else call.weight.astype(np.float64)[np.where(keep, t, 0)]
    return float(np.sum(np.where(keep, w * sw, 0.0)))


def _sums_overflow(call, x64, ref):
    """Where a sum of the loss's terms may pass the accumulation dtype's range
    on the way, so that infinity is a right answer (per row for
    reduction="none"): C terms of up to max|w| * (|lse| + max|z|) per row,
    then the rows, with logits near 1e38."""
    spec = call.spec
    z = x64 * ref["logit_scale"]
    if ref["softcap"] is not None:
        z = ref["softcap"] * np.tanh(z / ref["softcap"])
    with np.errstate(all="ignore"):
        zm = np.moveaxis(z, spec.ax, -1)
        lse = np.abs(logsumexp_ref(zm, axis=-1)) if zm.shape[-1] else 0.0
        w = 1.0 if call.weight is None else float(np.max(call.weight.astype(np.float64)))
        mag = (lse + np.max(np.abs(zm), axis=-1, initial=0.0)) * zm.shape[-1] * w
        mag = mag + ref["lse_square_scale"] * lse * lse
        mag = np.where(np.isfinite(mag), mag, 0.0)  # such rows are inf or NaN anyway
        top = np.finfo(call.acc).max / 4
        return mag > top if ref["reduction"] == "none" else bool(np.sum(mag) > top)


def _tuple(r):
    return r if isinstance(r, tuple) else (r,)


def run_loss(spec):
    """A cross_entropy / cross_entropy_with_grad call against options_reference."""
    call = Call(spec)
    with_grad = spec.fn == "cross_entropy_with_grad"
    call.out = None
    if spec.out == "new":
        call.out = spec.out_layout.apply(np.zeros_like(call.x))
    elif spec.out == "input":
        call.out = call.x
    error = make_mistake(call) if spec.mistake else None
    lib = spec.lib
    x = to_lib(lib, call.x)
    kw = dict(call.kw)
    for name in ("weight", "sample_weight") + (("grad_output",) if with_grad else ()):
        kw[name] = to_lib(lib, getattr(call, name))
    if call.out is not None:
        kw["out"] = x if spec.out == "input" and error is None else to_lib(lib, call.out)
    fn = getattr(xentc, spec.fn)
    t = to_lib(lib, call.target)
    if error is not None:
        with pytest.raises(error[0], match=error[1]):
            fn(x, t, **kw)
        return
    x64, t64 = call.x64, call.target_ref  # before `out=x` overwrites x
    # Every thread count gives the bits of n_threads=1 (on a copy of x where
    # the call overwrites it).
    serial = None
    if kw["n_threads"] != 1:
        kw1 = dict(kw, n_threads=1)
        x1 = x
        if call.out is not None:
            x1 = to_lib(lib, np.array(call.x))
            kw1["out"] = x1 if spec.out == "input" else to_lib(lib, np.zeros_like(call.x))
        serial = _tuple(fn(x1, t, **kw1))
    got = _tuple(fn(x, t, **kw))
    if serial is not None:
        for i, (a, b) in enumerate(zip(got, serial)):
            same_bits(a, b, f"result {i}: n_threads={kw['n_threads']} against 1")
    if call.out is not None:
        assert got[-1] is kw["out"], "the gradient is not `out`"
    def contiguous(a):  # torch.tensor takes no negative strides
        return np.array(a, order="C") if isinstance(a, np.ndarray) else a

    ref = dict(weight=contiguous(call.weight), ignore_index=kw.get("ignore_index", -100),
               reduction=kw["reduction"], axis=spec.ax, logit_scale=kw["logit_scale"],
               softcap=kw["softcap"], lse_square_scale=kw["lse_square_scale"],
               sample_weight=contiguous(call.sample_weight),
               grad_output=contiguous(call.grad_output))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf in the references
        want = options_reference(x64, t64, label_smoothing=kw["label_smoothing"], **ref)
        tols = options_tolerance(x64, t64, call.acc, **ref)
    loss_want, z_want, grad_want = want[0], want[1], want[3]
    if kw["reduction"] == "mean" and _divisor(call, ref) == 0:  # documented: NaN
        loss_want = z_want = np.float64(np.nan)
    if spec.target == "class":  # xentc never reads an ignored row: its gradient is 0
        ignored = np.expand_dims(np.asarray(t64) == ref["ignore_index"], spec.ax)
        grad_want = np.where(ignored, 0.0, grad_want)  # (torch: NaN if the row holds inf)
    reduced = () if kw["reduction"] != "none" else call.lead
    # (name, reference, tolerance, shape) in the order of the returned tuple; the
    # z-loss is bounded as the loss (zls * lse**2 is one of its terms)
    overflow = _sums_overflow(call, x64, ref)
    expected = [("loss", loss_want, tols[0], reduced, overflow)]
    if kw["return_z_loss"]:
        expected.append(("z_loss", z_want, tols[0], reduced, overflow))
    if kw["return_lse"]:
        expected.append(("lse", want[2], tols[1], call.lead, False))
    if with_grad:
        expected.append(("grad", grad_want, tols[2], spec.shape, False))
    assert len(got) == len(expected)
    # x / c of a subnormal x underflows: z loses up to c subnormal spacings
    floor = 1.0 + (kw["softcap"] or 0.0)
    for r, (what, w, tol, shape, over) in zip(got, expected):
        check_type(r, spec, shape, what)
        check(r, w, tol, spec.dtype, what, over, floor)


def _normalize_reference(fn, x64, ax, keepdims):
    """The float64 reference of log_softmax / softmax / logsumexp, and a bound
    on its own error. A float64 reference is off by eps64 * log(sum of exps),
    tens of ulps of a float64 probability; so rows of finite values are done
    again in long double (80-bit on x86-64; where it is no wider than double,
    the bound says so). Rows holding inf or NaN are as reference.py gives them
    (NaN or +-inf, as torch)."""
    if fn == "logsumexp":
        want = logsumexp_ref(x64, axis=ax, keepdims=keepdims)
    else:
        want = (log_softmax_ref if fn == "log_softmax" else softmax_ref)(x64, axis=ax)
    if x64.shape[ax] == 0:
        return want, 0.0
    xl = x64.astype(np.longdouble)
    d = xl - np.max(xl, axis=ax, keepdims=True)
    log_sum = np.log(np.sum(np.exp(d), axis=ax, keepdims=True))
    longer = {"log_softmax": d - log_sum, "softmax": np.exp(d - log_sum),
              "logsumexp": np.max(xl, axis=ax, keepdims=True) + log_sum}[fn]
    if fn == "logsumexp" and not keepdims:
        longer, log_sum = np.squeeze(longer, ax), np.squeeze(log_sum, ax)
    finite = np.all(np.isfinite(x64), axis=ax, keepdims=fn != "logsumexp" or keepdims)
    want = np.where(finite, longer.astype(np.float64), want)
    err = 4 * np.finfo(np.longdouble).eps * (1 + np.abs(log_sum.astype(np.float64)))
    return want, err * np.abs(want)


def run_normalize(spec):
    """A log_softmax / softmax / logsumexp call against the references."""
    call = Call(spec)
    x, kw, ax = to_lib(spec.lib, call.x), call.kw, spec.ax
    fn = getattr(xentc, spec.fn)
    got = fn(x, **kw)
    if kw["n_threads"] != 1:
        same_bits(got, fn(x, **dict(kw, n_threads=1)), f"n_threads={kw['n_threads']} against 1")
    x64 = call.x64
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        want, ref_err = _normalize_reference(spec.fn, x64, ax, kw.get("keepdims", False))
        tol = (softmax_family_tolerance(spec.fn, x64, ax, call.acc,
                                        keepdims=kw.get("keepdims", False)) + ref_err
               if x64.shape[ax] else 0.0)
    check_type(got, spec, want.shape, spec.fn)
    check(got, want, tol, spec.dtype, spec.fn)


# ---------------------------------------------------------------------------
# the tests. Each @example is an input that once failed: what it found is
# written above it (xentc's bugs first, then the oracle's and the harness's).
# ---------------------------------------------------------------------------


def loss_kwargs(**changes):
    """The `kwargs` of a loss Spec: the defaults with `changes`."""
    kw = dict(n_threads=None, reduction="mean", label_smoothing=0.0, logit_scale=1.0,
              softcap=None, lse_square_scale=0.0, return_z_loss=False, return_lse=False,
              ignore_index=-100)
    kw.update(changes)
    return tuple(kw.items())


# xentc: the z-loss returned was lse_square_scale * lse**2 in float32, whose
# lse**2 overflows for |lse| > 1.8e19: NaN (0 * inf) where it is 0, inf where
# it is finite. Now (lse_square_scale * lse) * lse.
@example(spec=Spec("cross_entropy", "numpy", "float32", (1,), 0, specials=((0, "1e38"),),
                   kwargs=loss_kwargs(reduction="none", return_z_loss=True), target="soft"))
# oracle: "mean" with a zero divisor is NaN (README, and torch), not sum / 0 = inf.
@example(spec=Spec("cross_entropy", "numpy", "float32", (65539,), 0,
                   kwargs=loss_kwargs(axis=0, label_smoothing=0.1), weight="zeros"))
# oracle: C terms of 1e38 overflow float32 on the way (torch's too): inf is right.
@example(spec=Spec("cross_entropy", "numpy", "float32", (65539,), 0, specials=((0, "1e38"),),
                   kwargs=loss_kwargs(axis=0, reduction="none", label_smoothing=0.1)))
# oracle: |z| = 2.5e38 overflows lse - z in float32, times a zero weight: NaN
# (torch's float32 too), where the float64 value 4.3e38 is past float32's range.
@example(spec=Spec("cross_entropy", "numpy", "float32", (511,), 0,
                   specials=((0, "1e38"), (99, "-1e38")),
                   kwargs=loss_kwargs(axis=0, reduction="none", label_smoothing=0.1,
                                      logit_scale=2.5), weight="zeros"))
# oracle: z = 0.5 * 3 * 2**-149 rounds to a float32 subnormal (2 * 2**-149): a
# relative tolerance alone cannot hold it.
@example(spec=Spec("cross_entropy", "numpy", "float32", (1,), 0, specials=((0, "subnormal"),),
                   kwargs=loss_kwargs(reduction="none", logit_scale=0.5, return_lse=True),
                   target="soft"))
# oracle: and 30 * tanh(3 * 2**-149 / 30) is 0 in float32 (torch's too).
@example(spec=Spec("cross_entropy", "numpy", "float32", (1,), 0, specials=((0, "subnormal"),),
                   kwargs=loss_kwargs(reduction="none", softcap=30.0, return_lse=True),
                   target="soft"))
# harness: a Fortran-order target copied, then written through reshape(-1) (a copy).
@example(spec=Spec("cross_entropy", "numpy", "float32", (1, 2, 2), 0,
                   kwargs=loss_kwargs(axis=0, reduction="none"),
                   target_layout=Layout("transposed"), mistake="target_out_of_range"))
@fuzz
@given(spec=loss_specs("cross_entropy"))
def test_cross_entropy(spec):
    run_loss(spec)


# oracle: an ignored row's gradient is 0 even where its logits are inf (xentc
# never reads it; torch's is NaN there).
@example(spec=Spec("cross_entropy_with_grad", "numpy", "float32", (1,), 0,
                   specials=((0, "inf"),), kwargs=loss_kwargs(), ignored=1.0))
# harness: 0-d sample weights and grad_output of 1-D logits (np.ascontiguousarray
# and np.asfortranarray make them 1-d), in negative-stride layouts torch.tensor refuses.
@example(spec=Spec("cross_entropy_with_grad", "numpy", "float64", (3,), 0,
                   kwargs=loss_kwargs(reduction="none"), sample_weight=Layout("reversed"),
                   grad_output=Layout("transposed")))
# oracle: a row of inf made the overflow bound NaN, so the 1e38 row next to it
# was held to finite.
@example(spec=Spec("cross_entropy_with_grad", "numpy", "float32", (65, 2), 0,
                   specials=((0, "1e38"), (1, "inf")),
                   kwargs=loss_kwargs(axis=0, reduction="none", label_smoothing=0.1)))
@fuzz
@given(spec=loss_specs("cross_entropy_with_grad"))
def test_cross_entropy_with_grad(spec):
    run_loss(spec)


# oracle: the float64 x - logsumexp(x) absorbs log(2) into 1e38, so its softmax
# of [1e38, 1e38] was [1, 1] (xentc's [0.5, 0.5] is right).
@example(spec=Spec("softmax", "numpy", "float32", (2,), 0, specials=((0, "1e38"), (1, "1e38")),
                   kwargs=(("n_threads", None), ("axis", 0))))
# oracle: a float64 reference of a float64 softmax is 31 ulp off over 2047
# classes (xentc's was within 1): long double.
@example(spec=Spec("softmax", "numpy", "float64", (2047, 3, 4), 0, seed=9505201,
                   kwargs=(("n_threads", None), ("axis", 0))))
@fuzz
@given(spec=normalize_specs())
def test_softmax_family(spec):
    run_normalize(spec)
