"""The OpenCL engine: the row maths on any OpenCL device, through pyopencl.

One OpenCL C source (``_SOURCE``) holds every kernel; it is built per
(context, device, dtype) with the element types and device features given
as ``-D`` options, and the built programs are memoized (``clear_cache``
drops them). The row kernel follows the C core's numerics: the row max, then
``exp(x - max)`` summed with the exact ones (``x == max``) counted apart,
then ``log1p``; the linear sums of label smoothing and soft targets are taken
relative to the max, so they stay exact for logits of any magnitude.

Two kinds of caller reach this module:

* ``pyopencl.array.Array`` arguments (``backend="auto"``): `namespace`
  gives the API layer a small array namespace over pyopencl.array on the
  arrays' queue; every step stays on the device (but the distinct values
  of log_loss's labels, found with NumPy), results are pyopencl arrays on
  that queue.
* CPU arrays of any library (NumPy, torch, ...), only with
  ``backend="opencl"``: `rows` (and `proba_rows`) copies them to a default queue
  (``PYOPENCL_CTX`` picks its device), runs there and copies the results
  back into the caller's namespace. The copy is what the caller asked for.

pyopencl is optional: this module imports without it, `devices` then lists
nothing, and asking for the engine raises an ImportError naming the extra
to install.
"""
import functools
import math
import operator
import threading
from typing import ClassVar

import numpy as np

try:
    import pyopencl as cl
    import pyopencl.array as cla
    from pyopencl import clmath
except ImportError:  # optional dependency: `import xentc` works without it
    cl = cla = clmath = None

name = "opencl"

_INSTALL = ('the OpenCL engine needs pyopencl and an OpenCL driver: '
            'pip install "xentc[opencl]" (pyopencl and pocl-binary-distribution, '
            'which gives a CPU device)')

_SOURCE = r"""//CL//
/*
 * xentc's OpenCL kernels. Build options name the types of one program:
 *   REAL_T, ACC_T   floating dtypes: storage and arithmetic (float for half)
 *   XENTC_HALF      half storage, through vload_half / vstore_half: core
 *                   OpenCL, no cl_khr_fp16 needed, float arithmetic
 *   XENTC_FP64      double storage (the device has cl_khr_fp64)
 *   VEC             the row kernel's vector width: the device's preferred
 *                   one (CPU devices vectorize exp only on vector types;
 *                   1, plain scalars, suits GPUs)
 *   INT_T, IACC_T   integer dtypes: element and accumulator of reductions
 *   ELEM_T          an unsigned type of the dtype's size: copies move bits
 * Reductions run a fixed tree over a fixed split of the data, so a result
 * depends on the inputs, their size and the device's group size only.
 */
#define RED_SUM 0
#define RED_MIN 1
#define RED_MAX 2
#define RED_COUNT 3

#if defined(REAL_T)
#ifdef XENTC_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif
#ifdef XENTC_HALF
#define LD(p, i) vload_half((i), (p))
#define ST(p, i, v) vstore_half_rte((v), (i), (p))
#else
#define LD(p, i) ((ACC_T)(p)[i])
#define ST(p, i, v) ((p)[i] = (REAL_T)(v))
#endif
#define RV_T ACC_T
#define RV_IN_T REAL_T
#define RV_OUT_T REAL_T
#define RV_LD(p, i) LD(p, i)
#define RV_ST(p, v) ST(p, 0, v)
#define RV_ISNAN(v) isnan(v)
#elif defined(INT_T)
#define RV_T IACC_T
#define RV_IN_T INT_T
#define RV_OUT_T IACC_T
#define RV_LD(p, i) ((IACC_T)(p)[i])
#define RV_ST(p, v) ((p)[0] = (v))
#define RV_ISNAN(v) 0
#endif

#ifdef RV_T
/* NaN wins min and max, as in NumPy. */
RV_T rv_op(const int op, const RV_T a, const RV_T b)
{
    if (op == RED_SUM)
        return a + b;
    if (RV_ISNAN(a))
        return a;
    if (RV_ISNAN(b))
        return b;
    return op == RED_MIN ? (b < a ? b : a) : (b > a ? b : a);
}

/* Combine v[0, nv) over the R lanes (a power of two) of each segment of the
   group; every lane gets its segment's results. All lanes of the group must
   call it: it holds barriers. */
void seg_reduce(__local RV_T *buf, RV_T *v, const int nv, const int op, const uint R)
{
    const uint L = get_local_size(0), lid = get_local_id(0), lane = lid & (R - 1);
    for (int k = 0; k < nv; k++)
        buf[k * L + lid] = v[k];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = R >> 1; s > 0; s >>= 1) {
        if (lane < s)
            for (int k = 0; k < nv; k++)
                buf[k * L + lid] = rv_op(op, buf[k * L + lid], buf[k * L + lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int k = 0; k < nv; k++)
        v[k] = buf[k * L + lid - lane];
    barrier(CLK_LOCAL_MEM_FENCE); /* buf is free again */
}

/* Group g combines a[g * row_len, min((g + 1) * row_len, n)): the rows of a
   2-D array, or stage 1 of a whole-array reduction. */
__kernel void xentc_reduce(const long n, const long row_len, const __global RV_IN_T *a,
                           const long a_off, const int op, const RV_T ident,
                           __global RV_T *part, __local RV_T *buf)
{
    const int combine = op == RED_COUNT ? RED_SUM : op;
    const long start = (long)get_group_id(0) * row_len, end = min(n, start + row_len);
    RV_T v[1] = {ident};
    for (long k = start + get_local_id(0); k < end; k += get_local_size(0)) {
        RV_T t = RV_LD(a + a_off, k);
        v[0] = rv_op(combine, v[0], op == RED_COUNT ? (RV_T)(t != 0) : t);
    }
    seg_reduce(buf, v, 1, combine, get_local_size(0));
    if (get_local_id(0) == 0)
        part[get_group_id(0)] = v[0];
}

/* Stage 2: one group combines the n partial results. */
__kernel void xentc_reduce_final(const long n, const __global RV_T *part, const int op,
                                 const RV_T ident, __global RV_OUT_T *out, const long out_off,
                                 __local RV_T *buf)
{
    const int combine = op == RED_COUNT ? RED_SUM : op;
    RV_T v[1] = {ident};
    for (long k = get_local_id(0); k < n; k += get_local_size(0))
        v[0] = rv_op(combine, v[0], part[k]);
    seg_reduce(buf, v, 1, combine, get_local_size(0));
    if (get_local_id(0) == 0)
        RV_ST(out + out_off, v[0]);
}
#endif

#ifdef REAL_T
#define OUT_NONE 0
#define OUT_LOG_SOFTMAX 1
#define OUT_SOFTMAX 2
#define OUT_GRAD 3

#define HAS_TARGET 1
#define HAS_SOFT 2
#define HAS_WEIGHT 4
#define HAS_LOSS 8
#define HAS_LSE 16
#define HAS_ROW_SCALE 32

/* weight, loss, lse and row_scale are ACC_T arrays: float32 next to half
   logits, as the API layer gives and expects them. */

/* VACC: VEC values of ACC_T. Built-ins (exp, isnan), the operators and
   VSELECT take scalars and vectors alike, so one text serves every VEC. */
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#if VEC == 1
#define VACC ACC_T
#define IOTA ((ACC_T)0)
#define VLD_REAL(p, i) LD(p, i)
#define VLD_ACC(p, i) ((p)[i])
#define VST_REAL(p, i, v) ST(p, i, v)
#define VLD_PRIV(a) ((a)[0])
#define VST_PRIV(v, a) ((a)[0] = (v))
#else
#define VACC CAT(ACC_T, VEC)
#ifdef XENTC_HALF
#define VLD_REAL(p, i) CAT(vload_half, VEC)(0, (p) + (i))
#define VST_REAL(p, i, v) CAT(CAT(vstore_half, VEC), _rte)((v), 0, (p) + (i))
#else
#define VLD_REAL(p, i) CAT(vload, VEC)(0, (p) + (i))
#define VST_REAL(p, i, v) CAT(vstore, VEC)((v), 0, (p) + (i))
#endif
#define VLD_ACC(p, i) CAT(vload, VEC)(0, (p) + (i))
#define VLD_PRIV(a) CAT(vload, VEC)(0, (a))
#define VST_PRIV(v, a) CAT(vstore, VEC)((v), 0, (a))
#if VEC == 2
#define IOTA ((VACC)(0, 1))
#elif VEC == 4
#define IOTA ((VACC)(0, 1, 2, 3))
#elif VEC == 8
#define IOTA ((VACC)(0, 1, 2, 3, 4, 5, 6, 7))
#elif VEC == 16
#define IOTA ((VACC)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))
#else
#error "VEC must be 1, 2, 4, 8 or 16"
#endif
#endif
/* b where c, else a. Scalars take the ternary: select() on a double wants a
   long condition, and scalar comparisons give int. */
#if VEC == 1
#define VSELECT(a, b, c) ((c) ? (b) : (a))
#else
#define VSELECT(a, b, c) select((a), (b), (c))
#endif

/* Elements [c, c + VEC) of p as ACC_T, `pad` from the n-th on (n > 0 left
   in the row): nothing past the row is read. */
VACC vload_real(const __global REAL_T *p, const long c, const long n, const ACC_T pad)
{
    if (n >= VEC)
        return VLD_REAL(p, c);
    ACC_T a[VEC];
    for (int k = 0; k < VEC; k++)
        a[k] = k < n ? LD(p, c + k) : pad;
    return VLD_PRIV(a);
}

VACC vload_acc(const __global ACC_T *p, const long c, const long n)
{
    if (n >= VEC)
        return VLD_ACC(p, c);
    ACC_T a[VEC];
    for (int k = 0; k < VEC; k++)
        a[k] = k < n ? p[c + k] : 0;
    return VLD_PRIV(a);
}

ACC_T hsum(const VACC v)
{
    ACC_T a[VEC], s = 0;
    VST_PRIV(v, a);
    for (int k = 0; k < VEC; k++)
        s += a[k];
    return s;
}

/* The largest component; NaN-free inputs. */
ACC_T hmax(const VACC v)
{
    ACC_T a[VEC], m;
    VST_PRIV(v, a);
    m = a[0];
    for (int k = 1; k < VEC; k++)
        m = a[k] > m ? a[k] : m;
    return m;
}

/* Coefficients of logits [c, c + VEC) in the linear sums, 0 past the row's
   end: w[c] for smoothed class targets, w[c] * (qa * q[c] + qb) for
   (smoothed) soft targets. */
VACC coef(const __global ACC_T *w, const __global REAL_T *q, const long c, const long n,
          const ACC_T qa, const ACC_T qb)
{
    VACC k = w ? vload_acc(w, c, n) : (VACC)1;
    if (q)
        k = k * (qa * vload_real(q, c, n, 0) + qb);
    return VSELECT(k, (VACC)0, IOTA >= (ACC_T)n);
}

/* Class targets before any row is read: group g takes targets
   [g * chunk, (g + 1) * chunk) and writes the sum of their weights (1 each
   without weights) and the first index of a target outside [0, C) that is
   not ignore_index (n if there is none). */
__kernel void xentc_targets(const long n, const long chunk, const long C, const long ignore_index,
                            const __global long *target, const long t_off,
                            const __global ACC_T *weight, const long w_off, const int has_weight,
                            __global ACC_T *part_sum, __global long *part_bad,
                            __local ACC_T *buf)
{
    const uint L = get_local_size(0), lid = get_local_id(0);
    const long start = (long)get_group_id(0) * chunk, end = min(n, start + chunk);
    ACC_T v[1] = {0};
    long bad = n;
    for (long k = start + lid; k < end; k += L) {
        const long y = target[t_off + k];
        if (y == ignore_index)
            continue;
        if (y < 0 || y >= C)
            bad = min(bad, k);
        else
            v[0] += has_weight ? weight[w_off + y] : (ACC_T)1;
    }
    seg_reduce(buf, v, 1, RED_SUM, L);
    /* L longs after the L sums: L is a power of two, so they are aligned. */
    __local long *lbad = (__local long *)(buf + L);
    lbad[lid] = bad;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = L >> 1; s > 0; s >>= 1) {
        if (lid < s)
            lbad[lid] = min(lbad[lid], lbad[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        part_sum[get_group_id(0)] = v[0];
        part_bad[get_group_id(0)] = lbad[0];
    }
}

/*
 * Rows of x, R lanes per row (R = 1: a row per work-item for short rows;
 * R = group size: a work-group per row for long ones); a lane takes VEC
 * logits at a time, a partial vector at the row's end. Per row, with
 * e = label smoothing, qa = 1 - e, qb = e / C (see xentc._engines):
 *   pass 1: m = max(x), NaN skipped (it poisons the sum instead);
 *   pass 2: ones = #(x == m), rest = sum exp(x - m) over the others,
 *           S = sum coef * (x - m), A = sum coef;
 *           ls = log1p((ones - 1) + rest), exact when the sum is near 1;
 *           loss and lse from m, ls, S, A (A * ls - S adds terms of one sign);
 *   pass 3: out = log_softmax, softmax or the gradient
 *           g * (alpha * p - beta * coef - gamma * [c == y]).
 * Lanes past the last row take part in the barriers and do nothing else.
 * A class target outside [0, C) that is not ignore_index gives NaN (the API
 * layer rejects those before launching): it is never used as an index.
 */
__kernel void xentc_rows(
    const long n_rows, const long C, const uint R,
    const __global REAL_T *x, const long x_off, const long x_stride,
    const __global long *target, const long t_off, const long ignore_index,
    const __global REAL_T *soft, const long q_off, const long q_stride,
    const __global ACC_T *weight, const long w_off,
    const ACC_T e, const ACC_T qa, const ACC_T qb,
    __global ACC_T *loss, const long loss_off,
    __global ACC_T *lse, const long lse_off,
    const int out_kind, __global REAL_T *out, const long out_off, const long out_stride,
    const ACC_T grad_scale, const __global ACC_T *row_scale, const long rs_off,
    const int flags, __local ACC_T *buf)
{
    const uint lid = get_local_id(0), lane = lid & (R - 1);
    const long i = (long)get_group_id(0) * (long)(get_local_size(0) / R) + lid / R;
    const int live = i < n_rows;
    const __global REAL_T *xr = x + x_off + (live ? i : 0) * x_stride;
    const __global ACC_T *w = (flags & HAS_WEIGHT) ? weight + w_off : 0;
    const __global REAL_T *q = (live && (flags & HAS_SOFT)) ? soft + q_off + i * q_stride : 0;
    const int has_target = flags & HAS_TARGET;
    const int lin = (flags & HAS_SOFT) || (has_target && e > 0);
    long y = -1;
    int ignored = 0, bad = 0;
    if (live && has_target) {
        y = target[t_off + i];
        ignored = y == ignore_index;
        bad = !ignored && (y < 0 || y >= C);
    }
    const int work = live && !ignored;

    const long step = (long)R * VEC;
    ACC_T v[4];
    VACC vm = -INFINITY, vnan = 0;
    if (work)
        for (long c = lane * VEC; c < C; c += step) {
            const VACC a = vload_real(xr, c, C - c, -INFINITY);
            vm = VSELECT(vm, a, a > vm);
            vnan = VSELECT(vnan, (VACC)1, isnan(a));
        }
    v[0] = hmax(vm);
    v[1] = hmax(vnan);
    seg_reduce(buf, v, 2, RED_MAX, R);
    ACC_T m;
    m = v[0];
    const int has_nan = v[1] > 0;

    /* Past the row's end the logits read as -inf: exp gives 0, and the
       linear sums mask them (their coefficient is 0, their d infinite). */
    VACC vrest = 0, vones = 0, vS = 0, vA = 0;
    if (work)
        for (long c = lane * VEC; c < C; c += step) {
            const VACC d = vload_real(xr, c, C - c, -INFINITY) - m;
            vones += VSELECT((VACC)0, (VACC)1, d == 0);
            vrest += VSELECT(exp(d), (VACC)0, d == 0);
            if (lin) {
                const VACC k = coef(w, q, c, C - c, qa, qb);
                vS += VSELECT(k * d, (VACC)0, IOTA >= (ACC_T)(C - c));
                vA += k;
            }
        }
    ACC_T rest, ones, S, A;
    /* Read before the barriers below: with out == x, pass 3 overwrites x[y]. */
    ACC_T xy = 0, wy = 1;
    if (work && has_target) {
        xy = bad ? NAN : LD(xr, y);
        wy = bad ? NAN : (w ? w[y] : (ACC_T)1);
    }
    v[0] = hsum(vrest);
    v[1] = hsum(vones);
    v[2] = hsum(vS);
    v[3] = hsum(vA);
    seg_reduce(buf, v, lin ? 4 : 2, RED_SUM, R);
    rest = v[0];
    ones = v[1];
    S = lin ? v[2] : 0;
    A = lin ? v[3] : 0;

    /* A row without a max (all -inf, or NaN) has no log-sum: NaN, as torch. */
    const ACC_T ls = m > -INFINITY ? log1p((ones - 1) + rest) : NAN;
    if (live && lane == 0) {
        ACC_T row_loss = 0;
        if (has_target) {
            row_loss = qa * wy * ((m - xy) + ls);
            if (e > 0)
                row_loss += qb * (A * ls - S);
        } else {
            row_loss = A * ls - S;
        }
        /* torch.logsumexp: +-inf for a row whose max is infinite, unless
           the row holds a NaN. */
        const ACC_T row_lse = isinf(m) ? (has_nan ? NAN : m) : m + ls;
        if (flags & HAS_LOSS)
            loss[loss_off + i] = ignored ? 0 : row_loss;
        if (flags & HAS_LSE)
            lse[lse_off + i] = ignored ? 0 : row_lse;
    }
    if (!live || out_kind == OUT_NONE)
        return;

    __global REAL_T *o = out + out_off + i * out_stride;
    ACC_T alpha = 0, beta = 0, gamma = 0, g = 0;
    if (out_kind == OUT_GRAD) {
        /* d/dx_c = g * (A * p_c - coef_c), A = sum coef: torch's formula
           regrouped; class targets put (1 - e) * w[y] on c == y. The scale
           g comes last, so that the gradient scales with it to the ulp
           even where the bracket cancels. */
        g = grad_scale * ((flags & HAS_ROW_SCALE) ? row_scale[rs_off + i] : 1);
        if (has_target) {
            alpha = qa * wy + (e > 0 ? qb * A : 0);
            beta = qb;
            gamma = qa * wy;
        } else {
            alpha = A;
            beta = 1;
        }
    }
    for (long c = lane * VEC; c < C; c += step) {
        const long n = C - c;
        const VACC d = (vload_real(xr, c, n, 0) - m) - ls;
        VACC r;
        if (ignored) {
            r = 0;
        } else if (out_kind == OUT_LOG_SOFTMAX) {
            r = d;
        } else if (out_kind == OUT_SOFTMAX) {
            r = exp(d);
        } else {
            const VACC t1 = alpha * exp(d);
            const VACC t2 = beta != 0 ? beta * coef(w, q, c, n, qa, qb) : (VACC)0;
            const VACC t3 = VSELECT((VACC)0, (VACC)gamma, IOTA == (ACC_T)(y - c));
            /* An infinite g (a mean over zero weight) scales torch's terms
               one by one, so that zero ones give NaN as they do there. */
            r = isfinite(g) ? g * (t1 - t2 - t3) : g * t1 - g * t2 - g * t3;
        }
        if (n >= VEC) {
            VST_REAL(o, c, r);
        } else {
            ACC_T a[VEC];
            VST_PRIV(r, a);
            for (int k = 0; k < n; k++)
                ST(o, c + k, a[k]);
        }
    }
}

/*
 * One read of probabilities p for log_loss (xentc._engines: proba_rows), on
 * the rows' layout of xentc_rows: per row its sum and p[i, target[i]] (NaN
 * for a target outside [0, C): never used as an index); per group, in
 * part[0][g] and part[1][g], -min(p) and max(p) over its rows, NaN when it
 * met a NaN. The negated minimum lets one max tree finish both extremes.
 */
__kernel void xentc_proba(const long n_rows, const long C, const uint R,
                          const __global REAL_T *p, const long p_off, const long p_stride,
                          const __global long *target, const long t_off,
                          __global REAL_T *total, const long total_off,
                          __global REAL_T *picked, const long picked_off,
                          __global ACC_T *part, const long n_groups, __local ACC_T *buf)
{
    const uint lid = get_local_id(0), lane = lid & (R - 1);
    const long i = (long)get_group_id(0) * (long)(get_local_size(0) / R) + lid / R;
    const int live = i < n_rows;
    const __global REAL_T *pr = p + p_off + (live ? i : 0) * p_stride;
    VACC vs = 0, vlo = INFINITY, vhi = -INFINITY, vnan = 0;
    if (live)
        for (long c = lane * VEC; c < C; c += (long)R * VEC) {
            const long n = C - c;
            const VACC a = vload_real(pr, c, n, 0);
            vs += a;
            /* NaN compares false: the extremes skip it, vnan counts it. */
            vlo = VSELECT(vlo, a, a < vlo && IOTA < (ACC_T)n);
            vhi = VSELECT(vhi, a, a > vhi && IOTA < (ACC_T)n);
            vnan = VSELECT(vnan, (VACC)1, isnan(a));
        }
    ACC_T v[3] = {hsum(vs)};
    seg_reduce(buf, v, 1, RED_SUM, R);
    if (live && lane == 0) {
        ST(total + total_off, i, v[0]);
        if (picked) {
            const long y = target[t_off + i];
            ST(picked + picked_off, i, y >= 0 && y < C ? LD(pr, y) : NAN);
        }
    }
    v[0] = hmax(-vlo);
    v[1] = hmax(vhi);
    v[2] = hmax(vnan);
    seg_reduce(buf, v, 3, RED_MAX, get_local_size(0));
    if (lid == 0) {
        part[get_group_id(0)] = v[2] > 0 ? NAN : v[0];
        part[n_groups + get_group_id(0)] = v[2] > 0 ? NAN : v[1];
    }
}
#endif

#ifdef ELEM_T
/* dst = src for arrays of one shape with any strides (in elements):
   geom holds the shape, then src's strides, then dst's. */
__kernel void xentc_copy(const long n, const int ndim, __constant long *geom,
                         const __global ELEM_T *src, const long src_off,
                         __global ELEM_T *dst, const long dst_off)
{
    for (long k = get_global_id(0); k < n; k += get_global_size(0)) {
        long rem = k, s = src_off, d = dst_off;
        for (int ax = ndim - 1; ax >= 0; ax--) {
            const long idx = rem % geom[ax];
            rem /= geom[ax];
            s += idx * geom[ndim + ax];
            d += idx * geom[2 * ndim + ax];
        }
        dst[d] = src[s];
    }
}

/* out[i, k] = a[i, idx[i, k]] for contiguous (rows, C) a and (rows, K) idx,
   idx in [0, C) (checked by the caller). */
__kernel void xentc_take(const long n_rows, const long C, const long K,
                         const __global ELEM_T *a, const long a_off,
                         const __global long *idx, const long idx_off,
                         __global ELEM_T *out, const long out_off)
{
    for (long k = get_global_id(0); k < n_rows * K; k += get_global_size(0))
        out[out_off + k] = a[a_off + (k / K) * C + idx[idx_off + k]];
}
#endif
"""

_OUT_KINDS = {"none": 0, "log_softmax": 1, "softmax": 2, "grad": 3}
_HAS_TARGET, _HAS_SOFT, _HAS_WEIGHT, _HAS_LOSS, _HAS_LSE, _HAS_ROW_SCALE = 1, 2, 4, 8, 16, 32
_RED_SUM, _RED_MIN, _RED_MAX, _RED_COUNT = 0, 1, 2, 3

# Enough lanes to hide memory latency on GPUs; more would only deepen the trees.
_MAX_GROUP = 256
# CPU devices take a row per work-item (their SIMD is in VEC, and trees across
# work-items only cost there); 64 rows per group leaves groups for many cores.
_CPU_ROW_PER_ITEM = True
_CPU_ROWS_GROUP = 64
_ROW_KERNELS = ("xentc_rows", "xentc_proba")
# Vectors each lane of the row kernel takes before a row gets more lanes.
_ELEMS_PER_LANE = 8
# Groups of the grid-stride kernels (copies, gathers), at most.
_MAX_GROUPS = 256

_CTYPES = {"f2": "half", "f4": "float", "f8": "double", "i1": "char", "i2": "short",
           "i4": "int", "i8": "long", "u1": "uchar", "u2": "ushort", "u4": "uint",
           "u8": "ulong"}

# A pyopencl.Kernel holds its arguments from set to enqueue: one launch at a time.
_launch_lock = threading.Lock()


def _require():
    if cl is None:
        raise ImportError(_INSTALL)


def _is_cl(a):
    return cla is not None and isinstance(a, cla.Array)


def _acc_dtype(dtype):
    """What the kernels compute in: float32 for half storage, else the dtype itself."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


# ---------------------------------------------------------------------------
# devices, programs, launches
# ---------------------------------------------------------------------------


def _has_fp64(device):
    return "cl_khr_fp64" in device.extensions.split()


def _has_fp16(device):
    return "cl_khr_fp16" in device.extensions.split()


def _is_cpu(device):
    return bool(device.type & cl.device_type.CPU)


def devices():
    """Describe the OpenCL platforms and devices that pyopencl finds.

    Returns
    -------
    list of str
        One line per device: platform, device name, type, compute units and
        whether it has float64 and float16 arithmetic; empty when pyopencl is
        not installed or finds no platform.
    """
    if cl is None:
        return []
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader reports "no platform" as an error
        return []
    found = []
    for platform in platforms:
        try:
            devs = platform.get_devices()
        except cl.Error:
            continue
        for dev in devs:
            kinds = [k for k in ("GPU", "CPU", "ACCELERATOR", "CUSTOM")
                     if dev.type & getattr(cl.device_type, k)]
            found.append(f"{platform.name}: {dev.name} "
                         f"({' | '.join(kinds) or 'other'}, "
                         f"{dev.max_compute_units} compute units, "
                         f"float64 {'yes' if _has_fp64(dev) else 'no'}, "
                         f"float16 {'yes' if _has_fp16(dev) else 'no'})")
    return found


def clear_cache():
    """Drop the built programs and the default queue, and with them their contexts.

    Returns
    -------
    None
    """
    _kernels.cache_clear()
    _default_queue.cache_clear()


@functools.cache
def _default_queue():
    """The queue for host arrays: ``PYOPENCL_CTX`` names its device, else the first one."""
    try:
        ctx = cl.create_some_context(interactive=False)
    except (cl.Error, RuntimeError) as exc:
        raise RuntimeError(f"cannot open a default OpenCL device ({exc}): PYOPENCL_CTX "
                           f"chooses one; with none installed, {_INSTALL}") from exc
    return cl.CommandQueue(ctx)


def _check_dtype(device, dtype):
    """TypeError unless `device` can hold `dtype` in the kernels."""
    if np.dtype(dtype) == np.float64 and not _has_fp64(device):
        raise TypeError(f"float64 needs an OpenCL device with double precision "
                        f"(cl_khr_fp64); {device.name!r} has none: use float32")


def _vector_width(device, dtype):
    """The row kernel's VEC: the device's preferred width for the arithmetic type."""
    width = (device.preferred_vector_width_double if dtype == np.float64
             else device.preferred_vector_width_float)
    return 1 << (min(max(width, 1), 16).bit_length() - 1)  # 1, 2, 4, 8 or 16


def _options(device, dtype):
    """The -D options of the program for `dtype` on `device` (see the kernel source)."""
    if dtype.kind == "f":
        opts = [f"-DREAL_T={_CTYPES[dtype.str[1:]]}",
                f"-DACC_T={_CTYPES[_acc_dtype(dtype).str[1:]]}",
                f"-DVEC={_vector_width(device, dtype)}"]
        if dtype == np.float16:
            opts.append("-DXENTC_HALF")
        if dtype == np.float64:
            opts.append("-DXENTC_FP64")
        return opts
    if dtype.kind in "iub":
        unsigned = _CTYPES[f"u{dtype.itemsize}"]
        return [f"-DINT_T={unsigned if dtype.kind == 'b' else _CTYPES[dtype.str[1:]]}",
                f"-DIACC_T={'long' if dtype.kind == 'i' else 'ulong'}",
                f"-DELEM_T={unsigned}"]
    raise TypeError(f"dtype {dtype} is not supported by the OpenCL engine")


@functools.cache
def _kernels(context, device, dtype):
    """{name: (kernel, group size, local bytes per lane)} of `dtype`'s program on `device`.

    Built once per (context, device, dtype); `clear_cache` drops them.
    """
    program = cl.Program(context, _SOURCE).build(options=_options(device, dtype),
                                                 devices=[device])
    acc_bytes = 4 if dtype in (np.float16, np.float32) else 8  # ACC_T, or a 64-bit IACC_T
    local = {"xentc_rows": 4 * acc_bytes, "xentc_proba": 3 * acc_bytes,
             "xentc_reduce": acc_bytes, "xentc_reduce_final": acc_bytes,
             "xentc_targets": acc_bytes + 8}
    cpu = _is_cpu(device)
    out = {}
    for kernel in program.all_kernels():
        per_lane = local.get(kernel.function_name, 0)
        cap = _CPU_ROWS_GROUP if cpu and kernel.function_name in _ROW_KERNELS else _MAX_GROUP
        limit = min(cap, device.max_work_group_size,
                    kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, device))
        if per_lane:
            limit = min(limit, device.local_mem_size // per_lane)
        # A power of two: the trees halve it.
        out[kernel.function_name] = (kernel, 1 << (limit.bit_length() - 1), per_lane)
    return out


def _kernel(queue, dtype, kernel_name):
    return _kernels(queue.context, queue.device, np.dtype(dtype))[kernel_name]


def _launch(queue, dtype, kernel_name, n_groups, args, inputs, outputs):
    """Run `n_groups` groups of a kernel on `queue` after the events of `inputs`.

    `outputs` get the launch's event, so that whatever uses them next,
    on any queue, waits for it.
    """
    kernel, size, per_lane = _kernel(queue, dtype, kernel_name)
    if per_lane:
        args = (*args, cl.LocalMemory(size * per_lane))
    wait_for = [ev for a in inputs if a is not None for ev in a.events]
    with _launch_lock:
        event = kernel(queue, (n_groups * size,), (size,), *args, wait_for=wait_for or None)
    for a in outputs:
        if a is not None:
            a.add_event(event)


def _buf(a):
    """(buffer, offset in elements) of a pyopencl array; (None, 0) for None."""
    if a is None:
        return None, np.int64(0)
    if a.offset % a.dtype.itemsize:
        raise ValueError("pyopencl array offset is not a multiple of its item size")
    return a.base_data, np.int64(a.offset // a.dtype.itemsize)


def _empty(like, shape, dtype=None):
    """An uninitialized C-contiguous array on `like`'s queue, from its allocator."""
    return cla.empty(like.queue, tuple(shape), np.dtype(dtype or like.dtype),
                     allocator=like.allocator)


def _stride_groups(queue, dtype, kernel_name, n):
    """Groups for a grid-stride kernel over `n` items."""
    return max(1, min(_MAX_GROUPS, -(-n // _kernel(queue, dtype, kernel_name)[1])))


def _copy_into(dst, src):
    """dst[...] = src for one shape and item size, any strides, on dst's queue."""
    if dst.size == 0:
        return dst
    size = dst.dtype.itemsize
    if any(s % size for s in src.strides + dst.strides):
        raise ValueError("pyopencl array strides are not multiples of its item size")
    # A 0-d copy has no geometry, but a buffer cannot be empty.
    geom = np.array([*dst.shape, *(s // size for s in src.strides + dst.strides)] or [0],
                    dtype=np.int64)
    geom_buf = cl.Buffer(dst.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                         hostbuf=geom)
    elem = np.dtype(f"u{size}")
    _launch(dst.queue, elem, "xentc_copy", _stride_groups(dst.queue, elem, "xentc_copy", dst.size),
            (np.int64(dst.size), np.int32(dst.ndim), geom_buf, *_buf(src), *_buf(dst)),
            [src], [dst])
    return dst


def _c_contiguous(a):
    """`a` if C-contiguous, else a C-contiguous copy on its queue."""
    return a if a.flags.c_contiguous else _copy_into(_empty(a, a.shape), a)


def _moveaxis(a, source, destination):
    """`a` with axis `source` moved to `destination`, as a C-contiguous array."""
    src = operator.index(source) % a.ndim
    dst = operator.index(destination) % a.ndim
    order = [k for k in range(a.ndim) if k != src]
    order.insert(dst, src)
    return _c_contiguous(a.transpose(order))


def _as_type(a, dtype):
    """`a` as a C-contiguous array of `dtype` (a copy only when needed)."""
    a = _c_contiguous(a)
    return a if a.dtype == dtype else a.astype(dtype)


def _reduce(a, op, axis=None):
    """Reduction of `a` on its queue: whole (a 0-d array) or along `axis`.

    Floats accumulate in ACC_T and give `a`'s dtype; integers accumulate in
    and give int64 (uint64 for unsigned).
    """
    queue, dtype = a.queue, np.dtype(a.dtype)
    if dtype.kind == "b":
        a, dtype = a.view(np.uint8), np.dtype(np.uint8)
    if axis is None:
        shape, a = (), _c_contiguous(a).reshape(-1)
    else:
        axis = operator.index(axis) % a.ndim
        shape = a.shape[:axis] + a.shape[axis + 1:]
        a = _moveaxis(a, axis, -1)
    if dtype.kind == "f":
        _check_dtype(queue.device, dtype)
        acc, out_dtype = _acc_dtype(dtype), dtype
        ident = {_RED_MIN: np.inf, _RED_MAX: -np.inf}.get(op, 0)
    else:
        acc = out_dtype = np.dtype(np.int64 if dtype.kind == "i" else np.uint64)
        info = np.iinfo(dtype)
        ident = {_RED_MIN: info.max, _RED_MAX: info.min}.get(op, 0)
    ident, n = acc.type(ident), a.size
    group = _kernel(queue, dtype, "xentc_reduce")[1]
    if axis is None:
        # Stage 1: at most `group` partial results, so that one group ends it.
        row_len = max(1, -(-n // min(group, max(1, -(-n // group)))))
        n_rows = max(1, -(-n // row_len))
    else:
        n_rows, row_len = math.prod(shape), a.shape[-1]
    part = _empty(a, (n_rows,), acc)
    if n_rows:
        _launch(queue, dtype, "xentc_reduce", n_rows,
                (np.int64(n), np.int64(row_len), *_buf(a), np.int32(op), ident, part.base_data),
                [a], [part])
    if axis is not None:
        return _as_type(part, out_dtype).reshape(shape)
    out = _empty(a, (), out_dtype)
    _launch(queue, dtype, "xentc_reduce_final", 1,
            (np.int64(n_rows), part.base_data, np.int32(op), ident, *_buf(out)), [part], [out])
    return out


def _take_rows(a, idx):
    """out[i, k] = a[i, idx[i, k]] for 2-D `a` and `idx` with as many rows."""
    a, idx = _c_contiguous(a), _as_type(idx, np.int64)
    out = _empty(a, idx.shape)
    if out.size:
        elem = np.dtype(f"u{a.dtype.itemsize}")
        _launch(a.queue, elem, "xentc_take", _stride_groups(a.queue, elem, "xentc_take", out.size),
                (np.int64(a.shape[0]), np.int64(a.shape[1]), np.int64(idx.shape[1]),
                 *_buf(a), *_buf(idx), *_buf(out)), [a, idx], [out])
    return out


# ---------------------------------------------------------------------------
# the namespace of pyopencl arrays
# ---------------------------------------------------------------------------


def _unsupported(what):
    return NotImplementedError(
        f"{what} is not available for pyopencl arrays: xentc's OpenCL namespace covers what "
        f"its API layer needs (use backend='auto' or 'opencl' for pyopencl arrays; "
        f"backend='generic' cannot serve them)")


class _Info:
    """The array API's inspection object for the OpenCL namespace (one device: the queue's)."""

    def __init__(self, queue):
        self._device = queue.device

    def capabilities(self):
        """What the namespace supports beyond the basics: no data-dependent shapes."""
        return {"boolean indexing": False, "data-dependent shapes": False,
                "max dimensions": None}

    def default_device(self):
        """The queue's ``pyopencl.Device``."""
        return self._device

    def devices(self):
        """The one device of the namespace."""
        return [self._device]

    def default_dtypes(self, *, device=None):
        """float64 where the device has it (else float32), int64 for integers and indices."""
        real = np.dtype(np.float64 if _has_fp64(self._device) else np.float32)
        return {"real floating": real, "complex floating": np.result_type(real, np.complex64),
                "integral": np.dtype(np.int64), "indexing": np.dtype(np.int64)}

    def dtypes(self, *, device=None, kind=None):
        """{name: dtype} of the dtypes arrays may have here, of `kind` if given."""
        names = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                 "uint64", "float16", "float32"] + (["float64"] if _has_fp64(self._device) else [])
        found = {n: np.dtype(n) for n in names}
        if kind is None:
            return found
        return {n: d for n, d in found.items() if _Namespace.isdtype(d, kind)}


class _Namespace:
    """The array-API functions xentc's API layer calls, over ``pyopencl.array`` on one queue.

    Results are C-contiguous ``pyopencl.array.Array`` on the queue:
    pyopencl's element-wise kernels and ``get()`` assume contiguous data, so
    `moveaxis` copies where NumPy would return a view. Exceptions:
    whole-array `min`, `max`, `all` and `any` bring their scalar to the host
    as a 0-d NumPy array (pyopencl arrays have no ``__int__``, and the API
    layer's checks need the value there); `unique_values` and
    `unique_inverse` sort on the host. Booleans are int8, as pyopencl's
    comparisons give them. Namespaces compare equal whatever their queue:
    they are one library, and the dispatch layer's cache of engine choices
    then holds one entry (and one queue) per device and backend.
    """

    __name__ = "pyopencl.array"
    float16, float32, float64 = (np.dtype(t) for t in (np.float16, np.float32, np.float64))
    int8, int16, int32, int64 = (np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))
    uint8, uint16, uint32, uint64 = (np.dtype(t) for t in (np.uint8, np.uint16, np.uint32,
                                                           np.uint64))
    bool = np.dtype(np.int8)
    _KINDS: ClassVar[dict] = {"bool": "b", "signed integer": "i", "unsigned integer": "u",
                              "integral": "iu", "real floating": "f", "complex floating": "c",
                              "numeric": "iufc"}

    def __init__(self, queue):
        self.queue = queue

    def __eq__(self, other):
        return isinstance(other, _Namespace)

    def __hash__(self):
        return hash(_Namespace)

    def __repr__(self):
        return f"<xentc namespace for pyopencl.array on {self.queue.device.name!r}>"

    def __getattr__(self, attr):
        # An AttributeError, so that hasattr() and getattr(..., default) keep working.
        raise AttributeError(str(_unsupported(f"`{attr}`")))

    def __array_namespace_info__(self):
        """The array API's inspection object (default dtypes, the device)."""
        return _Info(self.queue)

    def _array(self, value, dtype=None):
        """A C-contiguous device array from a pyopencl array or a host value."""
        if _is_cl(value):
            return _as_type(value, value.dtype if dtype is None else np.dtype(dtype))
        return cla.to_device(self.queue, np.asarray(value, dtype=dtype))

    def _full(self, shape, value, dtype):
        out = cla.empty(self.queue, tuple(shape), np.dtype(dtype))
        out.fill(value)
        return out

    # -- dtypes ------------------------------------------------------------

    @staticmethod
    def isdtype(dtype, kind):
        """Whether `dtype` is of `kind` (a name, a dtype or a tuple of them), as the array API."""
        if isinstance(kind, tuple):
            return any(_Namespace.isdtype(dtype, k) for k in kind)
        dtype = np.dtype(dtype)
        if not isinstance(kind, str):
            return dtype == np.dtype(kind)
        if kind not in _Namespace._KINDS:
            raise ValueError(f"unknown dtype kind {kind!r}")
        return dtype.kind in _Namespace._KINDS[kind]

    def astype(self, x, dtype, /, *, copy=True):
        """`x` as `dtype`, a copy only when needed unless `copy`; TypeError for
        float64 on a device without it."""
        x = _c_contiguous(x)
        if x.dtype == np.dtype(dtype):
            return x.copy() if copy else x
        _check_dtype(self.queue.device, dtype)
        return x.astype(dtype)

    @staticmethod
    def finfo(type, /):
        """NumPy's ``finfo`` of a dtype or of an array's dtype."""
        return np.finfo(type.dtype if _is_cl(type) else type)

    # -- creation ----------------------------------------------------------

    def asarray(self, obj, /, *, dtype=None, device=None, copy=None):
        """`obj` on the queue: pyopencl arrays as they are, host values copied there.

        `device`, if given, must be the queue's ``pyopencl.Device``.
        """
        if device is not None and device != self.queue.device:
            raise ValueError(f"this namespace's arrays live on {self.queue.device.name!r}, "
                             f"not on {device!r}")
        a = self._array(obj, dtype)
        return a.copy() if copy and a is obj else a

    def empty(self, shape, *, dtype=None, device=None):
        """An uninitialized array (float32 by default)."""
        return cla.empty(self.queue, tuple(shape), np.dtype(dtype or np.float32))

    def empty_like(self, x, /, *, dtype=None, device=None):
        """An uninitialized array of `x`'s shape."""
        return _empty(x, x.shape, dtype)

    def zeros(self, shape, *, dtype=None, device=None):
        """An array of zeros (float32 by default)."""
        return self._full(shape, 0, dtype or np.float32)

    def ones(self, shape, *, dtype=None, device=None):
        """An array of ones (float32 by default)."""
        return self._full(shape, 1, dtype or np.float32)

    def full(self, shape, fill_value, *, dtype=None, device=None):
        """An array filled with `fill_value`."""
        return self._full(shape, fill_value, dtype or np.asarray(fill_value).dtype)

    def zeros_like(self, x, /, *, dtype=None, device=None):
        """Zeros of `x`'s shape and (by default) dtype."""
        return self._full(x.shape, 0, dtype or x.dtype)

    def ones_like(self, x, /, *, dtype=None, device=None):
        """Ones of `x`'s shape and (by default) dtype."""
        return self._full(x.shape, 1, dtype or x.dtype)

    def full_like(self, x, /, fill_value, *, dtype=None, device=None):
        """`fill_value` in `x`'s shape and (by default) dtype."""
        return self._full(x.shape, fill_value, dtype or x.dtype)

    # -- shape -------------------------------------------------------------

    def reshape(self, x, /, shape, *, copy=None):
        """`x` with a new shape (C order; one entry may be -1).

        Raises ValueError with ``copy=False`` where only a copy gives the shape.
        """
        if copy is False and not x.flags.c_contiguous:
            raise ValueError("this reshape of a non-contiguous pyopencl array needs a copy")
        a = _c_contiguous(x).reshape(tuple(shape))
        return a.copy() if copy and a.base_data is x.base_data else a

    def moveaxis(self, x, source, destination, /):
        """`x` with axis `source` moved to `destination`, as a C-contiguous array."""
        return _moveaxis(x, source, destination)

    def expand_dims(self, x, /, *, axis=0):
        """`x` with a new axis of length one at `axis`."""
        axis = operator.index(axis)
        if not -x.ndim - 1 <= axis <= x.ndim:
            raise ValueError(f"`axis` {axis} is out of range for {x.ndim + 1} dimensions")
        axis %= x.ndim + 1
        return self.reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])

    # -- element-wise ------------------------------------------------------

    def where(self, condition, x1, x2, /):
        """`x1` where `condition` is nonzero, else `x2` (one shape, or 0-d values)."""
        cond = self._array(condition)
        if cond.dtype.kind not in "bu" and cond.dtype != np.int8:  # if_positive tests > 0
            cond = cond != 0
        # Python scalars take the arrays' dtype, as in the array API.
        arrays = [a for a in (x1, x2) if _is_cl(a)]
        dtype = np.result_type(*(a.dtype for a in arrays)) if arrays else np.asarray(x1).dtype
        a, b = self._array(x1, dtype), self._array(x2, dtype)
        for v in (a, b):
            if v.shape not in ((), cond.shape):
                raise _unsupported(f"where() broadcasting {v.shape} to {cond.shape}")
        return cla.if_positive(cond, a, b)

    def multiply(self, x1, x2, /):
        """x1 * x2: arrays of one shape, or with a scalar or a 0-d array."""
        return x1 * x2

    def divide(self, x1, x2, /):
        """x1 / x2: arrays of one shape, or with a scalar or a 0-d array."""
        return x1 / x2

    def maximum(self, x1, x2, /):
        """The larger of x1 and x2, NaN where either is: arrays of one shape, or with a
        0-d array."""
        return cla.maximum(_c_contiguous(x1), _c_contiguous(x2))

    def clip(self, x, /, min=None, max=None):
        """`x` limited to [`min`, `max`] (Python scalars, or arrays of x's shape); NaN
        stays NaN."""
        x = _c_contiguous(x)
        for bound, limit in ((min, cla.maximum), (max, cla.minimum)):
            if bound is not None:
                # A Python float would make the bound a double in the kernel.
                x = limit(x, bound if _is_cl(bound) else x.dtype.type(bound))
        return x

    def log(self, x, /):
        """The natural logarithm of each element."""
        return clmath.log(_c_contiguous(x))

    def isnan(self, x, /):
        """Which elements are NaN (none in integer arrays)."""
        x = _c_contiguous(x)
        if x.dtype.kind != "f":
            return self.zeros_like(x, dtype=self.bool)
        return x != x  # noqa: PLR0124 - NaN alone is unequal to itself; pyopencl has no isnan

    def isinf(self, x, /):
        """Which elements are infinite (none in integer arrays)."""
        x = _c_contiguous(x)
        return abs(x) == np.inf if x.dtype.kind == "f" else self.zeros_like(x, dtype=self.bool)

    def concat(self, arrays, /, *, axis=0):
        """`arrays` joined along `axis`, in their result dtype; the other axes must match."""
        first = arrays[0]
        axis = operator.index(axis) % first.ndim
        if any(a.shape[:axis] + a.shape[axis + 1:] != first.shape[:axis] + first.shape[axis + 1:]
               for a in arrays):
            raise ValueError(f"concat() along axis {axis} needs arrays whose other axes "
                             f"match, got shapes {[a.shape for a in arrays]}")
        dtype = np.result_type(*(a.dtype for a in arrays))
        shape = list(first.shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        out = _empty(first, shape, dtype)
        start = 0
        for a in arrays:
            span = (slice(None),) * axis + (slice(start, start + a.shape[axis]),)
            _copy_into(out[span], _as_type(a, dtype))
            start += a.shape[axis]
        return out

    # -- sets --------------------------------------------------------------
    # Through the host with NumPy: they serve labels, one value per sample
    # (O(N), not the O(N*C) work that stays on the device), whose few distinct
    # values the API layer needs on the host anyway; the results are on the device.

    def unique_values(self, x, /):
        """The sorted distinct elements of `x`, as a 1-D array."""
        return self._array(np.unique(_c_contiguous(x).get()))

    def unique_inverse(self, x, /):
        """(sorted distinct elements, each element's index among them in x's shape)."""
        values, inverse = np.unique(_c_contiguous(x).get(), return_inverse=True)
        return self._array(values), self._array(inverse.reshape(x.shape))

    # -- indexing ----------------------------------------------------------

    def take(self, x, indices, /, *, axis=None):
        """x[indices] for 1-D `x`; indices must lie in ``[0, len(x))``."""
        if x.ndim != 1 or axis not in (None, 0, -1):
            raise _unsupported("take() beyond 1-D arrays")
        idx = self._array(indices)
        return _take_rows(x.reshape(1, x.shape[0]), idx.reshape(1, idx.size)).reshape(idx.shape)

    def take_along_axis(self, x, indices, /, *, axis=-1):
        """out[i, k] = x[i, indices[i, k]] for 2-D `x`; indices in ``[0, x.shape[1])``."""
        if x.ndim != 2 or axis not in (1, -1):
            raise _unsupported("take_along_axis() beyond the last axis of 2-D arrays")
        if indices.ndim != 2 or indices.shape[0] != x.shape[0]:
            raise ValueError(f"`indices` of shape {indices.shape} do not match "
                             f"{x.shape} along the first axis")
        return _take_rows(x, indices)

    # -- reductions --------------------------------------------------------

    @staticmethod
    def _no_keepdims(what, keepdims):
        if keepdims:
            raise _unsupported(f"{what}(keepdims=True)")

    def sum(self, x, /, *, axis=None, dtype=None, keepdims=False):
        """Sum on the device in a fixed order; floats accumulate in float32 (float64 for
        float64) and give `x`'s dtype, integers give int64 (uint64 if unsigned)."""
        self._no_keepdims("sum", keepdims)
        total = _reduce(x, _RED_SUM, axis)
        return total if dtype is None else _as_type(total, np.dtype(dtype))

    def count_nonzero(self, x, /, *, axis=None, keepdims=False):
        """Number of nonzero elements, as an int64 array on the device."""
        self._no_keepdims("count_nonzero", keepdims)
        if x.dtype.kind == "f":  # counted as integers: a float16 count would round
            x = _c_contiguous(x) != 0
        return _as_type(_reduce(x, _RED_COUNT, axis), np.dtype(np.int64))

    def _extremum(self, x, op, what, axis, keepdims):
        self._no_keepdims(what, keepdims)
        if x.size == 0:
            raise ValueError(f"zero-size array to reduction operation {what} "
                             f"which has no identity")
        if axis is not None:
            return _as_type(_reduce(x, op, axis), x.dtype)
        return _reduce(x, op).get().astype(x.dtype)

    def min(self, x, /, *, axis=None, keepdims=False):
        """Smallest element (NaN if any): whole-array as a 0-d NumPy array on the host."""
        return self._extremum(x, _RED_MIN, "min", axis, keepdims)

    def max(self, x, /, *, axis=None, keepdims=False):
        """Largest element (NaN if any): whole-array as a 0-d NumPy array on the host."""
        return self._extremum(x, _RED_MAX, "max", axis, keepdims)

    def _n_true(self, x, what, axis, keepdims):
        if axis is not None:
            raise _unsupported(f"{what}(axis=...)")
        return int(self.count_nonzero(x, keepdims=keepdims).get())

    def all(self, x, /, *, axis=None, keepdims=False):
        """Whether every element is nonzero (NaN is): whole-array only, a 0-d NumPy bool on
        the host, as whole-array `min`."""
        return np.asarray(self._n_true(x, "all", axis, keepdims) == x.size)

    def any(self, x, /, *, axis=None, keepdims=False):
        """Whether some element is nonzero (NaN is): whole-array only, a 0-d NumPy bool on
        the host, as whole-array `max`."""
        return np.asarray(self._n_true(x, "any", axis, keepdims) > 0)


def namespace(*arrays):
    """The namespace of pyopencl arrays for the API layer, on the first array's queue.

    Parameters
    ----------
    *arrays : pyopencl.array.Array or None
        The caller's arrays (None entries are skipped).

    Returns
    -------
    object
        An array namespace over ``pyopencl.array`` bound to the queue of the
        first array.

    Raises
    ------
    TypeError
        A host array among pyopencl arrays (xentc never copies between host
        and device implicitly), or a dtype the device cannot compute with.
    ValueError
        Arrays without a queue, or on different contexts.
    """
    _require()
    arrays = [a for a in arrays if a is not None]
    for a in arrays:
        if not _is_cl(a):
            raise TypeError(f"pyopencl arrays cannot be mixed with {type(a).__module__}."
                            f"{type(a).__name__}: xentc does not copy between host and device "
                            f"implicitly; copy it with pyopencl.array.to_device(queue, array)")
    queue = arrays[0].queue
    if any(a.queue is None for a in arrays):
        raise ValueError("a pyopencl array has no queue: attach one with array.with_queue(queue)")
    if any(a.context != queue.context for a in arrays):
        raise ValueError("pyopencl arrays are on different OpenCL contexts")
    for a in arrays:
        # pyopencl's own element-wise kernels, which the API layer uses, do
        # half arithmetic; the row kernel alone would not need it.
        if a.dtype == np.float16 and not _has_fp16(queue.device):
            raise TypeError(f"float16 pyopencl arrays need a device with half-precision "
                            f"arithmetic (cl_khr_fp16); {queue.device.name!r} has none "
                            f"(float16 NumPy arrays with backend='opencl' work anywhere)")
        _check_dtype(queue.device, a.dtype)
    return _Namespace(queue)


def device_key(array):
    """A hashable name of the OpenCL device of a pyopencl array.

    Parameters
    ----------
    array : pyopencl.array.Array

    Returns
    -------
    str
        ``"opencl:<device name> (<platform name>)"``.
    """
    device = array.queue.device if array.queue is not None else array.context.devices[0]
    return f"opencl:{device.name} ({device.platform.name})"


def accepts(xp, device, explicit):
    """Whether this engine serves arrays of `xp` (see ``xentc._engines``).

    Parameters
    ----------
    xp : namespace
        The caller's array namespace.
    device : str
        Its device key (every OpenCL device is served).
    explicit : bool
        Whether the caller named ``backend="opencl"``.

    Returns
    -------
    bool
        True for pyopencl arrays; for CPU arrays of any namespace only when
        `explicit` (they are then copied to the default device and back).

    Raises
    ------
    ImportError
        `explicit` without pyopencl installed, naming what to install.
    """
    if isinstance(xp, _Namespace):
        return True
    if not explicit:
        return False
    _require()
    return "cpu" in device.lower()


# ---------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------


def _rows_layout(a):
    """(array, row stride in elements) with each row's elements contiguous (copied if not)."""
    size = a.dtype.itemsize
    if (a.shape[1] <= 1 or a.strides[1] == size) and a.strides[0] % size == 0:
        return a, a.strides[0] // size
    return _copy_into(_empty(a, a.shape), a), a.shape[1]


def _lanes_per_row(device, n_classes, group, vec):
    """A power of two: 1 (a row per work-item) for short rows or a CPU device, up to
    the group size for long rows."""
    if _CPU_ROW_PER_ITEM and _is_cpu(device):
        return 1
    want = max(1, -(-n_classes // (_ELEMS_PER_LANE * vec)))
    return min(group, 1 << (want - 1).bit_length())


def _device_rows(x, target, soft, weight, ignore_index, label_smoothing, want_loss, want_lse,
                 out_kind, grad_scale, grad_row_scale, out):
    """`rows` for pyopencl arrays, on x's queue."""
    queue, dtype = x.queue, np.dtype(x.dtype)
    if dtype.kind != "f":
        raise TypeError(f"`x` must be a floating-point array, got dtype {dtype}")
    _check_dtype(queue.device, dtype)
    acc = _acc_dtype(dtype)
    n_rows, n_classes = x.shape
    x, x_stride = _rows_layout(x)
    if target is not None:
        target = _as_type(target, np.dtype(np.int64))
    q_stride = 0
    if soft is not None:
        soft, q_stride = _rows_layout(soft if soft.dtype == dtype else _as_type(soft, dtype))
    weight = None if weight is None else _as_type(weight, acc)
    grad_row_scale = None if grad_row_scale is None else _as_type(grad_row_scale, acc)
    loss = (_empty(x, (n_rows,), acc)
            if want_loss and (target is not None or soft is not None) else None)
    lse = _empty(x, (n_rows,), acc) if want_lse else None
    res, out_stride = None, 0
    if out_kind != "none":
        if out is not None and (tuple(out.shape) != (n_rows, n_classes) or out.dtype != dtype):
            raise ValueError(f"`out` must have shape {(n_rows, n_classes)} and dtype {dtype}, "
                             f"got {tuple(out.shape)} and {out.dtype}")
        if out is not None and (n_classes <= 1 or out.strides[1] == dtype.itemsize) \
                and out.strides[0] % dtype.itemsize == 0:
            res, out_stride = out, out.strides[0] // dtype.itemsize
        else:  # a new array; copied into a strided `out` at the end
            res, out_stride = _empty(x, (n_rows, n_classes)), n_classes

    if n_rows:
        e = float(label_smoothing)
        flags = ((_HAS_TARGET if target is not None else 0) | (_HAS_SOFT if soft is not None else 0)
                 | (_HAS_WEIGHT if weight is not None else 0)
                 | (_HAS_LOSS if loss is not None else 0) | (_HAS_LSE if lse is not None else 0)
                 | (_HAS_ROW_SCALE if grad_row_scale is not None else 0))
        group = _kernel(queue, dtype, "xentc_rows")[1]
        lanes = _lanes_per_row(queue.device, n_classes, group,
                               _vector_width(queue.device, dtype))
        _launch(queue, dtype, "xentc_rows", -(-n_rows // (group // lanes)), (
            np.int64(n_rows), np.int64(n_classes), np.uint32(lanes),
            *_buf(x), np.int64(x_stride),
            *_buf(target), np.int64(ignore_index),
            *_buf(soft), np.int64(q_stride),
            *_buf(weight),
            acc.type(e), acc.type(1.0 - e), acc.type(e / n_classes),
            *_buf(loss), *_buf(lse),
            np.int32(_OUT_KINDS[out_kind]), *_buf(res), np.int64(out_stride),
            acc.type(grad_scale), *_buf(grad_row_scale),
            np.int32(flags)), [x, target, soft, weight, grad_row_scale, res], [loss, lse, res])
    if out is not None and res is not None and res is not out:
        res = _copy_into(out, res)
    return loss, lse, res


def rows(xp, x, *, target=None, soft=None, weight=None, ignore_index=-100,
         label_smoothing=0.0, want_loss=True, want_lse=False, out_kind="none",
         grad_scale=1.0, grad_row_scale=None, out=None, n_threads=None):
    """Per-row loss / lse / second result on an OpenCL device; see ``xentc._engines``.

    Parameters
    ----------
    xp : namespace
        The namespace of `x`: the OpenCL namespace for pyopencl arrays, or
        that of CPU arrays (``backend="opencl"``), which are copied to the
        default queue through NumPy (DLPack) and the results copied back.
    x : array
        (M, C) logits: float16 (storage; float32 arithmetic), float32, or
        float64 where the device has it.
    target, soft, weight, ignore_index, label_smoothing, want_loss, want_lse
        As in ``xentc._engines``.
    out_kind : {"none", "log_softmax", "softmax", "grad"}
        The second (M, C) result.
    grad_scale, grad_row_scale, out
        As in ``xentc._engines``; `out` may be `x` itself.
    n_threads : int, optional
        Accepted for the shared signature; the device sets its own parallelism.

    Returns
    -------
    tuple
        ``(loss, lse, out)`` as pyopencl arrays on x's queue (arrays of `xp`
        for CPU input), None where not asked for.
    """
    if out_kind not in _OUT_KINDS:
        raise ValueError(f"`out_kind` must be one of {tuple(_OUT_KINDS)}, got {out_kind!r}")
    _require()
    if _is_cl(x):
        return _device_rows(x, target, soft, weight, ignore_index, label_smoothing, want_loss,
                            want_lse, out_kind, grad_scale, grad_row_scale, out)
    return _host_rows(xp, x, target, soft, weight, ignore_index, label_smoothing, want_loss,
                      want_lse, out_kind, grad_scale, grad_row_scale, out)


def _host_to_device(queue, xp, a, widen):
    """A CPU array of any library as a pyopencl array on `queue` (None stays None).

    With `widen`, floating arrays go as float32 (for dtypes NumPy lacks: bfloat16).
    """
    if a is None:
        return None
    if widen and xp.isdtype(a.dtype, "real floating"):
        a = xp.astype(a, xp.float32)
    if not isinstance(a, np.ndarray):
        if getattr(a, "requires_grad", False):  # torch exports only detached tensors
            a = a.detach()
        a = np.from_dlpack(a)
    return cla.to_device(queue, np.ascontiguousarray(a))


def _device_to_host(xp, a):
    """A pyopencl array as an array of `xp` on the host (None stays None)."""
    if a is None:
        return None
    a = a.get()
    return a if xp.__name__.endswith("numpy") else xp.from_dlpack(a)


def _widened(xp, dtype):
    """Whether host arrays of `dtype` go to the device as float32: floating dtypes
    NumPy lacks (bfloat16), which no copy through NumPy can carry."""
    return dtype not in (xp.float16, xp.float32, xp.float64)


def _host_rows(xp, x, target, soft, weight, ignore_index, label_smoothing, want_loss, want_lse,
               out_kind, grad_scale, grad_row_scale, out):
    """`rows` for CPU arrays: copied to the default queue, the results copied back to `xp`."""
    queue = _default_queue()
    wide = _widened(xp, x.dtype)  # `out` comes back in x's dtype
    loss, lse, res = _device_rows(
        *(_host_to_device(queue, xp, a, wide) for a in (x, target, soft, weight)), ignore_index,
        label_smoothing, want_loss, want_lse, out_kind, grad_scale,
        _host_to_device(queue, xp, grad_row_scale, wide), None)
    loss, lse, res = (_device_to_host(xp, a) for a in (loss, lse, res))
    if res is not None and wide:
        res = xp.astype(res, x.dtype)
    if res is not None and out is not None:
        out[...] = res
        res = out
    return loss, lse, res


def targets(xp, target, n_classes, ignore_index, weight):
    """Check class targets and sum their weights on the device; see ``xentc._engines``.

    Parameters
    ----------
    xp : namespace
        The namespace of `target` (pyopencl arrays, or CPU arrays copied to
        the default queue).
    target : array
        (M,) int64 class indices.
    n_classes : int
        C: valid targets lie in ``[0, C)``.
    ignore_index : int
        The target value that is skipped.
    weight : array or None
        (C,) class weights.

    Returns
    -------
    float
        The sum of ``weight[target]`` over the targets that are not
        `ignore_index` (their count without `weight`): the mean's denominator.

    Raises
    ------
    IndexError
        For the first target outside ``[0, C)`` that is not `ignore_index`.
    """
    _require()
    if not _is_cl(target):
        queue = _default_queue()
        target, weight = (_host_to_device(queue, xp, a, False) for a in (target, weight))
    queue, n = target.queue, target.shape[0]
    if n == 0:
        return 0.0
    target = _as_type(target, np.dtype(np.int64))
    dtype = np.dtype(np.float32) if weight is None else np.dtype(weight.dtype)
    weight = None if weight is None else _c_contiguous(weight)
    group = _kernel(queue, dtype, "xentc_targets")[1]
    chunk = -(-n // min(group, -(-n // group)))
    n_groups = -(-n // chunk)
    part_sum = _empty(target, (n_groups,), _acc_dtype(dtype))
    part_bad = _empty(target, (n_groups,), np.int64)
    _launch(queue, dtype, "xentc_targets", n_groups,
            (np.int64(n), np.int64(chunk), np.int64(n_classes), np.int64(ignore_index),
             *_buf(target), *_buf(weight), np.int32(weight is not None), part_sum.base_data,
             part_bad.base_data), [target, weight], [part_sum, part_bad])
    first_bad = int(part_bad.get().min())
    if first_bad < n:
        value = int(target[first_bad].get())
        raise IndexError(f"`target` value {value} out of range for {n_classes} classes")
    # The partial sums come to the host with the answer; added there in float64.
    return float(np.sum(part_sum.get(), dtype=np.float64))


# ---------------------------------------------------------------------------
# proba_rows (log_loss)
# ---------------------------------------------------------------------------


def _device_proba(p, target):
    """`proba_rows` for pyopencl arrays, on p's queue."""
    queue, dtype = p.queue, np.dtype(p.dtype)
    if dtype.kind != "f":
        raise TypeError(f"`p` must be a floating-point array, got dtype {dtype}")
    _check_dtype(queue.device, dtype)
    n_rows, n_classes = p.shape
    p, p_stride = _rows_layout(p)
    if target is not None:
        target = _as_type(target, np.dtype(np.int64))
    total = _empty(p, (n_rows,))
    picked = None if target is None else _empty(p, (n_rows,))
    group = _kernel(queue, dtype, "xentc_proba")[1]
    lanes = _lanes_per_row(queue.device, n_classes, group, _vector_width(queue.device, dtype))
    n_groups = -(-n_rows // (group // lanes))
    part = _empty(p, (2, n_groups), _acc_dtype(dtype))
    _launch(queue, dtype, "xentc_proba", n_groups, (
        np.int64(n_rows), np.int64(n_classes), np.uint32(lanes), *_buf(p), np.int64(p_stride),
        *_buf(target), *_buf(total), *_buf(picked), part.base_data, np.int64(n_groups)),
        [p, target], [total, picked, part])
    # The groups' extremes, finished by one more launch: two numbers come back.
    neg_lo, hi = _reduce(part, _RED_MAX, axis=1).get()
    return -float(neg_lo), float(hi), total, picked


def proba_rows(xp, p, target=None, *, n_threads=None):
    """Extremes, row sums and target entries of probabilities in one device pass;
    see ``xentc._engines``.

    Parameters
    ----------
    xp : namespace
        The namespace of `p`: the OpenCL namespace for pyopencl arrays, or
        that of CPU arrays (``backend="opencl"``), which are copied to the
        default queue and the results copied back.
    p : array
        (M, C) probabilities, M, C >= 1: float16 (read as stored, summed in
        float32), float32, or float64 where the device has it.
    target : array, optional
        (M,) int64 class indices in ``[0, C)``.
    n_threads : int, optional
        Accepted for the shared signature; the device sets its own parallelism.

    Returns
    -------
    tuple
        ``(lo, hi, total, picked)``: the smallest and largest entry of `p`
        (Python floats, NaN when `p` holds a NaN), the (M,) row sums and the
        (M,) ``p[i, target[i]]`` (None without `target`), in p's dtype and
        namespace (on p's queue for pyopencl arrays).

    Raises
    ------
    TypeError
        A dtype the device cannot hold (float64 without cl_khr_fp64).
    """
    _require()
    if _is_cl(p):
        return _device_proba(p, target)
    wide = _widened(xp, p.dtype)
    queue = _default_queue()
    lo, hi, total, picked = _device_proba(_host_to_device(queue, xp, p, wide),
                                          _host_to_device(queue, xp, target, False))
    total, picked = (_device_to_host(xp, a) for a in (total, picked))
    if wide:  # back to p's dtype, which the contract gives them
        total = xp.astype(total, p.dtype)
        picked = None if picked is None else xp.astype(picked, p.dtype)
    return lo, hi, total, picked
