/*
 * Ground-truth protocol shared by the programs that the integration tests trace.
 *
 *   1. print "ready <pid>" and flush;
 *   2. unless argv has "--now", wait for one line ("go") on stdin;
 *   3. allocate;
 *   4. print "truth <function> <bytes>" for every known function (0 included), then "done";
 *   5. unless argv has "--exit", wait for a line or EOF on stdin, then exit 0.
 *
 * Each program is a single translation unit, so the helpers here are static.
 * Include this header first: it asks for the GNU declarations (reallocarray, pvalloc).
 */
#ifndef LEAKHOUND_TRUTH_H
#define LEAKHOUND_TRUTH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Marks a function whose name the tests look for as the direct caller of the allocator.
 * noipa implies noinline and also forbids cloning: a clone would be named
 * leak_x.constprop.0 and an inlined body would make main the direct caller.
 */
#define TRUTH_FN __attribute__((noipa))

/*
 * Every block goes through this volatile array. That keeps the pointer escaping, so gcc cannot
 * delete a malloc/free pair, and the store after the call keeps it from being a tail call
 * (a tail call would make our caller, not us, the return address malloc sees).
 */
#define TRUTH_SINK_SLOTS 4096
static void *volatile truth_sink[TRUTH_SINK_SLOTS];
static size_t truth_sink_next;

/* Reserves n consecutive sink slots and returns the first. */
static size_t truth_slots(size_t n)
{
    if (truth_sink_next + n > TRUTH_SINK_SLOTS) {
        fprintf(stderr, "truth: sink full\n");
        exit(2);
    }
    size_t first = truth_sink_next;
    truth_sink_next += n;
    return first;
}

static void truth_die(const char *what)
{
    fprintf(stderr, "truth: unexpected result from %s\n", what);
    exit(2);
}

struct truth_opts {
    int now;
    int exit;
};

static struct truth_opts truth_start(int argc, char **argv)
{
    struct truth_opts opts = {0, 0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--now") == 0)
            opts.now = 1;
        else if (strcmp(argv[i], "--exit") == 0)
            opts.exit = 1;
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!opts.now) {
        char line[64];
        /* EOF instead of "go": the test gave up on us, so leave without allocating. */
        if (!fgets(line, sizeof line, stdin))
            exit(0);
    }
    return opts;
}

static void truth_report(const char *function, size_t bytes)
{
    printf("truth %s %zu\n", function, bytes);
}

static int truth_finish(struct truth_opts opts)
{
    puts("done");
    fflush(stdout);
    if (!opts.exit) {
        char line[64];
        /* A line or EOF both mean "exit now"; which one does not matter. */
        if (fgets(line, sizeof line, stdin) == NULL)
            return 0;
    }
    return 0;
}

#endif
