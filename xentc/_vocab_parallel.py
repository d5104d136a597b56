"""Vocabulary-parallel cross-entropy over torch.distributed (Megatron-LM's algorithm).

Each rank holds the columns ``[vocab_start, vocab_start + C_r)`` of the
logits. Its shard gives partial row states (``_partial``); two all-reduces
per call make them the whole rows' states on every rank: the row maxima
(MAX, N values), then the sums of exps rescaled to those maxima, the target
logits and the linear (smoothing) sums (SUM, 4 N values in one tensor). Every
rank then has the same loss, and backward gives each rank its own shard's
gradient from the saved states, without communicating again.

This module imports torch; only ``xentc.torch`` imports it.
"""
import torch
import torch.distributed as dist
from array_api_compat import array_namespace

from . import _partial
from ._api import acc_dtype, mean_options, row_options, weighted_count
from ._engines import RowJob


def _shard_start(width, group, device):
    """Where this rank's columns start, and the whole vocabulary: from every
    rank's width, gathered once (on the shard's device: NCCL has no CPU tensors)."""
    widths = [torch.zeros(1, dtype=torch.int64, device=device)
              for _ in range(dist.get_world_size(group))]
    dist.all_gather(widths, torch.tensor([width], dtype=torch.int64, device=device), group=group)
    widths = [int(w.item()) for w in widths]
    rank = dist.get_rank(group)
    return sum(widths[:rank]), sum(widths)


class _VocabParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shard, call):
        ctx.call = call
        ctx.save_for_backward(shard)
        return call.forward(shard)

    @staticmethod
    def backward(ctx, grad_output):
        (shard,) = ctx.saved_tensors
        return ctx.call.backward(shard.detach(), grad_output), None


class _Call:
    """One validated vocabulary-parallel call: its row job, the rows' whole states
    after forward, and the gradient of this rank's shard."""

    def __init__(self, shard, target, group, vocab_start, weight, ignore_index, reduction,
                 label_smoothing, logit_scale, softcap, lse_square_scale, sample_weight,
                 normalizer, empty):
        soft = target.dtype.is_floating_point
        if soft and tuple(target.shape) != tuple(shard.shape):
            raise ValueError(f"`target` of class probabilities must be this rank's shard of "
                             f"them, shaped as `logits_shard` {tuple(shard.shape)}, got "
                             f"{tuple(target.shape)}")
        if shard.ndim != 2 or target.shape[0] != shard.shape[0] or not (soft or target.ndim == 1):
            raise ValueError(f"`logits_shard` must be (N, C_r) and `target` (N,), got "
                             f"{tuple(shard.shape)} and {tuple(target.shape)}")
        if reduction not in ("none", "sum", "mean"):
            raise ValueError(f"`reduction` must be one of ('none', 'sum', 'mean'), "
                             f"got {reduction!r}")
        self.normalizer = mean_options(reduction, normalizer, empty)
        start, n_classes = _shard_start(shard.shape[1], group, shard.device)
        self.start = start if vocab_start is None else int(vocab_start)
        if not 0 <= self.start <= n_classes - shard.shape[1]:
            raise ValueError(f"`vocab_start` {self.start} does not fit a shard of "
                             f"{shard.shape[1]} classes in a vocabulary of {n_classes}")
        self.n_classes, self.group, self.reduction, self.empty = n_classes, group, reduction, empty
        if weight is not None and tuple(weight.shape) != (n_classes,):
            raise ValueError(f"`weight` must hold all {n_classes} classes, "
                             f"got shape {tuple(weight.shape)}")
        if soft and ignore_index >= 0:
            raise ValueError("`ignore_index` is not supported with class-probability targets")
        bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
        if not soft and bool(bad.any()):
            raise IndexError(f"`target` value {int(target[bad][0])} out of range for "
                             f"{n_classes} classes")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1], got {label_smoothing}")
        if sample_weight is not None and tuple(sample_weight.shape) != tuple(target.shape):
            raise ValueError(f"`sample_weight` must have the target's shape "
                             f"{tuple(target.shape)}, got {tuple(sample_weight.shape)}")
        scale, cap, zls = row_options(logit_scale, softcap, lse_square_scale)
        self.xp = array_namespace(shard)
        self.acc = acc_dtype(self.xp, shard.dtype)
        w = None if weight is None else weight.to(self.acc)
        self.sw = None if sample_weight is None else sample_weight.to(self.acc)
        # probabilities: this shard's classes of them (`_partial`'s blocks)
        targets = dict(soft=target.to(self.acc)) if soft else dict(target=target)
        self.job = RowJob(None, **targets, weight=w, ignore_index=ignore_index,
                          label_smoothing=float(label_smoothing), logit_scale=scale,
                          softcap=cap, lse_square_scale=zls)
        ones = (torch.ones(target.shape[0], dtype=self.acc, device=target.device)
                if self.sw is None else self.sw)
        self.denominator = (weighted_count(self.xp, ones, None, None, None) if soft else
                            weighted_count(self.xp, ones, target != ignore_index, w, target))

    def _z(self, shard):
        return _partial.transform(self.xp, self.job, shard.to(self.acc))

    def forward(self, shard):
        xp, group = self.xp, self.group
        st = _partial.block_state(xp, self.job, self._z(shard)[0], self.start, self.n_classes)
        m = st.m.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        sums = torch.stack([st.s * torch.exp(st.m - m), st.zy, st.lin - (m - st.m) * st.a, st.a])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        self.state = _partial.State(m, *sums)
        loss = _partial.finish(xp, self.job, self.state)[0]
        if self.sw is not None:
            loss = loss * self.sw
        if self.reduction == "none":
            return loss.to(shard.dtype)
        total = loss.sum()
        if self.reduction == "mean":
            total = total / self.divisor if self.divisor else torch.full_like(
                total, 0.0 if self.empty == "zero" else float("nan"))
        return total.to(shard.dtype)

    @property
    def divisor(self):
        return self.denominator if self.normalizer is None else self.normalizer

    def backward(self, shard, grad_output):
        """This rank's shard's gradient of ``grad_output . loss``."""
        go = grad_output.to(self.acc)
        if self.reduction == "none":
            scale, rows = 1.0, go
        else:
            den = self.divisor if self.reduction == "mean" else 1.0
            scale = float(go) / den if den else (0.0 if self.empty == "zero" else float("nan"))
            rows = None
        if self.sw is not None:
            rows = self.sw if rows is None else rows * self.sw
        job = self.job.replace(grad_scale=scale, grad_row_scale=rows)
        _, lse, alpha, gamma = _partial.finish(self.xp, job, self.state)
        z, dz = self._z(shard)
        grad = _partial.block_grad(self.xp, job, z, dz, self.start, self.n_classes, lse, alpha,
                                   gamma)
        return grad.to(shard.dtype)


def vocab_parallel_cross_entropy(logits_shard, target, *, group=None, vocab_start=None,
                                 weight=None, ignore_index=-100, reduction="mean",
                                 label_smoothing=0.0, logit_scale=1.0, softcap=None,
                                 lse_square_scale=0.0, sample_weight=None, normalizer=None,
                                 empty="nan"):
    """See ``xentc.torch.vocab_parallel_cross_entropy``."""
    call = _Call(logits_shard.detach(), target, group, vocab_start, weight, ignore_index,
                 reduction, label_smoothing, logit_scale, softcap, lse_square_scale,
                 sample_weight, normalizer, empty)
    if logits_shard.requires_grad and torch.is_grad_enabled():
        return _VocabParallel.apply(logits_shard, call)
    return call.forward(logits_shard)
