"""torch autograd nodes for xentc's functions, for tensors that autograd follows.

The API layer (``_api``) sends such tensors here with what to compute: a
validated loss call, which holds its row job, or a function of the detached
tensor. This module imports torch, which nothing else in ``xentc`` does
unless the caller has imported it already, and no other module of xentc.
"""
import torch


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
    A second backward through a retained graph (gradcheck does this) runs
    the saved call's row job again with ``grad_output`` as its scale.
    """

    @staticmethod
    def forward(ctx, input, call):
        results, grad = call.run()
        # An attribute, not saved: after handing the buffer on, ctx holds no
        # reference to it, which is what lets autograd adopt it.
        ctx.grad = grad
        ctx.call = call
        # Saved for autograd's check that the logits the job reads were not
        # modified in place before a second backward.
        ctx.save_for_backward(input)
        # The z-loss and lse that come after the loss are reports: the loss
        # already holds the z-loss's gradient.
        ctx.mark_non_differentiable(*results[1:])
        return results

    @staticmethod
    def backward(ctx, grad_output, *_):
        _refuse_double_backward("cross_entropy")
        grad, ctx.grad = ctx.grad, None
        call = ctx.call
        if grad is None:
            ctx.saved_tensors  # noqa: B018  (raises if the input changed since forward)
            _, grad = call.run(grad_output)
        elif call.reduction == "none":
            # The class axis of the gradient is where the loss has none.
            grad.mul_(grad_output.unsqueeze(call.axis))
        elif not bool(grad_output == 1):
            grad.mul_(grad_output)
        return grad, None


def cross_entropy(input, arrays, build):
    """The loss of `input` as a node of torch's graph.

    Parameters
    ----------
    input : Tensor
        Logits that require grad.
    arrays : dict
        The other arrays by name (target, weight, sample_weight: Tensor,
        array or None); gradients with respect to them are not computed, and
        asking for them is an error.
    build : callable
        ``build(input, **arrays)`` of the detached tensors: the validated loss
        call, with ``run(grad_output=None) -> (results, grad)``, ``reduction``
        and ``axis`` (the class axis).

    Returns
    -------
    tuple of Tensor
        The call's results: the loss, with a ``grad_fn``, then the z-loss
        and lse when asked for.
    """
    for name, t in arrays.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise NotImplementedError(f"xentc computes no gradient with respect to `{name}`; "
                                      f"detach it or use torch.nn.functional.cross_entropy")
    results = _CrossEntropy.apply(
        input, build(input.detach(), **{k: _detach(v) for k, v in arrays.items()}))
    return results if isinstance(results, tuple) else (results,)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, for a reduced loss, the three gradients
    block by block (``xentc._linear``); backward scales them by grad_output.
    An unreduced loss's gradients depend on grad_output row by row: backward
    then runs the blocked call again with it."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, call):
        need = (input.requires_grad, linear_weight.requires_grad,
                linear_bias is not None and linear_bias.requires_grad)
        ctx.need, ctx.call = need, call
        results, grads = call.run(need=need if call.reduction != "none" else (False,) * 3)
        ctx.grads = grads
        ctx.mark_non_differentiable(*results[1:])
        return results

    @staticmethod
    def backward(ctx, grad_output, *_):
        _refuse_double_backward("linear_cross_entropy")
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            _, grads = ctx.call.run(grad_output, need=ctx.need)
        elif not bool(grad_output == 1):
            grads = tuple(None if g is None else g.mul_(grad_output) for g in grads)
        return (*grads, None)


def linear_cross_entropy(input, linear_weight, linear_bias, arrays, build):
    """The linear cross-entropy of `input` as a node of torch's graph.

    `arrays` are the other arrays by name (target, weight, sample_weight),
    not differentiated; ``build(input=..., linear_weight=..., linear_bias=...,
    **arrays)`` of the detached tensors gives the validated blocked call
    (``run(grad_output=None, need=...) -> (results, grads)``, ``reduction``).
    Returns the call's results, the loss with a ``grad_fn``.
    """
    for name, t in arrays.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise NotImplementedError(f"xentc computes no gradient with respect to `{name}`; "
                                      f"detach it or use torch's own functions")
    call = build(input=input.detach(), linear_weight=linear_weight.detach(),
                 linear_bias=_detach(linear_bias),
                 **{k: _detach(v) for k, v in arrays.items()})
    results = _LinearCrossEntropy.apply(input, linear_weight, linear_bias, call)
    return results if isinstance(results, tuple) else (results,)


class _Normalize(torch.autograd.Function):
    """log_softmax / softmax: backward from the saved output alone."""

    @staticmethod
    def forward(ctx, x, compute, out_kind):
        y, ctx.axis = compute(x.detach())
        ctx.save_for_backward(y)
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
        return grad, None, None


def normalize(x, compute, out_kind):
    """log_softmax or softmax (`out_kind`) of `x` as a node of torch's graph;
    ``compute(detached x) -> (result, class axis)``."""
    return _Normalize.apply(x, compute, out_kind)


class _LogSumExp(torch.autograd.Function):
    """logsumexp: d/dx = exp(x - lse), the softmax."""

    @staticmethod
    def forward(ctx, x, compute, keepdims):
        lse, ctx.axis = compute(x.detach())
        ctx.save_for_backward(x, lse)
        ctx.keepdims = keepdims
        return lse

    @staticmethod
    def backward(ctx, g):
        _refuse_double_backward("logsumexp")
        x, lse = ctx.saved_tensors
        if not ctx.keepdims:
            g, lse = g.unsqueeze(ctx.axis), lse.unsqueeze(ctx.axis)
        return g * torch.exp(x.detach() - lse), None, None


def logsumexp(x, compute, keepdims):
    """logsumexp of `x` as a node of torch's graph; ``compute(detached x) ->
    (result, reduced axis)``."""
    return _LogSumExp.apply(x, compute, keepdims)
