"""Dask arrays: the losses, gradients and normalizers lazily chunk by chunk, log_loss to a
float, exact reductions.

Compared with the same call on the whole NumPy arrays (and scikit-learn for
log_loss), in float64, over chunkings whose row chunks differ between the
arrays, every reduction, weights, ignore_index, smoothing, probabilities,
sample weights and the row options; on Dask's threaded scheduler and on a
LocalCluster of two worker processes.
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import distributed
import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss

import xentc

N, C = 503, 11


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads"):
        yield


def chunked(a, rows):
    return da.from_array(a, chunks=(rows,) + a.shape[1:])


def case_of(rng, case):
    """Logits, targets, keyword arguments and sample weights of one case."""
    x = rng.standard_normal((N, C)) * 3
    x[5, 9] = 40.0  # a row's maximum far from the others, in a late class
    t = rng.integers(0, C, N)
    t[::7] = -100
    kw = {}
    if case == "weighted":
        kw = dict(weight=rng.uniform(0.5, 2.0, C), label_smoothing=0.1)
    elif case == "soft":
        t = rng.dirichlet(np.ones(C), N)
        kw = dict(label_smoothing=0.05)
    elif case == "options":
        kw = dict(softcap=4.0, lse_square_scale=1e-2, logit_scale=1.5, label_smoothing=0.1)
    return x, t, kw, rng.uniform(0.0, 2.0, N) if case in ("weighted", "options") else None


CASES = ["plain", "weighted", "soft", "options"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES)
def test_cross_entropy_matches_numpy(case, reduction, rng):
    x, t, kw, sw = case_of(rng, case)
    want = xentc.cross_entropy(x, t, reduction=reduction, sample_weight=sw, **kw)
    got = xentc.cross_entropy(chunked(x, 97), chunked(t, 150), reduction=reduction,
                              sample_weight=None if sw is None else chunked(sw, 61), **kw)
    assert isinstance(got, da.Array)  # lazy until asked
    np.testing.assert_allclose(got.compute(), want, rtol=1e-13, atol=1e-15)


def test_mean_is_not_a_mean_of_means(rng):
    # Chunks of very different kept counts: a mean of per-chunk means would
    # weigh the sparse chunk as much as the full one.
    x = rng.standard_normal((200, 5))
    t = rng.integers(0, 5, 200)
    t[:95] = -100
    got = xentc.cross_entropy(chunked(x, 100), chunked(t, 100)).compute()
    assert math.isclose(got, float(xentc.cross_entropy(x, t)), rel_tol=1e-13)


def test_normalizer_and_empty(rng):
    x = rng.standard_normal((60, 4))
    t = np.full(60, -100)
    assert math.isnan(xentc.cross_entropy(chunked(x, 25), chunked(t, 25)).compute())
    assert xentc.cross_entropy(chunked(x, 25), chunked(t, 25), empty="zero").compute() == 0
    t[:10] = 1
    got = xentc.cross_entropy(chunked(x, 25), chunked(t, 25), normalizer=40.0).compute()
    assert math.isclose(got, float(xentc.cross_entropy(x, t, normalizer=40.0)), rel_tol=1e-13)


def test_float32_keeps_its_dtype(rng):
    x = (rng.standard_normal((64, 9)) * 2).astype(np.float32)
    t = rng.integers(0, 9, 64)
    got = xentc.cross_entropy(chunked(x, 20), chunked(t, 20), reduction="none")
    assert got.dtype == np.float32 and got.compute().dtype == np.float32


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_log_loss_matches_scikit_learn(normalize, weighted, rng):
    p = rng.dirichlet(np.ones(C), N)
    y = rng.integers(0, C, N)
    sw = rng.uniform(0.1, 2.0, N) if weighted else None
    got = xentc.log_loss(chunked(y, 200), chunked(p, 77), normalize=normalize,
                         sample_weight=None if sw is None else chunked(sw, 130))
    assert isinstance(got, float)
    assert math.isclose(got, sk_log_loss(y, p, normalize=normalize, sample_weight=sw),
                        rel_tol=1e-12)


def test_log_loss_labels_missing_from_a_chunk(rng):
    # Every chunk sees all the labels, even those only other chunks hold.
    y = np.array([0] * 50 + [1] * 50 + [2] * 50)
    p = rng.dirichlet(np.ones(3), 150)
    got = xentc.log_loss(chunked(y, 50), chunked(p, 50))
    assert math.isclose(got, sk_log_loss(y, p), rel_tol=1e-12)


def test_log_loss_binary_and_from_logits(rng):
    y = rng.integers(0, 2, 90)
    p = rng.uniform(0.01, 0.99, 90)
    assert math.isclose(xentc.log_loss(chunked(y, 40), chunked(p, 25)), sk_log_loss(y, p),
                        rel_tol=1e-12)
    z = rng.standard_normal((90, 3))
    y3 = rng.integers(0, 3, 90)
    want = xentc.log_loss(y3, z, from_logits=True)
    assert math.isclose(xentc.log_loss(chunked(y3, 31), chunked(z, 29), from_logits=True),
                        want, rel_tol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES)
def test_class_chunks_combine_partial_row_states(case, reduction, rng):
    # Chunks of (97 rows, 4 classes): every row's classes in three chunks,
    # the last one short; the row's maximum in any of them.
    x, t, kw, sw = case_of(rng, case)
    want = xentc.cross_entropy(x, t, reduction=reduction, sample_weight=sw, **kw)
    xd = da.from_array(x, chunks=(97, 4))
    got = xentc.cross_entropy(xd, chunked(t, 150), reduction=reduction,
                              sample_weight=None if sw is None else chunked(sw, 61), **kw)
    np.testing.assert_allclose(got.compute(), want, rtol=1e-12, atol=1e-14)


def test_bad_arguments_are_checked_before_any_chunk(rng):
    x = da.from_array(rng.standard_normal((10, 8)), chunks=(5, 4))
    t = da.from_array(rng.integers(0, 8, 10), chunks=5)
    with pytest.raises(ValueError, match="`softcap`"):
        xentc.cross_entropy(x, t, softcap=-1.0)
    with pytest.raises(ValueError, match="`weight` must have shape"):
        xentc.cross_entropy(x, t, np.ones(3))


def test_a_class_chunk_of_minus_inf_beside_very_negative_logits(rng):
    # A chunk whose logits are all -inf has no maximum of its own: it must
    # weigh nothing, not pull the row's maximum up to 0 (exp(-800) would then
    # underflow and the loss be infinite).
    x = rng.standard_normal((6, 12)) - 800
    x[:, 4:8] = -np.inf
    t = np.array([0, 1, 2, 3, 9, 11])
    want = xentc.cross_entropy(x, t, reduction="none")
    got = xentc.cross_entropy(da.from_array(x, chunks=(3, 4)), chunked(t, 3), reduction="none")
    np.testing.assert_allclose(got.compute(), want, rtol=1e-12)


CHUNKINGS = {"rows": (97, C), "classes": (97, 4), "one_row_chunk": (N, 5)}


@pytest.mark.parametrize("chunks", list(CHUNKINGS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES)
def test_cross_entropy_with_grad_matches_numpy(case, reduction, chunks, rng):
    x, t, kw, sw = case_of(rng, case)
    go = rng.uniform(0.5, 1.5, N) if reduction == "none" else 0.7
    want = xentc.cross_entropy_with_grad(x, t, reduction=reduction, sample_weight=sw,
                                         grad_output=go, return_z_loss=True,
                                         return_lse=True, **kw)
    got = xentc.cross_entropy_with_grad(
        da.from_array(x, chunks=CHUNKINGS[chunks]), chunked(t, 150), reduction=reduction,
        sample_weight=None if sw is None else chunked(sw, 61),
        grad_output=chunked(go, 200) if reduction == "none" else go,
        return_z_loss=True, return_lse=True, **kw)
    assert all(isinstance(a, da.Array) for a in got)
    assert got[3].chunks == da.from_array(x, chunks=CHUNKINGS[chunks]).chunks
    for name, g, w in zip(("loss", "z_loss", "lse", "grad"), dask.compute(*got), want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("empty", ["nan", "zero"])
def test_gradient_of_an_all_ignored_mean(empty, rng):
    x = rng.standard_normal((30, 6))
    t = np.full(30, -100)
    for chunks in ((10, 6), (10, 4)):
        loss, grad = xentc.cross_entropy_with_grad(da.from_array(x, chunks=chunks),
                                                   chunked(t, 10), empty=empty)
        want_loss, want_grad = xentc.cross_entropy_with_grad(x, t, empty=empty)
        np.testing.assert_array_equal(loss.compute(), want_loss)
        np.testing.assert_array_equal(grad.compute(), want_grad)


def test_with_grad_float32_and_its_errors(rng):
    x = (rng.standard_normal((64, 9)) * 2).astype(np.float32)
    t = rng.integers(0, 9, 64)
    for chunks in ((20, 9), (20, 4)):
        loss, grad = xentc.cross_entropy_with_grad(da.from_array(x, chunks=chunks),
                                                   chunked(t, 20))
        want_loss, want_grad = xentc.cross_entropy_with_grad(x, t)
        assert loss.dtype == grad.dtype == np.float32
        np.testing.assert_allclose(loss.compute(), want_loss, rtol=1e-6)
        np.testing.assert_allclose(grad.compute(), want_grad, rtol=1e-5, atol=1e-8)
    xd = da.from_array(x, chunks=(20, 9))
    with pytest.raises(ValueError, match="`out`"):
        xentc.cross_entropy_with_grad(xd, chunked(t, 20), out=np.empty_like(x))
    with pytest.raises(ValueError, match="`grad_output`"):
        xentc.cross_entropy_with_grad(xd, chunked(t, 20), reduction="none",
                                      grad_output=np.ones((64, 2)))


@pytest.mark.parametrize("chunks", list(CHUNKINGS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_matches_numpy(weighted, reduction, chunks, rng):
    logp = np.log(rng.dirichlet(np.ones(C), N))
    t = rng.integers(0, C, N)
    t[::5] = 3  # the ignored class: one inside [0, C)
    w = rng.uniform(0.5, 2.0, C) if weighted else None
    want = xentc.nll_loss(logp, t, w, ignore_index=3, reduction=reduction)
    got = xentc.nll_loss(da.from_array(logp, chunks=CHUNKINGS[chunks]), chunked(t, 150), w,
                         ignore_index=3, reduction=reduction)
    assert isinstance(got, da.Array)
    np.testing.assert_allclose(got.compute(), want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("chunks", [(5, 8), (5, 3)])
def test_nll_loss_target_out_of_range(chunks, rng):
    t = np.array([0, 1, 8, 2, 3, 4, 5, 6, 7, 1])
    got = xentc.nll_loss(da.from_array(rng.standard_normal((10, 8)), chunks=chunks),
                         chunked(t, 5))
    with pytest.raises(IndexError, match="`target` value 8 out of range for 8 classes"):
        got.compute()


def special_rows(rng, dtype):
    x = (rng.standard_normal((40, 13)) * 30).astype(dtype)
    x[3, :] = -np.inf
    x[4, 5] = np.inf
    x[5, 2] = np.nan
    x[6, 11] = 1e4  # the maximum in the last class chunk
    return x


@pytest.mark.parametrize("chunks", [(9, 13), (9, 4), (40, 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logsumexp_softmax_log_softmax_match_numpy(chunks, dtype, rng):
    x = special_rows(rng, dtype)
    xd = da.from_array(x, chunks=chunks)
    # Relative to the row's scale: the class chunks' sums of exps are combined
    # with the maxima among them (an ulp of 1), not counted apart as the
    # ordinary call does, so log-probabilities near 0 keep absolute accuracy.
    eps = np.finfo(dtype).eps
    rtol = 1e-13 if dtype == np.float64 else 4e-7
    with np.errstate(invalid="ignore"):
        for name in ("logsumexp", "softmax", "log_softmax"):
            got, want = getattr(xentc, name)(xd, axis=-1), getattr(xentc, name)(x, axis=-1)
            assert isinstance(got, da.Array) and got.dtype == dtype
            np.testing.assert_allclose(got.compute(), want, rtol=rtol, atol=4 * eps,
                                       err_msg=name)
        keep = xentc.logsumexp(xd, axis=1, keepdims=True).compute()
        np.testing.assert_allclose(keep, xentc.logsumexp(x, axis=1, keepdims=True), rtol=rtol)
    with pytest.raises(ValueError, match="`axis`"):
        xentc.softmax(xd, axis=0)
    with pytest.raises(ValueError, match="2-D"):
        xentc.logsumexp(da.from_array(np.ones((2, 3, 4))))


def test_cross_entropy_returns_z_loss_and_lse(rng):
    x, t, kw, sw = case_of(rng, "options")
    want = xentc.cross_entropy(x, t, sample_weight=sw, return_z_loss=True, return_lse=True, **kw)
    for chunks in ((97, C), (97, 4)):
        got = xentc.cross_entropy(da.from_array(x, chunks=chunks), chunked(t, 150),
                                  sample_weight=chunked(sw, 61), return_z_loss=True,
                                  return_lse=True, **kw)
        for g, w in zip(dask.compute(*got), want):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def cluster_client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        yield client


def test_on_a_local_cluster_of_worker_processes(cluster_client, rng):
    # The same numbers when each chunk runs in another process (the functions
    # and arrays of the graph pickled there).
    x, t, kw, sw = case_of(rng, "weighted")
    for chunks in ((97, C), (97, 4)):
        xd = da.from_array(x, chunks=chunks)
        loss, grad = xentc.cross_entropy_with_grad(xd, chunked(t, 150), sample_weight=sw, **kw)
        got = cluster_client.compute([loss, grad, xentc.softmax(xd)], sync=True)
        want = xentc.cross_entropy_with_grad(x, t, sample_weight=sw, **kw)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got[2], xentc.softmax(x), rtol=1e-12, atol=1e-300)
    p = rng.dirichlet(np.ones(C), N)
    y = rng.integers(0, C, N)
    with dask.config.set(scheduler=cluster_client.get):
        got = xentc.log_loss(chunked(y, 200), chunked(p, 77))
    assert math.isclose(got, sk_log_loss(y, p), rel_tol=1e-12)


def test_log_loss_arguments_checked_and_y_pred_renamed(rng):
    # The Dask path checks what the in-memory one checks, after the
    # deprecated y_pred= has become y_proba.
    p = rng.dirichlet(np.ones(C), 60)
    y = rng.integers(0, C, 60)
    with pytest.raises(ValueError, match="normalize"):
        xentc.log_loss(chunked(y, 20), chunked(p, 20), normalize="x")
    with pytest.warns(FutureWarning):
        got = xentc.log_loss(chunked(y, 20), y_pred=chunked(p, 20))
    assert math.isclose(got, sk_log_loss(y, p), rel_tol=1e-12)
