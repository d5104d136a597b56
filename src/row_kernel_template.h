/*
 * The row kernel, instantiated by row_kernels.c once per dtype. Expects TYPE,
 * ITYPE (same-width integer), XENTC_SFX, XENTC_FN and the EXP_* / LN2_*
 * constants; XENTC_VBYTES gives the vector width of this ISA build.
 *
 * One row is processed in blocks of 4 KiB: the block's max is taken while it
 * streams in from memory, then exp(x - m) and the linear sums are taken over
 * the same block from L1. When a later block raises the running max m, the
 * running sums are rescaled (the "online softmax" of Milakov & Gimelshein,
 * 2018, applied per block rather than per element), so every logit is read
 * from memory once however long the row is.
 */
#ifndef TYPE
#error "row_kernel_template.h needs TYPE (include it from row_kernels.c)"
#endif

#define VT XENTC_FN(vt)
#define VIT XENTC_FN(vit)
#define NL ((int64_t)(XENTC_VBYTES / sizeof(TYPE)))
#define BLOCK ((int64_t)(4096 / sizeof(TYPE)))

typedef TYPE VT __attribute__((vector_size(XENTC_VBYTES)));
typedef ITYPE VIT __attribute__((vector_size(XENTC_VBYTES)));

static inline VT XENTC_FN(load)(const TYPE *p)
{
    VT v;
    memcpy(&v, p, sizeof v); /* unaligned load */
    return v;
}

/* Lanes [0, n) of p, zeros elsewhere; never reads past p + n. */
static inline VT XENTC_FN(load_part)(const TYPE *p, int64_t n)
{
    VT v = {0};
    memcpy(&v, p, (size_t)n * sizeof(TYPE));
    return v;
}

static inline VT XENTC_FN(sel)(VIT mask, VT a, VT b)
{
    return (VT)((mask & (VIT)a) | (~mask & (VIT)b));
}

static inline VT XENTC_FN(splat)(TYPE a)
{
    VT v = {0};
    return v + a;
}

static inline double XENTC_FN(hsum)(VT v)
{
    double s = 0.0;
    for (int64_t k = 0; k < NL; k++)
        s += (double)v[k];
    return s;
}

/* exp(d) for d <= 0 (NaN propagates; below EXP_LO the result is clamped to
   exp(EXP_LO), which is below half an ulp of any sum it is added to). */
static inline VT XENTC_FN(vexp)(VT d)
{
    const VT lo = XENTC_FN(splat)(EXP_LO);
    const VT shift = XENTC_FN(splat)(EXP_SHIFT);
    d = XENTC_FN(sel)(d < lo, lo, d);
    VT t = d * (TYPE)1.44269504088896340736 + shift; /* round(d / ln2) */
    VT k = t - shift;
    VT r = d - k * LN2_HI;
    r = r - k * LN2_LO;
    /* Horner on the Taylor coefficients 1/j!, j = EXP_DEGREE..0 */
    VT p = XENTC_FN(splat)((TYPE)xentc_inv_factorial[EXP_DEGREE]);
    for (int j = EXP_DEGREE - 1; j >= 0; j--)
        p = p * r + (TYPE)xentc_inv_factorial[j];
    VIT ki = (VIT)t - (VIT)shift;
    VIT bits = (ki + EXP_BIAS) << EXP_MANT; /* 2^k, k >= EXP_LO / ln2 */
    return p * (VT)bits;
}

void XENTC_FN(xentc_exp)(const void *in, void *out, int64_t n)
{
    const TYPE *a = (const TYPE *)in;
    TYPE *b = (TYPE *)out;
    for (int64_t j = 0; j < n; j += NL) {
        int64_t len = n - j < NL ? n - j : NL;
        VT v = XENTC_FN(vexp)(XENTC_FN(load_part)(a + j, len));
        memcpy(b + j, &v, (size_t)len * sizeof(TYPE));
    }
}

/* Max of x[0, n), ignoring NaN (a NaN still poisons the sum of exps). */
static inline TYPE XENTC_FN(block_max)(const TYPE *x, int64_t n)
{
    VT m0 = XENTC_FN(splat)(-INFINITY), m1 = m0;
    int64_t j = 0;
    for (; j + 2 * NL <= n; j += 2 * NL) {
        VT a = XENTC_FN(load)(x + j), b = XENTC_FN(load)(x + j + NL);
        m0 = XENTC_FN(sel)(a > m0, a, m0);
        m1 = XENTC_FN(sel)(b > m1, b, m1);
    }
    m0 = XENTC_FN(sel)(m1 > m0, m1, m0);
    TYPE m = -INFINITY;
    for (int64_t k = 0; k < NL; k++)
        m = m0[k] > m ? m0[k] : m;
    for (; j < n; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

/* Per-logit coefficient of the linear sums: w[c] for label smoothing of
   class targets, w[c] * (qa * q[c] + qb) for (smoothed) soft targets. */
static inline VT XENTC_FN(coef)(const TYPE *w, const TYPE *q, int64_t j,
                                int64_t len, TYPE qa, TYPE qb)
{
    VT c = XENTC_FN(splat)(1);
    if (w)
        c = len == NL ? XENTC_FN(load)(w + j) : XENTC_FN(load_part)(w + j, len);
    if (q) {
        VT qv = len == NL ? XENTC_FN(load)(q + j) : XENTC_FN(load_part)(q + j, len);
        c = c * (qv * qa + qb);
    }
    return c;
}

/*
 * acc[0] += sum exp(x - m); with lin, also acc[1] += sum c * (x - m) and
 * acc[2] += sum c. Keeping x - m (not x) in the linear sum keeps it exact
 * for logits of any magnitude.
 */
static void XENTC_FN(block_sums)(const TYPE *x, const TYPE *w, const TYPE *q,
                                 int64_t n, TYPE m, int lin, TYPE qa, TYPE qb,
                                 double acc[3])
{
    const VT vm = XENTC_FN(splat)(m);
    VT s = {0}, sl = {0}, sc = {0};
    VT lane = {0};
    for (int64_t k = 0; k < NL; k++)
        lane[k] = (TYPE)k;
    for (int64_t j = 0; j < n; j += NL) {
        const int64_t len = n - j < NL ? n - j : NL;
        VT d;
        VIT live;
        if (len == NL) {
            d = XENTC_FN(load)(x + j) - vm;
            live = lane == lane;
        } else {
            d = XENTC_FN(load_part)(x + j, len) - vm;
            live = lane < (TYPE)len;
        }
        s += XENTC_FN(sel)(live, XENTC_FN(vexp)(d), XENTC_FN(splat)(0));
        if (lin) {
            VT c = XENTC_FN(sel)(live, XENTC_FN(coef)(w, q, j, len, qa, qb), XENTC_FN(splat)(0));
            sl += c * XENTC_FN(sel)(live, d, XENTC_FN(splat)(0));
            sc += c;
        }
    }
    acc[0] += XENTC_FN(hsum)(s);
    if (lin) {
        acc[1] += XENTC_FN(hsum)(sl);
        acc[2] += XENTC_FN(hsum)(sc);
    }
}

/* Second pass over row x (from cache): out = f(x - m), see xentc_out_kind. */
static void XENTC_FN(second_pass)(const xentc_rows *r, const TYPE *x, TYPE *out,
                                  const TYPE *w, const TYPE *q, TYPE m, TYPE ls,
                                  TYPE alpha, TYPE beta, TYPE qa, TYPE qb)
{
    const int64_t C = r->n_classes;
    const VT vm = XENTC_FN(splat)(m), vls = XENTC_FN(splat)(ls);
    for (int64_t j = 0; j < C; j += NL) {
        const int64_t len = C - j < NL ? C - j : NL;
        VT d = (len == NL ? XENTC_FN(load)(x + j) : XENTC_FN(load_part)(x + j, len)) - vm - vls;
        VT o;
        if (r->out_kind == XENTC_OUT_LOG_SOFTMAX) {
            o = d;
        } else if (r->out_kind == XENTC_OUT_SOFTMAX) {
            o = XENTC_FN(vexp)(d);
        } else { /* gradient: alpha * softmax - beta * coef */
            VT c = (w || q) ? XENTC_FN(coef)(w, q, j, len, qa, qb) : XENTC_FN(splat)(1);
            o = alpha * XENTC_FN(vexp)(d) - beta * c;
        }
        memcpy(out + j, &o, (size_t)len * sizeof(TYPE));
    }
}

void XENTC_FN(xentc_row)(const xentc_rows *r, int64_t i)
{
    const int64_t C = r->n_classes;
    const TYPE *x = (const TYPE *)r->x + i * r->x_stride;
    const TYPE *w = (const TYPE *)r->weight;
    const TYPE *q = r->soft ? (const TYPE *)r->soft + i * r->soft_stride : NULL;
    TYPE *out = r->out_kind != XENTC_OUT_NONE ? (TYPE *)r->out + i * r->out_stride : NULL;
    const int64_t y = r->target ? r->target[i] : -1;
    const double e = r->label_smoothing;

    if (r->target && y == r->ignore_index) {
        if (r->loss)
            ((TYPE *)r->loss)[i] = 0;
        if (r->lse)
            ((TYPE *)r->lse)[i] = 0;
        if (out)
            memset(out, 0, (size_t)C * sizeof(TYPE));
        return;
    }

    const int lin = q != NULL || (r->target && e > 0.0);
    const TYPE qa = (TYPE)(1.0 - e), qb = (TYPE)(e / (double)C);
    /* Class-target smoothing uses coefficient w[c]; soft targets w[c]*q'[c]. */
    const TYPE *lq = r->target ? NULL : q;
    double m = -INFINITY, acc[3] = {0.0, 0.0, 0.0};
    int64_t skipped = 0; /* leading elements seen while m was still -inf */
    for (int64_t b = 0; b < C; b += BLOCK) {
        const int64_t n = C - b < BLOCK ? C - b : BLOCK;
        const double bm = XENTC_FN(block_max)(x + b, n);
        if (bm > m) {
            if (acc[0] > 0.0) {
                acc[0] *= exp(m - bm);
                acc[1] -= (bm - m) * acc[2];
            }
            m = bm;
        }
        if (m == -INFINITY) {
            skipped = b + n;
            continue;
        }
        XENTC_FN(block_sums)(x + b, w ? w + b : NULL, lq ? lq + b : NULL, n, (TYPE)m, lin, qa, qb, acc);
    }
    /* -inf logits before the first finite one: their exp is 0 but their
       linear terms are -inf (or NaN with a zero coefficient), as in torch. */
    if (skipped > 0 && m > -INFINITY)
        XENTC_FN(block_sums)(x, w, lq, skipped, (TYPE)m, lin, qa, qb, acc);

    /* A row of -inf (or NaN) has no max: torch gives NaN (inf - inf). */
    const double ls = m > -INFINITY ? log(acc[0]) : NAN;
    const double lin_loss = acc[2] * ls - acc[1]; /* sum c * (lse - x) */
    double loss = 0.0, alpha = 0.0, beta = 0.0, wy = 0.0;
    if (r->target) {
        wy = w ? (double)w[y] : 1.0;
        loss = (1.0 - e) * wy * ((m - (double)x[y]) + ls);
        if (e > 0.0)
            loss += e / (double)C * lin_loss;
    } else if (q) {
        loss = lin_loss;
    }
    if (r->loss)
        ((TYPE *)r->loss)[i] = (TYPE)loss;
    if (r->lse)
        ((TYPE *)r->lse)[i] = (TYPE)(m + ls);
    if (!out)
        return;

    if (r->out_kind == XENTC_OUT_GRAD) {
        /* d/dx_c = g * (A * p_c - coef_c), A = sum_c coef_c (torch's formula
           regrouped): class targets put (1-e)*w[y] on c == y and e/C*w[c]
           everywhere. */
        const double g = r->grad_scale * (r->grad_row_scale ? (double)((const TYPE *)r->grad_row_scale)[i] : 1.0);
        if (r->target) {
            alpha = g * ((1.0 - e) * wy + (e > 0.0 ? e / (double)C * acc[2] : 0.0));
            beta = g * e / (double)C;
        } else {
            alpha = g * acc[2];
            beta = g;
        }
    }
    XENTC_FN(second_pass)(r, x, out, w, lq, (TYPE)m, (TYPE)ls, (TYPE)alpha, (TYPE)beta, qa, qb);
    if (r->out_kind == XENTC_OUT_GRAD && r->target) {
        const double g = r->grad_scale * (r->grad_row_scale ? (double)((const TYPE *)r->grad_row_scale)[i] : 1.0);
        out[y] = (TYPE)((double)out[y] - g * (1.0 - e) * wy);
    }
}

#undef VT
#undef VIT
#undef NL
#undef BLOCK
