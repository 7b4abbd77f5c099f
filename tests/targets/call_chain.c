/*
 * Two call chains into one allocating function, built -O2 without frame pointers: only CFI
 * unwinding can show that the bytes come through level_one or through other_path.
 * Truth is reported per call path, root first.
 */
#include "truth.h"

static volatile int after_call;

TRUTH_FN static void level_two(size_t n)
{
    size_t slot = truth_slots(1);
    void *p = malloc(n);
    if (!p)
        truth_die("malloc");
    truth_sink[slot] = p;
}

/* The increment after each call keeps it from being a tail call (a jump leaves no frame). */
TRUTH_FN static void level_one(size_t n)
{
    level_two(n);
    after_call++;
}

TRUTH_FN static void other_path(size_t n)
{
    level_two(n);
    after_call++;
}

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    for (int i = 0; i < 1000; i++)
        level_one(64);
    for (int i = 0; i < 500; i++)
        other_path(96);
    truth_report("main;level_one;level_two", 1000 * 64);
    truth_report("main;other_path;level_two", 500 * 96);
    return truth_finish(opts);
}
