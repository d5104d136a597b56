"""The output layer and its loss without the logits: `linear_cross_entropy`.

An API-layer module beside ``_api``: it builds one validated loss call
(``_api.LossCall``) over the logits' shape, then never holds the (N, C) logits
or their gradient. The rows go in blocks whose logits fit ``block_bytes``;
the matrix product of each block is the caller's own (``xp.matmul``: NumPy's
BLAS, torch, CuPy, JAX), its loss and gradient come from the engine's fused
row job (the gradient written over the block's logits), and that gradient
turns at once into the block's share of d input, d linear_weight and
d linear_bias. A row wider than the budget is split along the classes too:
such blocks go through partial row states (``_partial``), the logits
computed twice (once for the row's log-sum-exp, once for the gradient).
"""
import math

from . import _dispatch, _partial
from ._api import LossCall, acc_dtype, check_floating, tracks_grad

#: Default budget of one block of logits (and of any temporary of the
#: gradient's products): a quarter of the logits and their gradient at
#: 1024 x 128256 float32, and blocks of 500+ rows there, which the weight's
#: gradient (one product per block) needs to run near the products' speed.
BLOCK_BYTES = 256 << 20
#: Fewest classes per block when rows are split along the classes.
SPLIT_COLUMNS = 4096


class _LinearLoss:
    """One validated linear cross-entropy call and the blocked computation of its
    results and gradients; the torch autograd node keeps it for backward."""

    def __init__(self, input, linear_weight, target, *, linear_bias=None, weight=None,
                 block_bytes=None, want_grad=False, **options):
        xp = _dispatch.namespace(
            input=input, linear_weight=linear_weight, target=target,
            optional={"linear_bias": linear_bias, "weight": weight,
                      "sample_weight": options.get("sample_weight")})
        check_floating(xp, input, "input")
        if input.ndim < 1:
            raise ValueError("`input` must have at least one dimension (the features)")
        h = input.shape[-1]
        if linear_weight.ndim != 2 or linear_weight.shape[1] != h:
            raise ValueError(f"`linear_weight` must have shape (C, {h}) for input of "
                             f"{h} features, got {tuple(linear_weight.shape)}")
        n_classes = linear_weight.shape[0]
        for name, a in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
            if a is not None and a.dtype != input.dtype:
                raise TypeError(f"`{name}` must have the input's dtype {input.dtype}, "
                                f"got {a.dtype}")
        if linear_bias is not None and tuple(linear_bias.shape) != (n_classes,):
            raise ValueError(f"`linear_bias` must have shape ({n_classes},), "
                             f"got {tuple(linear_bias.shape)}")
        if block_bytes is None:
            block_bytes = BLOCK_BYTES
        if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1:
            raise ValueError(f"`block_bytes` must be a positive integer, got {block_bytes!r}")
        lead = tuple(input.shape[:-1])
        # The logits' shape without their memory: every check and the mean's
        # divisor of the loss call need only that.
        shape_only = xp.broadcast_to(
            xp.zeros((n_classes,), dtype=input.dtype, device=_dispatch.device(input)),
            lead + (n_classes,))
        self.loss = LossCall(shape_only, target, weight, axis=-1, want_grad=want_grad, **options)
        self.xp, self.input, self.w, self.b = xp, input, linear_weight, linear_bias
        self.x = xp.reshape(input, (math.prod(lead), h))
        self.block_bytes, self.itemsize = block_bytes, xp.finfo(input.dtype).bits // 8

    @property
    def reduction(self):
        return self.loss.reduction

    def run(self, grad_output=None, need=(True, True, True)):
        """The results and, for a call with ``want_grad``, the gradients.

        Returns ``(results, grads)``: the tuple (loss, z_loss, lse) of those
        asked for, and (d input, d linear_weight, d linear_bias) of
        ``grad_output . loss`` (entries not in `need`, and d linear_bias
        without a bias, are None), or None without ``want_grad``.
        """
        xp, loss, x, w = self.xp, self.loss, self.x, self.w
        want_grad = loss.job.out_kind == "grad" and any(need)
        fields = loss.grad_fields(grad_output) if want_grad else {"out_kind": "none"}
        job, spec = loss.job.replace(**fields), loss.spec.replace(**fields)
        n, c = x.shape[0], w.shape[0]
        acc = acc_dtype(xp, x.dtype)
        grads = None
        if want_grad:
            need = (need[0], need[1], need[2] and self.b is not None)
            grads = _Grads(xp, x, w, acc, need, self.block_bytes // self.itemsize)
        rows_per = self.block_bytes // (c * self.itemsize)
        # Rows wider than the budget: as many rows as keep blocks of at least
        # SPLIT_COLUMNS classes, for the products' sake.
        step = rows_per if rows_per >= 1 else max(
            1, min(n, self.block_bytes // (SPLIT_COLUMNS * self.itemsize)))
        parts = []
        for r0 in range(0, max(n, 1), step):
            sl = slice(r0, min(r0 + step, n))
            if rows_per >= 1:
                parts.append(self._whole_rows(job, sl, grads))
            else:
                parts.append(self._split_rows(spec, sl, grads, acc))
        loss_rows = _join(xp, [p[0] for p in parts])
        lse_rows = _join(xp, [p[1] for p in parts]) if job.want_lse else None
        results = loss.results(loss_rows, lse_rows)
        return results, (None if grads is None else grads.final(self.input.shape))

    def _logits(self, rows, c0, c1):
        """The products of the rows `rows` of input with classes [c0, c1)."""
        xp = self.xp
        w = self.w if (c0, c1) == (0, self.w.shape[0]) else self.w[c0:c1, :]
        z = xp.matmul(rows, xp.permute_dims(w, (1, 0)))
        return z if self.b is None else z + self.b[c0:c1]

    def _whole_rows(self, job, sl, grads):
        """Loss and lse rows of a block of whole rows through the engine's fused job."""
        xp, x = self.xp, self.x
        logits = self._logits(x[sl, :], 0, self.w.shape[0])
        out = logits if grads is not None and _dispatch.writeable(logits) else None
        block = job.block(sl).replace(x=logits, out=out)
        loss_b, lse_b, g = self.loss.engine.rows(xp, block)
        if grads is not None:
            grads.add(sl, 0, self.w.shape[0], g, x[sl, :])
        return loss_b, lse_b

    def _split_rows(self, spec, sl, grads, acc):
        """Loss and lse rows of a block of rows wider than the budget, the classes
        taken a block at a time through partial row states."""
        xp, x = self.xp, self.x
        spec = spec.block(sl)
        xb = x[sl, :]
        n_rows, c = xb.shape[0], self.w.shape[0]
        step = max(1, self.block_bytes // (max(n_rows, 1) * self.itemsize))
        cols = [(c0, min(c0 + step, c)) for c0 in range(0, c, step)]

        def z_of(c0, c1):
            logits = xp.astype(self._logits(xb, c0, c1), acc, copy=False)
            return _partial.transform(xp, spec, logits)

        state = None
        for c0, c1 in cols:
            st = _partial.block_state(xp, spec, z_of(c0, c1)[0], c0, c)
            state = st if state is None else _partial.combine(xp, state, st)
        loss_b, lse_b, alpha, gamma = _partial.finish(xp, spec, state)
        if grads is not None:
            for c0, c1 in cols:
                z, dz = z_of(c0, c1)
                g = _partial.block_grad(xp, spec, z, dz, c0, c, lse_b, alpha, gamma)
                grads.add(sl, c0, c1, xp.astype(g, x.dtype, copy=False), xb)
        return loss_b, lse_b


class _Grads:
    """d input, d linear_weight, d linear_bias, summed block by block.

    The sums over blocks run in the accumulation dtype (float32 for half
    precision), the products in the input's; the weight's gradient is
    updated a chunk of classes at a time, so that no temporary exceeds the
    block budget.
    """

    def __init__(self, xp, x, w, acc, need, block_elems):
        self.xp, self.need, self.acc = xp, need, acc
        dev = _dispatch.device(x)
        self.mutable = _dispatch.writeable(xp.zeros((1,), dtype=acc, device=dev))
        self.dx = xp.zeros(x.shape, dtype=acc, device=dev) if need[0] else None
        self.dw = xp.zeros(w.shape, dtype=acc, device=dev) if need[1] else None
        self.db = xp.zeros((w.shape[0],), dtype=acc, device=dev) if need[2] else None
        self.w = w
        self.chunk = max(1, block_elems // max(1, x.shape[1]))

    def add(self, sl, c0, c1, g, xb):
        """Add the block of logits' gradient `g` (rows `sl`, classes [c0, c1))."""
        xp, acc = self.xp, self.acc
        if self.dx is not None:
            w = self.w if (c0, c1) == (0, self.w.shape[0]) else self.w[c0:c1, :]
            self.dx = _add_product(xp, self.dx, (sl, slice(None)), g, w, self.mutable)
        if self.dw is not None:
            gt = xp.permute_dims(g, (1, 0))
            for k0 in range(c0, c1, self.chunk):
                k1 = min(k0 + self.chunk, c1)
                self.dw = _add_product(xp, self.dw, (slice(k0, k1), slice(None)),
                                       gt[k0 - c0:k1 - c0, :], xb, self.mutable)
        if self.db is not None:
            self.db = _add(xp, self.db, (slice(c0, c1),),
                           xp.sum(xp.astype(g, acc, copy=False), axis=0), self.mutable)

    def final(self, input_shape):
        """(d input in the input's shape, d linear_weight, d linear_bias), in the input's dtype."""
        xp, dtype = self.xp, self.w.dtype

        def cast(a):
            return None if a is None else xp.astype(a, dtype, copy=False)

        dx = cast(self.dx)
        return (None if dx is None else xp.reshape(dx, tuple(input_shape)),
                cast(self.dw), cast(self.db))


def _add_product(xp, a, index, p, q, mutable):
    """a[index] += p @ q: for torch, one matrix product that adds into `a` as it
    goes (addmm_: the weight's gradient is then written once per block, not
    as a temporary and a sum); elsewhere the product and a sum."""
    if mutable and type(a).__module__ == "torch" and p.dtype == a.dtype:
        a[index].addmm_(p, q)
        return a
    return _add(xp, a, index, xp.astype(xp.matmul(p, q), a.dtype, copy=False), mutable)


def _add(xp, a, index, v, mutable):
    """a[index] += v, in place where the namespace allows it."""
    if mutable:
        a[index] += v
        return a
    # Immutable arrays (JAX): the sum into a new array, built whole.
    return a.at[index].add(v)


def _join(xp, parts):
    return parts[0] if len(parts) == 1 else xp.concat(parts)


def _keywords(args):
    """A public function's keyword arguments (its `locals()` on entry), for
    `_LinearLoss`: all but the positional arrays and grad_output."""
    return {k: v for k, v in args.items()
            if k not in ("input", "linear_weight", "target", "grad_output")}


def _call(input, linear_weight, target, kw, want_grad):
    return _LinearLoss(input, linear_weight, target, want_grad=want_grad, **kw)


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=-100, label_smoothing=0.0,
                         logit_scale=1.0, softcap=None, lse_square_scale=0.0,
                         sample_weight=None, normalizer=None, empty="nan", return_z_loss=False,
                         return_lse=False, block_bytes=None, n_threads=None, backend="auto"):
    """Cross-entropy of ``input @ linear_weight.T + linear_bias``, without the logits.

    ``torch.nn.functional.linear_cross_entropy`` for any array library: the
    loss of the output layer computed a block of rows (and, for rows wider
    than the budget, of classes) at a time, so that neither the (N, C)
    logits nor their gradient are ever held.

    Parameters
    ----------
    input : array
        Features, shape ``(..., H)``.
    linear_weight : array
        ``(C, H)``, of `input`'s dtype.
    target : array
        Class indices of shape ``(...)``, or class probabilities ``(..., C)``.
    linear_bias : array, optional
        ``(C,)``, of `input`'s dtype.
    weight, reduction, ignore_index, label_smoothing, logit_scale, softcap, lse_square_scale,
    sample_weight, normalizer, empty, return_z_loss, return_lse, n_threads, backend
        As for `xentc.cross_entropy`, on the logits ``input @ linear_weight.T +
        linear_bias`` whose classes are the last axis.
    block_bytes : int, optional
        The budget of one block of logits, and of any temporary beyond the
        inputs and outputs (default 256 MiB).

    Returns
    -------
    array or tuple of arrays
        As `xentc.cross_entropy`: the loss, then z_loss and lse when asked for.

    Notes
    -----
    For inputs of more than two dimensions the classes are the last axis
    of the logits (a language model's ``(B, T, V)``), where torch's reference
    ``cross_entropy(linear(input, W), target)`` would take axis 1.
    float16 / bfloat16 products are in the input's dtype (float32
    accumulation inside the product); the loss is summed in float32.
    """
    kw = _keywords(locals())
    if any(tracks_grad(a) for a in (input, linear_weight, linear_bias)):
        from . import _autograd
        results = _autograd.linear_cross_entropy(
            input, linear_weight, linear_bias, dict(target=target, weight=weight,
                                                    sample_weight=sample_weight),
            lambda **arrays: _call(arrays.pop("input"), arrays.pop("linear_weight"),
                                   arrays.pop("target"), dict(kw, **arrays), want_grad=True))
    else:
        results = _call(input, linear_weight, target, kw, want_grad=False).run()[0]
    return results if len(results) > 1 else results[0]


def linear_cross_entropy_with_grad(input, linear_weight, target, *, linear_bias=None,
                                   weight=None, reduction="mean", ignore_index=-100,
                                   label_smoothing=0.0, logit_scale=1.0, softcap=None,
                                   lse_square_scale=0.0, sample_weight=None, normalizer=None,
                                   empty="nan", return_z_loss=False, return_lse=False,
                                   grad_output=None, block_bytes=None, n_threads=None,
                                   backend="auto"):
    """`linear_cross_entropy` and its gradients, in one blocked pass.

    Parameters
    ----------
    input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing,
    logit_scale, softcap, lse_square_scale, sample_weight, normalizer, empty, return_z_loss,
    return_lse, block_bytes, n_threads, backend
        As for `linear_cross_entropy`.
    grad_output : float or array, optional
        As for `xentc.cross_entropy_with_grad`.

    Returns
    -------
    tuple of arrays
        The results of `linear_cross_entropy` (loss, then z_loss and lse when
        asked for), then the gradients of ``grad_output . loss`` with respect
        to `input`, `linear_weight` and `linear_bias` (None without a bias).
    """
    kw = _keywords(locals())
    results, grads = _call(input, linear_weight, target, kw, want_grad=True).run(grad_output)
    return (*results, *grads)
