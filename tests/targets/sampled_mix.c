/*
 * Many allocations of known sizes for byte sampling (--sample-bytes): enough that an
 * estimate's interval is narrow, with every shape of size the sampler treats differently
 * (far below the mean, around it, far above it), a path that frees everything, and realloc.
 * Truth is reported per allocating function.
 */
#include "truth.h"

#define SMALL_BLOCKS 100000
#define MIXED_BLOCKS 5000
#define LARGE_BLOCKS 40
#define GROWN_BLOCKS 2000
#define CHURN_BLOCKS 100000

static void *kept[SMALL_BLOCKS + MIXED_BLOCKS + LARGE_BLOCKS + GROWN_BLOCKS];
static size_t kept_count;

static void keep(void *p, const char *what)
{
    if (!p)
        truth_die(what);
    kept[kept_count++] = p;
}

/* A fixed sequence, so every run allocates the same sizes. */
static unsigned long long lcg = 0x2545F4914F6CDD1DULL;
static size_t next_size(size_t low, size_t high)
{
    lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    return low + (size_t)((lcg >> 33) % (high - low + 1));
}

TRUTH_FN static size_t keep_small(void)
{
    for (int i = 0; i < SMALL_BLOCKS; i++)
        keep(malloc(64), "malloc");
    return (size_t)SMALL_BLOCKS * 64;
}

TRUTH_FN static size_t keep_mixed(void)
{
    size_t bytes = 0;
    for (int i = 0; i < MIXED_BLOCKS; i++) {
        size_t n = next_size(16, 8192);
        keep(malloc(n), "malloc");
        bytes += n;
    }
    return bytes;
}

TRUTH_FN static size_t keep_large(void)
{
    for (int i = 0; i < LARGE_BLOCKS; i++)
        keep(calloc(1, 256 * 1024), "calloc");
    return (size_t)LARGE_BLOCKS * 256 * 1024;
}

/* Each block starts small and is grown in place or moved: only its final size is held. */
TRUTH_FN static size_t grow_blocks(void)
{
    for (int i = 0; i < GROWN_BLOCKS; i++) {
        void *p = realloc(NULL, 16);
        void *q = realloc(p, 1024);
        if (!q)
            truth_die("realloc");
        keep(realloc(q, 4096), "realloc");
    }
    return (size_t)GROWN_BLOCKS * 4096;
}

TRUTH_FN static size_t churn(void)
{
    size_t slot = truth_slots(1);
    for (int i = 0; i < CHURN_BLOCKS; i++) {
        void *p = malloc(next_size(16, 512));
        if (!p)
            truth_die("malloc");
        truth_sink[slot] = p;
        free(p);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    size_t small = keep_small();
    size_t mixed = keep_mixed();
    size_t large = keep_large();
    size_t grown = grow_blocks();
    size_t churned = churn();
    truth_report("keep_small", small);
    truth_report("keep_mixed", mixed);
    truth_report("keep_large", large);
    truth_report("grow_blocks", grown);
    truth_report("churn", churned);
    return truth_finish(opts);
}
