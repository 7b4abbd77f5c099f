/*
 * Leaks until the kernel's OOM killer ends it, for a test that puts it in a memory cgroup
 * with a low limit. After "go" it holds a known amount (reported as truth), then leaks
 * BLOCK-byte blocks, each filled so that it is resident, printing "leaked N" after the Nth:
 * when it is killed, the blocks outstanding are the last N printed, or one more (the block
 * being filled when the limit was hit).
 */
#include "truth.h"

#include <time.h>

#define HELD_BLOCKS 100
#define HELD_BLOCK 1000
#define BLOCK (1024 * 1024)

TRUTH_FN size_t hold_known(void)
{
    size_t first = truth_slots(HELD_BLOCKS);
    for (size_t i = 0; i < HELD_BLOCKS; i++) {
        truth_sink[first + i] = malloc(HELD_BLOCK);
        if (!truth_sink[first + i])
            truth_die("malloc");
    }
    return HELD_BLOCKS * HELD_BLOCK;
}

TRUTH_FN void *leak_block(void)
{
    void *block = malloc(BLOCK);
    if (!block)
        truth_die("malloc");
    return block;
}

int main(int argc, char **argv)
{
    truth_start(argc, argv);
    (void)truth_finish; /* never reached: the kernel ends this program */
    truth_report("hold_known", hold_known());
    printf("block %d\n", BLOCK);
    fflush(stdout);
    /* A steady leak, slow enough for a few samples before the limit is reached. */
    struct timespec pause = {0, 10 * 1000 * 1000};
    for (size_t n = 1;; n++) {
        size_t slot = truth_slots(1);
        truth_sink[slot] = leak_block();
        memset(truth_sink[slot], (int)n, BLOCK);
        printf("leaked %zu\n", n);
        fflush(stdout);
        nanosleep(&pause, NULL);
    }
}
