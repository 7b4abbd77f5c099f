// malloc(64)+free microbenchmark for `cargo xtask bench`.
//
// usage: alloc_bench THREADS PAIRS ROUNDS
//
// Starts THREADS worker threads, warms each one's arena, prints "ready PID" and waits for a
// line on stdin: the handshake that lets a tracer attach before anything is timed. Then it
// runs ROUNDS rounds; in each, every worker does PAIRS malloc(64)+free pairs, and the round
// prints "round NS" where NS is the wall time of the round over all pairs of all threads
// (for one thread, the time of one pair; for several, the machine's throughput per pair).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long pairs;
static pthread_barrier_t start_line, finish_line;
static volatile int stop;

static void pair_loop(long n) {
    // A volatile local keeps the compiler from pairing malloc with free and dropping both,
    // without sharing a cache line between threads.
    void *volatile sink;
    for (long i = 0; i < n; i++) {
        sink = malloc(64);
        free(sink);
    }
}

static void *worker(void *arg) {
    (void)arg;
    pair_loop(1000); // creates this thread's arena before any tracer attaches
    for (;;) {
        pthread_barrier_wait(&start_line);
        if (stop) return NULL;
        pair_loop(pairs);
        pthread_barrier_wait(&finish_line);
    }
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s THREADS PAIRS ROUNDS\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    pairs = atol(argv[2]);
    int rounds = atoi(argv[3]);
    if (threads < 1 || pairs < 1 || rounds < 1) return 2;

    pthread_barrier_init(&start_line, NULL, threads + 1);
    pthread_barrier_init(&finish_line, NULL, threads + 1);
    pthread_t tids[threads];
    for (int i = 0; i < threads; i++) pthread_create(&tids[i], NULL, worker, NULL);

    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;

    for (int r = 0; r < rounds; r++) {
        double t0 = now_ns();
        pthread_barrier_wait(&start_line);
        pthread_barrier_wait(&finish_line);
        double t1 = now_ns();
        printf("round %.2f\n", (t1 - t0) / ((double)pairs * threads));
        fflush(stdout);
    }
    stop = 1;
    pthread_barrier_wait(&start_line);
    for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
    return 0;
}
