/* What both kernels share: their CPU check, and starting a call's helper threads on the CPUs the
 * caller is not on.
 *
 * Why the placement: right after the machine has been idle, a new thread lands on the caller's own CPU (the
 * other CPU looks idle and wake-affine placement keeps it close), and the two share one core until
 * the load balancer moves one, milliseconds later. Measured on the 2-core VM after a 0.25 s idle:
 * a SmolVLM tile +15-26 ms, all of it in the first layers' kernel calls. Restricting each helper to
 * "any allowed CPU but the caller's" places it on a free core at once. Linux/glibc only (elsewhere
 * the helpers start where the system puts them). */
#ifndef EDGEVLM_WORKERS_H
#define EDGEVLM_WORKERS_H

#include <pthread.h>
#include <sched.h>

#define MAX_WORKERS 64

/* The threads a call uses: what was asked, at least 1, at most MAX_WORKERS and the work items. */
static inline int worker_count(int threads, int items) {
    if (threads > MAX_WORKERS) threads = MAX_WORKERS;
    if (threads > items) threads = items;
    return threads < 1 ? 1 : threads;
}

/* AVX-512 F/BW/VL/DQ, which both kernels need besides their own extension. */
static inline int has_avx512_core(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

/* Run fn(arg_of(t, ctx)) for t in 0..n-1: t = 0 on the calling thread, the others on helper
 * threads started as above, and wait for them. A helper that cannot start (or an affinity that
 * cannot be set) is not an error: the kernels share their work items dynamically. */
static void run_workers(int n, void *(*fn)(void *), void *(*arg_of)(int, void *), void *ctx) {
    pthread_t tid[MAX_WORKERS];
    char started[MAX_WORKERS] = {0};
    if (n > MAX_WORKERS) n = MAX_WORKERS;
#if defined(__linux__) && defined(__GLIBC__)
    cpu_set_t others;
    int use_affinity = 0, me = sched_getcpu();
    if (me >= 0 && sched_getaffinity(0, sizeof(others), &others) == 0 && CPU_ISSET(me, &others)) {
        CPU_CLR(me, &others);
        use_affinity = CPU_COUNT(&others) > 0;
    }
#endif
    for (int t = 1; t < n; t++) {
        pthread_attr_t attr;
        int have_attr = pthread_attr_init(&attr) == 0;
#if defined(__linux__) && defined(__GLIBC__)
        if (have_attr && use_affinity) pthread_attr_setaffinity_np(&attr, sizeof(others), &others);
#endif
        started[t] = pthread_create(&tid[t], have_attr ? &attr : NULL, fn, arg_of(t, ctx)) == 0;
        if (have_attr) pthread_attr_destroy(&attr);
    }
    fn(arg_of(0, ctx));
    for (int t = 1; t < n; t++)
        if (started[t]) pthread_join(tid[t], NULL);
}

#endif
