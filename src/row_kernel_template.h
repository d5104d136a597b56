/*
 * The row kernel, instantiated by row_kernels.c once per dtype. Expects TYPE,
 * ITYPE (same-width integer), XENTC_SFX, XENTC_FN, LOG1P_TOP and the EXP_* /
 * LN2_* constants; XENTC_VBYTES gives the vector width of this ISA build.
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
#if XENTC_VBYTES == 64 && defined(__AVX512F__) /* one masked load */
    if (sizeof(TYPE) == 4)
        return (VT)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
    return (VT)_mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1u), p);
#endif
    VT v = {0};
    for (int64_t k = 0; k < n; k++) /* lane inserts: no call to memcpy */
        v[k] = p[k];
    return v;
}

/* Store lanes [0, n) of v to p. */
static inline void XENTC_FN(store_part)(TYPE *p, VT v, int64_t n)
{
    if (n == NL) {
        memcpy(p, &v, sizeof v);
        return;
    }
#if XENTC_VBYTES == 64 && defined(__AVX512F__) /* one masked store */
    if (sizeof(TYPE) == 4)
        _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
    else
        _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1u), (__m512d)v);
    return;
#endif
    for (int64_t k = 0; k < n; k++)
        p[k] = v[k];
}

static inline VT XENTC_FN(sel)(VIT mask, VT a, VT b)
{
    return (VT)((mask & (VIT)a) | (~mask & (VIT)b));
}

/* max(a, b) that keeps a NaN in b, as x86's maxps(a, b) does. */
static inline VT XENTC_FN(max)(VT a, VT b)
{
#ifdef XENTC_VMAX /* one instruction instead of a compare and a blend */
    return (VT)XENTC_VMAX(a, b);
#else
    return XENTC_FN(sel)(a > b, a, b);
#endif
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

typedef struct {
    int on, cap_on;
    TYPE s, k, cap;
    TYPE dzf; /* zv's dz is dz/dx / dzf: a factor the callers apply per row */
    /* A scale alone: exp(s d) = 2^(c2 d) from d (vexp_n with this ztrans), by
       the exp's polynomial in r ln2 as one in r, b[j] = EXP_COEF[j] ln2^j. */
    TYPE c2, lo2, b[EXP_DEGREE + 1];
    TYPE c2lo; /* s / ln2 - c2: the table exp's reduction takes both */
#ifdef TANH_P
    TYPE cap_p[TANH_NP]; /* cap * TANH_P: z comes out of the rational directly */
#endif
} XENTC_FN(ztrans);

/* The transform of rows that have one (logit_scale != 1 or a softcap). */
static inline XENTC_FN(ztrans) XENTC_FN(ztrans_of)(const xentc_rows *r)
{
    XENTC_FN(ztrans) t;
    t.cap_on = r->softcap > 0.0;
    t.on = 1;
    t.s = (TYPE)r->logit_scale;
    t.cap = (TYPE)(t.cap_on ? r->softcap : 1.0);
    t.k = (TYPE)(r->logit_scale / (t.cap_on ? r->softcap : 1.0));
    t.dzf = t.s;
    t.c2 = (TYPE)(r->logit_scale * 1.44269504088896340736);
    t.lo2 = (TYPE)(EXP_LO / r->logit_scale);
    t.c2lo = (TYPE)(r->logit_scale * 1.44269504088896340736 - (double)t.c2);
    for (int j = 0; j <= EXP_DEGREE; j++)
        t.b[j] = (TYPE)(EXP_COEF[j] * pow(0.69314718055994530942, j));
#ifdef TANH_P
    for (int i = 0; i < TANH_NP; i++)
        t.cap_p[i] = t.cap * TANH_P[i];
    if (t.cap_on)
        t.dzf = (TYPE)(r->logit_scale / ((double)t.cap * (double)t.cap));
#endif
    return t;
}

/* exp(d[0..n)) in place, for d <= 0 (NaN propagates); with sc (a scale
   alone, see ztrans), exp(s d). Below EXP_LO, where the result would be
   subnormal, it is 0 with `under` EXP_FLUSH (exp(-inf) = 0 for the values
   a caller sees), else exp(EXP_LO) (EXP_CLAMP): inside a sum of exps, which
   is at least 1, that is far below half an ulp, and skipping the flush
   frees registers in the hot loops; EXP_INRANGE: no d is below EXP_LO. Called with a constant n: the n independent
   dependency chains are interleaved stage by stage, which keeps the FMA
   pipes busy where one chain would leave them waiting on latency.
   The scaled form rounds s / ln2 once (as s d would be) and takes
   r = c2 d - k in one multiply-add: no more work than the plain exp's
   Cody-Waite reduction, where s d then exp(s d) would be one product more. */
static inline __attribute__((always_inline)) void XENTC_FN(vexp_n)(VT *d, int n, int under,
                                                                   const XENTC_FN(ztrans) *sc)
{
    const VT lo = XENTC_FN(splat)(sc ? sc->lo2 : EXP_LO);
    const VT c2 = XENTC_FN(splat)(sc ? sc->c2 : (TYPE)1.44269504088896340736);
    VIT low[4] = {{0}};
    for (int u = 0; u < n; u++) {
        if (under == EXP_FLUSH)
            low[u] = d[u] < lo;
        if (under != EXP_INRANGE)
            d[u] = XENTC_FN(max)(lo, d[u]);
    }
#ifdef EXP_TABLE
    /* 2^(c2 d) = 2^K 2^(j/16) 2^r, |r| <= 1/32: t = c2 d + shift rounds c2 d
       to sixteenths, whose low 4 bits (j) pick 2^(j/16) from a register
       (vpermps) and whose value K + j/16 scales by 2^K (vscalefps, floor).
       r = c2 d - k in two fused multiply-adds (c2's rounding, c2lo, added back),
       2^r by a cubic: three multiply-adds fewer than the plain exp's sextic. */
    const VT shift = XENTC_FN(splat)(EXP_SHIFT / 16);
    const VT c2lo = XENTC_FN(splat)(sc ? sc->c2lo : (TYPE)1.925963033500011e-08);
    const __m512 table = _mm512_loadu_ps(EXP_TABLE);
    VT t[4], k[4], r[4], p[4];
    for (int u = 0; u < n; u++)
        t[u] = d[u] * c2 + shift;
    for (int u = 0; u < n; u++) {
        k[u] = t[u] - shift; /* r exact but for c2lo's term: fused, at any -O */
        r[u] = (VT)_mm512_fmsub_ps((__m512)d[u], (__m512)c2, (__m512)k[u]);
        r[u] = (VT)_mm512_fmadd_ps((__m512)d[u], (__m512)c2lo, (__m512)r[u]);
        p[u] = r[u] * (TYPE)EXP_TABLE_P[3] + (TYPE)EXP_TABLE_P[2];
    }
    for (int u = 0; u < n; u++)
        p[u] = (p[u] * r[u] + (TYPE)EXP_TABLE_P[1]) * r[u];
    for (int u = 0; u < n; u++) {
        const VT tj = (VT)_mm512_permutexvar_ps((__m512i)t[u], table);
        d[u] = (VT)_mm512_scalef_ps((__m512)(p[u] * tj + tj), (__m512)k[u]);
        if (under == EXP_FLUSH) /* exp(-inf) = 0 */
            d[u] = (VT)(~low[u] & (VIT)d[u]);
    }
#else
    /* t = d / ln2 + shift puts round(d / ln2) + bias in the low mantissa
       bits of t: shifted up by the mantissa width they are 2^k's bits. */
    const VT shift = XENTC_FN(splat)(EXP_SHIFT + EXP_BIAS);
    VT t[4], k[4], r[4], p[4];
    for (int u = 0; u < n; u++)
        t[u] = d[u] * c2 + shift;
    for (int u = 0; u < n; u++) {
        k[u] = t[u] - shift;
        if (sc) {
            r[u] = d[u] * c2 - k[u];
        } else {
            r[u] = d[u] - k[u] * LN2_HI;
            r[u] = r[u] - k[u] * LN2_LO;
        }
        p[u] = XENTC_FN(splat)(sc ? sc->b[EXP_DEGREE] : (TYPE)EXP_COEF[EXP_DEGREE]);
    }
    for (int j = EXP_DEGREE - 1; j >= 0; j--) /* Horner */
        for (int u = 0; u < n; u++)
            p[u] = p[u] * r[u] + (sc ? sc->b[j] : (TYPE)EXP_COEF[j]);
    for (int u = 0; u < n; u++) {
        d[u] = p[u] * (VT)((VIT)t[u] << EXP_MANT);
        if (under == EXP_FLUSH) /* exp(-inf) = 0 */
            d[u] = (VT)(~low[u] & (VIT)d[u]);
    }
#endif
}

static inline VT XENTC_FN(vexp)(VT d)
{
    XENTC_FN(vexp_n)(&d, 1, EXP_FLUSH, NULL);
    return d;
}

void XENTC_FN(xentc_exp)(const void *in, void *out, int64_t n)
{
    const TYPE *a = (const TYPE *)in;
    TYPE *b = (TYPE *)out;
    for (int64_t j = 0; j < n; j += NL) {
        int64_t len = n - j < NL ? n - j : NL;
        XENTC_FN(store_part)(b + j, XENTC_FN(vexp)(XENTC_FN(load_part)(a + j, len)), len);
    }
}

/*
 * The row transform z = T(x): s * x, or cap * tanh(k * x) with k = s / cap
 * (xentc_rows' logit_scale and softcap), and dz/dx. float32 takes a
 * rational tanh (TANH_P, row_kernels.c). float64's softcap, with
 * a = |k x|, E = expm1(-2a) and e = exp(-2a) = 1 + E: tanh(a) = -E / (2 + E)
 * and 1 - tanh^2 = 4 e / (2 + E)^2, neither cancelling. Both come from one
 * range reduction of vexp_n's: -2a = k2 ln2 + r, P(r) = 1 + r Q(r), and
 * E = 2^k2 (r Q(r)) + (2^k2 - 1), in which 2^k2 - 1 is exact and, for
 * k2 = 0 (small a), the rounding of 1 + r Q(r) never happens: small a keep
 * their relative precision, as expm1's.
 */
static inline __attribute__((always_inline)) VT XENTC_FN(zcap)(const XENTC_FN(ztrans) *t, VT x,
                                                                VT *dz)
{
#ifdef TANH_P /* the rational tanh of row_kernels.c */
    const VT u = x * t->k;
    const VIT sign = (VIT)u & (VIT)(-XENTC_FN(splat)(0)); /* splat(-0.0) would be +0 */
    const VT a = (VT)((VIT)u ^ sign), y = a * a;
    /* From a = 9 on, tanh rounds to 1: the select below replaces whatever
       the rational gives there (NaN once y overflows), and keeps NaN. */
    VT p = XENTC_FN(splat)(t->cap_p[TANH_NP - 1]), q = XENTC_FN(splat)(TANH_Q[TANH_NQ - 1]);
    for (int i = TANH_NP - 2; i >= 0; i--)
        p = p * y + t->cap_p[i];
    for (int i = TANH_NQ - 2; i >= 0; i--)
        q = q * y + TANH_Q[i];
    VT z = XENTC_FN(sel)(a >= TANH_SAT, XENTC_FN(splat)(t->cap), a * p / q);
    XENTC_OPAQUE(z);
    if (dz) /* s (1 - tanh^2) / dzf, exactly 0 where z is cap, as torch's */
        *dz = (t->cap - z) * (t->cap + z);
    return (VT)((VIT)z | sign);
#else
    const VT lo = XENTC_FN(splat)(EXP_LO), shift = XENTC_FN(splat)(EXP_SHIFT + EXP_BIAS);
    const VT u = x * t->k;
    const VIT neg = u < 0;
    VT d = XENTC_FN(sel)(neg, u, -u) * 2; /* -2a, NaN kept */
    const VIT under = d < lo;            /* e = 0 there: exp(-inf) = 0 */
    d = XENTC_FN(max)(lo, d);
    const VT tk = d * (TYPE)1.44269504088896340736 + shift, k2 = tk - shift;
    const VT r = (d - k2 * LN2_HI) - k2 * LN2_LO;
    VT q = XENTC_FN(splat)((TYPE)EXP_COEF[EXP_DEGREE]);
    for (int i = EXP_DEGREE - 1; i >= 1; i--)
        q = q * r + (TYPE)EXP_COEF[i];
    const VT pk = (VT)((VIT)tk << EXP_MANT), rq = r * q;
    const VT em1 = pk * rq + (pk - 1);
    const VT e = (VT)(~under & (VIT)(pk * rq + pk));
    const VT rden = 1 / (2 + em1), th = -em1 * rden;
    if (dz) /* s (1 - tanh^2) / dzf */
        *dz = 4 * e * (rden * rden);
    VT z = t->cap * th;
    XENTC_OPAQUE(z);
    return XENTC_FN(sel)(neg, -z, z);
#endif
}

static inline __attribute__((always_inline)) VT XENTC_FN(zv)(const XENTC_FN(ztrans) *t, VT x,
                                                              VT *dz)
{
    if (t->cap_on)
        return XENTC_FN(zcap)(t, x, dz);
    if (dz)
        *dz = XENTC_FN(splat)(1);
    return x * t->s;
}

/* z - m for logits x of a row transformed by `mode`, exactly 0 at the
   row's max: x - m untransformed, (x - mx) * s for a scale alone (vm = mx,
   the max of x), T(x) - m with a softcap (vm = m = T(mx)). dz/dx / dzf
   into dz (when given): 1 but for a softcap. */
static inline __attribute__((always_inline)) VT XENTC_FN(zd)(const XENTC_FN(ztrans) *t, int mode,
                                                              VT x, VT vm, VT *dz)
{
    if (mode == Z_CAP || mode == Z_CAP_NEAR)
        return XENTC_FN(zcap)(t, x, dz) - vm;
    if (dz)
        *dz = XENTC_FN(splat)(1);
    return mode == Z_SCALE ? (x - vm) * t->s : x - vm;
}

/* T(v) of one value, bit for bit the vector lanes' result: XENTC_OPAQUE
   keeps the compiler from fusing zv's last product into a multiply-add with
   the "- m" that follows it in a row's lanes (it sees through the sign's
   bit operations), which would leave T(max) - m at a product's rounding
   error instead of exactly 0. */
static inline TYPE XENTC_FN(z1)(const XENTC_FN(ztrans) *t, TYPE v, TYPE *dz)
{
    VT d;
    const VT z = XENTC_FN(zv)(t, XENTC_FN(splat)(v), &d);
    if (dz)
        *dz = d[0] * t->dzf;
    return z[0];
}

/* Max of x[0, n), ignoring NaN (a NaN still poisons the sum of exps). */
static inline TYPE XENTC_FN(block_max)(const TYPE *x, int64_t n)
{
    /* max(v, m) keeps m where v is NaN; four chains hide its latency */
    VT m[4] = {XENTC_FN(splat)(-INFINITY), XENTC_FN(splat)(-INFINITY),
               XENTC_FN(splat)(-INFINITY), XENTC_FN(splat)(-INFINITY)};
    int64_t j = 0;
    for (; j + 4 * NL <= n; j += 4 * NL)
        for (int u = 0; u < 4; u++)
            m[u] = XENTC_FN(max)(XENTC_FN(load)(x + j + u * NL), m[u]);
    for (; j + NL <= n; j += NL)
        m[0] = XENTC_FN(max)(XENTC_FN(load)(x + j), m[0]);
    m[0] = XENTC_FN(max)(XENTC_FN(max)(m[1], m[0]), XENTC_FN(max)(m[3], m[2]));
    TYPE r = -INFINITY;
    for (int64_t k = 0; k < NL; k++)
        r = m[0][k] > r ? m[0][k] : r;
    for (; j < n; j++)
        r = x[j] > r ? x[j] : r;
    return r;
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

/* The same coefficient for one logit k (short rows). */
static inline TYPE XENTC_FN(coef1)(const TYPE *w, const TYPE *q, int64_t k, TYPE qa, TYPE qb)
{
    TYPE c = w ? w[k] : 1;
    return q ? c * (q[k] * qa + qb) : c;
}

/*
 * The terms exp(x - m) with x == m are exactly 1 and are counted apart from
 * the rest: a float32 lane holding 1 + small terms would round the small ones
 * at ulp(1) and lose the relative precision of log(sum) when the sum is
 * close to 1 (a confident prediction, whose loss is then tiny).
 *
 * acc->rest += sum of exp(x - m) over x != m, acc->ones += count of x == m;
 * with lin, also acc->lin += sum c * (x - m) and acc->coef += sum c. Keeping x - m
 * (not x) in the linear sum keeps it exact for logits of any magnitude.
 * With a transform (mode, zt), x - m is z - m (see zd: m is then the max of x for a scale
 * alone, of z with a softcap), taken in registers as the logits stream in,
 * and the kept exps are stored times dz/dx / dzf (ztrans; for a softcap: a
 * scale's dz/dx is all dzf).
 */
static inline __attribute__((always_inline)) void XENTC_FN(block_sums)(
                                 const TYPE *x, const TYPE *w, const TYPE *q,
                                 int64_t n, TYPE m, int lin, TYPE qa, TYPE qb,
                                 xentc_sums *acc, TYPE *store, const XENTC_FN(ztrans) *zrow,
                                 int mode, const char *ahead, int ahead_size)
{
    const VT vm = XENTC_FN(splat)(m);
    /* a local copy: stores to `store` cannot change it, so its constants
       stay in registers */
    const XENTC_FN(ztrans) zcopy = mode != Z_NONE ? *zrow : (XENTC_FN(ztrans)){0},
                           *const zt = &zcopy;
    const XENTC_FN(ztrans) *const sc = mode == Z_SCALE ? zt : NULL;
    const int cap = mode == Z_CAP || mode == Z_CAP_NEAR;
    VT s = {0}, sl = {0}, sa = {0};
    VIT ones = {0}; /* minus the count of terms equal to 1, per lane */
    int64_t ones_n = 0; /* or their count */
    VT lane = {0};
    for (int64_t k = 0; k < NL; k++)
        lane[k] = (TYPE)k;
    int64_t j = 0;
    if (!lin) { /* the common case: four vectors at a time, no masks */
        VT s4[4] = {{0}};
        for (; j + 4 * NL <= n; j += 4 * NL) {
            VT d[4];
            /* Pull the logits at `ahead` (of ahead_size bytes each)
               towards L1 while this one is in the FMA units, so its max
               sweep does not wait on memory. */
            for (int64_t byte = 0; byte < 4 * NL * ahead_size; byte += 64)
                __builtin_prefetch(ahead + j * ahead_size + byte);
            VT dz[4];
            for (int u = 0; u < 4; u++) {
                d[u] = XENTC_FN(load)(x + j + u * NL);
                /* a scale alone goes into the exp (sc) */
                d[u] = sc ? d[u] - vm : XENTC_FN(zd)(zt, mode, d[u], vm, store ? &dz[u] : NULL);
            }
            if (store) { /* kept exps are values a caller sees: exp(-inf) = 0 */
                XENTC_FN(vexp_n)(d, 4, mode == Z_CAP_NEAR ? EXP_INRANGE : EXP_FLUSH, sc);
                for (int u = 0; u < 4; u++) {
                    const VT o = cap ? d[u] * dz[u] : d[u];
                    memcpy(store + j + u * NL, &o, sizeof o);
                }
            } else {
                XENTC_FN(vexp_n)(d, 4, mode == Z_CAP_NEAR ? EXP_INRANGE : EXP_CLAMP, sc);
            }
            for (int u = 0; u < 4; u++) { /* exp is exactly 1 only near x == m */
#if XENTC_VBYTES == 64 && defined(__AVX512F__) /* a mask register, a masked add */
                const unsigned top = sizeof(TYPE) == 4
                    ? _mm512_cmp_ps_mask((__m512)d[u], _mm512_set1_ps(1.0f), _CMP_EQ_OQ)
                    : _mm512_cmp_pd_mask((__m512d)d[u], _mm512_set1_pd(1.0), _CMP_EQ_OQ);
                if (sizeof(TYPE) == 4)
                    s4[u] = (VT)_mm512_mask_add_ps((__m512)s4[u], (__mmask16)~top,
                                                   (__m512)s4[u], (__m512)d[u]);
                else
                    s4[u] = (VT)_mm512_mask_add_pd((__m512d)s4[u], (__mmask8)~top,
                                                   (__m512d)s4[u], (__m512d)d[u]);
                ones_n += __builtin_popcount(top);
#else
                const VIT top = d[u] == 1;  /* -1 where true */
                s4[u] += (VT)(~top & (VIT)d[u]);
                ones += top;
#endif
            }
        }
        s += (s4[0] + s4[1]) + (s4[2] + s4[3]);
    }
    for (; j < n; j += NL) {
        const int64_t len = n - j < NL ? n - j : NL;
        VT d, dz;
        VIT live;
        if (len == NL) {
            d = XENTC_FN(load)(x + j);
            live = lane == lane;
        } else {
            d = XENTC_FN(load_part)(x + j, len);
            live = lane < (TYPE)len;
        }
        d = sc ? d - vm : XENTC_FN(zd)(zt, mode, d, vm, store ? &dz : NULL);
        const VIT top = live & (d == 0);
        VT ev = d;
        XENTC_FN(vexp_n)(&ev, 1, EXP_FLUSH, sc);
        if (store)
            XENTC_FN(store_part)(store + j, cap ? ev * dz : ev, len);
        s += XENTC_FN(sel)(live & ~top, ev, XENTC_FN(splat)(0));
        ones += top;
        if (lin) {
            VT c = XENTC_FN(sel)(live, XENTC_FN(coef)(w, q, j, len, qa, qb), XENTC_FN(splat)(0));
            sl += c * XENTC_FN(sel)(live, sc ? d * zt->s : d, XENTC_FN(splat)(0));
            sa += c;
        }
    }
    acc->rest += XENTC_FN(hsum)(s);
    for (int64_t k = 0; k < NL; k++)
        acc->ones -= (double)ones[k];
    acc->ones += (double)ones_n;
    if (lin) {
        acc->lin += XENTC_FN(hsum)(sl);
        acc->coef += XENTC_FN(hsum)(sa);
    }
}

/* The running sums of block_sums, taken against the max m, moved onto a
   larger max bm (the online softmax's rescaling). */
static inline void XENTC_FN(rebase)(xentc_sums *acc, double m, double bm)
{
    /* Whether or not the old maxima were counted as exact ones: a
       transformed row's max is computed apart from its lanes, and may
       differ from them in the last bit. */
    if (m > -INFINITY) { /* the old maxima are no longer exact ones */
        acc->rest = (acc->rest + acc->ones) * exp(m - bm);
        acc->ones = 0.0;
        acc->lin -= (bm - m) * acc->coef;
    }
}

/* z[0, n) = T(x[0, n)) and dz/dx into dz (when given): a short row into the
   scratch of transformed_rows. */
static void XENTC_FN(z_block)(const XENTC_FN(ztrans) *t, const TYPE *x, int64_t n, TYPE *z,
                              TYPE *dz)
{
    for (int64_t j = 0; j < n; j += NL) {
        const int64_t len = n - j < NL ? n - j : NL;
        VT d;
        const VT z_ = XENTC_FN(zv)(t, len == NL ? XENTC_FN(load)(x + j)
                                                : XENTC_FN(load_part)(x + j, len), dz ? &d : NULL);
        XENTC_FN(store_part)(z + j, z_, len);
        if (dz)
            XENTC_FN(store_part)(dz + j, d * t->dzf, len);
    }
}

/* What a row needs after its sums: scalars shared by both row paths. */
typedef struct {
    const TYPE *x, *w, *q; /* q: this row's soft target, NULL for class targets */
    TYPE *out;
    int64_t y;      /* target, -1 without class targets */
    double xy;      /* z[y], read before an in-place gradient overwrites x[y] */
    TYPE dzy;       /* dz/dx at y */
    TYPE qa, qb;    /* soft coefficient: w * (qa * q + qb) */
    int lin;        /* the linear sums are needed */
    XENTC_FN(ztrans) zt; /* the row transform */
    double alpha, beta, gamma; /* grad: alpha * p_c - beta * coef_c - gamma * [c == y] */
    const char *x16; /* 16-bit logits widened into x as they stream in, or NULL */
    int bf16;        /* x16 holds bfloat16 (else float16) */
} XENTC_FN(row_ctx);

static inline XENTC_FN(row_ctx) XENTC_FN(begin)(const xentc_rows *r, int64_t i)
{
    XENTC_FN(row_ctx) c;
    const double e = r->label_smoothing;
    c.x = (const TYPE *)r->x + i * r->x_stride;
    c.w = (const TYPE *)r->weight;
    /* Linear-sum coefficients: w[c] for smoothing class targets, w[c]*q'[c]
       for soft targets (coef/coef1). */
    c.q = r->soft ? (const TYPE *)r->soft + i * r->soft_stride : NULL;
    c.out = r->out_kind != XENTC_OUT_NONE ? (TYPE *)r->out + i * r->out_stride : NULL;
    c.y = r->target ? r->target[i] : -1;
    c.xy = c.y >= 0 && c.y < r->n_classes ? (double)c.x[c.y] : 0.0;
    c.zt.on = c.zt.cap_on = 0; /* see begin_z */
    c.dzy = 1;
    c.qa = (TYPE)(1.0 - e);
    c.qb = (TYPE)(e / (double)r->n_classes);
    c.lin = r->soft != NULL || (r->target && e > 0.0);
    c.alpha = c.beta = c.gamma = 0.0;
    c.x16 = NULL;
    c.bf16 = 0;
    return c;
}

/* A long row's transform (the short rows' batched paths see untransformed
   scratch rows): z[y] and dz/dx at y, z[y] as zmax gives z of the max. */
static inline void XENTC_FN(begin_z)(const xentc_rows *r, XENTC_FN(row_ctx) *c)
{
    /* per row: the plain rows' set-up is this test */
    if (r->logit_scale != 1.0 || r->softcap > 0.0)
        c->zt = XENTC_FN(ztrans_of)(r);
    if (!c->zt.on || c->y < 0 || c->y >= r->n_classes)
        return;
    if (c->zt.cap_on) {
        c->xy = (double)XENTC_FN(z1)(&c->zt, c->x[c->y], &c->dzy);
    } else {
        c->xy *= (double)c->zt.s;
        c->dzy = c->zt.s;
    }
}

static inline int XENTC_FN(ignored)(const xentc_rows *r, int64_t i, XENTC_FN(row_ctx) *c)
{
    if (!r->target || c->y != r->ignore_index)
        return 0;
    if (r->loss)
        ((TYPE *)r->loss)[i] = 0;
    if (r->lse)
        ((TYPE *)r->lse)[i] = 0;
    if (c->out)
        memset(c->out, 0, (size_t)r->n_classes * sizeof(TYPE));
    return 1;
}

/*
 * From the row max m, ls = log(sum exp(x - m)) and the linear sums
 * S = acc->lin = sum coef * (x - m), A = acc->coef = sum coef, write loss and lse
 * and set the gradient's scalars. sum_c coef_c * (lse - x_c) = A * ls - S
 * adds terms of one sign: no cancellation.
 */
static inline __attribute__((always_inline)) void XENTC_FN(finish)(
    const xentc_rows *r, int64_t i, XENTC_FN(row_ctx) *c,
                                    double m, double ls, const xentc_sums *acc)
{
    const double e = r->label_smoothing, C = (double)r->n_classes;
    const double lin_loss = acc->coef * ls - acc->lin;
    double loss = 0.0, wy = 0.0;
    if (r->target) {
        wy = c->w ? (double)c->w[c->y] : 1.0;
        loss = (1.0 - e) * wy * ((m - c->xy) + ls);
        if (e > 0.0)
            loss += e / C * lin_loss;
    } else if (c->q) {
        loss = lin_loss;
    }
    const double zls = r->lse_square_scale, zlse = m + ls;
    if (zls != 0.0 && (r->target || c->q)) /* the z-loss */
        loss += zls * zlse * zlse;
    if (r->loss)
        ((TYPE *)r->loss)[i] = (TYPE)loss;
    if (r->lse) {
        double lse = m + ls;
        if (isinf(m)) { /* torch.logsumexp: inf / -inf unless the row has a NaN */
            lse = m;
            for (int64_t k = 0; k < r->n_classes; k++)
                if (c->x[k] != c->x[k])
                    lse = NAN;
        }
        ((TYPE *)r->lse)[i] = (TYPE)lse;
    }
    if (r->out_kind == XENTC_OUT_GRAD) {
        /* d/dx_c = g * (A * p_c - coef_c), A = sum_c coef_c: torch's formula
           regrouped. Class targets put (1-e)*w[y] on c == y and e/C*w[c]
           everywhere; soft targets w[c] * q'[c]. */
        const double g = r->grad_scale *
                         (r->grad_row_scale ? (double)((const TYPE *)r->grad_row_scale)[i] : 1.0);
        if (r->target) {
            c->alpha = g * ((1.0 - e) * wy + (e > 0.0 ? e / C * acc->coef : 0.0));
            c->beta = g * e / C;
            c->gamma = g * (1.0 - e) * wy;
        } else {
            c->alpha = g * acc->coef;
            c->beta = g;
        }
        if (zls != 0.0) /* d(zls * lse^2)/dz_c = 2 * zls * lse * p_c */
            c->alpha += g * 2.0 * zls * zlse;
    }
}

/* The gradient's -(1-e)*w[y] on the target logit, after the sweep wrote
   alpha * p - beta * coef over the whole row. */
static inline void XENTC_FN(grad_target)(const xentc_rows *r, const XENTC_FN(row_ctx) *c)
{
    if (r->out_kind == XENTC_OUT_GRAD && r->target)
        c->out[c->y] = (TYPE)((double)c->out[c->y] -
                              (c->zt.on ? c->gamma * (double)c->dzy : c->gamma));
}

/* The gradient step every row path ends with, for one vector of logits
   [j, j + len): a * e - beta * coef, e being exps of the row (p = e * a /
   alpha). */
static inline __attribute__((always_inline)) VT XENTC_FN(grad_of)(const XENTC_FN(row_ctx) *c,
                                                                  VT e, int64_t j, int64_t len,
                                                                  VT a, VT beta, int plain)
{
    return a * e - (plain ? beta : beta * XENTC_FN(coef)(c->w, c->q, j, len, c->qa, c->qb));
}

/* out[j0, j1) = grad_of(e[j0, j1), a): exps kept in out (e == out) or
   batched apart, scaled to the gradient from cache. */
static inline __attribute__((always_inline)) void XENTC_FN(grad_sweep)(
    const XENTC_FN(row_ctx) *c, const TYPE *e, int64_t j0, int64_t j1, double a)
{
    const VT va = XENTC_FN(splat)((TYPE)a), vb = XENTC_FN(splat)((TYPE)c->beta);
    const int plain = !c->w && !c->q; /* coef == 1: tested once, not per vector */
    int64_t j = j0;
    for (; j + NL <= j1; j += NL) {
        const VT o = XENTC_FN(grad_of)(c, XENTC_FN(load)(e + j), j, NL, va, vb, plain);
        memcpy(c->out + j, &o, sizeof o);
    }
    /* the tail lane by lane: a short row's whole gradient may be shorter
       than a vector, where partial loads and stores cost more than this */
    for (; j < j1; j++)
        c->out[j] = (TYPE)a * e[j] - (TYPE)c->beta * XENTC_FN(coef1)(c->w, c->q, j, c->qa, c->qb);
}

/* Long rows: vector second pass over row x (from cache): out = f(x - m - ls). */
static void XENTC_FN(second_pass)(const xentc_rows *r, const XENTC_FN(row_ctx) *c,
                                  TYPE mx, TYPE m, TYPE ls)
{
    const int64_t C = r->n_classes;
    const VT vm = XENTC_FN(splat)(c->zt.on && !c->zt.cap_on ? mx : m), vls = XENTC_FN(splat)(ls);
    const VT alpha = XENTC_FN(splat)((TYPE)c->alpha), beta = XENTC_FN(splat)((TYPE)c->beta);
    for (int64_t j = 0; j < C; j += NL) {
        const int64_t len = C - j < NL ? C - j : NL;
        VT d = len == NL ? XENTC_FN(load)(c->x + j) : XENTC_FN(load_part)(c->x + j, len), dz;
        d = XENTC_FN(zd)(&c->zt, c->zt.cap_on ? Z_CAP : c->zt.on ? Z_SCALE : Z_NONE, d, vm,
                         &dz) - vls;
        VT o;
        if (r->out_kind == XENTC_OUT_LOG_SOFTMAX) {
            o = d;
        } else if (r->out_kind == XENTC_OUT_SOFTMAX) {
            o = XENTC_FN(vexp)(d);
        } else { /* with a transform, times dz/dx: the coefficient terms too */
            o = XENTC_FN(grad_of)(c, XENTC_FN(vexp)(d), j, len, alpha, beta, 0);
            if (c->zt.on)
                o *= dz * c->zt.dzf;
        }
        XENTC_FN(store_part)(c->out + j, o, len);
    }
}

/* A row with a +inf logit, met at block `b` after the logits before it may
   have been overwritten by their exps (in place): its gradient row is all
   NaN (inf - inf), as torch's, and so is its loss; its lse is inf unless
   the row holds a NaN, which the blocks already summed left in `sum` and the
   others (the unsummed prefix [0, skipped) and [b, C)) still show. */
static void XENTC_FN(grad_row_inf)(const xentc_rows *r, int64_t i, const XENTC_FN(row_ctx) *c,
                                   double sum, int64_t skipped, int64_t b)
{
    const int64_t C = r->n_classes;
    if (r->loss)
        ((TYPE *)r->loss)[i] = NAN;
    if (r->lse) {
        int nan = sum != sum;
        for (int64_t k = 0; k < skipped; k++)
            nan |= c->x[k] != c->x[k];
        for (int64_t k = b; k < C; k++)
            nan |= c->x[k] != c->x[k];
        ((TYPE *)r->lse)[i] = nan ? NAN : INFINITY;
    }
    for (int64_t k = 0; k < C; k++)
        c->out[k] = NAN;
}

/*
 * block_sums over logits [b, b + n) of a row, of its z when the row is
 * transformed; mx and m are the row's running max of x and of z. With
 * `store` (the kept exps of the gradient) each exp is stored times dz/dx:
 * the sweep that scales them to alpha * p then gives the gradient with
 * respect to x, where the coefficient terms (beta) are 0.
 */
static inline __attribute__((always_inline)) void XENTC_FN(row_sums)(const XENTC_FN(row_ctx) *c, int64_t b, int64_t n, TYPE mx,
                                      double m, xentc_sums *acc, TYPE *store)
{
    const TYPE *w = c->w ? c->w + b : NULL, *q = c->q ? c->q + b : NULL;
    /* The logits 4 KiB on in memory, whatever their width: the next block
       of the row's own, or of 16-bit ones the block after next. */
    const char *const ahead = c->x16 ? c->x16 + 2 * (b + 2 * BLOCK) : (const char *)(c->x + b + BLOCK);
    const int size = c->x16 ? 2 : (int)sizeof(TYPE);
    /* One call per transform, each compiled without the others' tests. */
    if (c->zt.cap_on && c->zt.cap <= -EXP_LO / 2)
        XENTC_FN(block_sums)(c->x + b, w, q, n, (TYPE)m, c->lin, c->qa, c->qb, acc, store,
                             &c->zt, Z_CAP_NEAR, ahead, size);
    else if (c->zt.cap_on)
        XENTC_FN(block_sums)(c->x + b, w, q, n, (TYPE)m, c->lin, c->qa, c->qb, acc, store,
                             &c->zt, Z_CAP, ahead, size);
    else if (c->zt.on)
        XENTC_FN(block_sums)(c->x + b, w, q, n, mx, c->lin, c->qa, c->qb, acc, store, &c->zt,
                             Z_SCALE, ahead, size);
    else
        XENTC_FN(block_sums)(c->x + b, w, q, n, mx, c->lin, c->qa, c->qb, acc, store, &c->zt,
                             Z_NONE, ahead, size);
}

/* z of a row's max of x, in double: exact for a scale alone, so that lse
   and the loss's z[y] are the products' exact values. */
static inline __attribute__((always_inline)) double XENTC_FN(zmax)(const XENTC_FN(row_ctx) *c, TYPE mx)
{
    if (!c->zt.on)
        return mx;
    return c->zt.cap_on ? (double)XENTC_FN(z1)(&c->zt, mx, NULL) : (double)mx * (double)c->zt.s;
}

/* The first read of a long row's logits [b, b + n), from memory: their max.
   A row of 16-bit logits (x16) is widened here, a block at a time, into the
   float32 row x in the thread's scratch, which every later read takes from
   cache (row_sums pulls the next block's 16-bit logits in meanwhile). */
static inline TYPE XENTC_FN(stream_max)(const XENTC_FN(row_ctx) *c, int64_t b, int64_t n)
{
#ifdef XENTC_HALF_ROWS
    if (c->x16)
        widen(c->x16 + 2 * b, (TYPE *)c->x + b, n, c->bf16);
#endif
    return XENTC_FN(block_max)(c->x + b, n);
}

/* Blocks of one row whose kept exps share one reference max: at most this
   many, then the exps kept so far are rescaled to the newest max. */
#define GRAD_SEGS 32

/*
 * The gradient of a long row in one read of the row from memory and one exp
 * per logit: each block's max is taken as the block streams in, then
 * exp(x - m) is written into out and summed, m being the running max of the
 * row so far (the online softmax of block_sums, with the exps kept); blocks
 * that shared one m form a segment. The last sweep, from cache, scales each
 * segment by exp(m_segment - max - log(sum)): one more rounding than
 * exp(x - max - log(sum)). Returns 0, having written nothing, for a row with
 * no finite max (all -inf or NaN), which the general path takes.
 */
static inline __attribute__((always_inline)) int XENTC_FN(grad_row_kept_exps)(const xentc_rows *r, int64_t i, XENTC_FN(row_ctx) *c)
{
    const int64_t C = r->n_classes;
    if (c->zt.on && c->lin) /* kept exps times dz/dx leave no room for beta */
        return 0;
    TYPE mx = -INFINITY;
    double m = -INFINITY;
    xentc_sums acc = {0};
    int64_t seg_start[GRAD_SEGS + 1], skipped = 0;
    double seg_m[GRAD_SEGS];
    int n_seg = 0;
    for (int64_t b = 0; b < C; b += BLOCK) {
        const int64_t n = C - b < BLOCK ? C - b : BLOCK;
        const TYPE bx = XENTC_FN(stream_max)(c, b, n);
        if (!(bx > mx)) {
            /* the max stays */
        } else if (XENTC_FN(zmax)(c, bx) == INFINITY) {
#ifdef XENTC_HALF_ROWS
            if (c->x16) /* grad_row_inf reads the rest of the row */
                widen(c->x16 + 2 * (b + n), (TYPE *)c->x + b + n, C - b - n, c->bf16);
#endif
            XENTC_FN(grad_row_inf)(r, i, c, acc.rest, skipped, b);
            return 1;
        } else if (XENTC_FN(zmax)(c, bx) <= m) {
            /* a softcap's saturation (same z), or its tanh's rounding: an
               ulp below the z of a smaller x. m stays, mx is x's max. */
            mx = bx;
        } else {
            const double bm = XENTC_FN(zmax)(c, bx);
            XENTC_FN(rebase)(&acc, m, bm);
            m = bm;
            mx = bx;
            if (n_seg == GRAD_SEGS) { /* full: fold them into one, on the new max */
                seg_start[n_seg] = b;
                for (int k = 0; k < n_seg; k++) {
                    const TYPE f = (TYPE)exp(seg_m[k] - m);
                    for (int64_t j = seg_start[k]; j < seg_start[k + 1]; j++)
                        c->out[j] *= f;
                }
                n_seg = 0;
            } else {
                seg_start[n_seg] = b;
            }
            seg_m[n_seg++] = m;
        }
        if (m == -INFINITY) { /* no max yet: summed once there is one */
            skipped = b + n;
            continue;
        }
        XENTC_FN(row_sums)(c, b, n, mx, m, &acc, c->out + b);
    }
    if (m == -INFINITY)
        return 0;
    /* -inf logits before the first finite one, against the final max */
    if (skipped > 0)
        XENTC_FN(row_sums)(c, 0, skipped, mx, m, &acc, c->out);
    const double ls = log1p((acc.ones - 1.0) + acc.rest);
    XENTC_FN(finish)(r, i, c, m, ls, &acc);
    const double dzf = c->zt.on ? (double)c->zt.dzf : 1.0; /* see block_sums */
    if (skipped > 0)
        XENTC_FN(grad_sweep)(c, c->out, 0, skipped, dzf * c->alpha * exp(-ls));
    seg_start[n_seg] = C;
    for (int k = 0; k < n_seg; k++)
        XENTC_FN(grad_sweep)(c, c->out, seg_start[k], seg_start[k + 1],
                             dzf * c->alpha * exp(seg_m[k] - m - ls));
    XENTC_FN(grad_target)(r, c);
    return 1;
}

static void XENTC_FN(long_row)(const xentc_rows *r, int64_t i, const char *x16, int bf16)
{
    const int64_t C = r->n_classes;
    XENTC_FN(row_ctx) c = XENTC_FN(begin)(r, i);
    c.x16 = x16;
    c.bf16 = bf16;
    if (XENTC_FN(ignored)(r, i, &c))
        return;
    XENTC_FN(begin_z)(r, &c);
    if (r->out_kind == XENTC_OUT_GRAD && XENTC_FN(grad_row_kept_exps)(r, i, &c))
        return;
    TYPE mx = -INFINITY;
    double m = -INFINITY;
    xentc_sums acc = {0};
    int64_t skipped = 0; /* leading elements seen while m was still -inf */
    for (int64_t b = 0; b < C; b += BLOCK) {
        const int64_t n = C - b < BLOCK ? C - b : BLOCK;
        const TYPE bx = XENTC_FN(stream_max)(&c, b, n);
        if (bx > mx) {
            const double bm = XENTC_FN(zmax)(&c, bx);
            if (bm > m) { /* not at a softcap's saturation, or its rounding (see above) */
                XENTC_FN(rebase)(&acc, m, bm);
                m = bm;
            }
            mx = bx;
        }
        if (m == -INFINITY) {
            skipped = b + n;
            continue;
        }
        XENTC_FN(row_sums)(&c, b, n, mx, m, &acc, NULL);
    }
    /* A softcap maps a row of -inf to -softcap's: a max after all. */
    if (m == -INFINITY && c.zt.cap_on)
        m = XENTC_FN(zmax)(&c, mx);
    /* -inf logits before the first finite one: their exp is 0 but their
       linear terms are -inf (or NaN with a zero coefficient), as in torch. */
    if (skipped > 0 && m > -INFINITY)
        XENTC_FN(row_sums)(&c, 0, skipped, mx, m, &acc, NULL);
    /* log(ones + rest) as log1p((ones - 1) + rest), exact when the sum is near
       1; a row of -inf (or NaN) has no max: torch gives NaN (inf - inf). */
    const double ls = m > -INFINITY ? log1p((acc.ones - 1.0) + acc.rest) : NAN;
    XENTC_FN(finish)(r, i, &c, m, ls, &acc);
    if (!c.out)
        return;
    XENTC_FN(second_pass)(r, &c, mx, (TYPE)m, (TYPE)ls);
    XENTC_FN(grad_target)(r, &c);
}

/* exp of buf[0, n) in place, four vectors at a time; with drop_ones, the
   exact ones (buf == 0) become 0: the caller counts them apart. */
static void XENTC_FN(exp_buffer)(TYPE *buf, int64_t n, int drop_ones)
{
    const VT drop = XENTC_FN(splat)(drop_ones ? -1 : 0);
    int64_t j = 0;
    for (; j + 4 * NL <= n; j += 4 * NL) {
        VT d[4], top[4];
        for (int u = 0; u < 4; u++) {
            d[u] = XENTC_FN(load)(buf + j + u * NL);
            top[u] = (VT)((d[u] == 0) & (VIT)drop);
        }
        XENTC_FN(vexp_n)(d, 4, EXP_FLUSH, NULL);
        for (int u = 0; u < 4; u++) {
            d[u] += top[u];
            memcpy(buf + j + u * NL, &d[u], sizeof d[u]);
        }
    }
    for (; j < n; j += NL) {
        const int64_t len = n - j < NL ? n - j : NL;
        VT d = XENTC_FN(load_part)(buf + j, len);
        const VT top = (VT)((d == 0) & (VIT)drop);
        XENTC_FN(store_part)(buf + j, XENTC_FN(vexp)(d) + top, len);
    }
}

/* Short rows of fewer logits than this take four scalar chains for their
   max and sum: below it the vector lanes' reduction costs more (AVX2, 17
   classes: twice the time). */
#define SHORT_VEC_MIN ((int64_t)32)

/* Max of a short row, from SHORT_VEC_MIN logits on as a block's (NaN
   skipped, as max() does; a row of NaN or -inf gives -inf). */
static inline TYPE XENTC_FN(short_max)(const TYPE *x, int64_t n)
{
    if (n >= SHORT_VEC_MIN)
        return XENTC_FN(block_max)(x, n);
    TYPE m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}; /* four chains hide the */
    int64_t k = 0;                                            /* compares' latency */
    for (; k + 4 <= n; k += 4)
        for (int u = 0; u < 4; u++)
            m[u] = x[k + u] > m[u] ? x[k + u] : m[u];
    for (; k < n; k++)
        m[0] = x[k] > m[0] ? x[k] : m[0];
    m[0] = m[1] > m[0] ? m[1] : m[0];
    m[2] = m[3] > m[2] ? m[3] : m[2];
    return m[2] > m[0] ? m[2] : m[0];
}

/* sum exp(x - m) - 1 of a short row from its `ones` exact maxima and the
   exps of the other logits, p (maxima stored as 0 by exp_buffer): with the
   ones apart, a float sum of the rest keeps its relative precision. */
static inline double XENTC_FN(short_excess)(const TYPE *p, int64_t n, int64_t ones)
{
    if (n < SHORT_VEC_MIN) { /* as short_max */
        TYPE s[4] = {0, 0, 0, 0};
        int64_t k = 0;
        for (; k + 4 <= n; k += 4)
            for (int u = 0; u < 4; u++)
                s[u] += p[k + u];
        for (; k < n; k++)
            s[0] += p[k];
        return (double)(ones - 1) + ((double)(s[0] + s[1]) + (double)(s[2] + s[3]));
    }
    VT s = {0};
    int64_t k = 0;
    for (; k + NL <= n; k += NL)
        s += XENTC_FN(load)(p + k);
    TYPE t = 0;
    for (; k < n; k++)
        t += p[k];
    return (double)(ones - 1) + (XENTC_FN(hsum)(s) + (double)t);
}

/*
 * Short rows (a few vectors or less): per-row vector code would spend more
 * on set-up and tails than on the row, so a group of rows is laid end to end
 * in a buffer as x - max(row) and exponentiated as one long vector; the rest
 * is scalar and cheap.
 */
/* Rows up to this many classes take the batched path. */
#define SHORT_C ((int64_t)XENTC_SCRATCH_C)
#define SHORT_BUF ((int64_t)2048)
#define SHORT_ROWS ((int64_t)256)

static void XENTC_FN(short_rows)(const xentc_rows *r, int64_t i0, int64_t i1)
{
    const int64_t C = r->n_classes;
    const int64_t group = SHORT_BUF / C < SHORT_ROWS ? SHORT_BUF / C : SHORT_ROWS;
    TYPE buf[SHORT_BUF];
    struct {
        TYPE m, ls;
        double alpha, beta, gamma;
        int skip;
        int64_t ones;
    } st[SHORT_ROWS];
    double sums[SHORT_ROWS], logs[SHORT_ROWS];
    for (int64_t g0 = i0; g0 < i1; g0 += group) {
        const int64_t g1 = g0 + group < i1 ? g0 + group : i1;
        for (int64_t i = g0; i < g1; i++) {
            const TYPE *x = (const TYPE *)r->x + i * r->x_stride;
            const TYPE m = XENTC_FN(short_max)(x, C);
            st[i - g0].m = m;
            TYPE *d = buf + (i - g0) * C;
            int ones = 0; /* int: vectorized in 32-bit lanes */
            for (int64_t k = 0; k < C; k++) {
                d[k] = x[k] - m; /* as torch: NaN for a row of -inf */
                ones += d[k] == 0;
            }
            st[i - g0].ones = ones;
        }
        XENTC_FN(exp_buffer)(buf, (g1 - g0) * C, 1);
        for (int64_t i = g0; i < g1; i++) /* NaN for a row of -inf: no max */
            sums[i - g0] = XENTC_FN(short_excess)(buf + (i - g0) * C, C, st[i - g0].ones);
        xentc_log1p_array(sums, logs, g1 - g0, LOG1P_TOP);
        for (int64_t i = g0; i < g1; i++) {
            XENTC_FN(row_ctx) c = XENTC_FN(begin)(r, i);
            st[i - g0].skip = XENTC_FN(ignored)(r, i, &c);
            if (st[i - g0].skip)
                continue;
            const TYPE m = st[i - g0].m;
            xentc_sums acc = {0}; /* finish reads only the linear sums */
            if (c.lin)
                for (int64_t k = 0; k < C; k++) {
                    const TYPE cf = XENTC_FN(coef1)(c.w, c.q, k, c.qa, c.qb);
                    acc.lin += (double)(cf * (c.x[k] - m));
                    acc.coef += (double)cf;
                }
            XENTC_FN(finish)(r, i, &c, m, logs[i - g0], &acc);
            st[i - g0].ls = (TYPE)logs[i - g0];
            st[i - g0].alpha = c.alpha;
            st[i - g0].beta = c.beta;
            st[i - g0].gamma = c.gamma;
        }
        if (r->out_kind == XENTC_OUT_NONE)
            continue;
        /* Second pass: out = f(x - m - ls), the exps batched again. */
        for (int64_t i = g0; i < g1; i++) {
            const TYPE *x = (const TYPE *)r->x + i * r->x_stride;
            TYPE *d = buf + (i - g0) * C;
            for (int64_t k = 0; k < C; k++)
                d[k] = (x[k] - st[i - g0].m) - st[i - g0].ls;
        }
        if (r->out_kind != XENTC_OUT_LOG_SOFTMAX)
            XENTC_FN(exp_buffer)(buf, (g1 - g0) * C, 0);
        for (int64_t i = g0; i < g1; i++) {
            if (st[i - g0].skip)
                continue; /* zeroed by ignored() */
            const TYPE *v = buf + (i - g0) * C;
            XENTC_FN(row_ctx) c = XENTC_FN(begin)(r, i);
            if (r->out_kind != XENTC_OUT_GRAD) {
                memcpy(c.out, v, (size_t)C * sizeof(TYPE));
                continue;
            }
            c.beta = st[i - g0].beta;
            XENTC_FN(grad_sweep)(&c, v, 0, C, st[i - g0].alpha);
            c.gamma = st[i - g0].gamma;
            XENTC_FN(grad_target)(r, &c);
        }
    }
}

/*
 * Narrow rows (a handful of classes) for loss, lse and the gradient of class
 * targets without smoothing: one vector lane per row, so the max, the exps
 * and the sums of NL rows run side by side with no per-row horizontal work.
 * Column k of the NL rows is gathered once (the rows are in L1 after the
 * first column) and kept for both the max and the exps.
 */
#define NARROW_C ((int64_t)16)

static inline VT XENTC_FN(column)(const TYPE *x, int64_t stride, int64_t k)
{
    VT v; /* lane inserts: AVX2's gather is slower on the CPUs measured */
    for (int64_t l = 0; l < NL; l++)
        v[l] = x[l * stride + k];
    return v;
}

#ifdef NARROW_TRANSPOSE
/* v[0..16) as the columns of a 16 x 16 float matrix given by its rows: 64
   shuffles, against 16 lane inserts per column (two instructions each). */
static inline __attribute__((always_inline)) void XENTC_FN(transpose16)(__m512 *v)
{
    __m512 a[16], b[16];
    for (int i = 0; i < 16; i += 2) {
        a[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
        a[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* b[i + m]: columns 4j + m of rows i..i+3, lane j */
        b[i] = (__m512)_mm512_unpacklo_pd((__m512d)a[i], (__m512d)a[i + 2]);
        b[i + 1] = (__m512)_mm512_unpackhi_pd((__m512d)a[i], (__m512d)a[i + 2]);
        b[i + 2] = (__m512)_mm512_unpacklo_pd((__m512d)a[i + 1], (__m512d)a[i + 3]);
        b[i + 3] = (__m512)_mm512_unpackhi_pd((__m512d)a[i + 1], (__m512d)a[i + 3]);
    }
    for (int m = 0; m < 4; m++) { /* gather lane j of the four row groups */
        const __m512 e0 = _mm512_shuffle_f32x4(b[m], b[4 + m], 0x88);
        const __m512 o0 = _mm512_shuffle_f32x4(b[m], b[4 + m], 0xdd);
        const __m512 e1 = _mm512_shuffle_f32x4(b[8 + m], b[12 + m], 0x88);
        const __m512 o1 = _mm512_shuffle_f32x4(b[8 + m], b[12 + m], 0xdd);
        v[m] = _mm512_shuffle_f32x4(e0, e1, 0x88);
        v[4 + m] = _mm512_shuffle_f32x4(o0, o1, 0x88);
        v[8 + m] = _mm512_shuffle_f32x4(e0, e1, 0xdd);
        v[12 + m] = _mm512_shuffle_f32x4(o0, o1, 0xdd);
    }
}
#endif

/* col[0, C) = the C columns of NL rows of x (C <= NARROW_C). */
static inline __attribute__((always_inline)) void XENTC_FN(columns)(const TYPE *x, int64_t stride,
                                                                    int64_t C, VT *col)
{
#ifdef NARROW_TRANSPOSE
    /* the rows with masked loads (nothing read past a row), transposed in
       place: col holds NARROW_C = 16 vectors (copying C of them out of a
       temporary became a call to memcpy) */
    __m512 *const v = (__m512 *)col;
    const __mmask16 live = (__mmask16)((1u << C) - 1u);
    for (int l = 0; l < 16; l++)
        v[l] = _mm512_maskz_loadu_ps(live, x + l * stride);
    XENTC_FN(transpose16)(v);
#else
    for (int64_t k = 0; k < C; k++)
        col[k] = XENTC_FN(column)(x, stride, k);
#endif
}

/* Row maxima m and excess sums (sum exp(x - m)) - 1 of NL rows from x,
   one row per lane. */
static inline __attribute__((always_inline)) void XENTC_FN(narrow_sums)(
    const TYPE *x, int64_t stride, int64_t C, double *md, double *excess, VT *ex)
{
    const VT minus_one = XENTC_FN(splat)(-1);
    VT col[NARROW_C];
    /* Two chains for the max; max(v, m) skips a NaN v, which still poisons
       the sum. */
    VT m = XENTC_FN(splat)(-INFINITY), m1 = m;
    XENTC_FN(columns)(x, stride, C, col);
    int64_t k = 0;
    for (; k + 2 <= C; k += 2) {
        m = XENTC_FN(max)(col[k], m);
        m1 = XENTC_FN(max)(col[k + 1], m1);
    }
    if (k < C)
        m = XENTC_FN(max)(col[k], m);
    m = XENTC_FN(max)(m1, m);
    /* exact ones apart from the rest, as in block_sums */
    VT s = {0}, ones = {0};
    for (k = 0; k + 4 <= C; k += 4) {
        VT d[4], top[4];
        for (int u = 0; u < 4; u++) {
            d[u] = col[k + u] - m;
            top[u] = (VT)((d[u] == 0) & (VIT)minus_one);
        }
        /* kept exps (ex, for a gradient) are values a caller sees: exp(-inf) = 0 */
        XENTC_FN(vexp_n)(d, 4, ex ? EXP_FLUSH : EXP_CLAMP, NULL);
        for (int u = 0; u < 4; u++) {
            if (ex)
                ex[k + u] = d[u];
            s += d[u] + top[u];
            ones -= top[u];
        }
    }
    for (; k < C; k++) {
        const VT d = col[k] - m;
        const VT top = (VT)((d == 0) & (VIT)minus_one);
        const VT e = XENTC_FN(vexp)(d);
        if (ex)
            ex[k] = e;
        s += e + top;
        ones -= top;
    }
    for (int64_t l = 0; l < NL; l++) {
        md[l] = (double)m[l];
        excess[l] = ((double)ones[l] - 1.0) + (double)s[l];
    }
}

/* Rows per batch of the narrow path: each step (sums, logs, losses) runs
   over the whole batch, so the out-of-order core overlaps independent
   groups of rows instead of waiting on one group's chain of latencies. */
#define NARROW_BATCH ((int64_t)64)

/*
 * The gradient of NL narrow rows from their kept exps ex (one vector per
 * class, a row per lane): p = e * exp(-ls), out = alpha * p, less gamma at
 * the target (no smoothing on this path: beta = 0), written column by
 * column. alpha and gamma as finish() sets them for class targets.
 */
static inline __attribute__((always_inline)) void XENTC_FN(narrow_grad)(
    const xentc_rows *r, int64_t i, const VT *ex, const double *md, const double *ls)
{
    const int64_t C = r->n_classes, stride = r->out_stride;
    const TYPE *const w = (const TYPE *)r->weight, *const grs = (const TYPE *)r->grad_row_scale;
    TYPE *const out = (TYPE *)r->out + i * stride;
    VT nls, alpha, gamma;
    for (int64_t l = 0; l < NL; l++) {
        const int64_t y = r->target[i + l];
        const double g = r->grad_scale * (grs ? (double)grs[i + l] : 1.0);
        const double wy = w ? (double)w[y] : 1.0;
        nls[l] = (TYPE)-ls[l];
        gamma[l] = (TYPE)(g * wy);
        alpha[l] = (TYPE)(g * (wy + 2.0 * r->lse_square_scale * (md[l] + ls[l])));
    }
    const VT scale = alpha * XENTC_FN(vexp)(nls);
#ifdef NARROW_TRANSPOSE /* columns to rows, each stored under a mask */
    __m512 v[16];
    for (int64_t k = 0; k < 16; k++)
        v[k] = k < C ? (__m512)(ex[k] * scale) : _mm512_setzero_ps();
    XENTC_FN(transpose16)(v);
    const __mmask16 live = (__mmask16)((1u << C) - 1u);
    for (int l = 0; l < 16; l++)
        _mm512_mask_storeu_ps(out + l * stride, live, v[l]);
#else
    for (int64_t k = 0; k < C; k++) {
        const VT o = ex[k] * scale;
        for (int64_t l = 0; l < NL; l++)
            out[l * stride + k] = o[l];
    }
#endif
    for (int64_t l = 0; l < NL; l++)
        out[l * stride + r->target[i + l]] -= gamma[l];
}

static void XENTC_FN(narrow_rows)(const xentc_rows *r, int64_t i0, int64_t i1)
{
    /* Locals, not r->...: the stores to loss could alias r for all the
       compiler knows, which would reload every field for every row. */
    const int64_t C = r->n_classes, stride = r->x_stride, ignore = r->ignore_index;
    const TYPE *const x0 = (const TYPE *)r->x, *const w = (const TYPE *)r->weight;
    const int64_t *const target = r->target;
    const double zls = r->lse_square_scale;
    TYPE *const loss = (TYPE *)r->loss, *const lse = (TYPE *)r->lse;
    double md[NARROW_BATCH], excess[NARROW_BATCH], ls[NARROW_BATCH];
    const int grad = r->out_kind == XENTC_OUT_GRAD;
    VT ex[NARROW_BATCH / NL * NARROW_C]; /* the gradient's kept exps, per group */
    int64_t i = i0;
    while (i1 - i >= NL) {
        const int64_t n = i1 - i < NARROW_BATCH ? (i1 - i) / NL * NL : NARROW_BATCH;
        for (int64_t g = 0; g < n; g += NL) /* two calls: the forward's without ex */
            if (grad)
                XENTC_FN(narrow_sums)(x0 + (i + g) * stride, stride, C, md + g, excess + g,
                                      ex + g / NL * NARROW_C);
            else
                XENTC_FN(narrow_sums)(x0 + (i + g) * stride, stride, C, md + g, excess + g,
                                      NULL);
        xentc_log1p_array(excess, ls, n, LOG1P_TOP);
        /* finish() reduced to what these rows need (no smoothing, no second
           result), a loop without branches: at ten classes finish()'s
           general set-up would cost as much as the row itself. A batch with
           an infinite maximum or an ignored row takes finish() whole; both
           give the same bits. */
        int special = 0;
        for (int64_t l = 0; l < n; l++) /* no branch: vectorized */
            special |= fabs(md[l]) == INFINITY;
        if (target)
            for (int64_t l = 0; l < n; l++)
                special |= target[i + l] == ignore;
        if (special && grad) { /* the general path, gradient and all */
            XENTC_FN(short_rows)(r, i, i + n);
            i += n;
            continue;
        }
        if (special) {
            for (int64_t l = 0; l < n; l++) {
                XENTC_FN(row_ctx) c = XENTC_FN(begin)(r, i + l);
                const xentc_sums acc = {0}; /* no linear sums here */
                if (!XENTC_FN(ignored)(r, i + l, &c))
                    XENTC_FN(finish)(r, i + l, &c, md[l], ls[l], &acc);
            }
        } else {
            if (loss) { /* the gathers first, then a loop that vectorizes */
                double xy[NARROW_BATCH], wy[NARROW_BATCH];
                for (int64_t l = 0; l < n; l++) {
                    const int64_t y = target[i + l];
                    xy[l] = (double)x0[(i + l) * stride + y];
                    wy[l] = w ? (double)w[y] : 1.0;
                }
                for (int64_t l = 0; l < n; l++) {
                    const double lse_l = md[l] + ls[l];
                    loss[i + l] = (TYPE)(wy[l] * ((md[l] - xy[l]) + ls[l]) + zls * lse_l * lse_l);
                }
            }
            if (lse)
                for (int64_t l = 0; l < n; l++)
                    lse[i + l] = (TYPE)(md[l] + ls[l]);
            /* after the loss, which read x[y]: out may be x */
            if (grad)
                for (int64_t g = 0; g < n; g += NL)
                    XENTC_FN(narrow_grad)(r, i + g, ex + g / NL * NARROW_C, md + g, ls + g);
        }
        i += n;
    }
    if (i < i1)
        XENTC_FN(short_rows)(r, i, i1);
}

/* Rows [i0, i1): narrow rows lane-parallel, short rows batched, long rows
   one at a time. */
static void XENTC_FN(plain_rows)(const xentc_rows *r, int64_t i0, int64_t i1)
{
    const int lin = r->soft != NULL || (r->target && r->label_smoothing > 0.0);
    if (r->n_classes <= NARROW_C && !lin &&
        (r->out_kind == XENTC_OUT_NONE || (r->out_kind == XENTC_OUT_GRAD && r->target))) {
        XENTC_FN(narrow_rows)(r, i0, i1);
        return;
    }
    if (r->n_classes <= SHORT_C) {
        XENTC_FN(short_rows)(r, i0, i1);
        return;
    }
    for (int64_t i = i0; i < i1; i++)
        XENTC_FN(long_row)(r, i, NULL, 0);
}

#ifdef XENTC_HALF_ROWS
/* Row i of 16-bit logits x16 (more than XENTC_SCRATCH_C of them), whose
   float32 row r describes (half_rows.c): x and out one row of the thread's
   scratch, which the row's first read fills. */
void XENTC_FN(xentc_long_row16)(const xentc_rows *r, int64_t i, const void *x16, int bf16)
{
    const int64_t y = r->target ? r->target[i] : -1;
    if (y >= 0 && y < r->n_classes) /* begin() reads z[y] before the row streams in */
        widen((const char *)x16 + 2 * y, (TYPE *)r->x + i * r->x_stride + y, 1, bf16);
    XENTC_FN(long_row)(r, i, x16, bf16);
}
#endif

/*
 * Short rows of z = T(x): z (and dz/dx for a gradient) of the chunk's rows
 * are written to `scratch`, the batched paths run on z, and the gradient
 * they wrote (with respect to z) is multiplied by dz/dx. The scratch stays
 * in cache between the steps.
 */
static void XENTC_FN(transformed_rows)(const xentc_rows *r, int64_t i0, int64_t i1, TYPE *scratch)
{
    const int64_t C = r->n_classes, n = i1 - i0;
    const int grad = r->out_kind == XENTC_OUT_GRAD;
    const XENTC_FN(ztrans) zt = XENTC_FN(ztrans_of)(r);
    TYPE *const z = scratch, *const dz = scratch + n * C;
    for (int64_t i = 0; i < n; i++)
        XENTC_FN(z_block)(&zt, (const TYPE *)r->x + (i0 + i) * r->x_stride, C, z + i * C,
                          grad ? dz + i * C : NULL);
    xentc_rows sub = *r;
    sub.n_rows = n;
    sub.x = z;
    sub.x_stride = C;
    sub.logit_scale = 1.0;
    sub.softcap = 0.0;
    sub.target = r->target ? r->target + i0 : NULL;
    sub.soft = r->soft ? (const TYPE *)r->soft + i0 * r->soft_stride : NULL;
    sub.loss = r->loss ? (TYPE *)r->loss + i0 : NULL;
    sub.lse = r->lse ? (TYPE *)r->lse + i0 : NULL;
    sub.out = r->out ? (TYPE *)r->out + i0 * r->out_stride : NULL;
    sub.grad_row_scale = r->grad_row_scale ? (const TYPE *)r->grad_row_scale + i0 : NULL;
    XENTC_FN(plain_rows)(&sub, 0, n);
    if (!grad)
        return;
    for (int64_t i = 0; i < n; i++) {
        if (sub.target && sub.target[i] == r->ignore_index)
            continue; /* exactly 0, whatever dz/dx (NaN for a NaN logit) */
        TYPE *o = (TYPE *)sub.out + i * r->out_stride;
        for (int64_t j = 0; j < C; j++)
            o[j] *= dz[i * C + j];
    }
}

/* Rows [i0, i1). Long rows apply the transform block by block as they
   stream in (row_sums, second_pass); short ones, whose paths batch rows,
   go through the scratch (row_kernels.h: XENTC_SCRATCH_C). */
void XENTC_FN(xentc_rows)(const xentc_rows *r, int64_t i0, int64_t i1, void *scratch)
{
    if ((r->logit_scale != 1.0 || r->softcap > 0.0) && r->n_classes <= XENTC_SCRATCH_C)
        XENTC_FN(transformed_rows)(r, i0, i1, (TYPE *)scratch);
    else
        XENTC_FN(plain_rows)(r, i0, i1);
}

/* Rows [i0, i1) of probabilities: row sums, picked entries, and the
   extremes folded into ext = {min, max, NaN seen}. */
void XENTC_FN(xentc_proba)(const xentc_proba *pr, int64_t i0, int64_t i1, double ext[3])
{
    const int64_t C = pr->n_classes;
    VT vlo = XENTC_FN(splat)(INFINITY), vhi = XENTC_FN(splat)(-INFINITY);
    VIT nan = {0};
    for (int64_t i = i0; i < i1; i++) {
        const TYPE *row = (const TYPE *)pr->p + i * pr->p_stride;
        VT s = {0};
        for (int64_t j = 0; j < C; j += NL) {
            const int64_t len = C - j < NL ? C - j : NL;
            VT v = len == NL ? XENTC_FN(load)(row + j) : XENTC_FN(load_part)(row + j, len);
            s += v; /* load_part fills the missing lanes with 0 */
            if (len < NL) { /* ... which must not become the extremes */
                VIT live = {0};
                for (int64_t k = 0; k < len; k++)
                    live[k] = -1;
                v = XENTC_FN(sel)(live, v, XENTC_FN(splat)(row[0]));
            }
            nan |= v != v;
            vlo = XENTC_FN(sel)(v < vlo, v, vlo);
            vhi = XENTC_FN(sel)(v > vhi, v, vhi);
        }
        ((TYPE *)pr->row_sum)[i] = (TYPE)XENTC_FN(hsum)(s);
        if (pr->target)
            ((TYPE *)pr->picked)[i] = row[pr->target[i]];
    }
    for (int64_t k = 0; k < NL; k++) {
        ext[0] = vlo[k] < ext[0] ? vlo[k] : ext[0];
        ext[1] = vhi[k] > ext[1] ? vhi[k] : ext[1];
        ext[2] = nan[k] ? 1.0 : ext[2];
    }
}

#undef VT
#undef VIT
#undef NL
#undef BLOCK
#undef SHORT_C
#undef SHORT_VEC_MIN
#undef SHORT_BUF
#undef SHORT_ROWS
#undef NARROW_C
#undef NARROW_BATCH
#undef GRAD_SEGS
