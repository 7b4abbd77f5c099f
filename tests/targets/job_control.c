/*
 * A launched command that makes progress the tests can watch: every tick it leaks one block
 * and prints "tick N", until a line arrives on stdin. Job control (SIGSTOP, SIGTSTP, then
 * SIGCONT) must pause and resume it under leakhound exactly as without a tracer.
 * It follows the protocol of truth.h once it stops ticking.
 */
#include "truth.h"

#include <poll.h>

#define BLOCK 64

TRUTH_FN size_t leak_tick(void)
{
    size_t slot = truth_slots(1);
    truth_sink[slot] = malloc(BLOCK);
    if (!truth_sink[slot])
        truth_die("malloc");
    return BLOCK;
}

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    size_t leaked = 0;
    for (int tick = 1;; tick++) {
        leaked += leak_tick();
        printf("tick %d\n", tick);
        fflush(stdout);
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        /* A stop and continue may end the wait early with EINTR: that is just another tick. */
        if (poll(&pfd, 1, 20) > 0)
            break;
    }
    truth_report("leak_tick", leaked);
    return truth_finish(opts);
}
