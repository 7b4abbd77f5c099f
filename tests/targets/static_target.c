/*
 * A trivial target that the tests link with -static: leakhound has no libc.so to probe in it
 * and must refuse with a clear error. It follows the same protocol (truth.h).
 */
#include "truth.h"

TRUTH_FN size_t leak_static(void)
{
    size_t slot = truth_slots(1);
    truth_sink[slot] = malloc(4096);
    if (!truth_sink[slot])
        truth_die("malloc");
    return 4096;
}

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    truth_report("leak_static", leak_static());
    return truth_finish(opts);
}
