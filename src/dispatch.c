/*
 * xentc dispatch: the one place that knows about CPUs and threads.
 *
 * Layers (see also xentc/_api.py): Python API (validation, semantics) ->
 * engine choice -> Cython adapter -> this file -> one row kernel. The split
 * keeps each ISA-specific translation unit down to "process one row": the
 * CPU feature test, the table of kernel pointers, the OpenMP loop over chunks of
 * rows and the target bounds check live here once, so adding an ISA or a dtype
 * never touches the parallel or safety logic.
 *
 * Determinism: each row is computed by one thread with a fixed order of
 * operations, and rows never share accumulators, so results are bitwise the
 * same for any thread count.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "row_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    const char *name;
    int (*supported)(void);
    xentc_rows_fn rows_f32, rows_f64, rows_f16, rows_bf16;
    xentc_exp_fn exp_f32, exp_f64;
    xentc_widen16_fn widen16;
    xentc_narrow16_fn narrow16;
    xentc_proba_fn proba_f32, proba_f64;
    xentc_bad_target_fn bad_target;
    xentc_target_total_fn target_total;
} isa_entry;

static int always(void) { return 1; }

#if defined(XENTC_HAVE_AVX2) || defined(XENTC_HAVE_AVX512)
/* __builtin_cpu_supports reads cpuid and also checks (xgetbv) that the OS
   saves the wide registers, so a "supported" ISA is safe to run. */
static int has_avx2(void)
{
    __builtin_cpu_init();
    /* F16C (half-precision conversions) comes with every AVX2 CPU made */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
#endif
#ifdef XENTC_HAVE_AVX512
static int has_avx512(void)
{
    __builtin_cpu_init();
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}
#endif

#define ISA(name, test)                                                        \
    {#name, test, xentc_rows_f32_##name, xentc_rows_f64_##name,                   \
     xentc_rows_f16_##name, xentc_rows_bf16_##name,                               \
     xentc_exp_f32_##name, xentc_exp_f64_##name, xentc_widen16_##name,            \
     xentc_narrow16_##name, xentc_proba_f32_##name,                               \
     xentc_proba_f64_##name, xentc_bad_target_##name, xentc_target_total_##name}

/* Lowest first; the best supported one is chosen. */
static const isa_entry isas[] = {
    ISA(baseline, always),
#ifdef XENTC_HAVE_AVX2
    ISA(avx2, has_avx2),
#endif
#ifdef XENTC_HAVE_AVX512
    ISA(avx512, has_avx512),
#endif
};
#define N_ISAS ((int)(sizeof isas / sizeof isas[0]))

static const isa_entry *active = NULL;
/* The choice made at start-up (the best, lowered by XENTC_ISA), which
   xentc_set_isa(NULL) returns to. */
static const isa_entry *chosen = NULL;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
/* Set in a forked child: libgomp's thread pool does not survive fork(), and a
   parallel region in the child would wait forever for the parent's threads. */
static volatile int forked_child = 0;

static void on_fork_child(void) { forked_child = 1; }

static const isa_entry *best_isa(void)
{
    const isa_entry *best = &isas[0];
    for (int k = 1; k < N_ISAS; k++)
        if (isas[k].supported())
            best = &isas[k];
    return best;
}

static void init(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
    chosen = best_isa();
    /* XENTC_ISA can only lower the choice (for testing and for CPUs whose
       wide units down-clock); an unknown or unsupported name is ignored. */
    const char *env = getenv("XENTC_ISA");
    if (env && *env)
        for (int k = 0; k < N_ISAS && &isas[k] <= chosen; k++)
            if (strcmp(isas[k].name, env) == 0)
                chosen = &isas[k];
    active = chosen;
}

static const isa_entry *get_active(void)
{
    pthread_once(&init_once, init);
    return active;
}

int xentc_set_isa(const char *name)
{
    pthread_once(&init_once, init);
    if (!name || !*name) {
        active = chosen;
        return XENTC_OK;
    }
    for (int k = 0; k < N_ISAS; k++)
        if (strcmp(isas[k].name, name) == 0 && isas[k].supported()) {
            active = &isas[k];
            return XENTC_OK;
        }
    return XENTC_ERR_ISA;
}

const char *xentc_isa(void) { return get_active()->name; }

const char *xentc_compiled_isas(void)
{
    return "baseline"
#ifdef XENTC_HAVE_AVX2
           ",avx2"
#endif
#ifdef XENTC_HAVE_AVX512
           ",avx512"
#endif
        ;
}

int xentc_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int xentc_default_threads(void)
{
#ifdef _OPENMP
    /* omp_get_max_threads honours OMP_NUM_THREADS and threadpoolctl limits. */
    return forked_child ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

/* Elements (logits) per unit of work: about 64 KiB of float32, enough to
   amortize a parallel region and the per-call set-up of a short-row batch. */
#define CHUNK_ELEMENTS ((int64_t)16384)

static int thread_count(int requested, int64_t n_chunks)
{
    int nt = requested > 0 ? requested : xentc_default_threads();
    if (forked_child)
        nt = 1;
    if (n_chunks < nt)
        nt = n_chunks > 1 ? (int)n_chunks : 1;
    return nt;
}

static int64_t chunk_rows(int64_t n_classes)
{
    return n_classes >= CHUNK_ELEMENTS ? 1 : CHUNK_ELEMENTS / n_classes;
}

static int64_t chunk_count(int64_t n_rows, int64_t n_classes)
{
    return (n_rows + chunk_rows(n_classes) - 1) / chunk_rows(n_classes);
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* body(ctx, k, i0, i1, tid) for chunk k = rows [i0, i1), run by thread tid
   (in [0, nt), nt = thread_count(n_threads, chunk_count(...))). The one
   parallel loop: static scheduling, each chunk run by one thread. */
typedef void (*chunk_body)(void *ctx, int64_t k, int64_t i0, int64_t i1, int tid);

static void for_chunks(int64_t n_rows, int64_t n_classes, int n_threads, chunk_body body,
                       void *ctx)
{
    const int64_t per = chunk_rows(n_classes), n_chunks = chunk_count(n_rows, n_classes);
    const int nt = thread_count(n_threads, n_chunks);
    if (nt > 1) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
        for (int64_t k = 0; k < n_chunks; k++)
            body(ctx, k, k * per, k * per + per < n_rows ? k * per + per : n_rows,
                 thread_id());
    } else {
        /* No OpenMP call at all: also the path of a forked child. */
        for (int64_t k = 0; k < n_chunks; k++)
            body(ctx, k, k * per, k * per + per < n_rows ? k * per + per : n_rows, 0);
    }
}

/* The first row of [i0, i1) whose target is outside [0, n_classes) and not
   *ignore_index (NULL: none is ignored), or -1. */
static int64_t first_bad_target(const int64_t *target, int64_t i0, int64_t i1,
                                int64_t n_classes, const int64_t *ignore_index)
{
    /* 0 is in range: with nothing ignored, no target is excepted */
    return get_active()->bad_target(target, i0, i1, n_classes,
                                    ignore_index ? *ignore_index : 0);
}

/* Any one bad row will do; the atomic store only keeps the write whole. */
static void record_bad(int64_t *bad, int64_t row)
{
#ifdef _OPENMP
#pragma omp atomic write
    bad[0] = row + 0; /* "+ 0": GCC 12 wrongly calls a stored parameter unused */
#else
    bad[0] = row;
#endif
}

typedef struct {
    const xentc_rows *r;
    xentc_rows_fn fn;
    char *scratch; /* per thread: scratch_bytes, or NULL */
    size_t scratch_bytes;
    int64_t bad;
} rows_job;

/* A chunk's targets are checked before any of its rows is read; a chunk with
   a bad target is skipped whole (the call fails anyway). */
static void rows_chunk(void *ctx, int64_t k, int64_t i0, int64_t i1, int tid)
{
    rows_job *job = ctx;
    const xentc_rows *r = job->r;
    (void)k;
    if (r->target) {
        const int64_t bad = first_bad_target(r->target, i0, i1, r->n_classes, &r->ignore_index);
        if (bad >= 0) {
            record_bad(&job->bad, bad);
            return;
        }
    }
    job->fn(r, i0, i1, job->scratch ? job->scratch + (size_t)tid * job->scratch_bytes : NULL);
}

/* Bytes of scratch per thread for a chunk of rows of r (row_kernels.h):
   16-bit rows widened to float32, transformed short rows' z and dz/dx. */
static size_t scratch_bytes(const xentc_rows *r, size_t elem_size, int half)
{
    const size_t values = (size_t)chunk_rows(r->n_classes) * (size_t)r->n_classes;
    size_t bytes = 0;
    if ((r->logit_scale != 1.0 || r->softcap > 0.0) && r->n_classes <= XENTC_SCRATCH_C)
        bytes += 2 * values * elem_size;
    if (half)
        bytes += (r->soft ? 2 : 1) * values * sizeof(float);
    return bytes;
}

/* fn computes in values of elem_size bytes; half: its rows are 16-bit ones,
   widened to float32 */
static int run_rows(const xentc_rows *rows, int n_threads, int64_t *bad_row, xentc_rows_fn fn,
                    size_t elem_size, int half)
{
    if (!rows)
        return XENTC_ERR_ARG;
    xentc_rows norm = *rows; /* a zeroed struct asks for the plain loss */
    if (norm.logit_scale == 0.0)
        norm.logit_scale = 1.0;
    const xentc_rows *r = &norm;
    if (r->n_rows < 0 || r->n_classes < 1 || (r->target && r->soft) ||
        !(r->logit_scale > 0.0 && isfinite(r->logit_scale)) ||
        !(r->softcap >= 0.0 && isfinite(r->softcap)) ||
        !(r->lse_square_scale >= 0.0 && isfinite(r->lse_square_scale)))
        return XENTC_ERR_ARG;
    /* No rows: nothing to read or write, so the per-row pointers may be NULL
       (xentc.h); the Cython adapter passes NULL for every empty array. */
    if (r->n_rows == 0)
        return XENTC_OK;
    if (!r->x || (r->out_kind != XENTC_OUT_NONE && !r->out) ||
        (r->out_kind == XENTC_OUT_GRAD && !r->target && !r->soft))
        return XENTC_ERR_ARG;
    rows_job job = {r, fn, NULL, scratch_bytes(r, elem_size, half), -1};
    if (job.scratch_bytes > 0) {
        /* A buffer per thread, allocated once per call. */
        const int nt = thread_count(n_threads, chunk_count(r->n_rows, r->n_classes));
        job.scratch = malloc(job.scratch_bytes * (size_t)nt);
        if (!job.scratch)
            return XENTC_ERR_MEMORY;
    }
    for_chunks(r->n_rows, r->n_classes, n_threads, rows_chunk, &job);
    free(job.scratch);
    if (job.bad >= 0) {
        if (bad_row)
            *bad_row = job.bad;
        return XENTC_ERR_TARGET;
    }
    return XENTC_OK;
}

typedef struct {
    const xentc_proba *p;
    xentc_proba_fn fn;
    double *ext; /* {min, max, NaN seen} per chunk */
    int64_t bad;
} proba_job;

static void proba_chunk(void *ctx, int64_t k, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    proba_job *job = ctx;
    const xentc_proba *p = job->p;
    if (p->target) {
        const int64_t bad = first_bad_target(p->target, i0, i1, p->n_classes, NULL);
        if (bad >= 0) {
            record_bad(&job->bad, bad);
            return;
        }
    }
    job->fn(p, i0, i1, job->ext + 3 * k);
}

static int run_proba(xentc_proba *p, int n_threads, int64_t *bad_row, xentc_proba_fn fn)
{
    if (!p || p->n_rows < 0 || p->n_classes < 1 || (p->n_rows > 0 && (!p->p || !p->row_sum)) ||
        (p->target && !p->picked))
        return XENTC_ERR_ARG;
    const int64_t n_chunks = chunk_count(p->n_rows, p->n_classes);
    double *ext = malloc(sizeof(double) * 3 * (size_t)(n_chunks > 0 ? n_chunks : 1));
    if (!ext)
        return XENTC_ERR_ARG;
    for (int64_t k = 0; k < n_chunks; k++) {
        ext[3 * k] = INFINITY;
        ext[3 * k + 1] = -INFINITY;
        ext[3 * k + 2] = 0.0;
    }
    proba_job job = {p, fn, ext, -1};
    for_chunks(p->n_rows, p->n_classes, n_threads, proba_chunk, &job);
    p->lo = INFINITY;
    p->hi = -INFINITY;
    int nan = 0;
    for (int64_t k = 0; k < n_chunks; k++) {
        p->lo = ext[3 * k] < p->lo ? ext[3 * k] : p->lo;
        p->hi = ext[3 * k + 1] > p->hi ? ext[3 * k + 1] : p->hi;
        nan |= ext[3 * k + 2] != 0.0;
    }
    free(ext);
    if (nan)
        p->lo = p->hi = NAN;
    if (job.bad >= 0) {
        if (bad_row)
            *bad_row = job.bad;
        return XENTC_ERR_TARGET;
    }
    return XENTC_OK;
}

int xentc_targets(const int64_t *target, int64_t n, int64_t n_classes, int64_t ignore_index,
                  const double *weight, double *total, int64_t *bad_row)
{
    if ((n > 0 && !target) || n < 0 || n_classes < 1 || !total)
        return XENTC_ERR_ARG;
    const int64_t bad = n > 0 ? first_bad_target(target, 0, n, n_classes, &ignore_index) : -1;
    if (bad >= 0) {
        if (bad_row)
            *bad_row = bad;
        return XENTC_ERR_TARGET;
    }
    *total = get_active()->target_total(target, n, ignore_index, weight);
    return XENTC_OK;
}

int xentc_proba_f32(xentc_proba *proba, int n_threads, int64_t *bad_row)
{
    return run_proba(proba, n_threads, bad_row, get_active()->proba_f32);
}

int xentc_proba_f64(xentc_proba *proba, int n_threads, int64_t *bad_row)
{
    return run_proba(proba, n_threads, bad_row, get_active()->proba_f64);
}

int xentc_rows_f32(const xentc_rows *rows, int n_threads, int64_t *bad_row)
{
    return run_rows(rows, n_threads, bad_row, get_active()->rows_f32, sizeof(float), 0);
}

int xentc_rows_f64(const xentc_rows *rows, int n_threads, int64_t *bad_row)
{
    return run_rows(rows, n_threads, bad_row, get_active()->rows_f64, sizeof(double), 0);
}

int xentc_rows_f16(const xentc_rows *rows, int n_threads, int64_t *bad_row)
{
    return run_rows(rows, n_threads, bad_row, get_active()->rows_f16, sizeof(float), 1);
}

int xentc_rows_bf16(const xentc_rows *rows, int n_threads, int64_t *bad_row)
{
    return run_rows(rows, n_threads, bad_row, get_active()->rows_bf16, sizeof(float), 1);
}

void xentc_exp_f32(const float *in, float *out, int64_t n) { get_active()->exp_f32(in, out, n); }
void xentc_exp_f64(const double *in, double *out, int64_t n) { get_active()->exp_f64(in, out, n); }
void xentc_half_to_f32(const void *in, float *out, int64_t n, int bf16)
{
    get_active()->widen16(in, out, n, bf16);
}
void xentc_f32_to_half(const float *in, void *out, int64_t n, int bf16)
{
    get_active()->narrow16(in, out, n, bf16);
}
