/*
 * A burst of allocations from 1,200 call paths that leakhound has never seen: 40 allocating
 * functions, each reached through 1 to 30 levels of recursion, 100 blocks per path, as fast as
 * malloc goes. Every first allocation of a path misses an unwind rule in the kernel and asks
 * user space for it; the rest of the burst must still land on whole stacks, with no request
 * lost. Built -O2 without frame pointers, so only CFI unwinding gives the whole path.
 * Truth is reported per allocating function, through its caller.
 */
#include "truth.h"

#define SITES 40
#define MAX_DEPTH 30
#define BLOCKS 100
#define BLOCK_BYTES 32

static void *kept[SITES * MAX_DEPTH * BLOCKS];
static size_t kept_count;
static volatile int after_call;

#define SITE(n)                                                                                \
    TRUTH_FN static void site_##n(void)                                                        \
    {                                                                                          \
        for (int i = 0; i < BLOCKS; i++) {                                                     \
            void *p = malloc(BLOCK_BYTES);                                                     \
            if (!p)                                                                            \
                truth_die("malloc");                                                           \
            kept[kept_count++] = p;                                                            \
        }                                                                                      \
    }
#define SITE10(t) SITE(t##0) SITE(t##1) SITE(t##2) SITE(t##3) SITE(t##4) \
                  SITE(t##5) SITE(t##6) SITE(t##7) SITE(t##8) SITE(t##9)
SITE10(0) SITE10(1) SITE10(2) SITE10(3)

#define REF(n) site_##n,
#define REF10(t) REF(t##0) REF(t##1) REF(t##2) REF(t##3) REF(t##4) \
                 REF(t##5) REF(t##6) REF(t##7) REF(t##8) REF(t##9)
static void (*const sites[SITES])(void) = {REF10(0) REF10(1) REF10(2) REF10(3)};

/* The increment after each call keeps it from being a tail call. */
TRUTH_FN static void descend(int depth, void (*site)(void))
{
    if (depth > 1)
        descend(depth - 1, site);
    else
        site();
    after_call++;
}

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    for (int depth = 1; depth <= MAX_DEPTH; depth++)
        for (int site = 0; site < SITES; site++)
            descend(depth, sites[site]);
    char path[64];
    for (int site = 0; site < SITES; site++) {
        snprintf(path, sizeof path, "descend;site_%d%d", site / 10, site % 10);
        truth_report(path, (size_t)MAX_DEPTH * BLOCKS * BLOCK_BYTES);
    }
    return truth_finish(opts);
}
