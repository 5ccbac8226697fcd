/* Start a kernel call's helper threads on the CPUs the caller is not on.
 *
 * Why: right after the machine has been idle, a new thread lands on the caller's own CPU (the
 * other CPU looks idle and wake-affine placement keeps it close), and the two share one core until
 * the load balancer moves one, milliseconds later. Measured on the 2-core VM after a 0.25 s idle:
 * a SmolVLM tile +15-26 ms, all of it in the first layers' kernel calls. Restricting each helper to
 * "any allowed CPU but the caller's" places it on a free core at once. */
#ifndef EDGEVLM_WORKERS_H
#define EDGEVLM_WORKERS_H

#include <pthread.h>
#include <sched.h>

/* started[t] = 1 for each t in 1..n-1 whose thread runs fn(arg_of(t)). A thread that cannot start
 * (or an affinity that cannot be set) is not an error: the work items are shared dynamically. */
static void start_workers(pthread_t *tid, char *started, int n, void *(*fn)(void *), void *(*arg_of)(int, void *),
                          void *ctx) {
    cpu_set_t others;
    int use_affinity = 0, me = sched_getcpu();
    if (me >= 0 && sched_getaffinity(0, sizeof(others), &others) == 0 && CPU_ISSET(me, &others)) {
        CPU_CLR(me, &others);
        use_affinity = CPU_COUNT(&others) > 0;
    }
    for (int t = 1; t < n; t++) {
        pthread_attr_t attr;
        int have_attr = pthread_attr_init(&attr) == 0;
        if (have_attr && use_affinity) pthread_attr_setaffinity_np(&attr, sizeof(others), &others);
        started[t] = pthread_create(&tid[t], have_attr ? &attr : NULL, fn, arg_of(t, ctx)) == 0;
        if (have_attr) pthread_attr_destroy(&attr);
    }
}

#endif
