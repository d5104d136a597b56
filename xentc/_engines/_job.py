"""The row job: one immutable description of the rows an engine computes.

The API layer and ``metrics`` build a `RowJob` once per call, every engine
takes it whole (``engine.rows(xp, job)``), the torch autograd function keeps
it for a second backward pass, and its fields map one-to-one onto the C
struct ``xentc_rows`` (``src/xentc.h``, declared for Cython in
``xentc/_core.pxd``). A new option is one field here, its maths in each
engine, and its tests: no signature changes in between.
"""
from dataclasses import dataclass
from typing import Any

OUT_KINDS = ("none", "log_softmax", "softmax", "grad")
"""The second (M, C) result a job may ask for, in the order of ``xentc_out_kind``."""


@dataclass(frozen=True)
class RowJob:
    """The rows to compute and what to compute on them.

    Arrays are of one namespace and already in the dtypes the engines take
    (the API layer converts them once, on the way down): engines only adapt
    their layout or copy them to their device.

    Attributes
    ----------
    x : array
        (M, C) logits, classes on the last axis.
    target : array or None
        (M,) int64 class indices, already checked to lie in ``[0, C)`` or
        equal `ignore_index`.
    soft : array or None
        (M, C) class probabilities in x's dtype (instead of `target`).
    weight : array or None
        (C,) class weights in the accumulation dtype (float32 for float16 /
        bfloat16 `x`, else x's dtype).
    ignore_index : int
        The `target` value whose row contributes nothing.
    label_smoothing : float
        In ``[0, 1]``.
    logit_scale : float
        s > 0: the rows are computed on ``z = s * x`` (see `softcap`).
    softcap : float or None
        c > 0: the rows are computed on ``z = c * tanh(s * x / c)`` instead.
        Everything below (max, lse, loss, log_softmax, softmax) is of z; the
        gradient is with respect to x.
    lse_square_scale : float
        The z-loss: ``lse_square_scale * lse(z)**2`` is added to the loss of
        every row that has one (not to ignored rows), and to its gradient.
    want_loss, want_lse : bool
        Whether to return the per-row loss (given `target` or `soft`) and the
        per-row log-sum-exp.
    out_kind : {"none", "log_softmax", "softmax", "grad"}
        The second (M, C) result.
    grad_scale : float
        For ``out_kind="grad"``: the gradient of ``grad_scale *
        grad_row_scale[i] * loss[i]`` is written.
    grad_row_scale : array or None
        (M,) per-row scales in the accumulation dtype; None means ones.
    out : array or None
        Destination of the second result, (M, C) in x's dtype (may be `x`).
    n_threads : int or None
        Threads of the C core; None for all (other engines ignore it).
    """

    x: Any
    target: Any = None
    soft: Any = None
    weight: Any = None
    ignore_index: int = -100
    label_smoothing: float = 0.0
    logit_scale: float = 1.0
    softcap: float | None = None
    lse_square_scale: float = 0.0
    want_loss: bool = True
    want_lse: bool = False
    out_kind: str = "none"
    grad_scale: float = 1.0
    grad_row_scale: Any = None
    out: Any = None
    n_threads: int | None = None

    def __post_init__(self):
        if self.out_kind not in OUT_KINDS:
            raise ValueError(f"`out_kind` must be one of {OUT_KINDS}, got {self.out_kind!r}")

    def replace(self, **changes):
        """A copy of the job with `changes` (arrays adapted by an engine, new scales);
        the job itself when they change nothing."""
        # dataclasses.replace runs __init__ again: several microseconds of a
        # small call, which the C core answers in about one.
        fields = self.__dict__
        for k, v in changes.items():
            if fields.get(k, changes) is not v:
                break
        else:
            return self
        new = object.__new__(RowJob)
        new.__dict__.update(fields, **changes)
        if len(new.__dict__) != len(fields):
            raise TypeError(f"RowJob has no field {sorted(changes.keys() - fields.keys())[0]!r}")
        if "out_kind" in changes:
            new.__post_init__()
        return new

    def block(self, sl):
        """The job restricted to the rows `sl` (a slice), without `out`."""
        def cut(a, two_d=False):
            return None if a is None else (a[sl, :] if two_d else a[sl])
        return self.replace(x=cut(self.x, True), target=cut(self.target),
                            soft=cut(self.soft, True), grad_row_scale=cut(self.grad_row_scale),
                            out=None)

    @property
    def has_loss(self):
        """Whether a per-row loss is returned: asked for and given targets."""
        return self.want_loss and (self.target is not None or self.soft is not None)
