"""The OpenCL C source of every kernel of the OpenCL engine, as one string.

Kept apart from the Python that builds and launches it (``_opencl_runtime``)
so that the text can be read, and hashed for the build verdicts, on its own.
"""

SOURCE = r"""//CL//
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
#define HAS_SCALE 64
#define HAS_CAP 128

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

/* acc += v, compensated (Kahan): comp carries the rounding error of the
   last addition into the next. A lane adds C / (R * VEC) terms in order
   (50000 for a scalar lane on a long row), and a plain sum then loses
   accuracy with the length of the row and the order the device chose; with
   the carry a row's sums are good to a few ulp whatever the width, group
   size or implementation. Once the sum is not finite (an infinite logit's
   term) the carry stays 0, so that infinities stay infinities, not NaN.
   The row kernel carries it over plain partial sums of SUM_BLOCK steps: as
   accurate, and the carry's cost (a third of a row's time on PoCL when paid
   per term) is paid once per block. */
#define SUM_BLOCK 64
#define KAHAN_ADD(acc, comp, v)                                        \
    do {                                                               \
        const VACC y_ = (v) - (comp);                                  \
        const VACC t_ = (acc) + y_;                                    \
        (comp) = VSELECT((VACC)0, (t_ - (acc)) - y_, isfinite(t_));    \
        (acc) = t_;                                                    \
    } while (0)

/* The logits the row maths see (RowJob's logit_scale sc and softcap cap,
   su = sc / cap): z = cap * tanh(x * su) with HAS_CAP, z = sc * x with
   HAS_SCALE, x itself otherwise. A macro: it takes scalars and vectors
   alike. zf holds the flags of the map (ZMAP_FLAGS) alone. */
#define ZMAP_FLAGS (HAS_SCALE | HAS_CAP)
#define ZMAP(v, zf, sc, cap, su)                                       \
    ((zf) & HAS_CAP ? (cap) * tanh((v) * (su)) : (zf) & HAS_SCALE ? (sc) * (v) : (v))

/* f(zf, ...) for a row with the map `flags`, zf a literal 0 for a row
   without: inlined, that call is the loop without ZMAP. A branch on the
   (uniform) flags per vector cost the default rows about 5% on PoCL,
   which leaves it in the loop. */
#define ZMAP_CALL(f, flags, ...)                                       \
    do {                                                               \
        if ((flags) & ZMAP_FLAGS)                                      \
            f((flags) & ZMAP_FLAGS, __VA_ARGS__);                      \
        else                                                           \
            f(0, __VA_ARGS__);                                         \
    } while (0)

/* z of logits [c, c + VEC), -inf from the n-th on as in vload_real: a
   softcap would map that padding to -cap (sc * -inf stays -inf). */
VACC vload_z(const __global REAL_T *p, const long c, const long n, const int zf,
             const ACC_T sc, const ACC_T cap, const ACC_T su)
{
    const VACC z = ZMAP(vload_real(p, c, n, -INFINITY), zf, sc, cap, su);
    if (n >= VEC || !(zf & HAS_CAP))
        return z;
    return VSELECT(z, (VACC)-INFINITY, IOTA >= (ACC_T)n);
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
                            __local long *lbad)
{
    /* L longs, then L sums. The longs come first: a local argument is only
       aligned for its own type (NVIDIA's driver gives a float buffer 4-byte
       alignment), and longs after 4L bytes of floats could then be
       misaligned, which faults there (OUT_OF_RESOURCES). */
    __local ACC_T *buf = (__local ACC_T *)(lbad + get_local_size(0));
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

/* Pass 2 of xentc_rows on a lane's logits, from c0 in steps of `step`:
   its ones, rest, S and A (see there), the sums carried per block.
   Past the row's end z reads as -inf: exp gives 0, and the linear sums
   mask it (its coefficient is 0, its d infinite). */
void row_sums(const int zf, const ACC_T sc, const ACC_T cap, const ACC_T su,
              const __global REAL_T *xr, const long c0, const long C, const long step,
              const ACC_T m, const int lin, const __global ACC_T *w,
              const __global REAL_T *q, const ACC_T qa, const ACC_T qb,
              VACC *ones, VACC *rest, VACC *S, VACC *A)
{
    VACC crest = 0, cS = 0, cA = 0;
    for (long b = c0; b < C; b += SUM_BLOCK * step) {
        const long b1 = min(C, b + SUM_BLOCK * step);
        VACC brest = 0, bS = 0, bA = 0;
        for (long c = b; c < b1; c += step) {
            const VACC d = vload_z(xr, c, C - c, zf, sc, cap, su) - m;
            *ones += VSELECT((VACC)0, (VACC)1, d == 0);
            brest += VSELECT(exp(d), (VACC)0, d == 0);
            if (lin) {
                const VACC k = coef(w, q, c, C - c, qa, qb);
                bS += VSELECT(k * d, (VACC)0, IOTA >= (ACC_T)(C - c));
                bA += k;
            }
        }
        KAHAN_ADD(*rest, crest, brest);
        if (lin) {
            KAHAN_ADD(*S, cS, bS);
            KAHAN_ADD(*A, cA, bA);
        }
    }
}

/* Pass 3 of xentc_rows: a lane's logits of row xr, from c0 in steps of
   `step`, give the row's out o, which may be xr: each vector of x is read
   before its out is written. */
void write_row(const int zf, const ACC_T sc, const ACC_T cap, const ACC_T su,
               const __global REAL_T *xr, __global REAL_T *o, const long c0, const long C,
               const long step, const int out_kind, const int ignored, const ACC_T m,
               const ACC_T ls, const ACC_T alpha, const ACC_T beta, const ACC_T gamma,
               const ACC_T g, const long y, const __global ACC_T *w, const __global REAL_T *q,
               const ACC_T qa, const ACC_T qb)
{
    for (long c = c0; c < C; c += step) {
        const long n = C - c;
        const VACC xc = vload_real(xr, c, n, 0);
        const VACC d = (ZMAP(xc, zf, sc, cap, su) - m) - ls;
        VACC r;
        if (ignored) {
            r = 0;
        } else if (out_kind == OUT_LOG_SOFTMAX) {
            r = d;
        } else if (out_kind == OUT_SOFTMAX) {
            r = exp(d);
        } else {
            /* dz/dx, the chain rule's way back to x: sc * sech(x * su)^2
               under a softcap (1 - tanh^2 would cancel to nothing where
               tanh nears 1; cosh overflowing to inf gives 0, the limit). */
            VACC dz = 1;
            if (zf & HAS_CAP) {
                const VACC sech = 1 / cosh(xc * su);
                dz = sc * sech * sech;
            } else if (zf & HAS_SCALE) {
                dz = sc;
            }
            const VACC t1 = alpha * exp(d);
            const VACC t2 = beta != 0 ? beta * coef(w, q, c, n, qa, qb) : (VACC)0;
            const VACC t3 = VSELECT((VACC)0, (VACC)gamma, IOTA == (ACC_T)(y - c));
            /* An infinite g (a mean over zero weight) scales torch's terms
               one by one, so that zero ones give NaN as they do there. */
            r = isfinite(g) ? g * ((t1 - t2 - t3) * dz) : (g * t1 - g * t2 - g * t3) * dz;
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
 * Rows of x, R lanes per row (R = 1: a row per work-item for short rows;
 * R = group size: a work-group per row for long ones); a lane takes VEC
 * logits at a time, a partial vector at the row's end. Per row, with
 * e = label smoothing, qa = 1 - e, qb = e / C (see xentc._engines), on
 * z = ZMAP(x) (the logit scale and softcap; mapped again by each pass that
 * needs it, where storing z would cost a write and a read of the row):
 *   pass 1: m = max(z) = ZMAP(max(x)), NaN skipped (it poisons the sum instead);
 *   pass 2: ones = #(z == m), rest = sum exp(z - m) over the others,
 *           S = sum coef * (z - m), A = sum coef;
 *           ls = log1p((ones - 1) + rest), exact when the sum is near 1;
 *           loss and lse from m, ls, S, A (A * ls - S adds terms of one sign),
 *           plus zls * lse^2 (the z-loss) on rows with targets;
 *   pass 3: out = log_softmax, softmax or the gradient with respect to x
 *           g * (alpha * p - beta * coef - gamma * [c == y]) * dz/dx.
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
    const ACC_T sc, const ACC_T cap, const ACC_T zls,
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
    const ACC_T su = (flags & HAS_CAP) ? sc / cap : 0;

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
    /* max(z) = ZMAP(max(x)), ZMAP being nondecreasing (a device's tanh
       off by an ulp only puts a z just above m in rest, exp(d) near 1).
       Mapped as a vector: m has the very bits that pass 2's map gives the
       largest logit, so that ones counts it. */
    ACC_T m = v[0];
    if (flags & ZMAP_FLAGS)
        m = hmax(ZMAP((VACC)m, flags, sc, cap, su));
    const int has_nan = v[1] > 0;

    VACC vrest = 0, vones = 0, vS = 0, vA = 0;
    if (work)
        ZMAP_CALL(row_sums, flags, sc, cap, su, xr, lane * VEC, C, step, m, lin, w, q, qa, qb,
                  &vones, &vrest, &vS, &vA);
    ACC_T rest, ones, S, A;
    /* Read before the barrier below: with out == x, pass 3 overwrites x[y]. */
    ACC_T xy = 0, wy = 1;
    if (work && has_target) {
        xy = bad ? NAN : ZMAP(LD(xr, y), flags, sc, cap, su);
        wy = bad ? NAN : (w ? w[y] : (ACC_T)1);
    }
    v[0] = hsum(vrest);
    v[1] = hsum(vones);
    v[2] = hsum(vS);
    v[3] = hsum(vA);
    seg_reduce(buf, v, lin ? 4 : 2, RED_SUM, R);
    /* seg_reduce's barriers fence local memory only: without a global fence
       nothing orders the read of x[y] above, by every lane of the row,
       before pass 3's write of x[y] by the lane that owns column y (a data
       race in OpenCL's memory model, reported by oclgrind --data-races). A
       row of one lane (R = 1) shares nothing. */
    if (R > 1 && out_kind != OUT_NONE)
        barrier(CLK_GLOBAL_MEM_FENCE);
    rest = v[0];
    ones = v[1];
    S = lin ? v[2] : 0;
    A = lin ? v[3] : 0;

    /* A row without a max (all -inf, or NaN) has no log-sum: NaN, as torch. */
    const ACC_T ls = m > -INFINITY ? log1p((ones - 1) + rest) : NAN;
    /* torch.logsumexp: +-inf for a row whose max is infinite, unless the
       row holds a NaN. */
    const ACC_T row_lse = isinf(m) ? (has_nan ? NAN : m) : m + ls;
    /* The z-loss (PaLM's auxiliary loss) on rows with targets; skipped, not
       multiplied, when zls is 0: 0 * inf would make NaN of the loss of a
       row whose lse is infinite. */
    const int zloss = zls != 0 && (has_target || (flags & HAS_SOFT));
    if (live && lane == 0) {
        ACC_T row_loss = 0;
        if (has_target) {
            row_loss = qa * wy * ((m - xy) + ls);
            if (e > 0)
                row_loss += qb * (A * ls - S);
        } else {
            row_loss = A * ls - S;
        }
        if (zloss)
            row_loss += zls * row_lse * row_lse;
        if (flags & HAS_LOSS)
            loss[loss_off + i] = ignored ? 0 : row_loss;
        if (flags & HAS_LSE)
            lse[lse_off + i] = ignored ? 0 : row_lse;
    }
    if (!live || out_kind == OUT_NONE)
        return;

    ACC_T alpha = 0, beta = 0, gamma = 0, g = 0;
    if (out_kind == OUT_GRAD) {
        /* d/dz_c = g * (A * p_c - coef_c), A = sum coef: torch's formula
           regrouped; class targets put (1 - e) * w[y] on c == y. write_row
           takes it back to x, and the scale g comes last, so that the
           gradient scales with it to the ulp even where the bracket
           cancels. */
        g = grad_scale * ((flags & HAS_ROW_SCALE) ? row_scale[rs_off + i] : 1);
        if (has_target) {
            alpha = qa * wy + (e > 0 ? qb * A : 0);
            beta = qb;
            gamma = qa * wy;
        } else {
            alpha = A;
            beta = 1;
        }
        /* d(zls * lse^2)/dz_c = 2 * zls * lse * p_c */
        if (zloss)
            alpha += 2 * zls * row_lse;
    }
    ZMAP_CALL(write_row, flags, sc, cap, su, xr, out + out_off + i * out_stride, lane * VEC, C,
              step, out_kind, ignored, m, ls, alpha, beta, gamma, g, y, w, q, qa, qb);
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
    VACC vs = 0, cs = 0, vlo = INFINITY, vhi = -INFINITY, vnan = 0;
    if (live)
        for (long c = lane * VEC; c < C; c += (long)R * VEC) {
            const long n = C - c;
            const VACC a = vload_real(pr, c, n, 0);
            KAHAN_ADD(vs, cs, a);
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
            /* The remainder from the quotient, not `%` beside `/`: LLVM turns
               such a pair into this with a `freeze` of rem, an instruction
               that oclgrind 21.10 (Debian 12, .ci/oclgrind) cannot check. */
            const long quot = rem / geom[ax], idx = rem - quot * geom[ax];
            rem = quot;
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
