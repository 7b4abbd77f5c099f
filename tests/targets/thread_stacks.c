/*
 * Threads with stacks of known sizes. glibc maps each stack PROT_NONE (with its guard page)
 * and opens all but the guard with mprotect, so the committed bytes are the requested stack
 * sizes. The threads wait until the end, so their stacks stay mapped.
 */
#include <pthread.h>

#include "truth.h"

#define THREADS 6

static pthread_barrier_t started;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t finish = PTHREAD_COND_INITIALIZER;
static int finishing;

static void *worker(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&started);
    pthread_mutex_lock(&lock);
    while (!finishing)
        pthread_cond_wait(&finish, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Thread t gets a stack of (t + 1) * 256 KiB. */
TRUTH_FN size_t start_stack_threads(pthread_t *threads)
{
    size_t total = 0;
    pthread_barrier_init(&started, NULL, THREADS + 1);
    for (int t = 0; t < THREADS; t++) {
        pthread_attr_t attr;
        size_t size = (size_t)(t + 1) * 256 * 1024;
        pthread_attr_init(&attr);
        if (pthread_attr_setstacksize(&attr, size) != 0)
            truth_die("pthread_attr_setstacksize");
        if (pthread_create(&threads[t], &attr, worker, NULL) != 0)
            truth_die("pthread_create");
        pthread_attr_destroy(&attr);
        total += size;
    }
    pthread_barrier_wait(&started);
    return total;
}

int main(int argc, char **argv)
{
    (void)truth_slots; /* truth.h helper this target has no use for */
    struct truth_opts opts = truth_start(argc, argv);
    pthread_t threads[THREADS];
    size_t bytes = start_stack_threads(threads);
    truth_report("start_stack_threads", bytes);
    int rc = truth_finish(opts);
    pthread_mutex_lock(&lock);
    finishing = 1;
    pthread_cond_broadcast(&finish);
    pthread_mutex_unlock(&lock);
    for (int t = 0; t < THREADS; t++)
        pthread_join(threads[t], NULL);
    return rc;
}
