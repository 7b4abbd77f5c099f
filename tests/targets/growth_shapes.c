/*
 * Three shapes of outstanding memory over time, for the trend classification:
 *
 *   leak_steady  leaks 4 KiB every 100 ms for as long as it runs: growing.
 *   cache_put    fills a 256-entry cache of 2 KiB blocks in its first ~0.5 s, then only
 *                replaces entries (free the old block, allocate a new one): flat.
 *   churn_batch  allocates a batch of random sizes and frees it on the next tick: noise.
 *
 * Protocol (truth.h): prints "ready <pid>", waits for "go", then runs in 100 ms ticks until a
 * line or EOF arrives on stdin, and exits 0. It prints no truth: the test judges the trends.
 * Built with frame pointers, so every allocation of one function has one stack.
 */
/* Only the start of the protocol is used here. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "truth.h"

#include <poll.h>
#include <stdint.h>

enum { LEAK_SIZE = 4096, CACHE_ENTRIES = 256, CACHE_SIZE = 2048, CHURN_BATCH = 64 };

/* Leaked blocks are chained through their first word, so keeping them allocates nothing. */
static void *leaked;
static void *cache[CACHE_ENTRIES];
static void *churn[CHURN_BATCH];
static uint64_t rng = 88172645463325252ull;

static uint64_t next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

TRUTH_FN void leak_steady(void)
{
    void **block = malloc(LEAK_SIZE);
    if (!block)
        truth_die("malloc");
    *block = leaked;
    leaked = block;
}

TRUTH_FN void cache_put(size_t slot)
{
    free(cache[slot]);
    cache[slot] = malloc(CACHE_SIZE);
    if (!cache[slot])
        truth_die("malloc");
    memset(cache[slot], (int)slot, 16);
}

TRUTH_FN void churn_batch(void)
{
    for (size_t i = 0; i < CHURN_BATCH; i++) {
        free(churn[i]);
        churn[i] = malloc(64 + next_random() % 8192);
        if (!churn[i])
            truth_die("malloc");
    }
}

/* Waits up to `ms` for stdin; returns 1 when a line or EOF arrived (time to leave). */
static int stdin_ready(int ms)
{
    struct pollfd pfd = {.fd = 0, .events = POLLIN};
    return poll(&pfd, 1, ms) > 0;
}

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    (void)opts;
    size_t filled = 0;
    for (;;) {
        /* The cache fills in 32-entry steps over its first 8 ticks, then replaces. */
        for (int i = 0; i < 32; i++) {
            size_t slot = filled < CACHE_ENTRIES ? filled++ : next_random() % CACHE_ENTRIES;
            cache_put(slot);
        }
        leak_steady();
        churn_batch();
        if (stdin_ready(100))
            break;
    }
    return 0;
}
