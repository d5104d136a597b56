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
    xentc_rows_fn rows_f32, rows_f64;
    xentc_exp_fn exp_f32, exp_f64;
} isa_entry;

static int always(void) { return 1; }

#if defined(XENTC_HAVE_AVX2) || defined(XENTC_HAVE_AVX512)
/* __builtin_cpu_supports reads cpuid and also checks (xgetbv) that the OS
   saves the wide registers, so a "supported" ISA is safe to run. */
static int has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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
     xentc_exp_f32_##name, xentc_exp_f64_##name}

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
    active = best_isa();
    /* XENTC_ISA can only lower the choice (for testing and for CPUs whose
       wide units down-clock); an unknown or unsupported name is ignored. */
    const char *env = getenv("XENTC_ISA");
    if (env && *env)
        for (int k = 0; k < N_ISAS && &isas[k] <= active; k++)
            if (strcmp(isas[k].name, env) == 0)
                active = &isas[k];
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
        active = best_isa();
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

/* Rows [k * per, (k + 1) * per) clipped to the batch. Their targets are
   checked before any row is read; a chunk with a bad target is skipped whole
   (the call fails anyway). */
static inline void run_chunk(const xentc_rows *r, int64_t k, int64_t per, xentc_rows_fn fn,
                             int64_t *bad)
{
    const int64_t i0 = k * per, i1 = i0 + per < r->n_rows ? i0 + per : r->n_rows;
    if (r->target)
        for (int64_t i = i0; i < i1; i++) {
            const int64_t y = r->target[i];
            if (y != r->ignore_index && (y < 0 || y >= r->n_classes)) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                *bad = i;
                return;
            }
        }
    fn(r, i0, i1);
}

static int run_rows(const xentc_rows *r, int n_threads, int64_t *bad_row, xentc_rows_fn fn)
{
    if (!r || r->n_rows < 0 || r->n_classes < 1 || (r->n_rows > 0 && !r->x) ||
        (r->target && r->soft) || (r->out_kind != XENTC_OUT_NONE && !r->out) ||
        (r->out_kind == XENTC_OUT_GRAD && !r->target && !r->soft))
        return XENTC_ERR_ARG;
    int64_t bad = -1;
    const int64_t n = r->n_rows;
    const int64_t rows_per_chunk = r->n_classes >= CHUNK_ELEMENTS ? 1 : CHUNK_ELEMENTS / r->n_classes;
    const int64_t n_chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
    const int nt = thread_count(n_threads, n_chunks);
    if (nt > 1) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
        for (int64_t k = 0; k < n_chunks; k++)
            run_chunk(r, k, rows_per_chunk, fn, &bad);
    } else {
        /* No OpenMP call at all: also the path of a forked child. */
        for (int64_t k = 0; k < n_chunks; k++)
            run_chunk(r, k, rows_per_chunk, fn, &bad);
    }
    if (bad >= 0) {
        if (bad_row)
            *bad_row = bad;
        return XENTC_ERR_TARGET;
    }
    return XENTC_OK;
}

int xentc_targets(const int64_t *target, int64_t n, int64_t n_classes, int64_t ignore_index,
                  const double *weight, double *total, int64_t *bad_row)
{
    if ((n > 0 && !target) || n < 0 || n_classes < 1 || !total)
        return XENTC_ERR_ARG;
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t y = target[i];
        if (y == ignore_index)
            continue;
        if (y < 0 || y >= n_classes) {
            if (bad_row)
                *bad_row = i;
            return XENTC_ERR_TARGET;
        }
        s += weight ? weight[y] : 1.0;
    }
    *total = s;
    return XENTC_OK;
}

int xentc_rows_f32(const xentc_rows *rows, int n_threads, int64_t *bad_row)
{
    return run_rows(rows, n_threads, bad_row, get_active()->rows_f32);
}

int xentc_rows_f64(const xentc_rows *rows, int n_threads, int64_t *bad_row)
{
    return run_rows(rows, n_threads, bad_row, get_active()->rows_f64);
}

void xentc_exp_f32(const float *in, float *out, int64_t n) { get_active()->exp_f32(in, out, n); }
void xentc_exp_f64(const double *in, double *out, int64_t n) { get_active()->exp_f64(in, out, n); }
