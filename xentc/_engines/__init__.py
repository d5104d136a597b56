"""Engines: the code that computes the per-row quantities of a batch.

Every engine takes the same `RowJob` (``_job``), so the API layer is written
once and a new option is one field of the job::

    engine.rows(xp, job) -> (loss, lse, out)

``job.x`` is an (M, C) array of namespace ``xp`` (classes on the last axis),
``job.target`` (M,) int64 class indices already checked to lie in ``[0, C)``
or equal ``ignore_index``, ``job.soft`` (M, C) class probabilities,
``job.weight`` (C,) in the accumulation dtype. Each row is computed on
``z = softcap * tanh(logit_scale * x / softcap)`` (``z = logit_scale * x``
without a softcap). Per row (``lse`` = log-sum-exp of z, ``e`` =
label_smoothing, ``w`` = weight or ones, ``zls`` = lse_square_scale)::

    loss = (1 - e) * w[y] * (lse - z[y]) + e / C * sum_c w[c] * (lse - z[c])
           + zls * lse**2
    loss = lse = 0                                    where y == ignore_index
    loss = sum_c w[c] * ((1 - e) * q[c] + e / C) * (lse - z[c]) + zls * lse**2
                                                                  (soft q)

``job.out_kind`` asks for a second (M, C) result: "log_softmax" or
"softmax" of z, or "grad" (the gradient of ``grad_scale * grad_row_scale[i]
* loss[i]`` with respect to x, through dz/dx; rows with ``y ==
ignore_index`` are zero). ``job.out`` may be
given as the destination, including ``x`` itself. Results are in ``xp``:
``out`` in x's dtype, ``loss`` and ``lse`` in the accumulation dtype
(float32 for float16 / bfloat16 ``x``, else x's dtype; ``weight`` and
``grad_row_scale`` come in that dtype too); entries not asked for are None.

Before any row of a job with class targets is read, the API layer calls::

    engine.targets(xp, job) -> (job, denominator)

which raises IndexError ("`target` value V out of range for C classes") for
a target outside ``[0, C)`` that is not ``ignore_index``, and returns the
job with its target and weight already in the engine's own form (host or
device arrays: the caller passes that job on to ``rows`` and reads nothing
from it, so each is converted once) and the sum of ``weight[target]`` over
the other targets (their count when ``weight`` is None): the denominator of
the mean, a Python float.

Each engine also has ``name`` and ``accepts(xp, device_key, explicit)``:
whether it can serve arrays of ``xp`` on that device, ``explicit`` being
True when the caller named the engine with ``backend=`` (an engine may then
accept arrays it would only reach through a copy, e.g. host arrays for
OpenCL; ``backend="auto"`` never copies between devices).

For ``log_loss`` every engine also has one read of a probability matrix::

    engine.proba_rows(xp, p, target=None, *, n_threads=None)
        -> (lo, hi, total, picked)

``p`` is (M, C) with M, C >= 1, of any floating dtype, ``target`` None or
(M,) int64 indices in ``[0, C)``. ``lo`` and ``hi`` are Python floats: the
smallest and largest entry of ``p``, NaN when ``p`` holds a NaN; ``total`` is
(M,), the row sums in p's dtype; ``picked`` is (M,), ``p[i, target[i]]``, or
None without ``target``; both in ``xp``.
"""
from ._job import OUT_KINDS, RowJob

__all__ = ["OUT_KINDS", "RowJob", "is_numpy"]


def is_numpy(xp):
    """Whether `xp` is NumPy's namespace, whose arrays an engine hands back as
    they are (``jax.numpy`` is not: its results go through DLPack)."""
    return xp.__name__ in ("numpy", "array_api_compat.numpy")
