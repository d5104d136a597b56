"""PyTorch integration: xentc's fused loss as an autograd function and an ``nn.Module``.

``xentc.cross_entropy`` comes here by itself for a tensor that requires
grad; import this module for `CrossEntropyLoss`. Importing ``xentc`` never
imports torch: only this module does.
"""
import torch

from . import _api

__all__ = ["CrossEntropyLoss", "cross_entropy", "log_softmax", "softmax", "logsumexp"]


def _refuse_double_backward(what):
    # create_graph=True runs backward in grad mode: the saved results have no
    # graph of their own to differentiate, so say so instead of returning a
    # gradient that silently stops there.
    if torch.is_grad_enabled():
        raise RuntimeError(f"xentc.{what} does not support double backward "
                           f"(create_graph=True); use torch's own {what} for higher-order "
                           f"gradients")


def _detach(a):
    return a.detach() if isinstance(a, torch.Tensor) else a


class _CrossEntropy(torch.autograd.Function):
    """Forward runs the fused kernel and keeps the gradient it wrote.

    The kernel writes ``d(loss)/d(input)`` while each row is in cache, so the
    first backward pass is at most one in-place scaling of that buffer (none
    when ``grad_output`` is 1, as after ``loss.backward()``), and the buffer
    itself is handed on: autograd adopts it as ``.grad`` without a copy.
    Keeping only the log-sum-exp would read the logits again in backward.
    A second backward through a retained graph (gradcheck does this)
    recomputes the gradient from the saved logits.
    """

    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing, axis,
                n_threads, backend):
        ctx.args = (_detach(target), _detach(weight), ignore_index, reduction, label_smoothing)
        ctx.options = dict(axis=axis, n_threads=n_threads, backend=backend)
        loss, grad = _api.cross_entropy_with_grad(input.detach(), *ctx.args, **ctx.options)
        # An attribute, not saved: after handing the buffer on, ctx holds no
        # reference to it, which is what lets autograd adopt it.
        ctx.grad = grad
        ctx.save_for_backward(input)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        _refuse_double_backward("cross_entropy")
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            (input,) = ctx.saved_tensors
            _, grad = _api.cross_entropy_with_grad(input.detach(), *ctx.args,
                                                   grad_output=grad_output, **ctx.options)
        elif ctx.args[3] == "none":
            # The class axis of the gradient is where the loss has none.
            axis = _api._class_axis(grad.ndim, ctx.options["axis"])
            grad.mul_(grad_output.unsqueeze(axis))
        elif not bool(grad_output == 1):
            grad.mul_(grad_output)
        return grad, None, None, None, None, None, None, None, None


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, *, axis=None, n_threads=None, backend="auto"):
    """`xentc.cross_entropy` attached to torch's autograd.

    Parameters and results are those of `xentc.cross_entropy`; the result
    has a ``grad_fn`` when `input` requires grad (and grad mode is on), and
    its backward pass returns the gradient the forward pass already wrote.
    Gradients with respect to `weight` or to probability targets are not
    computed (torch does not compute the former either); asking for them is
    an error. Differentiating twice raises an error.
    """
    if not (torch.is_grad_enabled() and input.requires_grad):
        return _api.cross_entropy(input, target, weight, ignore_index, reduction,
                                  label_smoothing, axis=axis, n_threads=n_threads,
                                  backend=backend)
    for name, t in (("weight", weight), ("target", target)):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise NotImplementedError(f"xentc computes no gradient with respect to `{name}`; "
                                      f"detach it or use torch.nn.functional.cross_entropy")
    return _CrossEntropy.apply(input, target, weight, ignore_index, reduction,
                               label_smoothing, axis, n_threads, backend)


class _Normalize(torch.autograd.Function):
    """log_softmax / softmax: backward from the saved output alone."""

    @staticmethod
    def forward(ctx, x, axis, out_kind, n_threads, backend):
        y = _api._normalize(x.detach(), axis, out_kind, n_threads, backend)
        ctx.save_for_backward(y)
        ctx.axis = _api._class_axis(x.ndim, -1 if axis is None else axis)
        ctx.out_kind = out_kind
        return y

    @staticmethod
    def backward(ctx, g):
        _refuse_double_backward(ctx.out_kind)
        (y,) = ctx.saved_tensors
        if ctx.out_kind == "log_softmax":
            grad = g - torch.exp(y) * g.sum(ctx.axis, keepdim=True)
        else:
            grad = y * (g - (g * y).sum(ctx.axis, keepdim=True))
        return grad, None, None, None, None


class _LogSumExp(torch.autograd.Function):
    """logsumexp: d/dx = exp(x - lse), the softmax."""

    @staticmethod
    def forward(ctx, x, axis, keepdims, n_threads, backend):
        lse = _api.logsumexp(x.detach(), axis, keepdims, n_threads=n_threads, backend=backend)
        ctx.save_for_backward(x, lse)
        ctx.axis = _api._class_axis(x.ndim, axis)
        ctx.keepdims = keepdims
        return lse

    @staticmethod
    def backward(ctx, g):
        _refuse_double_backward("logsumexp")
        x, lse = ctx.saved_tensors
        if not ctx.keepdims:
            g, lse = g.unsqueeze(ctx.axis), lse.unsqueeze(ctx.axis)
        return g * torch.exp(x.detach() - lse), None, None, None, None


def log_softmax(x, axis=-1, *, n_threads=None, backend="auto"):
    """`xentc.log_softmax` attached to torch's autograd (see `xentc.log_softmax`)."""
    return _Normalize.apply(x, axis, "log_softmax", n_threads, backend)


def softmax(x, axis=-1, *, n_threads=None, backend="auto"):
    """`xentc.softmax` attached to torch's autograd (see `xentc.softmax`)."""
    return _Normalize.apply(x, axis, "softmax", n_threads, backend)


def logsumexp(x, axis=-1, keepdims=False, *, n_threads=None, backend="auto"):
    """`xentc.logsumexp` attached to torch's autograd (see `xentc.logsumexp`)."""
    return _LogSumExp.apply(x, axis, keepdims, n_threads, backend)


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` computed by xentc's fused kernel.

    Parameters
    ----------
    weight : Tensor, optional
        Per-class weights, shape ``(C,)``; registered as a buffer, so it moves
        with ``.to()``.
    size_average, reduce : None
        torch's deprecated arguments; only their default (None) is accepted.
    ignore_index : int, default -100
        Target value that contributes neither loss nor gradient.
    reduction : {"mean", "sum", "none"}, default "mean"
        As torch's.
    label_smoothing : float, default 0.0
        In ``[0, 1]``.
    n_threads : int, optional
        Threads of the C core (keyword-only); default all cores.

    Examples
    --------
    >>> import torch, xentc.torch
    >>> loss_fn = xentc.torch.CrossEntropyLoss(ignore_index=0)
    >>> x = torch.randn(4, 5, requires_grad=True)
    >>> loss_fn(x, torch.tensor([1, 0, 3, 4])).backward()
    """

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0, *, n_threads=None):
        super().__init__()
        if size_average is not None or reduce is not None:
            raise ValueError("`size_average` and `reduce` are deprecated in torch; "
                             "use `reduction`")
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.n_threads = n_threads

    def forward(self, input, target):
        """The loss of `input` logits against `target`, as ``F.cross_entropy``."""
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                             self.label_smoothing, n_threads=self.n_threads)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")
