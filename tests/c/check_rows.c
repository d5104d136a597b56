/*
 * check_rows: the C core's public entry points (xentc.h) against a long
 * double reference written here, for every ISA of the build and both dtypes.
 *
 * The Python suite checks the same semantics through the bindings; this
 * program needs nothing but a C compiler, so it also runs where the wheels
 * are not built: cross-compiled for aarch64 and Windows (see .ci/cross).
 *
 * Expected values are torch's, as tests/test_cross_entropy.py,
 * tests/test_softmax.py and tests/test_grad.py pin them for non-finite rows:
 *  - a row with a NaN, a +inf, or nothing but -inf has NaN log_softmax,
 *    softmax, loss and gradient; its lse is torch.logsumexp's: NaN with a
 *    NaN, else +inf with a +inf, else -inf;
 *  - a -inf logit among finite ones has probability exactly 0 and a finite
 *    gradient; its linear loss terms are inf (NaN times a zero coefficient).
 * Rows whose class target is ignore_index get loss, lse and out all zero
 * (what the kernels write; xentc.h documents it for the loss).
 *
 * The row options (logit_scale, softcap, the z-loss) are checked through the
 * same reference: the softmax family is taken of z = T(x), computed in long
 * double from the dtype's x (a softcap makes infinite logits finite), and
 * the gradient is scaled by dz/dx. A loss past the dtype's range is inf.
 *
 * Tolerances are tests/reference.py's: a few ulp of each result's natural
 * magnitude (|lse| + max|z| for lse, log_softmax and the loss; p (2 + gap)
 * for softmax), and the README's 2 eps max(|lse|, |x[y]|) for float32
 * losses of class targets without smoothing. Such a loss also keeps its
 * relative precision when it is tiny (a confident row): its error is the
 * softmax's below the target's logit. The gradient's scale is the
 * softmax's rather than the loss's, so that rows of huge logits are still
 * checked. The kernels' z is off by up to zulp ulp of |z| (a rounding, or
 * the softcap's tanh), which widens the magnitudes by as much. Non-finite
 * results must match exactly, zeros of -inf logits and of ignored rows too.
 *
 * Exit status 1 on any mismatch; the first ones are printed whole.
 */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xentc.h"

/* ---------------------------------------------------------------- dtypes */

typedef struct {
    const char *name;
    size_t size;
    double eps, tiny, big; /* big: a "huge" logit, far beyond exp's range */
    double exp_lo;         /* below it the kernels' exp flushes (row_kernels.c) */
    int (*rows)(const xentc_rows *, int, int64_t *);
    int (*proba)(xentc_proba *, int, int64_t *);
} dtype;

static const dtype dtypes[] = {
    {"f32", sizeof(float), FLT_EPSILON, FLT_MIN, 1e30, -87.0, xentc_rows_f32, xentc_proba_f32},
    {"f64", sizeof(double), DBL_EPSILON, DBL_MIN, 1e300, -708.0, xentc_rows_f64, xentc_proba_f64},
};

static int is_f32(const dtype *t) { return t->size == sizeof(float); }

static double get(const dtype *t, const void *p, int64_t i)
{
    return is_f32(t) ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

static void put(const dtype *t, void *p, int64_t i, double v)
{
    if (is_f32(t))
        ((float *)p)[i] = (float)v;
    else
        ((double *)p)[i] = v;
}

static double round_to(const dtype *t, double v) { return is_f32(t) ? (double)(float)v : v; }

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "check_rows: out of memory\n");
        exit(2);
    }
    return p;
}

/* ------------------------------------------------------------ reporting */

static int64_t n_cases, n_failed_cases, n_mismatches;
static int case_failed;
static char where[256]; /* the case being checked, for messages */

#define MAX_PRINTED 12

static void mismatch(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void mismatch(const char *fmt, ...)
{
    n_mismatches++;
    case_failed = 1;
    if (n_mismatches > MAX_PRINTED)
        return;
    va_list ap;
    va_start(ap, fmt);
    printf("MISMATCH %s: ", where);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

/* A kernel that crashes: say in which case (stdio from a signal handler is
   not safe in general, but the process is going down anyway). */
static void on_crash(int sig)
{
    printf("CRASH (signal %d) in %s\n", sig, where);
    fflush(stdout);
    _Exit(128 + sig);
}

static void begin_case(void) { case_failed = 0; }

static void end_case(void)
{
    n_cases++;
    n_failed_cases += case_failed;
}

/* got within tol of want; non-finite wants must match exactly. */
static int close_to(double got, double want, double tol)
{
    if (isnan(want))
        return isnan(got);
    if (isinf(want))
        return got == want;
    return isfinite(got) && fabs(got - want) <= tol;
}

/* row, col: where the value is (-1: not per row, not per logit) */
static void check(const char *what, int64_t row, int64_t col, double got, double want, double tol)
{
    if (close_to(got, want, tol))
        return;
    char at[64] = "";
    if (row >= 0)
        snprintf(at, sizeof at, col >= 0 ? " row %" PRId64 " col %" PRId64 : " row %" PRId64,
                 row, col);
    mismatch("%s%s: got %.17g, want %.17g, tol %.3g, err %.3g", what, at, got, want, tol,
             fabs(got - want));
}

static void check_status(const char *what, int got, int want)
{
    if (got != want)
        mismatch("%s: status %d, want %d", what, got, want);
}

/* ------------------------------------------------------------------ rng */

static uint64_t rng_state;

static uint64_t rng_next(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double uniform(void) { return ((double)(rng_next() >> 11) + 0.5) * 0x1p-53; }

static double normal(void) /* Box-Muller */
{
    return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform());
}

/* ------------------------------------------------------------- problems */

/* Special rows, each a case the kernels treat apart. */
enum {
    P_CONFIDENT,   /* the target far above the rest: sum of exps close to 1 */
    P_NINF,        /* one -inf logit, not the target */
    P_NINF_TARGET, /* the target's logit is -inf: loss inf */
    P_PINF,        /* +inf last */
    P_NAN,         /* NaN first */
    P_ALL_NINF,
    P_ALL_PINF,
    P_PINF_NINF,
    P_IGNORED_BAD, /* ignored, with NaN and +inf logits and a NaN row scale */
    P_HUGE,        /* +-big, big/2 and 0, big first */
    P_HUGE_EQUAL,
    P_MHUGE_EQUAL,
    P_LEAD_NINF,   /* the first half -inf: long rows' first blocks have no max */
    P_RAMP,        /* the max rises block after block */
    P_IGNORED,
    P_NAN_PINF,    /* NaN early, +inf late */
    N_SPECIAL,
    P_RANDOM = N_SPECIAL
};

static const char *const pattern_names[] = {
    "confident", "-inf", "target -inf", "+inf", "nan", "all -inf", "all +inf", "+inf -inf",
    "ignored non-finite", "huge", "huge equal", "-huge equal", "leading -inf", "ramp",
    "ignored", "nan +inf", "random"};

#define IGNORE ((int64_t)-100)
#define SENTINEL (-7777.25) /* exact in both dtypes; marks what must not be written */
#define GRAD_SCALE 0.75

/* The row options of xentc_rows; zeroed, the plain loss. */
typedef struct {
    double logit_scale, softcap, lse_square_scale;
} options;

/*
 * One batch of rows, its row options and what does not depend on the
 * call's other options: the softmax family of z, from a long double pass
 * over each row. Results are compared in double: rounding the reference to
 * double costs half an ulp, far inside the tolerances.
 */
typedef struct {
    const dtype *t;
    int64_t C, R;
    options opt;
    double zulp;     /* the kernels' error in z, in ulp of |z| */
    int *pattern;
    double *x;       /* R x C, values of the dtype */
    double *z, *dz;  /* R x C: z = T(x) and dz/dx, rounded */
    int64_t *target; /* IGNORE on ignored rows */
    double *soft;    /* R x C */
    double *weight;  /* C */
    double *row_scale;
    void *x_dt, *soft_dt, *weight_dt, *row_scale_dt; /* the same in the dtype */
    long double *logp, *p;                           /* R x C */
    double *logp_d, *p_d;                            /* the same, rounded */
    long double *lse;
    double *lse_d, *ls, *m; /* ls = log(sum exp(z - m)), m = max */
    double *mag;            /* |lse| + (1 + zulp) max|z| over finite z: lse's natural scale */
    double *sm_scale;       /* max over the row of p sm_rel: softmax's */
    int *poisoned;          /* NaN, +inf or no finite max: torch's NaN rows */
} problem;

/* Which rows a batch holds: special rows among random ones, only giant
   rows' patterns, or only confident rows (no special row sends the narrow
   path's batches to its general code). */
enum { ROWS_MIXED, ROWS_GIANT, ROWS_CONFIDENT };

static int row_pattern(int64_t i, int64_t R, int rows)
{
    static const int giant_rows[] = {P_RAMP, P_PINF, P_LEAD_NINF};
    if (rows == ROWS_GIANT)
        return giant_rows[i % 3];
    if (rows == ROWS_CONFIDENT)
        return P_CONFIDENT;
    if (R >= 8 * N_SPECIAL) { /* spread out: many plain rows between them */
        const int64_t step = R / N_SPECIAL;
        return i % step == step / 2 && i / step < N_SPECIAL ? (int)(i / step) : P_RANDOM;
    }
    /* last: the narrow path's batches of 64 rows before them hold none */
    return i >= R - N_SPECIAL ? (int)(i - (R - N_SPECIAL)) : P_RANDOM;
}

static void fill_row(const dtype *t, double *x, int64_t C, int pat, int64_t i, int64_t *y)
{
    static const double scales[] = {1.0, 3.0, 10.0, 30.0};
    const double big = t->big;
    for (int64_t c = 0; c < C; c++)
        x[c] = normal() * scales[i % 4];
    switch (pat) {
    case P_CONFIDENT:
        for (int64_t c = 0; c < C; c++)
            x[c] = -20.0 + normal();
        x[*y] = 0.75;
        break;
    case P_NINF:
        x[C / 2] = -INFINITY;
        *y = (C / 2 + 1) % C;
        break;
    case P_NINF_TARGET:
        x[C / 2] = -INFINITY;
        *y = C / 2;
        break;
    case P_PINF:
        x[C - 1] = INFINITY;
        break;
    case P_NAN:
        x[0] = NAN;
        break;
    case P_ALL_NINF:
    case P_ALL_PINF:
        for (int64_t c = 0; c < C; c++)
            x[c] = pat == P_ALL_NINF ? -INFINITY : INFINITY;
        break;
    case P_PINF_NINF:
        x[C - 1] = -INFINITY;
        x[0] = INFINITY;
        break;
    case P_IGNORED_BAD:
        x[C - 1] = INFINITY;
        x[0] = NAN;
        *y = IGNORE;
        break;
    case P_HUGE: {
        static const double k[] = {1.0, -1.0, 0.5, 0.0};
        for (int64_t c = 0; c < C; c++)
            x[c] = big * k[rng_next() % 4];
        x[0] = big;
        break;
    }
    case P_HUGE_EQUAL:
    case P_MHUGE_EQUAL:
        for (int64_t c = 0; c < C; c++)
            x[c] = pat == P_HUGE_EQUAL ? big : -big;
        break;
    case P_LEAD_NINF:
        for (int64_t c = 0; c < C / 2; c++)
            x[c] = -INFINITY;
        *y = C - 1;
        break;
    case P_RAMP:
        for (int64_t c = 0; c < C; c++)
            x[c] = -30.0 + 60.0 * (double)c / (double)C + 0.1 * normal();
        break;
    case P_IGNORED:
        *y = IGNORE;
        break;
    case P_NAN_PINF:
        x[C > 1] = NAN;
        x[C > 5 ? C - 5 : 0] = INFINITY;
        break;
    }
    for (int64_t c = 0; c < C; c++)
        x[c] = round_to(t, x[c]);
}

static void *to_dtype(const dtype *t, const double *v, int64_t n)
{
    void *p = xmalloc(t->size * (size_t)(n > 0 ? n : 1));
    for (int64_t k = 0; k < n; k++)
        put(t, p, k, v[k]);
    return p;
}

#define NEW(type, n) ((type *)xmalloc(sizeof(type) * (size_t)(n)))

/* z = T(x) of the row options (xentc.h; logit_scale 0 is 1) and dz/dx:
   s * x, or cap * tanh(s * x / cap) with s (1 - tanh^2), whose long double
   cancellation where tanh saturates is far below the dtype's ulp of s. */
static long double transform(const options *o, double x, long double *dz)
{
    const long double s = o->logit_scale > 0.0 ? o->logit_scale : 1.0;
    if (o->softcap > 0.0) {
        const long double th = tanhl(s * x / o->softcap);
        *dz = s * (1 - th) * (1 + th);
        return o->softcap * th;
    }
    *dz = s;
    return s * x;
}

/* The softmax's relative error at logit c of row i, in eps: its exponent
   z - max - ls as computed, and the error of z at both ends. */
static double sm_rel(const problem *pb, int64_t i, int64_t c)
{
    const double z = pb->z[i * pb->C + c], m = pb->m[i];
    return 2.0 + (m - z) + pb->ls[i] + pb->zulp * (fabs(z) + fabs(m));
}

/* The softmax family of each row's z, torch's way (see the top of this file). */
static void reference_rows(problem *pb)
{
    const int64_t C = pb->C;
    long double *z = NEW(long double, C), *e = NEW(long double, C); /* exp(z - m) */
    for (int64_t i = 0; i < pb->R; i++) {
        int nan = 0, pinf = 0;
        long double m = -INFINITY;
        double zmax = 0.0;
        for (int64_t c = 0; c < C; c++) {
            long double dz;
            z[c] = transform(&pb->opt, pb->x[i * C + c], &dz);
            pb->z[i * C + c] = (double)z[c];
            pb->dz[i * C + c] = (double)dz;
            nan |= isnan(z[c]);
            pinf |= z[c] == INFINITY;
            m = z[c] > m ? z[c] : m;
            zmax = isfinite(z[c]) && fabsl(z[c]) > zmax ? (double)fabsl(z[c]) : zmax;
        }
        const int poisoned = nan || pinf || m == -INFINITY;
        long double ls = NAN, lse = nan ? NAN : pinf ? INFINITY : -INFINITY, sum = NAN;
        if (!poisoned) {
            /* the maxima's exact ones apart: log1p keeps ls's relative
               precision when the rest is tiny (a confident row) */
            long double ones = 0.0L, rest = 0.0L;
            for (int64_t c = 0; c < C; c++) {
                e[c] = z[c] == m ? 1.0L : expl(z[c] - m);
                if (z[c] == m)
                    ones += 1;
                else
                    rest += e[c];
            }
            ls = log1pl((ones - 1) + rest);
            lse = m + ls;
            sum = ones + rest;
        }
        pb->lse[i] = lse;
        pb->lse_d[i] = (double)lse;
        pb->ls[i] = poisoned ? 0.0 : (double)ls;
        pb->m[i] = (double)m;
        pb->mag[i] = (isfinite(lse) ? fabs((double)lse) : 0.0) + (1.0 + pb->zulp) * zmax;
        pb->poisoned[i] = poisoned;
        double sm_scale = 0.0;
        for (int64_t c = 0; c < C; c++) {
            const int64_t k = i * C + c;
            pb->logp[k] = poisoned ? (long double)NAN : (z[c] - m) - ls;
            pb->p[k] = poisoned ? (long double)NAN : e[c] / sum;
            pb->logp_d[k] = (double)pb->logp[k];
            pb->p_d[k] = (double)pb->p[k];
            if (!poisoned && isfinite(z[c])) {
                const double s = pb->p_d[k] * sm_rel(pb, i, c);
                sm_scale = s > sm_scale ? s : sm_scale;
            }
        }
        pb->sm_scale[i] = sm_scale;
    }
    free(z);
    free(e);
}

/* opt NULL: the plain loss */
static problem *make_problem(const dtype *t, int64_t C, int64_t R, int rows, const options *opt)
{
    problem *pb = xmalloc(sizeof *pb);
    const int64_t n = R * C;
    pb->t = t;
    pb->C = C;
    pb->R = R;
    pb->opt = opt ? *opt : (options){0.0, 0.0, 0.0};
    /* a scale's product rounded to the dtype; the softcap's tanh: float32's
       rational fit within 7 ulp (row_kernels.c), and the products around it */
    pb->zulp = pb->opt.softcap > 0.0                                             ? 8.0
               : pb->opt.logit_scale > 0.0 && pb->opt.logit_scale != 1.0 ? 0.5
                                                                         : 0.0;
    rng_state = (uint64_t)C * 1000003u + (uint64_t)R * 7919u + t->size;
    pb->pattern = NEW(int, R);
    pb->x = NEW(double, n);
    pb->soft = NEW(double, n);
    pb->target = NEW(int64_t, R);
    pb->weight = NEW(double, C);
    pb->row_scale = NEW(double, R);
    for (int64_t c = 0; c < C; c++)
        pb->weight[c] = round_to(t, 0.25 + 1.75 * uniform());
    for (int64_t i = 0; i < R; i++) {
        double *x = pb->x + i * C, *q = pb->soft + i * C;
        const int pat = row_pattern(i, R, rows);
        pb->pattern[i] = pat;
        pb->target[i] = (int64_t)(rng_next() % (uint64_t)C);
        fill_row(t, x, C, pat, i, &pb->target[i]);
        double s = 0.0;
        for (int64_t c = 0; c < C; c++)
            s += (q[c] = exp(2.0 * normal()));
        for (int64_t c = 0; c < C; c++)
            q[c] = round_to(t, q[c] / s);
        if (pat == P_NINF) /* no mass on the -inf logit: torch's loss is 0 * inf */
            q[C / 2] = 0.0;
        pb->row_scale[i] = pat == P_IGNORED_BAD ? NAN : round_to(t, 4.0 * uniform() - 2.0);
    }
    pb->x_dt = to_dtype(t, pb->x, n);
    pb->z = NEW(double, n);
    pb->dz = NEW(double, n);
    pb->soft_dt = to_dtype(t, pb->soft, n);
    pb->weight_dt = to_dtype(t, pb->weight, C);
    pb->row_scale_dt = to_dtype(t, pb->row_scale, R);
    pb->logp = NEW(long double, n);
    pb->p = NEW(long double, n);
    pb->logp_d = NEW(double, n);
    pb->p_d = NEW(double, n);
    pb->lse = NEW(long double, R);
    pb->lse_d = NEW(double, R);
    pb->ls = NEW(double, R);
    pb->m = NEW(double, R);
    pb->mag = NEW(double, R);
    pb->sm_scale = NEW(double, R);
    pb->poisoned = NEW(int, R);
    reference_rows(pb);
    return pb;
}

static void free_problem(problem *pb)
{
    void *fields[] = {pb->pattern, pb->x, pb->z, pb->dz, pb->soft, pb->target, pb->weight,
                      pb->row_scale, pb->x_dt, pb->soft_dt, pb->weight_dt, pb->row_scale_dt,
                      pb->logp, pb->p, pb->logp_d, pb->p_d, pb->lse, pb->lse_d, pb->ls, pb->m,
                      pb->mag, pb->sm_scale, pb->poisoned};
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++)
        free(fields[k]);
    free(pb);
}

/* -------------------------------------------------------------- configs */

enum { T_NONE, T_CLASS, T_CLASS_IGNORE_IN_RANGE, T_SOFT };
enum { L_CONTIG, L_STRIDED, L_IN_PLACE };
enum { RES_BOTH, RES_LOSS, RES_LSE };

typedef struct {
    int target, weighted;
    double smoothing;
    int out_kind, layout, results;
} config;

static const char *const target_names[] = {"no target", "class", "class ignore=1", "soft"};
static const char *const layout_names[] = {"contiguous", "strided", "in place"};
static const char *const out_names[] = {"none", "log_softmax", "softmax", "grad"};
static const char *const results_names[] = {"loss+lse", "loss", "lse"};

/*
 * For each target kind, weighting and smoothing: loss and lse together and
 * each alone (narrow rows have a fast path for them), and the gradient in
 * place (x overwritten while the row is still being read) and in one other
 * layout. The softmax outputs do not depend on the targets' options: each
 * in every layout without targets, and once with them (ignored rows).
 */
static int full_configs(config *cf)
{
    int n = 0;
    for (int lay = L_CONTIG; lay <= L_IN_PLACE; lay++) {
        if (lay != L_IN_PLACE)
            cf[n++] = (config){T_NONE, 0, 0.0, XENTC_OUT_NONE, lay, RES_LSE};
        cf[n++] = (config){T_NONE, 0, 0.0, XENTC_OUT_LOG_SOFTMAX, lay, RES_LSE};
        cf[n++] = (config){T_NONE, 0, 0.0, XENTC_OUT_SOFTMAX, lay, RES_LSE};
    }
    for (int tg = T_CLASS; tg <= T_SOFT; tg++)
        for (int w = 0; w <= 1; w++)
            for (int e = 0; e <= 1; e++) {
                if (tg == T_CLASS_IGNORE_IN_RANGE && w != e)
                    continue;
                const double sm = e ? 0.15 : 0.0;
                cf[n++] = (config){tg, w, sm, XENTC_OUT_NONE, L_CONTIG, RES_BOTH};
                cf[n++] = (config){tg, w, sm, XENTC_OUT_NONE, L_STRIDED, RES_BOTH};
                cf[n++] = (config){tg, w, sm, XENTC_OUT_NONE, L_CONTIG, RES_LOSS};
                cf[n++] = (config){tg, w, sm, XENTC_OUT_NONE, L_STRIDED, RES_LSE};
                cf[n++] = (config){tg, w, sm, XENTC_OUT_GRAD, L_IN_PLACE, RES_BOTH};
                if (tg != T_CLASS_IGNORE_IN_RANGE)
                    cf[n++] = (config){tg, w, sm, XENTC_OUT_GRAD, w == e ? L_CONTIG : L_STRIDED,
                                       RES_BOTH};
                if (w && e && tg != T_CLASS_IGNORE_IN_RANGE) {
                    cf[n++] = (config){tg, w, sm, XENTC_OUT_LOG_SOFTMAX, L_IN_PLACE, RES_BOTH};
                    cf[n++] = (config){tg, w, sm, XENTC_OUT_SOFTMAX, L_STRIDED, RES_BOTH};
                }
            }
    return n;
}

/* Batches of many rows (several chunks, so several threads): a sample. */
static const config many_rows_configs[] = {
    {T_NONE, 0, 0.0, XENTC_OUT_SOFTMAX, L_STRIDED, RES_LSE},
    {T_CLASS, 0, 0.0, XENTC_OUT_NONE, L_CONTIG, RES_LOSS},
    {T_CLASS, 1, 0.0, XENTC_OUT_NONE, L_STRIDED, RES_BOTH},
    {T_CLASS, 1, 0.15, XENTC_OUT_GRAD, L_IN_PLACE, RES_BOTH},
    {T_CLASS_IGNORE_IN_RANGE, 0, 0.0, XENTC_OUT_LOG_SOFTMAX, L_CONTIG, RES_BOTH},
    {T_SOFT, 1, 0.15, XENTC_OUT_LOG_SOFTMAX, L_IN_PLACE, RES_BOTH},
    {T_SOFT, 0, 0.0, XENTC_OUT_GRAD, L_STRIDED, RES_BOTH},
};

/* Giant rows: the paths that keep state across many blocks of one row. */
static const config giant_configs[] = {
    {T_NONE, 0, 0.0, XENTC_OUT_SOFTMAX, L_STRIDED, RES_LSE},
    {T_CLASS, 0, 0.0, XENTC_OUT_GRAD, L_CONTIG, RES_BOTH},
    {T_CLASS, 1, 0.15, XENTC_OUT_GRAD, L_IN_PLACE, RES_BOTH},
    {T_SOFT, 1, 0.15, XENTC_OUT_GRAD, L_IN_PLACE, RES_BOTH},
};

/* Long rows with row options, which take the paths of long rows without
   them and transform z as the logits stream in: a sample, each target kind
   with and without the linear sums (the gradient keeps its exps without). */
static const config long_configs[] = {
    {T_NONE, 0, 0.0, XENTC_OUT_SOFTMAX, L_STRIDED, RES_LSE},
    {T_NONE, 0, 0.0, XENTC_OUT_LOG_SOFTMAX, L_IN_PLACE, RES_LSE},
    {T_CLASS, 0, 0.0, XENTC_OUT_NONE, L_CONTIG, RES_BOTH},
    {T_CLASS, 1, 0.0, XENTC_OUT_GRAD, L_IN_PLACE, RES_BOTH},
    {T_CLASS, 0, 0.0, XENTC_OUT_GRAD, L_STRIDED, RES_LOSS},
    {T_CLASS, 1, 0.15, XENTC_OUT_NONE, L_STRIDED, RES_LOSS},
    {T_CLASS, 1, 0.15, XENTC_OUT_GRAD, L_IN_PLACE, RES_BOTH},
    {T_CLASS_IGNORE_IN_RANGE, 1, 0.15, XENTC_OUT_GRAD, L_CONTIG, RES_BOTH},
    {T_SOFT, 0, 0.0, XENTC_OUT_NONE, L_CONTIG, RES_BOTH},
    {T_SOFT, 1, 0.15, XENTC_OUT_GRAD, L_IN_PLACE, RES_BOTH},
    {T_SOFT, 1, 0.0, XENTC_OUT_GRAD, L_STRIDED, RES_LSE},
};

/* ---------------------------------------------------------- expectations */

/* What depends on the targets, weights and smoothing of a call. */
typedef struct {
    int target, weighted;
    double smoothing;
    int64_t ignore;
    int64_t *y;       /* the targets passed */
    char *ignored;
    double *loss, *loss_tol;
    double *gsum;     /* A p - coef: the gradient before its scale */
    double *gsum_tol; /* the same before |g| */
} expect;

static void expect_init(expect *ex, const problem *pb)
{
    ex->target = -1;
    ex->y = NEW(int64_t, pb->R);
    ex->ignored = NEW(char, pb->R);
    ex->loss = NEW(double, pb->R);
    ex->loss_tol = NEW(double, pb->R);
    ex->gsum = NEW(double, pb->R * pb->C);
    ex->gsum_tol = NEW(double, pb->R);
}

static void expect_free(expect *ex)
{
    free(ex->y);
    free(ex->ignored);
    free(ex->loss);
    free(ex->loss_tol);
    free(ex->gsum);
    free(ex->gsum_tol);
}

/*
 * Loss (tolerance 16 ulp of wmax * mass * mag, as reference.py's
 * ce_expected) and the gradient with respect to z before its scale,
 * sum_c coef_c (-logp_c) and A p - coef with A = sum coef: torch's formulas
 * regrouped. The gradient's tolerance is 16 ulp of wmax * mass * (1 + the
 * softmax's scale). The z-loss adds zls lse^2 and 2 zls lse p, and to the
 * tolerances what lse's own (8 ulp of mag) and p's errors make of them.
 */
static void expect_for(expect *ex, const problem *pb, const config *cf)
{
    if (ex->target == cf->target && ex->weighted == cf->weighted &&
        ex->smoothing == cf->smoothing)
        return;
    ex->target = cf->target;
    ex->weighted = cf->weighted;
    ex->smoothing = cf->smoothing;
    const int64_t C = pb->C;
    const long double e = cf->smoothing;
    const int classy = cf->target == T_CLASS || cf->target == T_CLASS_IGNORE_IN_RANGE;
    const int soft = cf->target == T_SOFT;
    const double eps = pb->t->eps, tiny = pb->t->tiny, zls = pb->opt.lse_square_scale;
    long double W = 0.0L;
    double wmax = 1.0;
    if (cf->weighted) {
        wmax = 0.0;
        for (int64_t c = 0; c < C; c++) {
            W += pb->weight[c];
            wmax = pb->weight[c] > wmax ? pb->weight[c] : wmax;
        }
    } else {
        W = (long double)C;
    }
    /* a class index can be ignored too */
    ex->ignore = cf->target == T_CLASS_IGNORE_IN_RANGE ? (C > 1 ? 1 : 0) : IGNORE;
    for (int64_t i = 0; i < pb->R; i++) {
        const double *q = pb->soft + i * C;
        const long double *logp = pb->logp + i * C, *p = pb->p + i * C;
        const int64_t y = pb->target[i] == IGNORE ? ex->ignore : pb->target[i];
        double *gsum = ex->gsum + i * C;
        ex->y[i] = y;
        ex->ignored[i] = classy && y == ex->ignore;
        long double loss = 0.0L, A = 0.0L;
        double mass = 1.0, bar = INFINITY;
        if (ex->ignored[i] || cf->target == T_NONE) {
            for (int64_t c = 0; c < C; c++)
                gsum[c] = 0.0;
        } else if (classy) {
            const long double wy = cf->weighted ? pb->weight[y] : 1.0L;
            A = (1 - e) * wy + e / C * W;
            loss = (1 - e) * wy * -logp[y];
            long double s = 0.0L;
            for (int64_t c = 0; c < C; c++) {
                const long double wc = cf->weighted ? pb->weight[c] : 1.0L;
                s += wc * -logp[c];
                gsum[c] = (double)(A * p[c] - e / C * wc - (c == y ? (1 - e) * wy : 0.0L));
            }
            if (e > 0) { /* torch adds the smoothing term only when smoothing */
                loss += e / C * s;
            } else if (!pb->poisoned[i]) {
                /* -logp[y] = log1p(sum_{c != y} p_c / p_y): the error of
                   the terms below the row's max (its own exps are exact
                   ones), and of z[y] against the max, whatever the loss's
                   size; three roundings of the loss on top (log1p, the
                   weight's product, the dtype's), and the terms the exp
                   flushes (each below 2 tiny) */
                const double zy = pb->z[i * C + y], m = pb->m[i];
                double below = zy < m ? pb->zulp * (fabs(m) + fabs(zy)) : 0.0;
                for (int64_t c = 0; c < C; c++)
                    if (pb->z[i * C + c] < m && p[c] > 0)
                        below += pb->p_d[i * C + c] * sm_rel(pb, i, c);
                bar = (double)wy * (eps * (3 * (double)-logp[y] + below) + 2 * tiny * C);
                if (is_f32(pb->t) && pb->zulp == 0.0) /* README's float32 accuracy
                                                         bar (times w_y, and the
                                                         product's rounding) */
                    bar = fmin(bar, (cf->weighted ? 3 : 2) * eps * (double)wy *
                                        fmax(fabs(pb->lse_d[i]), fabs(zy)));
            }
        } else if (soft) {
            double sq = 0.0;
            for (int64_t c = 0; c < C; c++) {
                A += (cf->weighted ? pb->weight[c] : 1.0L) * ((1 - e) * q[c] + e / C);
                sq += fabs(q[c]);
            }
            for (int64_t c = 0; c < C; c++) {
                const long double coef =
                    (cf->weighted ? pb->weight[c] : 1.0L) * ((1 - e) * q[c] + e / C);
                loss += coef * -logp[c];
                gsum[c] = (double)(A * p[c] - coef);
            }
            mass = sq > 1.0 ? sq : 1.0;
        }
        double zl_tol = 0.0, zlg_tol = 0.0;
        if (zls != 0.0 && !ex->ignored[i] && cf->target != T_NONE) {
            const long double lse = pb->lse[i];
            loss += zls * lse * lse;
            for (int64_t c = 0; c < C; c++)
                gsum[c] += (double)(2 * zls * lse * p[c]);
            const double a = fabs(pb->lse_d[i]), lse_tol = 8 * eps * pb->mag[i];
            zl_tol = zls * (2 * eps * a * a + 2 * a * lse_tol);
            zlg_tol = 2 * zls * (a * 16 * eps * pb->sm_scale[i] + lse_tol);
        }
        ex->loss[i] = round_to(pb->t, (double)loss); /* inf past the dtype's range */
        ex->loss_tol[i] =
            ex->ignored[i] ? 0.0 : fmin(bar, 16 * eps * wmax * mass * pb->mag[i]) + zl_tol;
        ex->gsum_tol[i] =
            ex->ignored[i] ? 0.0 : 16 * eps * wmax * mass * (1 + pb->sm_scale[i]) + zlg_tol;
    }
}

/* ---------------------------------------------------------------- a run */

typedef struct {
    int64_t xs, os, ss; /* strides of x, out, soft */
    void *x, *out, *soft, *loss, *lse;
    xentc_rows rows;
} run;

static void *filled(const dtype *t, int64_t n, double v)
{
    void *p = xmalloc(t->size * (size_t)(n > 0 ? n : 1));
    for (int64_t k = 0; k < n; k++)
        put(t, p, k, v);
    return p;
}

/* Elements after a buffer's last row, which must stay SENTINEL: a vector
   store past the end shows as a mismatch rather than a corrupted heap. */
#define SLACK 64

/* rows of src (R x C, packed) into a buffer of row stride `stride`, the
   gaps and the slack holding SENTINEL */
static void *strided_copy(const dtype *t, const void *src, int64_t R, int64_t C, int64_t stride)
{
    char *p = filled(t, R * stride + SLACK, SENTINEL);
    for (int64_t i = 0; i < R; i++)
        memcpy(p + (size_t)(i * stride) * t->size, (const char *)src + (size_t)(i * C) * t->size,
               (size_t)C * t->size);
    return p;
}

static int start_run(const problem *pb, const expect *ex, const config *cf, int n_threads,
                     run *r)
{
    const dtype *t = pb->t;
    const int64_t C = pb->C, R = pb->R;
    const int classy = cf->target == T_CLASS || cf->target == T_CLASS_IGNORE_IN_RANGE;
    r->xs = cf->layout == L_CONTIG ? C : C + 3;
    r->ss = cf->layout == L_CONTIG ? C : C + 2;
    r->os = cf->layout == L_IN_PLACE ? r->xs : cf->layout == L_STRIDED ? C + 5 : C;
    r->x = strided_copy(t, pb->x_dt, R, C, r->xs);
    r->soft = cf->target == T_SOFT ? strided_copy(t, pb->soft_dt, R, C, r->ss) : NULL;
    r->out = cf->out_kind == XENTC_OUT_NONE ? NULL
             : cf->layout == L_IN_PLACE     ? r->x
                                            : filled(t, R * r->os + SLACK, SENTINEL);
    r->loss = filled(t, R + 1, SENTINEL);
    r->lse = filled(t, R + 1, SENTINEL);
    r->rows = (xentc_rows){
        .n_rows = R,
        .n_classes = C,
        .x = r->x,
        .x_stride = r->xs,
        .target = classy ? ex->y : NULL,
        .soft = r->soft,
        .soft_stride = r->ss,
        .weight = cf->weighted ? pb->weight_dt : NULL,
        .ignore_index = ex->ignore,
        .label_smoothing = cf->smoothing,
        .loss = cf->results != RES_LSE ? r->loss : NULL,
        .lse = cf->results != RES_LOSS ? r->lse : NULL,
        .out_kind = cf->out_kind,
        .out = r->out,
        .out_stride = r->os,
        .logit_scale = pb->opt.logit_scale,
        .softcap = pb->opt.softcap,
        .lse_square_scale = pb->opt.lse_square_scale,
        .grad_scale = GRAD_SCALE,
        /* per-row scales where the layout is not the plain one */
        .grad_row_scale = cf->layout != L_CONTIG ? pb->row_scale_dt : NULL,
    };
    int64_t bad = -1;
    return t->rows(&r->rows, n_threads, &bad);
}

static void end_run(run *r)
{
    if (r->out != r->x)
        free(r->out);
    free(r->x);
    free(r->soft);
    free(r->loss);
    free(r->lse);
}

/* Bitwise the same results (the determinism promise of dispatch.c). */
static void check_same(const problem *pb, const config *cf, const run *a, const run *b)
{
    const size_t sz = pb->t->size;
    const int64_t R = pb->R;
    if ((cf->results != RES_LSE && memcmp(a->loss, b->loss, sz * (size_t)R)) ||
        (cf->results != RES_LOSS && memcmp(a->lse, b->lse, sz * (size_t)R)) ||
        (cf->out_kind != XENTC_OUT_NONE && memcmp(a->out, b->out, sz * (size_t)(R * a->os))))
        mismatch("results differ between 1 and 2 threads");
}

/* ------------------------------------------------------------- checking */

static void check_run(const problem *pb, const expect *ex, const config *cf, const run *r)
{
    const dtype *t = pb->t;
    const int64_t C = pb->C, R = pb->R;
    const double eps = t->eps, tiny = t->tiny;
    const size_t sz = t->size;
    /* the error of dz/dx: the softcap's 1 - tanh^2 is off by tanh's */
    const double s = pb->opt.logit_scale > 0 ? pb->opt.logit_scale : 1;
    const double dz_err = 2 * pb->zulp * eps * s;
    for (int64_t i = 0; i < R && !(case_failed && n_mismatches > MAX_PRINTED); i++) {
        const double *z = pb->z + i * C, *dz = pb->dz + i * C;
        const int ignored = ex->ignored[i];
        if (cf->results != RES_LSE && cf->target != T_NONE)
            check("loss", i, -1, get(t, r->loss, i), ignored ? 0.0 : ex->loss[i],
                  ex->loss_tol[i]);
        if (cf->results != RES_LOSS)
            check("lse", i, -1, get(t, r->lse, i), ignored ? 0.0 : pb->lse_d[i],
                  ignored ? 0.0 : 8 * eps * pb->mag[i]);
        if (cf->out_kind == XENTC_OUT_NONE)
            continue;
        const double g = GRAD_SCALE * (cf->layout != L_CONTIG ? pb->row_scale[i] : 1.0);
        const double *lp = pb->logp_d + i * C, *p = pb->p_d + i * C, *gs = ex->gsum + i * C;
        for (int64_t c = 0; c < C; c++) {
            const double got = get(t, r->out, i * r->os + c);
            double want, tol;
            if (ignored) {
                want = tol = 0.0;
            } else if (cf->out_kind == XENTC_OUT_LOG_SOFTMAX) {
                want = lp[c];
                tol = 8 * eps * (pb->mag[i] + (1 + pb->zulp) * fabs(z[c]));
            } else if (cf->out_kind == XENTC_OUT_SOFTMAX) {
                want = p[c];
                /* exp(z - max - ls): eps relative per unit of |z - max - ls| */
                tol = z[c] == -INFINITY ? 0.0 : 8 * eps * p[c] * sm_rel(pb, i, c) + 2 * tiny;
            } else {
                want = pb->poisoned[i] ? NAN : g * gs[c] * dz[c];
                tol = fabs(g) * (ex->gsum_tol[i] * dz[c] + fabs(gs[c]) * dz_err) + 2 * tiny;
            }
            check(out_names[cf->out_kind], i, c, got, want, tol);
        }
    }

    /* nothing written where it must not be: strides' gaps, past the ends,
       x itself unless in place, results not asked for */
    for (int64_t i = 0; i < R; i++) {
        for (int64_t c = C; c < r->xs; c++)
            if (get(t, r->x, i * r->xs + c) != SENTINEL)
                mismatch("x's padding written at row %" PRId64 " col %" PRId64, i, c);
        if (r->out && r->out != r->x)
            for (int64_t c = C; c < r->os; c++)
                if (get(t, r->out, i * r->os + c) != SENTINEL)
                    mismatch("out's padding written at row %" PRId64 " col %" PRId64, i, c);
        if (r->out != r->x &&
            memcmp((char *)r->x + (size_t)(i * r->xs) * sz, (char *)pb->x_dt + (size_t)(i * C) * sz,
                   (size_t)C * sz))
            mismatch("x written at row %" PRId64, i);
    }
    for (int64_t k = 0; k < SLACK; k++)
        if (get(t, r->x, R * r->xs + k) != SENTINEL ||
            (r->out && r->out != r->x && get(t, r->out, R * r->os + k) != SENTINEL)) {
            mismatch("written past the end of x or out");
            break;
        }
    if (get(t, r->loss, R) != SENTINEL || get(t, r->lse, R) != SENTINEL)
        mismatch("written past the end of loss or lse");
    for (int64_t i = 0; i < R; i++)
        if ((!r->rows.loss && get(t, r->loss, i) != SENTINEL) ||
            (!r->rows.lse && get(t, r->lse, i) != SENTINEL)) {
            mismatch("loss or lse written though not asked for, row %" PRId64, i);
            break;
        }
}

static void describe(const problem *pb, const config *cf, const char *isa)
{
    const options *o = &pb->opt;
    char opts[96] = "";
    if (o->logit_scale != 0.0 || o->softcap != 0.0 || o->lse_square_scale != 0.0)
        snprintf(opts, sizeof opts, " logit_scale=%g softcap=%g lse_square_scale=%g",
                 o->logit_scale, o->softcap, o->lse_square_scale);
    snprintf(where, sizeof where,
             "[%s %s C=%" PRId64 " rows=%" PRId64 "%s %s%s smoothing=%g out=%s %s results=%s]",
             isa, pb->t->name, pb->C, pb->R, opts, target_names[cf->target],
             cf->weighted ? " weighted" : "", cf->smoothing, out_names[cf->out_kind],
             layout_names[cf->layout], results_names[cf->results]);
}

/* dispatch.c's unit of work: a call with more logits than this is spread
   over threads, and then must give the serial call's bits. */
#define CHUNK_ELEMENTS 16384

static void check_problem(const problem *pb, const config *cfs, int n, const char *isa)
{
    expect ex;
    expect_init(&ex, pb);
    const int64_t before = n_mismatches;
    for (int k = 0; k < n; k++) {
        const config *cf = &cfs[k];
        describe(pb, cf, isa);
        begin_case();
        expect_for(&ex, pb, cf);
        run r;
        const int st = start_run(pb, &ex, cf, 2, &r);
        check_status("rows", st, XENTC_OK);
        if (st == XENTC_OK)
            check_run(pb, &ex, cf, &r);
        if (pb->R * pb->C > CHUNK_ELEMENTS) {
            run serial;
            start_run(pb, &ex, cf, 1, &serial);
            check_same(pb, cf, &r, &serial);
            end_run(&serial);
        }
        end_run(&r);
        end_case();
    }
    expect_free(&ex);
    if (n_mismatches > before && before < MAX_PRINTED) { /* which row is which */
        printf("  (rows of C=%" PRId64 ":", pb->C);
        for (int64_t i = 0; i < pb->R; i++)
            if (pb->pattern[i] != P_RANDOM)
                printf(" %" PRId64 "=%s", i, pattern_names[pb->pattern[i]]);
        printf("; others random)\n");
    }
}

/* A problem and the configs it is checked with. */
enum { SET_FULL, SET_MANY_ROWS, SET_GIANT, SET_LONG, SET_CONFIDENT };

typedef struct {
    int64_t C; /* < 0: that many 4 KiB blocks, and 5 more classes */
    int64_t R; /* 0: special rows in a narrow batch of their own (see row_pattern) */
    int set;
} sized;

static void check_sized(const dtype *t, const sized *sz, const options *opt, const char *isa)
{
    static config full[256];
    static int n_full;
    if (!n_full)
        n_full = full_configs(full);
    const int64_t C = sz->C > 0 ? sz->C : -sz->C * (int64_t)(4096 / t->size) + 5;
    /* narrow rows go in batches of up to 64: a first batch free of special
       rows takes the batch's fast path */
    const int64_t R = sz->R > 0 ? sz->R : C <= 16 ? 64 + N_SPECIAL : 8 + N_SPECIAL;
    problem *pb = make_problem(t, C, R,
                               sz->set == SET_GIANT       ? ROWS_GIANT
                               : sz->set == SET_CONFIDENT ? ROWS_CONFIDENT
                                                          : ROWS_MIXED,
                               opt);
    if (sz->set == SET_MANY_ROWS)
        check_problem(pb, many_rows_configs,
                      (int)(sizeof many_rows_configs / sizeof many_rows_configs[0]), isa);
    else if (sz->set == SET_GIANT)
        check_problem(pb, giant_configs, (int)(sizeof giant_configs / sizeof giant_configs[0]),
                      isa);
    else if (sz->set == SET_LONG)
        check_problem(pb, long_configs, (int)(sizeof long_configs / sizeof long_configs[0]), isa);
    else
        check_problem(pb, full, n_full, isa);
    free_problem(pb);
}

static void check_rows_all(const dtype *t, const char *isa)
{
    for (int64_t C = 1; C <= 70; C++)
        check_sized(t, &(sized){C, 0, SET_FULL}, NULL, isa);
    static const sized more[] = {
        {257, 4 + N_SPECIAL, SET_FULL},
        {4097, 2 + N_SPECIAL, SET_FULL},
        /* two chunks or more: narrow, short and long rows over threads */
        {3, 8000, SET_MANY_ROWS},
        {10, 2500, SET_MANY_ROWS},
        {40, 600, SET_MANY_ROWS},
        {1100, 20, SET_MANY_ROWS},
        /* the max rises in each of 33 blocks of 4 KiB of one row: more than
           the gradient keeps apart (GRAD_SEGS in row_kernel_template.h) */
        {-33, 3, SET_GIANT},
    };
    for (size_t k = 0; k < sizeof more / sizeof more[0]; k++)
        check_sized(t, &more[k], NULL, isa);
}

/*
 * The row options, each alone and together, on the paths of the kernels:
 * up to 64 classes through a scratch of z (narrow rows up to 16), longer
 * rows transformed block by block (1024 floats, 512 doubles; the ramp and
 * leading -inf rows move the max in a later block), over threads.
 * Then logit_scale 0 (a zeroed struct) against 1, and invalid options.
 */
static void check_options(const dtype *t, const char *isa)
{
    /* logit_scale and softcap exact in float32: its kernels round them */
    static const options sets[] = {
        {2.5, 0.0, 0.0},
        {0.0, 15.0, 0.0}, /* logit_scale 0 is 1 */
        {0.0, 0.0, 0.125},
        {0.375, 30.0, 1e-4},
        {2.5, 8.0, 0.0625}, /* the softcap saturates on the wider rows */
        {0.0, 100.0, 0.0},  /* z - max(z) may leave the exp's range: clamped */
    };
    static const sized sizes[] = {
        {3, 0, SET_FULL}, {16, 0, SET_FULL}, {17, 0, SET_FULL},
        {64, 0, SET_FULL}, {65, 0, SET_FULL}, {1000, 0, SET_LONG},
        {1024, 0, SET_LONG}, {1025, 0, SET_LONG}, {5000, 2 + N_SPECIAL, SET_LONG},
        /* every row confident: the narrow path's batches take their fast path */
        {3, 64, SET_CONFIDENT}, {16, 64, SET_CONFIDENT}, {40, 8, SET_CONFIDENT},
        {1025, 4, SET_CONFIDENT},
        {3, 8000, SET_MANY_ROWS}, {1100, 20, SET_MANY_ROWS},
        {-33, 3, SET_GIANT},
    };
    for (size_t o = 0; o < sizeof sets / sizeof sets[0]; o++)
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
            check_sized(t, &sizes[k], &sets[o], isa);

    /* logit_scale 0 gives logit_scale 1's bits, short rows and long */
    static const config zero_configs[] = {
        {T_CLASS, 1, 0.15, XENTC_OUT_GRAD, L_STRIDED, RES_BOTH},
        {T_SOFT, 0, 0.0, XENTC_OUT_GRAD, L_IN_PLACE, RES_BOTH},
    };
    static const int64_t zero_classes[] = {17, 1025};
    for (size_t k = 0; k < sizeof zero_classes / sizeof zero_classes[0]; k++) {
        problem *zero = make_problem(t, zero_classes[k], 8 + N_SPECIAL, ROWS_MIXED,
                                     &(options){0.0, 15.0, 0.125});
        problem one = *zero; /* the same arrays */
        one.opt.logit_scale = 1.0;
        expect ex;
        expect_init(&ex, zero);
        for (size_t c = 0; c < sizeof zero_configs / sizeof zero_configs[0]; c++) {
            const config *cf = &zero_configs[c];
            describe(zero, cf, isa);
            snprintf(where + strlen(where), sizeof where - strlen(where), " against 1");
            begin_case();
            expect_for(&ex, zero, cf);
            run a, b;
            check_status("logit_scale 0", start_run(zero, &ex, cf, 2, &a), XENTC_OK);
            check_status("logit_scale 1", start_run(&one, &ex, cf, 2, &b), XENTC_OK);
            check_same(zero, cf, &a, &b);
            end_run(&a);
            end_run(&b);
            end_case();
        }
        expect_free(&ex);
        free_problem(zero);
    }

    /* negative or non-finite options are the caller's bug */
    snprintf(where, sizeof where, "[%s %s invalid row options]", isa, t->name);
    begin_case();
    const int64_t C = 5, R = 3;
    void *x = filled(t, R * C, 0.5), *loss = filled(t, R, 0.0);
    static const int64_t target[] = {0, 1, 2};
    static const double bad[] = {-1.0, -INFINITY, INFINITY, NAN};
    for (int field = 0; field < 3; field++)
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            xentc_rows r = {.n_rows = R, .n_classes = C, .x = x, .x_stride = C,
                            .target = target, .ignore_index = IGNORE, .loss = loss};
            double *v = field == 0 ? &r.logit_scale : field == 1 ? &r.softcap
                                                                 : &r.lse_square_scale;
            *v = bad[k];
            int64_t bad_row = -7;
            char what[64];
            snprintf(what, sizeof what, "%s %g",
                     field == 0 ? "logit_scale" : field == 1 ? "softcap" : "lse_square_scale",
                     bad[k]);
            check_status(what, t->rows(&r, 1, &bad_row), XENTC_ERR_ARG);
        }
    free(x);
    free(loss);
    end_case();
}

/* ------------------------------------------ targets, errors, proba, exp */

static void check_bad_targets(const dtype *t, const char *isa)
{
    /* 3 chunks of rows: the bad row may be met by any thread */
    const int64_t C = 5, R = 10000;
    static const int64_t bad_values[] = {5, -1, -101, INT64_MIN, INT64_MAX};
    void *x = filled(t, R * C, 0.5), *loss = filled(t, R, 0.0);
    int64_t *target = xmalloc(sizeof(int64_t) * (size_t)R);
    for (size_t k = 0; k < sizeof bad_values / sizeof bad_values[0]; k++)
        for (int64_t bad_at = 0; bad_at < R; bad_at += 4321) {
            snprintf(where, sizeof where, "[%s %s bad target %" PRId64 " at row %" PRId64 "]",
                     isa, t->name, bad_values[k], bad_at);
            begin_case();
            for (int64_t i = 0; i < R; i++)
                target[i] = i % 7 == 3 ? IGNORE : i % C;
            target[bad_at] = bad_values[k];
            for (int out = 0; out <= 1; out++) {
                void *grad = out ? filled(t, R * C, 0.0) : NULL;
                xentc_rows r = {.n_rows = R, .n_classes = C, .x = x, .x_stride = C,
                                .target = target, .ignore_index = IGNORE, .loss = loss,
                                .out_kind = out ? XENTC_OUT_GRAD : XENTC_OUT_NONE, .out = grad,
                                .out_stride = C, .grad_scale = 1.0};
                int64_t bad = -7;
                check_status("rows", t->rows(&r, 2, &bad), XENTC_ERR_TARGET);
                if (bad != bad_at)
                    mismatch("bad_row %" PRId64 ", want %" PRId64, bad, bad_at);
                free(grad);
            }
            double total = -1.0;
            int64_t bad = -7;
            check_status("xentc_targets", xentc_targets(target, R, C, IGNORE, NULL, &total, &bad),
                         XENTC_ERR_TARGET);
            if (bad != bad_at)
                mismatch("xentc_targets bad_row %" PRId64 ", want %" PRId64, bad, bad_at);
            end_case();
        }

    /* two bad rows in different chunks: either will do */
    snprintf(where, sizeof where, "[%s %s two bad targets]", isa, t->name);
    begin_case();
    for (int64_t i = 0; i < R; i++)
        target[i] = i % C;
    target[10] = -1;
    target[R - 10] = C;
    int64_t bad = -7;
    xentc_rows r = {.n_rows = R, .n_classes = C, .x = x, .x_stride = C, .target = target,
                    .ignore_index = IGNORE, .loss = loss};
    check_status("rows", t->rows(&r, 2, &bad), XENTC_ERR_TARGET);
    if (bad != 10 && bad != R - 10)
        mismatch("bad_row %" PRId64 ", want 10 or %" PRId64, bad, R - 10);
    end_case();

    /* -1 as ignore_index is not a bad target */
    snprintf(where, sizeof where, "[%s %s ignore_index -1]", isa, t->name);
    begin_case();
    r.ignore_index = -1;
    target[R - 10] = -1;
    check_status("rows", t->rows(&r, 2, &bad), XENTC_OK);
    if (get(t, loss, 10) != 0.0)
        mismatch("ignored row's loss %g", get(t, loss, 10));
    end_case();

    /* inconsistent arguments */
    snprintf(where, sizeof where, "[%s %s argument errors]", isa, t->name);
    begin_case();
    xentc_rows a = r;
    a.soft = x;
    a.soft_stride = C;
    check_status("target and soft", t->rows(&a, 1, &bad), XENTC_ERR_ARG);
    a = r;
    a.target = NULL;
    a.out_kind = XENTC_OUT_GRAD;
    a.out = x;
    check_status("grad without targets", t->rows(&a, 1, &bad), XENTC_ERR_ARG);
    a = r;
    a.n_classes = 0;
    check_status("no classes", t->rows(&a, 1, &bad), XENTC_ERR_ARG);
    a = r;
    a.out_kind = XENTC_OUT_SOFTMAX;
    check_status("out_kind without out", t->rows(&a, 1, &bad), XENTC_ERR_ARG);
    a = r;
    a.n_rows = 0;
    a.x = NULL;
    check_status("no rows", t->rows(&a, 1, &bad), XENTC_OK);
    /* nor any other per-row buffer: an empty gradient has no target or out */
    a.target = NULL;
    a.loss = NULL;
    a.out_kind = XENTC_OUT_GRAD;
    check_status("no rows, no buffers", t->rows(&a, 1, &bad), XENTC_OK);
    end_case();
    free(x);
    free(loss);
    free(target);
}

static void check_targets_total(const char *isa)
{
    static const int64_t sizes[] = {0, 1, 3, 4, 5, 17, 4096, 4099, 100003};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        const int64_t n = sizes[k], C = 13;
        snprintf(where, sizeof where, "[%s xentc_targets n=%" PRId64 "]", isa, n);
        begin_case();
        rng_state = (uint64_t)n + 99;
        int64_t *target = xmalloc(sizeof(int64_t) * (size_t)(n + 1));
        double w[13];
        for (int c = 0; c < C; c++)
            w[c] = 0.25 + uniform();
        int64_t kept = 0;
        long double sum = 0.0L, abs_sum = 0.0L;
        for (int64_t i = 0; i < n; i++) {
            target[i] = rng_next() % 4 == 0 ? IGNORE : (int64_t)(rng_next() % C);
            if (target[i] != IGNORE) {
                kept++;
                sum += w[target[i]];
                abs_sum += w[target[i]];
            }
        }
        double total = -1.0;
        int64_t bad = -7;
        check_status("count", xentc_targets(target, n, C, IGNORE, NULL, &total, &bad), XENTC_OK);
        if (total != (double)kept)
            mismatch("count %.17g, want %" PRId64, total, kept);
        check_status("weighted", xentc_targets(target, n, C, IGNORE, w, &total, &bad), XENTC_OK);
        check("weighted total", -1, -1, total, (double)sum,
              (double)((n + 4) * DBL_EPSILON * abs_sum));
        free(target);
        end_case();
    }
}

static void check_proba(const dtype *t, const char *isa)
{
    static const int64_t classes[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 257, 4097};
    for (size_t k = 0; k < sizeof classes / sizeof classes[0]; k++)
        for (int variant = 0; variant < 3; variant++) { /* plain, strided + targets, NaN */
            const int64_t C = classes[k], R = 37, ps = variant ? C + 3 : C;
            snprintf(where, sizeof where, "[%s %s proba C=%" PRId64 " %s]", isa, t->name, C,
                     variant == 0 ? "plain" : variant == 1 ? "strided, targets" : "with NaN");
            begin_case();
            rng_state = (uint64_t)C * 31u + (uint64_t)variant;
            void *p = filled(t, R * ps, SENTINEL);
            void *row_sum = filled(t, R + 1, SENTINEL), *picked = filled(t, R + 1, SENTINEL);
            int64_t *target = xmalloc(sizeof(int64_t) * (size_t)R);
            double lo = INFINITY, hi = -INFINITY;
            for (int64_t i = 0; i < R; i++) {
                target[i] = (int64_t)(rng_next() % (uint64_t)C);
                for (int64_t c = 0; c < C; c++) {
                    /* probabilities (all > 0: a vector's unused lanes must not
                       become the minimum), and out of [0, 1] as callers may pass */
                    double v = uniform() / C;
                    if (variant == 1 && i == 5 && c == C / 2)
                        v = -0.5 - uniform();
                    if (variant == 1 && i == 6 && c == 0)
                        v = 1.5;
                    v = round_to(t, v);
                    put(t, p, i * ps + c, v);
                    lo = v < lo ? v : lo;
                    hi = v > hi ? v : hi;
                }
            }
            if (variant == 2)
                put(t, p, (R - 1) * ps + C - 1, NAN);
            xentc_proba pr = {.n_rows = R, .n_classes = C, .p = p, .p_stride = ps,
                              .target = variant ? target : NULL, .row_sum = row_sum,
                              .picked = picked};
            int64_t bad = -7;
            check_status("proba", t->proba(&pr, 2, &bad), XENTC_OK);
            for (int64_t i = 0; i < R; i++) {
                long double s = 0.0L, a = 0.0L;
                for (int64_t c = 0; c < C; c++) {
                    s += get(t, p, i * ps + c);
                    a += fabs(get(t, p, i * ps + c));
                }
                /* a sum of C terms in any order: (C - 1) eps sum|p| bounds it */
                check("row_sum", i, -1, get(t, row_sum, i), (double)s,
                      (double)((C + 2) * t->eps * a));
                if (variant)
                    check("picked", i, target[i], get(t, picked, i),
                          get(t, p, i * ps + target[i]), 0.0);
            }
            if (variant == 2) {
                if (!isnan(pr.lo) || !isnan(pr.hi))
                    mismatch("lo %g hi %g, want NaN with a NaN entry", pr.lo, pr.hi);
            } else if (pr.lo != lo || pr.hi != hi) {
                mismatch("lo %.17g hi %.17g, want %.17g %.17g", pr.lo, pr.hi, lo, hi);
            }
            if (get(t, row_sum, R) != SENTINEL || get(t, picked, R) != SENTINEL)
                mismatch("written past the end of row_sum or picked");
            if (variant == 1) { /* no ignore_index here: -100 is a bad target */
                target[R - 3] = IGNORE;
                check_status("proba bad target", t->proba(&pr, 2, &bad), XENTC_ERR_TARGET);
                if (bad != R - 3)
                    mismatch("proba bad_row %" PRId64 ", want %" PRId64, bad, R - 3);
            }
            free(p);
            free(row_sum);
            free(picked);
            free(target);
            end_case();
        }
}

static void call_exp(const dtype *t, const void *in, void *out, int64_t n)
{
    if (is_f32(t))
        xentc_exp_f32(in, out, n);
    else
        xentc_exp_f64(in, out, n);
}

/* The vectorized exp: within 2 ulp on [exp_lo, 0] (tests/test_numerics.py's
   bar), 0 for -inf, tiny and non-negative below; every tail length gives
   the same values and writes nothing past the end. */
static void check_exp(const dtype *t, const char *isa)
{
    const int64_t n = 20011;
    snprintf(where, sizeof where, "[%s %s exp]", isa, t->name);
    begin_case();
    void *in = filled(t, n, 0.0), *out = filled(t, n + 1, SENTINEL), *part = filled(t, 40, 0.0);
    for (int64_t k = 0; k < n; k++)
        put(t, in, k, t->exp_lo * (double)k / (double)(n - 1));
    put(t, in, 1, -0.0);
    put(t, in, 2, -INFINITY);
    put(t, in, 3, t->exp_lo - 20.0);
    put(t, in, 4, -t->big);
    call_exp(t, in, out, n);
    for (int64_t k = 0; k < n; k++) {
        const double a = get(t, in, k), got = get(t, out, k);
        if (a < t->exp_lo) {
            if (!(got >= 0.0 && got <= 2 * t->tiny) || (a == -INFINITY && got != 0.0))
                mismatch("exp(%g) = %g", a, got);
            continue;
        }
        const long double want = expl((long double)a);
        const long double ulp = ldexpl(1.0L, ilogbl(want) - (is_f32(t) ? 23 : 52));
        if (!(fabsl((long double)got - want) <= 2 * ulp))
            mismatch("exp(%.17g) = %.17g, want %.17g (%.2f ulp)", a, got, (double)want,
                     (double)(fabsl((long double)got - want) / ulp));
    }
    if (get(t, out, n) != SENTINEL)
        mismatch("exp wrote past the end");
    for (int64_t len = 0; len < 33; len++) {
        for (int64_t k = 0; k < 40; k++)
            put(t, part, k, SENTINEL);
        call_exp(t, in, part, len);
        for (int64_t k = 0; k < 40; k++)
            if (get(t, part, k) != (k < len ? get(t, out, k) : SENTINEL))
                mismatch("exp of %" PRId64 " values: element %" PRId64 " is %g", len, k,
                         get(t, part, k));
    }
    free(in);
    free(out);
    free(part);
    end_case();
}

/* ------------------------------------------------------ 16-bit floats */

/* A float16's value, from its fields (independent of the core's bit tricks). */
static double f16_value(uint16_t h)
{
    const int e = (h >> 10) & 31, m = h & 1023;
    const double mag = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY)
                                                        : ldexp(1024 + m, e - 25);
    return h & 0x8000 ? -mag : mag;
}

static double bf16_value(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The 16-bit float nearest to v (ties to the even one), by search over the
   finite values of `value`, which are monotone in their bits per sign:
   overflow past the largest finite value's half ulp gives inf. */
static uint16_t nearest16(double v, double (*value)(uint16_t), uint16_t max_bits)
{
    if (v != v)
        return 0x7fff; /* a NaN: only "is NaN" is compared */
    const uint16_t sign = signbit(v) ? 0x8000 : 0;
    const double a = fabs(v);
    uint16_t lo = 0, hi = max_bits; /* largest bits with value <= a, by bisection */
    if (a >= value(max_bits)) {
        const double top = value(max_bits), next_gap = top - value((uint16_t)(max_bits - 1));
        return (uint16_t)(sign | (a >= top + next_gap / 2 ? max_bits + 1 : max_bits));
    }
    while (hi - lo > 1) {
        const uint16_t mid = (uint16_t)((lo + hi) / 2);
        if (value(mid) <= a)
            lo = mid;
        else
            hi = mid;
    }
    const double dl = a - value(lo), dh = value(hi) - a;
    return (uint16_t)(sign | (dl < dh || (dl == dh && !(lo & 1)) ? lo : hi));
}

/* The core's 16-bit conversions of the active ISA: every float16 and bfloat16
   widened exactly; float32 values (every 16-bit value, the ties between
   neighbours and a hair beside them, random bits) narrowed to nearest even.
   Then 16-bit rows: xentc_rows_f16/bf16 give the float32 rows' loss and lse
   of the widened logits bit for bit, and their gradient narrowed. */
static void check_half(const char *isa)
{
    static const struct {
        const char *name;
        int bf16;
        double (*value)(uint16_t);
        uint16_t max_bits; /* largest finite positive value */
        int (*rows)(const xentc_rows *, int, int64_t *);
    } kinds[] = {{"float16", 0, f16_value, 0x7bff, xentc_rows_f16},
                 {"bfloat16", 1, bf16_value, 0x7f7f, xentc_rows_bf16}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        snprintf(where, sizeof where, "[%s %s conversions]", isa, kinds[k].name);
        begin_case();
        const int64_t n = 1 << 16;
        uint16_t *bits = xmalloc(sizeof(uint16_t) * (size_t)n);
        float *wide = xmalloc(sizeof(float) * (size_t)n);
        for (int64_t i = 0; i < n; i++)
            bits[i] = (uint16_t)i;
        xentc_half_to_f32(bits, wide, n, kinds[k].bf16);
        for (int64_t i = 0; i < n; i++) {
            const double want = kinds[k].value((uint16_t)i);
            if (!(wide[i] == want || (want != want && wide[i] != wide[i])) ||
                (want == 0.0 && !signbit(wide[i]) != !signbit(want)))
                mismatch("widen(0x%04x) = %.9g, want %.9g", (unsigned)i, wide[i], want);
        }
        /* narrowing: each value, the midpoints to the next (ties), beside them */
        const int64_t m = 4 * n + 100000;
        float *in = xmalloc(sizeof(float) * (size_t)m);
        uint16_t *got = xmalloc(sizeof(uint16_t) * (size_t)m);
        int64_t c = 0;
        for (int64_t i = 0; i < n; i++) {
            const double v = kinds[k].value((uint16_t)i), w = kinds[k].value((uint16_t)(i + 1));
            in[c++] = (float)v;
            if (v == v && w == w && !isinf(v) && !isinf(w) && signbit(v) == signbit(w) && i + 1 < n) {
                const float mid = (float)((v + w) / 2); /* exact in float32 */
                in[c++] = mid;
                in[c++] = nextafterf(mid, INFINITY);
                in[c++] = nextafterf(mid, -INFINITY);
            }
        }
        for (int64_t i = 0; i < 100000; i++) {
            const uint32_t u = (uint32_t)rng_next();
            memcpy(&in[c++], &u, sizeof u);
        }
        xentc_f32_to_half(in, got, c, kinds[k].bf16);
        for (int64_t i = 0; i < c; i++) {
            const uint16_t want = nearest16(in[i], kinds[k].value, kinds[k].max_bits);
            const double gv = kinds[k].value(got[i]);
            if (in[i] != in[i] ? gv == gv : got[i] != want)
                mismatch("narrow(%.9g) = 0x%04x, want 0x%04x", in[i], got[i], want);
        }
        free(in);
        free(got);
        end_case();

        /* rows: 16-bit logits against the float32 rows of their values */
        snprintf(where, sizeof where, "[%s %s rows]", isa, kinds[k].name);
        begin_case();
        const int64_t R = 37, C = 1500, N = R * C;
        uint16_t *x16 = xmalloc(sizeof(uint16_t) * (size_t)N), *g16 = xmalloc(2 * (size_t)N);
        float *x32 = xmalloc(sizeof(float) * (size_t)N), *g32 = xmalloc(sizeof(float) * (size_t)N);
        float *loss16 = xmalloc(sizeof(float) * R), *loss32 = xmalloc(sizeof(float) * R);
        int64_t *target = xmalloc(sizeof(int64_t) * R);
        for (int64_t i = 0; i < N; i++) {
            const float v = (float)(3.0 * normal());
            xentc_f32_to_half(&v, &x16[i], 1, kinds[k].bf16);
        }
        xentc_half_to_f32(x16, x32, N, kinds[k].bf16);
        for (int64_t i = 0; i < R; i++)
            target[i] = i % 5 == 0 ? -100 : (int64_t)(rng_next() % (uint64_t)C);
        xentc_rows r = {0};
        r.n_rows = R;
        r.n_classes = C;
        r.x_stride = r.out_stride = C;
        r.target = target;
        r.ignore_index = -100;
        r.label_smoothing = 0.1;
        r.softcap = 20.0;
        r.out_kind = XENTC_OUT_GRAD;
        r.grad_scale = 0.5;
        r.x = x16;
        r.out = g16;
        r.loss = loss16;
        check_status("16-bit rows", kinds[k].rows(&r, 2, NULL), XENTC_OK);
        r.x = x32;
        r.out = g32;
        r.loss = loss32;
        check_status("float32 rows", xentc_rows_f32(&r, 2, NULL), XENTC_OK);
        for (int64_t i = 0; i < R; i++)
            if (memcmp(&loss16[i], &loss32[i], sizeof(float)) != 0)
                mismatch("row %" PRId64 ": loss %.9g, float32's %.9g", i, loss16[i], loss32[i]);
        for (int64_t i = 0; i < N; i++) {
            uint16_t want;
            xentc_f32_to_half(&g32[i], &want, 1, kinds[k].bf16);
            if (g16[i] != want)
                mismatch("gradient %" PRId64 ": 0x%04x, float32's narrowed 0x%04x", i,
                         g16[i], want);
        }
        free(x16);
        free(g16);
        free(x32);
        free(g32);
        free(loss16);
        free(loss32);
        free(target);
        free(bits);
        free(wide);
        end_case();
    }
}

/* ----------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    /* --require-openmp: a core built serial fails (its threads' paths and
       determinism would go unchecked) */
    const int require_openmp = argc > 1 && strcmp(argv[1], "--require-openmp") == 0;
    setvbuf(stdout, NULL, _IONBF, 0); /* what was found, even if a kernel then crashes */
    signal(SIGSEGV, on_crash);
    signal(SIGILL, on_crash);
    signal(SIGFPE, on_crash);
    signal(SIGABRT, on_crash);
#ifdef SIGBUS
    signal(SIGBUS, on_crash);
#endif
    const char *compiled = xentc_compiled_isas();
    printf("check_rows: compiled ISAs %s; OpenMP %s (%d threads by default); "
           "reference long double: %d-bit mantissa\n",
           compiled, xentc_openmp_enabled() ? "on" : "off", xentc_default_threads(),
           LDBL_MANT_DIG);
    if (require_openmp && !xentc_openmp_enabled()) {
        printf("check_rows: FAILED: the core was built without OpenMP\n");
        return 1;
    }
    if (LDBL_MANT_DIG <= DBL_MANT_DIG)
        printf("check_rows: warning: long double is double here; the f64 reference is "
               "no more precise than the kernels\n");
    char ran[128] = "", skipped[128] = "";
    int64_t total_cases = 0, total_failed = 0;
    int any_failed = 0;
    char names[128];
    snprintf(names, sizeof names, "%s", compiled);
    for (char *isa = strtok(names, ","); isa; isa = strtok(NULL, ",")) {
        if (xentc_set_isa(isa) == XENTC_ERR_ISA) {
            printf("%-9s skipped: this CPU cannot run it\n", isa);
            snprintf(skipped + strlen(skipped), sizeof skipped - strlen(skipped), " %s", isa);
            continue;
        }
        if (strcmp(xentc_isa(), isa) != 0) {
            printf("MISMATCH: set_isa(%s) left %s active\n", isa, xentc_isa());
            any_failed = 1;
            continue;
        }
        n_cases = n_failed_cases = n_mismatches = 0;
        for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++) {
            check_rows_all(&dtypes[d], isa);
            check_options(&dtypes[d], isa);
            check_bad_targets(&dtypes[d], isa);
            check_proba(&dtypes[d], isa);
            check_exp(&dtypes[d], isa);
        }
        check_targets_total(isa);
        check_half(isa);
        printf("%-9s %" PRId64 " cases, %" PRId64 " failed (%" PRId64 " mismatches)\n", isa,
               n_cases, n_failed_cases, n_mismatches);
        snprintf(ran + strlen(ran), sizeof ran - strlen(ran), " %s", isa);
        total_cases += n_cases;
        total_failed += n_failed_cases;
        any_failed |= n_failed_cases > 0;
    }
    xentc_set_isa(NULL);
    printf("ISAs run:%s; skipped:%s\n", ran, *skipped ? skipped : " none");
    printf("check_rows: %" PRId64 " cases, %" PRId64 " failed%s\n", total_cases, total_failed,
           any_failed ? ": FAILED" : "");
    return any_failed;
}
