/*
 * Leaks a known amount, reports it (truth.h), then on a line from stdin execs another
 * program (argv: --then PROGRAM ARGS...; /bin/sleep 60 by default). The exec releases every
 * block: none of them may be reported as outstanding.
 */
#include "truth.h"

#define BLOCKS 10
#define BLOCK 1000

TRUTH_FN size_t leak_before_exec(void)
{
    size_t first = truth_slots(BLOCKS);
    for (size_t i = 0; i < BLOCKS; i++) {
        truth_sink[first + i] = malloc(BLOCK);
        if (!truth_sink[first + i])
            truth_die("malloc");
    }
    return BLOCKS * BLOCK;
}

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    char *sleep_argv[] = {"sleep", "60", NULL};
    char **then = sleep_argv;
    const char *program = "/bin/sleep";
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--then") == 0) {
            program = argv[i + 1];
            then = &argv[i + 1];
            break;
        }
    }
    truth_report("leak_before_exec", leak_before_exec());
    puts("done");
    fflush(stdout);
    char line[64];
    if (!opts.exit && fgets(line, sizeof line, stdin) == NULL)
        return 0;
    execv(program, then);
    truth_die("execv");
    return 2;
}
