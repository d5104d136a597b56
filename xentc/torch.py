"""PyTorch integration: xentc's functions under torch's names, and an ``nn.Module``.

``xentc.cross_entropy`` (and log_softmax, softmax, logsumexp) already
attach themselves to torch's autograd for a tensor that requires grad
(``xentc._autograd``); import this module for `CrossEntropyLoss`. Importing
``xentc`` never imports torch: only this module does.
"""
import torch

from ._api import cross_entropy as _cross_entropy
from ._linear import linear_cross_entropy as _linear_cross_entropy
from ._api import log_softmax as _log_softmax
from ._api import logsumexp as _logsumexp
from ._api import softmax as _softmax

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "VocabParallelCrossEntropyLoss",
           "cross_entropy", "linear_cross_entropy", "vocab_parallel_cross_entropy", "log_softmax",
           "softmax", "logsumexp"]


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, *, axis=None, n_threads=None, backend="auto",
                  normalizer=None, empty="nan", logit_scale=1.0, softcap=None,
                  lse_square_scale=0.0, sample_weight=None, return_z_loss=False,
                  return_lse=False):
    """`xentc.cross_entropy` attached to torch's autograd.

    Parameters and results are those of `xentc.cross_entropy`; the loss
    has a ``grad_fn`` when `input` requires grad (and grad mode is on), and
    its backward pass returns the gradient the forward pass already wrote
    (the z-loss and lse returned beside it are not differentiable: the
    loss's gradient already holds the z-loss's). Gradients with respect to
    `weight`, `sample_weight` or probability targets are not computed (torch
    does not compute the first either); asking for them is an error.
    Differentiating twice raises an error.
    """
    # xentc.cross_entropy itself hands tensors that autograd follows to the
    # autograd node (xentc._autograd); this name is where torch users look.
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                          axis=axis, n_threads=n_threads, backend=backend,
                          normalizer=normalizer, empty=empty, logit_scale=logit_scale,
                          softcap=softcap, lse_square_scale=lse_square_scale,
                          sample_weight=sample_weight, return_z_loss=return_z_loss,
                          return_lse=return_lse)


def linear_cross_entropy(input, linear_weight, target, **kwargs):
    """`xentc.linear_cross_entropy` attached to torch's autograd.

    Takes the arguments of `xentc.linear_cross_entropy`. When `input`,
    `linear_weight` or `linear_bias` require grad, the loss has a
    ``grad_fn``: a reduced loss's forward pass already computes the three
    gradients block by block (backward only scales them); an unreduced
    loss's backward runs the blocks again with its ``grad_output``.
    """
    return _linear_cross_entropy(input, linear_weight, target, **kwargs)


def vocab_parallel_cross_entropy(logits_shard, target, *, group=None, vocab_start=None,
                                 weight=None, ignore_index=-100, reduction="mean",
                                 label_smoothing=0.0, logit_scale=1.0, softcap=None,
                                 lse_square_scale=0.0, sample_weight=None, normalizer=None,
                                 empty="nan"):
    """Cross-entropy of logits whose classes are split over the ranks of a process group.

    Megatron-LM's vocabulary-parallel loss on ``torch.distributed`` (gloo on
    CPUs, NCCL on GPUs): this rank holds the columns ``[vocab_start,
    vocab_start + C_r)`` of the (N, C) logits, shards may be uneven. Each
    call makes two all-reduces over the group: the row maxima (N values),
    then the rescaled sums of exps, target logits and smoothing sums (4 N
    values); backward communicates nothing.

    Parameters
    ----------
    logits_shard : Tensor
        (N, C_r), this rank's columns of the logits.
    target : Tensor
        (N,) global class indices (the same on every rank), or (N, C_r) class
        probabilities: this rank's columns of them, as `logits_shard`.
    group : ProcessGroup, optional
        Default the world.
    vocab_start : int, optional
        This shard's first class; default the sum of the lower ranks' widths
        (gathered once per call).
    weight : Tensor, optional
        (C,) weights of all the classes.
    ignore_index, reduction, label_smoothing, logit_scale, softcap, lse_square_scale,
    sample_weight, normalizer, empty
        As for `xentc.cross_entropy`.

    Returns
    -------
    Tensor
        The loss, the same on every rank; its backward gives this rank the
        gradient of its own shard.
    """
    from ._vocab_parallel import vocab_parallel_cross_entropy as run
    return run(logits_shard, target, group=group, vocab_start=vocab_start, weight=weight,
               ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
               logit_scale=logit_scale, softcap=softcap, lse_square_scale=lse_square_scale,
               sample_weight=sample_weight, normalizer=normalizer, empty=empty)


def log_softmax(x, axis=-1, *, n_threads=None, backend="auto"):
    """`xentc.log_softmax` attached to torch's autograd (see `xentc.log_softmax`)."""
    return _log_softmax(x, axis, n_threads=n_threads, backend=backend)


def softmax(x, axis=-1, *, n_threads=None, backend="auto"):
    """`xentc.softmax` attached to torch's autograd (see `xentc.softmax`)."""
    return _softmax(x, axis, n_threads=n_threads, backend=backend)


def logsumexp(x, axis=-1, keepdims=False, *, n_threads=None, backend="auto"):
    """`xentc.logsumexp` attached to torch's autograd (see `xentc.logsumexp`)."""
    return _logsumexp(x, axis, keepdims, n_threads=n_threads, backend=backend)


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
    empty : {"nan", "zero"}, default "nan"
        What ``"mean"`` gives when nothing is left to average (keyword-only;
        see `xentc.cross_entropy`). `forward` takes a ``normalizer`` per call:
        the kept-token count of the whole gradient-accumulation batch, and a
        ``sample_weight`` per call.
    logit_scale, softcap, lse_square_scale, return_z_loss, return_lse
        Keyword-only, as for `xentc.cross_entropy`: with `return_z_loss`
        or `return_lse` the module returns the tuple ``(loss, z_loss, lse)``
        of those asked for.

    Examples
    --------
    >>> import torch, xentc.torch
    >>> loss_fn = xentc.torch.CrossEntropyLoss(ignore_index=0)
    >>> x = torch.randn(4, 5, requires_grad=True)
    >>> loss_fn(x, torch.tensor([1, 0, 3, 4])).backward()

    Gemma 2's capped logits with a z-loss, reporting the z-loss:

    >>> loss_fn = xentc.torch.CrossEntropyLoss(softcap=30.0, lse_square_scale=1e-4,
    ...                                        return_z_loss=True)
    >>> loss, z_loss = loss_fn(x, torch.tensor([1, 0, 3, 4]))
    """

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0, *, n_threads=None, empty="nan",
                 logit_scale=1.0, softcap=None, lse_square_scale=0.0, return_z_loss=False,
                 return_lse=False):
        super().__init__()
        if size_average is not None or reduce is not None:
            raise ValueError("`size_average` and `reduce` are deprecated in torch; "
                             "use `reduction`")
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.n_threads = n_threads
        self.empty = empty
        self.logit_scale = logit_scale
        self.softcap = softcap
        self.lse_square_scale = lse_square_scale
        self.return_z_loss = return_z_loss
        self.return_lse = return_lse

    def forward(self, input, target, *, normalizer=None, sample_weight=None):
        """The loss of `input` logits against `target`, as ``F.cross_entropy``;
        ``"mean"`` divided by `normalizer` when given, rows weighted by
        `sample_weight` (see `xentc.cross_entropy`)."""
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                             self.label_smoothing, n_threads=self.n_threads,
                             normalizer=normalizer, empty=self.empty,
                             logit_scale=self.logit_scale, softcap=self.softcap,
                             lse_square_scale=self.lse_square_scale,
                             sample_weight=sample_weight, return_z_loss=self.return_z_loss,
                             return_lse=self.return_lse)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, empty={self.empty!r}, "
                f"logit_scale={self.logit_scale}, softcap={self.softcap}, "
                f"lse_square_scale={self.lse_square_scale}")


class LinearCrossEntropyLoss(torch.nn.Module):
    """An output layer (``torch.nn.Linear(in_features, out_features)``) and its
    cross-entropy in one module, computed without the logits
    (`xentc.linear_cross_entropy`).

    Parameters
    ----------
    in_features, out_features : int
        H and the number of classes C.
    bias : bool, default False
        Whether the layer has a bias (language-model heads usually have none).
    device, dtype : optional
        Of the parameters, as for ``torch.nn.Linear``.
    **options
        Keyword arguments of `xentc.linear_cross_entropy` fixed for every call
        (weight, ignore_index, reduction, label_smoothing, logit_scale,
        softcap, lse_square_scale, empty, return_z_loss, return_lse,
        block_bytes, n_threads).

    Examples
    --------
    >>> import torch, xentc.torch
    >>> head = xentc.torch.LinearCrossEntropyLoss(64, 1000, softcap=30.0)
    >>> hidden = torch.randn(8, 16, 64, requires_grad=True)   # (batch, tokens, features)
    >>> head(hidden, torch.randint(0, 1000, (8, 16))).backward()
    """

    def __init__(self, in_features, out_features, bias=False, device=None, dtype=None,
                 **options):
        super().__init__()
        linear = torch.nn.Linear(in_features, out_features, bias=bias, device=device,
                                 dtype=dtype)
        self.weight = linear.weight
        self.bias = linear.bias
        self.options = options

    def forward(self, input, target, *, normalizer=None, sample_weight=None):
        """The loss of the layer's logits of `input` against `target`;
        ``"mean"`` divided by `normalizer` when given, rows weighted by
        `sample_weight`."""
        return linear_cross_entropy(input, self.weight, target, linear_bias=self.bias,
                                    normalizer=normalizer, sample_weight=sample_weight,
                                    **self.options)

    def extra_repr(self):
        c, h = self.weight.shape
        return f"in_features={h}, out_features={c}, bias={self.bias is not None}, {self.options}"


class VocabParallelCrossEntropyLoss(torch.nn.Module):
    """The loss of logits whose classes are split over the ranks of a process group
    (`vocab_parallel_cross_entropy`), as a module: the options fixed, the shard,
    targets and per-call arguments given to `forward`.

    Parameters
    ----------
    group : ProcessGroup, optional
        Default the world.
    weight : Tensor, optional
        (C,) weights of all the classes; registered as a buffer, so it moves
        with ``.to()``.
    ignore_index, reduction, label_smoothing, logit_scale, softcap, lse_square_scale, empty
        Keyword-only, as for `xentc.cross_entropy`.

    Examples
    --------
    In every rank of an initialized process group, with this rank's columns
    of a head's output:

    >>> loss_fn = xentc.torch.VocabParallelCrossEntropyLoss(softcap=30.0)  # doctest: +SKIP
    >>> loss_fn(logits_shard, target).backward()                          # doctest: +SKIP
    """

    def __init__(self, group=None, *, weight=None, ignore_index=-100, reduction="mean",
                 label_smoothing=0.0, logit_scale=1.0, softcap=None, lse_square_scale=0.0,
                 empty="nan"):
        super().__init__()
        self.group = group
        self.register_buffer("weight", weight)
        self.options = dict(ignore_index=ignore_index, reduction=reduction,
                            label_smoothing=label_smoothing, logit_scale=logit_scale,
                            softcap=softcap, lse_square_scale=lse_square_scale, empty=empty)

    def forward(self, logits_shard, target, *, vocab_start=None, normalizer=None,
                sample_weight=None):
        """The loss of this rank's `logits_shard` against `target` (see
        `vocab_parallel_cross_entropy`), the same on every rank."""
        return vocab_parallel_cross_entropy(logits_shard, target, group=self.group,
                                            vocab_start=vocab_start, weight=self.weight,
                                            normalizer=normalizer, sample_weight=sample_weight,
                                            **self.options)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
