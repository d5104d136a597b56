"""Partial row states: the loss of rows whose classes come in several blocks.

A row job's maths (``xentc._engines``) needs each row whole. When the classes
of a row arrive in blocks (the vocabulary split by `linear_cross_entropy`'s
memory budget; later, class chunks of a Dask array or the shards of
vocabulary-parallel training), each block of classes ``[c0, c1)`` of some rows
gives a `State` per row, written in the array-API namespace of its arrays:

    m     max of z over the block (z: the transformed logits, see RowJob)
    s     sum of exp(z - m)
    zy    z[y] when the class target y is in the block, else 0
    lin   sum of coef_c * (z_c - m): the loss's linear terms, taken against m
          so that they stay exact for logits of any magnitude
    a     sum of coef_c

with ``coef_c = label_smoothing / C * weight[c]`` for class targets and
``weight[c] * ((1 - label_smoothing) * q[c] + label_smoothing / C)`` for
probabilities q. States of disjoint blocks combine exactly (`combine`: the
online softmax's rescaling), `finish` turns a row's whole state into its
loss and lse, and `block_grad` gives a block's gradient from the row's lse.
"""
from typing import Any, NamedTuple

from array_api_compat import device


class State(NamedTuple):
    """Per-row sums over some of a row's classes (see the module docstring)."""

    m: Any
    s: Any
    zy: Any
    lin: Any
    a: Any


def transform(xp, job, logits):
    """(z, dz/dx) of a block of logits under `job`'s logit_scale and softcap
    (dz/dx a Python float when it is the same for every logit)."""
    s, cap = job.logit_scale, job.softcap
    if cap is None:
        return (logits if s == 1 else s * logits), s
    u = logits * (s / cap)
    # 1 - tanh(u)**2 as 1 / cosh(u)**2: no cancellation where tanh is near 1
    return cap * xp.tanh(u), s / xp.cosh(u) ** 2


def _coef(xp, job, c0, c1, n_classes, like):
    """coef_c of classes [c0, c1): (R, c1 - c0), (c1 - c0,), or None when all 0;
    in the dtype and on the device of `like`."""
    e, w = job.label_smoothing, job.weight
    wb = None if w is None else w[c0:c1]
    if job.soft is not None:
        # probabilities of the whole rows, or of the block's classes only
        q = job.soft[:, c0:c1] if job.soft.shape[1] == n_classes else job.soft
        q = q * (1 - e) + e / n_classes
        return q if wb is None else q * wb
    if e == 0:
        return None
    if wb is None:
        return xp.full((c1 - c0,), e / n_classes, dtype=like.dtype, device=device(like))
    return wb * (e / n_classes)


def block_state(xp, job, z, c0, n_classes):
    """The `State` of classes ``[c0, c0 + z.shape[1])`` of the rows of `job`.

    `z` is (R, Cb), the transformed logits of those classes; `job` holds the
    rows' targets (class indices, or probabilities of all C classes or of
    the block's), class weights of all C classes, and the options.
    """
    c1 = c0 + z.shape[1]
    top = xp.max(z, axis=1)
    # The exps against 0 where the max is infinite, so that they stay what
    # they should be (exp(-inf) = 0, inf, NaN); a block of -inf keeps -inf
    # as its max, which `combine` then weighs 0, whatever the other blocks'.
    m = xp.where(xp.isinf(top), xp.zeros_like(top), top)
    d = z - m[:, None]
    s = xp.sum(xp.exp(d), axis=1)
    zy = xp.zeros_like(m)
    if job.target is not None:
        t = job.target
        inside = (t >= c0) & (t < c1)
        local = xp.where(inside, t - c0, xp.zeros_like(t))
        picked = xp.take_along_axis(z, local[:, None], axis=1)[:, 0]
        zy = xp.where(inside, picked, zy)
    coef = _coef(xp, job, c0, c1, n_classes, z)
    if coef is None:
        lin = a = xp.zeros_like(m)
    else:
        lin = xp.sum(coef * d, axis=1)
        a = xp.sum(xp.broadcast_to(coef, d.shape), axis=1)
    none = top == -xp.inf
    return State(xp.where(none, top, m), s, zy, lin, a)


def combine(xp, p, q):
    """The state of the union of two disjoint blocks of the same rows."""
    m = xp.maximum(p.m, q.m)

    def moved(st):
        # sum and linear terms onto the common max; a block of -inf (s = 0,
        # lin already -inf or NaN) stays as it is
        none = st.m == -xp.inf
        gap = xp.where(none, xp.zeros_like(m), m - st.m)
        return st.s * xp.exp(-gap), st.lin - gap * st.a

    (ps, pl), (qs, ql) = moved(p), moved(q)
    return State(m, ps + qs, p.zy + q.zy, pl + ql, p.a + q.a)


def finish(xp, job, st):
    """(loss, lse, alpha, gamma) per row from each row's whole `State`: the loss
    and lse of ``xentc._engines``, and the gradient's scalars (`block_grad`).

    Rows whose target is ignore_index get 0 for all four.
    """
    e, zls = job.label_smoothing, job.lse_square_scale
    ls = xp.log(st.s)
    lse = st.m + ls
    loss = st.a * ls - st.lin  # sum coef (lse - z), against m
    alpha = st.a
    gamma = xp.zeros_like(lse)
    if job.target is not None:
        keep = job.target != job.ignore_index
        safe = xp.where(keep, job.target, xp.zeros_like(job.target))
        wy = xp.ones_like(lse) if job.weight is None else xp.take(job.weight, safe)
        loss = loss + (1 - e) * wy * (lse - st.zy)
        gamma = (1 - e) * wy
        alpha = alpha + gamma
    if zls:
        loss = loss + zls * lse * lse  # lse**2 could overflow alone
        alpha = alpha + 2 * zls * lse
    g = job.grad_scale if job.grad_row_scale is None else job.grad_scale * job.grad_row_scale
    alpha, gamma = g * alpha, g * gamma
    if job.target is not None:
        zero = xp.zeros_like(lse)
        loss, lse = xp.where(keep, loss, zero), xp.where(keep, lse, zero)
        alpha, gamma = xp.where(keep, alpha, zero), xp.where(keep, gamma, zero)
    return loss, lse, alpha, gamma


def block_grad(xp, job, z, dz, c0, n_classes, lse, alpha, gamma):
    """d(grad_scale * grad_row_scale . loss) / d(logits) of classes ``[c0, c0 + Cb)``:
    ``(alpha * p - g * coef - gamma * [c == y]) * dz/dx`` with p = exp(z - lse)."""
    c1 = c0 + z.shape[1]
    p = xp.exp(z - lse[:, None])
    grad = alpha[:, None] * p
    coef = _coef(xp, job, c0, c1, n_classes, z)
    if coef is not None:
        g = job.grad_scale if job.grad_row_scale is None else job.grad_scale * job.grad_row_scale
        g = g[:, None] if not isinstance(g, float) else g
        if job.target is not None:  # ignored rows: 0
            g = g * xp.astype(job.target != job.ignore_index, z.dtype)[:, None]
        grad = grad - g * coef
    if job.target is not None:
        cols = xp.arange(c0, c1, dtype=job.target.dtype, device=device(z))
        grad = grad - xp.where(cols[None, :] == job.target[:, None], gamma[:, None],
                               xp.zeros_like(grad))
    return grad * dz

