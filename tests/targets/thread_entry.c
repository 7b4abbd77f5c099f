/*
 * Allocations on threads other than the main one: their stacks must unwind through the thread
 * function to glibc's start_thread, built -O2 without frame pointers.
 */
#include <pthread.h>

#include "truth.h"

#define THREADS 3
#define BLOCKS 100
#define SIZE 128

static volatile int after_call;

TRUTH_FN static void allocate_in_worker(size_t first_slot)
{
    for (size_t i = 0; i < BLOCKS; i++) {
        void *p = malloc(SIZE);
        if (!p)
            truth_die("malloc");
        truth_sink[first_slot + i] = p;
    }
}

TRUTH_FN static void *worker_main(void *arg)
{
    allocate_in_worker((size_t)arg);
    after_call++;
    return NULL;
}

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    pthread_t threads[THREADS];
    /* Slots are handed out here: truth_slots is not thread-safe. */
    for (int t = 0; t < THREADS; t++) {
        size_t first = truth_slots(BLOCKS);
        if (pthread_create(&threads[t], NULL, worker_main, (void *)first) != 0)
            truth_die("pthread_create");
    }
    for (int t = 0; t < THREADS; t++)
        pthread_join(threads[t], NULL);
    truth_report("start_thread;worker_main;allocate_in_worker", THREADS * BLOCKS * SIZE);
    return truth_finish(opts);
}
